"""hf_adaopt.lab.stats against known answers: scipy's reference implementations and hand-computed examples."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from hf_adaopt.lab import stats

# Two small samples with unequal variances and sizes (no ties between them).
A = [0.912, 0.934, 0.921, 0.945, 0.917, 0.929]
B = [0.901, 0.887, 0.915, 0.893, 0.908]


def test_mean_and_sample_std():
    assert stats.mean([1, 2, 3, 4]) == 2.5
    assert stats.std([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3))
    assert math.isnan(stats.std([1.0]))
    assert math.isnan(stats.mean([]))


@pytest.mark.parametrize(
    "a,b", [(A, B), (B, A), ([1, 2, 3, 4, 5], [2, 4, 6, 8, 10, 12, 14]), ([0.5, 0.52], [0.1, 0.9, 0.3])]
)
def test_welch_matches_scipy(a, b):
    ours = stats.welch_ttest(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert ours["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert ours["df"] == pytest.approx(ref.df, rel=1e-12)


def test_welch_hand_computed():
    # a: mean 2.5, s² = 5/3, n = 4 -> s²/n = 5/12; b: mean 4, s² = 4, n = 3 -> s²/n = 4/3
    out = stats.welch_ttest([1, 2, 3, 4], [2, 4, 6])
    se2 = 5 / 12 + 4 / 3
    assert out["t"] == pytest.approx(-1.5 / math.sqrt(se2))
    assert out["df"] == pytest.approx(se2**2 / ((5 / 12) ** 2 / 3 + (4 / 3) ** 2 / 2))


def test_welch_undefined_cases_are_nan():
    assert math.isnan(stats.welch_ttest([1.0, 1.0], [1.0, 1.0])["p"])
    assert math.isnan(stats.welch_ttest([1.0], [1.0, 2.0])["p"])


@pytest.mark.parametrize(
    "a,b",
    [(A, B), (B, A), ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]), ([3.1, 1.2, 5.5], [2.2, 4.4, 0.3, 6.6, 7.7])],
)
def test_mann_whitney_exact_matches_scipy_without_ties(a, b):
    ours = stats.mann_whitney_u(a, b)
    ref = sps.mannwhitneyu(a, b, alternative="two-sided", method="exact")
    assert ours["method"] == "exact"
    assert ours["u"] == ref.statistic
    assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-12)


def test_mann_whitney_exact_with_ties_matches_scipy_permutation():
    a = [0.90, 0.91, 0.91, 0.93, 0.95]
    b = [0.89, 0.90, 0.91, 0.92, 0.92]
    ours = stats.mann_whitney_u(a, b)
    ref = sps.mannwhitneyu(a, b, alternative="two-sided", method=sps.PermutationMethod(n_resamples=np.inf))
    assert ours["u"] == ref.statistic
    assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-9)


@pytest.mark.parametrize("with_ties", [False, True])
def test_mann_whitney_asymptotic_matches_scipy(with_ties):
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.0, 1.0, 25), rng.normal(0.4, 1.0, 30)
    if with_ties:
        a, b = np.round(a, 1), np.round(b, 1)
    ours = stats.mann_whitney_u(a, b, method="asymptotic")
    ref = sps.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
    assert ours["u"] == pytest.approx(ref.statistic)
    assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-10)


def test_mann_whitney_smallest_p_for_five_seeds():
    # Complete separation of 5 vs 5: the two extreme arrangements of C(10, 5) = 252.
    out = stats.mann_whitney_u([6, 7, 8, 9, 10], [1, 2, 3, 4, 5])
    assert out["u"] == 25
    assert out["p"] == pytest.approx(2 / 252)
    assert stats.min_mann_whitney_p(5, 5) == pytest.approx(2 / 252)


def test_holm_textbook_example():
    # m = 4, sorted p: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_nan_out_of_the_family():
    out = stats.holm([0.5, math.nan, 0.4])
    assert out[0] == pytest.approx(0.8) and out[2] == pytest.approx(0.8)
    assert math.isnan(out[1])
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="p-values"):
        stats.holm([1.5])


def test_cohens_d_and_hedges_g_hand_computed():
    a, b = [2.0, 4.0, 6.0], [1.0, 2.0, 3.0]  # means 4 and 2, variances 4 and 1 -> pooled sd sqrt(2.5)
    d = stats.cohens_d(a, b)
    assert d == pytest.approx(2 / math.sqrt(2.5))
    # exact correction for nu = 4: Gamma(2) / (sqrt(2) * Gamma(1.5)) = 1 / (sqrt(2) * sqrt(pi)/2)
    j = 1 / (math.sqrt(2) * math.sqrt(math.pi) / 2)
    assert stats.hedges_g(a, b) == pytest.approx(d * j)
    # and close to the usual approximation 1 - 3/(4 nu - 1) for larger samples
    g = stats.hedges_g(A, B)
    assert g == pytest.approx(stats.cohens_d(A, B) * (1 - 3 / (4 * 9 - 1)), rel=2e-3)


def test_cliffs_delta_equals_rescaled_u():
    u = sps.mannwhitneyu(A, B).statistic
    assert stats.cliffs_delta(A, B) == pytest.approx(2 * u / (len(A) * len(B)) - 1)
    assert stats.cliffs_delta([1, 2], [1, 2]) == 0.0
    assert stats.cliffs_delta([3, 4], [1, 2]) == 1.0


def test_bootstrap_ci_is_seeded_and_matches_scipy_percentile():
    rng = np.random.default_rng(0)
    x = rng.normal(0.9, 0.02, 20)
    ci = stats.bootstrap_ci(x, n_resamples=20_000, seed=1)
    assert ci == stats.bootstrap_ci(x, n_resamples=20_000, seed=1)
    ref = sps.bootstrap((x,), np.mean, method="percentile", n_resamples=20_000, rng=np.random.default_rng(2))
    # Different random resamples: agreement to Monte-Carlo error (~1% of the interval width).
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert ci[0] == pytest.approx(ref.confidence_interval.low, abs=0.03 * width)
    assert ci[1] == pytest.approx(ref.confidence_interval.high, abs=0.03 * width)
    assert ci[0] < x.mean() < ci[1]


def test_bootstrap_ci_degenerate_samples():
    assert stats.bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.5]))
    with pytest.raises(ValueError, match="confidence"):
        stats.bootstrap_ci([1, 2], confidence=95)
    with pytest.raises(ValueError, match="finite"):
        stats.bootstrap_ci([1, float("nan")])


def test_bootstrap_diff_ci_contains_the_difference():
    low, high = stats.bootstrap_diff_ci(A, B)
    assert low < stats.mean(A) - stats.mean(B) < high
    assert low > 0  # the samples barely overlap


def test_summarize_keys_and_values():
    s = stats.summarize([1.0, 2.0, 3.0])
    assert set(s) == {"n", "mean", "std", "ci_low", "ci_high", "median", "min", "max"}
    assert (s["n"], s["mean"], s["std"], s["median"], s["min"], s["max"]) == (3, 2.0, 1.0, 2.0, 1.0, 3.0)
    assert 1.0 <= s["ci_low"] <= 2.0 <= s["ci_high"] <= 3.0


def test_compare_samples_bundles_the_tests():
    out = stats.compare_samples(A, B)
    assert out["welch_p"] == pytest.approx(sps.ttest_ind(A, B, equal_var=False).pvalue)
    assert out["mwu_p"] == pytest.approx(sps.mannwhitneyu(A, B, method="exact").pvalue)
    assert out["mean_diff"] == pytest.approx(np.mean(A) - np.mean(B))
    assert out["n_a"] == 6 and out["n_b"] == 5


def test_steps_to_threshold():
    steps, acc = [10, 20, 30, 40], [0.5, 0.8, 0.79, 0.95]
    assert stats.steps_to_threshold(steps, acc, 0.8) == 20
    assert stats.steps_to_threshold(steps, acc, 0.9) == 40
    assert stats.steps_to_threshold(steps, acc, 0.99) is None
    assert stats.steps_to_threshold([40, 10], [0.9, 0.9], 0.9) == 10  # order by step
    with pytest.raises(ValueError, match="same length"):
        stats.steps_to_threshold([1, 2], [0.1], 0.5)


def test_lr_stability():
    const = stats.lr_stability([1e-3] * 50)
    assert const["variance"] == 0.0 and const["cv"] == 0.0
    varying = stats.lr_stability([1.0, 3.0])
    assert varying["mean"] == 2.0 and varying["variance"] == 1.0 and varying["cv"] == 0.5
    # cv is scale-free
    assert stats.lr_stability([1e-4, 3e-4])["cv"] == pytest.approx(0.5)


def test_lr_sweep_robustness_counts_decades_within_one_point():
    lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    acc = [0.70, 0.955, 0.96, 0.952, 0.40]
    out = stats.lr_sweep_robustness(lrs, acc)
    assert out["reference"] == 0.96
    assert out["n_within"] == 3 and out["n_total"] == 5
    assert out["lrs_within"] == [1e-4, 1e-3, 1e-2]
    assert out["span_decades"] == pytest.approx(2.0)
    # against a better reference (another optimizer's best) fewer qualify; input order does not matter
    out = stats.lr_sweep_robustness(lrs[::-1], acc[::-1], reference=0.965)
    assert out["lrs_within"] == [1e-4, 1e-3] and out["span_decades"] == pytest.approx(1.0)
    # a gap breaks the span
    out = stats.lr_sweep_robustness(lrs, [0.96, 0.5, 0.958, 0.3, 0.2])
    assert out["n_within"] == 2 and out["span_decades"] == 0.0
    with pytest.raises(ValueError, match="> 0"):
        stats.lr_sweep_robustness([0.0], [0.5])


def test_bootstrap_ci_curve_brackets_the_mean_curve():
    curves = [[0.1, 0.5, 0.9], [0.2, 0.6, 0.9], [0.3, 0.4, 0.9]]
    low, high = stats.bootstrap_ci_curve(curves, seed=0)
    means = np.mean(curves, axis=0)
    assert all(lo <= m <= hi for lo, m, hi in zip(low, means, high, strict=True))
    assert low[2] == high[2] == 0.9  # no spread, no width
    low1, high1 = stats.bootstrap_ci_curve([[0.1, 0.2]])
    assert all(math.isnan(v) for v in low1 + high1)
