"""Statistics for optimizer comparisons: pure functions of numbers (numpy and scipy only).

Everything here takes plain sequences of floats (one value per seed, or one curve per run) and returns
floats, tuples or dicts of floats, so that the report can be rebuilt from stored results alone.

- Summaries: `summarize` (mean, sample std, percentile-bootstrap 95% CI), `bootstrap_ci`, `bootstrap_diff_ci`.
- Two-sample tests: `welch_ttest` (Welch 1947), `mann_whitney_u` (exact permutation distribution for
  small samples, so ties between seeds are handled exactly; normal approximation with tie and continuity
  correction otherwise), `holm` (Holm 1979 step-down adjustment).
- Effect sizes: `cohens_d`, `hedges_g` (small-sample corrected d), `cliffs_delta` (P(a > b) - P(a < b)).
- Training-curve metrics: `steps_to_threshold`, `lr_stability`, `lr_sweep_robustness`.

Bootstrap intervals are seeded, so a report rebuilt from the same results is byte-identical.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import special
from scipy import stats as _sps

# Resamples for bootstrap intervals: the Monte-Carlo error of a 2.5% percentile with 10k resamples is
# ~0.15 percentile points, far below the seed-to-seed spread the intervals describe.
DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
# Above this many label permutations the Mann-Whitney test switches from exact enumeration to the normal
# approximation (10 vs 10 seeds = 184,756 permutations still enumerate in well under a second).
MAX_EXACT_PERMUTATIONS = 200_000


def _as_1d(values: Sequence[float], name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(
            f"{name} must be finite numbers, got {arr.tolist()}; drop or censor the non-finite runs"
        )
    return arr


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; nan for an empty sample."""
    arr = _as_1d(values)
    return float(arr.mean()) if arr.size else math.nan


def std(values: Sequence[float], ddof: int = 1) -> float:
    """Sample standard deviation (ddof=1 by default); nan when there are not more values than `ddof`."""
    arr = _as_1d(values)
    return float(arr.std(ddof=ddof)) if arr.size > ddof else math.nan


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}; e.g. 0.95 for a 95% interval")


def bootstrap_ci(
    values: Sequence[float],
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean.

    Resamples the values with replacement `n_resamples` times (seeded) and returns the (1-c)/2 and
    (1+c)/2 percentiles of the resampled means. With few values (5 seeds) the percentile interval is
    narrower than a t interval; it describes the seeds that were run, not a guarantee. (nan, nan) for
    fewer than two values.
    """
    _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    arr = _as_1d(values)
    if arr.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_resamples, arr.size))
    means = arr[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of mean(a) - mean(b), resampling each sample independently."""
    _check_confidence(confidence)
    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    if xa.size < 2 or xb.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    ma = xa[rng.integers(0, xa.size, size=(n_resamples, xa.size))].mean(axis=1)
    mb = xb[rng.integers(0, xb.size, size=(n_resamples, xb.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ma - mb, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def summarize(
    values: Sequence[float],
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """{"n", "mean", "std", "ci_low", "ci_high", "median", "min", "max"} of one sample (nan where undefined)."""
    arr = _as_1d(values)
    low, high = bootstrap_ci(arr, confidence, n_resamples, seed)
    return {
        "n": int(arr.size),
        "mean": mean(arr),
        "std": std(arr),
        "ci_low": low,
        "ci_high": high,
        "median": float(np.median(arr)) if arr.size else math.nan,
        "min": float(arr.min()) if arr.size else math.nan,
        "max": float(arr.max()) if arr.size else math.nan,
    }


def welch_ttest(a: Sequence[float], b: Sequence[float]) -> dict:
    """Welch's unequal-variance t test of mean(a) == mean(b), two-sided.

    t = (mean_a - mean_b) / sqrt(s_a²/n_a + s_b²/n_b) with Welch–Satterthwaite degrees of freedom.
    Returns {"t", "df", "p"}; all nan when a sample has fewer than 2 values or both have zero variance
    (the test is undefined there; scipy returns nan too).
    """
    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    nan = {"t": math.nan, "df": math.nan, "p": math.nan}
    if xa.size < 2 or xb.size < 2:
        return nan
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    se2 = va + vb
    if se2 == 0.0:
        return nan
    t = (xa.mean() - xb.mean()) / math.sqrt(se2)
    df = se2**2 / (va**2 / (xa.size - 1) + vb**2 / (xb.size - 1))
    p = 2.0 * _sps.t.sf(abs(t), df)
    return {"t": float(t), "df": float(df), "p": float(min(1.0, p))}


def _u_statistic(ranks: np.ndarray, n1: int) -> np.ndarray:
    """U of the first sample from the (mid-)ranks of its members, along the last axis."""
    return ranks.sum(axis=-1) - n1 * (n1 + 1) / 2.0


def mann_whitney_u(a: Sequence[float], b: Sequence[float], method: str = "auto") -> dict:
    """Mann-Whitney U test (Wilcoxon rank-sum), two-sided. Returns {"u", "p", "method"}.

    `u` is U of sample `a` (number of pairs with a > b, ties counting 1/2), as in scipy.
    method "exact": the p-value from the full permutation distribution of U over all
    C(n_a + n_b, n_a) assignments of the pooled mid-ranks; without ties this is the classic exact test
    (equal to scipy's method="exact"), with ties it is the exact conditional test (scipy's
    PermutationMethod). p = min(1, 2 · min(P(U <= u), P(U >= u))).
    method "asymptotic": normal approximation with tie correction and continuity correction (equal to
    scipy's method="asymptotic"). "auto" takes "exact" when there are at most MAX_EXACT_PERMUTATIONS
    permutations. Note: with 5 vs 5 seeds the smallest attainable two-sided p is 2/252 = 0.0079.
    """
    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    n1, n2 = xa.size, xb.size
    if n1 == 0 or n2 == 0:
        return {"u": math.nan, "p": math.nan, "method": "none"}
    if method not in ("auto", "exact", "asymptotic"):
        raise ValueError(f"method must be 'auto', 'exact' or 'asymptotic', got {method!r}")
    pooled = np.concatenate([xa, xb])
    ranks = _sps.rankdata(pooled)  # mid-ranks for ties
    u = float(_u_statistic(ranks[:n1], n1))
    n = n1 + n2
    if method == "auto":
        method = "exact" if math.comb(n, n1) <= MAX_EXACT_PERMUTATIONS else "asymptotic"
    if method == "exact":
        combos = np.fromiter(
            itertools.chain.from_iterable(itertools.combinations(range(n), n1)),
            dtype=np.int64,
            count=math.comb(n, n1) * n1,
        ).reshape(-1, n1)
        u_all = _u_statistic(ranks[combos], n1)
        # Mid-ranks are multiples of 1/2, so U is too: compare with a tolerance far below that grid.
        tol = 1e-9 * max(1.0, abs(u))
        p_ge = np.mean(u_all >= u - tol)
        p_le = np.mean(u_all <= u + tol)
        p = min(1.0, 2.0 * min(p_ge, p_le))
    else:
        mu = n1 * n2 / 2.0
        _, counts = np.unique(pooled, return_counts=True)
        tie_term = float(np.sum(counts.astype(np.float64) ** 3 - counts))
        s = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))))
        if s == 0.0:
            p = 1.0
        else:
            z = (max(u, n1 * n2 - u) - mu - 0.5) / s
            p = min(1.0, 2.0 * float(special.ndtr(-z)))
    return {"u": u, "p": float(p), "method": method}


def min_mann_whitney_p(n1: int, n2: int) -> float:
    """Smallest two-sided exact Mann-Whitney p-value attainable with samples of sizes n1 and n2."""
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm (1979) step-down adjusted p-values, in the input order.

    Sort ascending, multiply the i-th smallest (0-based) by (m - i), take the running maximum, cap at 1.
    Rejecting where adjusted p < alpha controls the family-wise error rate at alpha. nan entries (tests
    that were undefined) are left nan and do not count toward m.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(~np.isnan(p))
    if finite.size == 0:
        return out.tolist()
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    m = finite.size
    order = finite[np.argsort(p[finite], kind="stable")]
    adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean_a - mean_b) / pooled sample std. nan if undefined (n < 2 or zero spread with a difference)."""
    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    if xa.size < 2 or xb.size < 2:
        return math.nan
    dof = xa.size + xb.size - 2
    pooled = math.sqrt(((xa.size - 1) * xa.var(ddof=1) + (xb.size - 1) * xb.var(ddof=1)) / dof)
    diff = float(xa.mean() - xb.mean())
    if pooled == 0.0:
        return 0.0 if diff == 0.0 else math.nan
    return diff / pooled


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's d times Hedges' exact small-sample correction J = Γ(ν/2) / (sqrt(ν/2) Γ((ν-1)/2)), ν = n_a+n_b-2.

    d overstates the population effect for small samples (by ~11% at 5 vs 5); g removes that bias.
    """
    d = cohens_d(a, b)
    if math.isnan(d):
        return math.nan
    dof = len(_as_1d(a)) + len(_as_1d(b)) - 2
    if dof < 2:
        return math.nan
    j = math.exp(special.gammaln(dof / 2) - 0.5 * math.log(dof / 2) - special.gammaln((dof - 1) / 2))
    return d * j


def cliffs_delta(a: Sequence[float], b: Sequence[float]) -> float:
    """Cliff's delta: P(a > b) - P(a < b) over all pairs, in [-1, 1]; equals 2U/(n_a n_b) - 1."""
    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    if xa.size == 0 or xb.size == 0:
        return math.nan
    return float(np.sign(xa[:, None] - xb[None, :]).mean())


def compare_samples(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """All two-sample statistics of a vs b: mean difference with bootstrap CI, Welch, Mann-Whitney, effect sizes."""
    w = welch_ttest(a, b)
    u = mann_whitney_u(a, b)
    low, high = bootstrap_diff_ci(a, b, confidence, n_resamples, seed)
    return {
        "n_a": len(_as_1d(a)),
        "n_b": len(_as_1d(b)),
        "mean_diff": mean(a) - mean(b),
        "diff_ci_low": low,
        "diff_ci_high": high,
        "welch_t": w["t"],
        "welch_df": w["df"],
        "welch_p": w["p"],
        "mwu_u": u["u"],
        "mwu_p": u["p"],
        "mwu_method": u["method"],
        "cohens_d": cohens_d(a, b),
        "hedges_g": hedges_g(a, b),
        "cliffs_delta": cliffs_delta(a, b),
    }


def steps_to_threshold(steps: Sequence[float], values: Sequence[float], threshold: float) -> float | None:
    """The first x in `steps` (in order) whose value reaches `threshold` (value >= threshold); None if never.

    Evaluations are discrete, so the answer is at the resolution of the evaluation interval. Pass epochs
    instead of steps for epochs-to-threshold.
    """
    xs = np.asarray(steps, dtype=np.float64).reshape(-1)
    ys = np.asarray(values, dtype=np.float64).reshape(-1)
    if xs.size != ys.size:
        raise ValueError(f"steps and values must have the same length, got {xs.size} and {ys.size}")
    order = np.argsort(xs, kind="stable")
    hit = np.flatnonzero(ys[order] >= threshold)
    return float(xs[order][hit[0]]) if hit.size else None


def lr_stability(lrs: Sequence[float]) -> dict:
    """How much the (effective) learning rate moves over training.

    {"mean", "variance", "std", "cv", "min", "max", "n"}: population variance/std over the recorded
    optimizer steps and the coefficient of variation cv = std / mean (scale-free, comparable across
    optimizers whose lr differs by decades). A constant-lr optimizer has variance 0 and cv 0 by construction.
    """
    arr = _as_1d(lrs, "lrs")
    if arr.size == 0:
        nan = math.nan
        return {"mean": nan, "variance": nan, "std": nan, "cv": nan, "min": nan, "max": nan, "n": 0}
    m = float(arr.mean())
    # exactly 0 for a constant lr (numpy's two-pass variance leaves ~1e-37 of rounding otherwise)
    sd = 0.0 if arr.min() == arr.max() else float(arr.std())
    return {
        "mean": m,
        "variance": sd * sd if sd == 0.0 else float(arr.var()),
        "std": sd,
        "cv": sd / abs(m) if m != 0.0 else (0.0 if sd == 0.0 else math.nan),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


def lr_sweep_robustness(
    learning_rates: Sequence[float],
    scores: Sequence[float],
    reference: float | None = None,
    tolerance: float = 0.01,
) -> dict:
    """How many initial learning rates of a sweep end within `tolerance` of the best result.

    `scores[i]` is the (mean) final accuracy at `learning_rates[i]`; `reference` is the best result to
    compare with (default: the best of these scores; pass the best over all optimizers to compare
    optimizers fairly). tolerance 0.01 = 1 accuracy point. Returns {"reference", "n_within", "n_total",
    "lrs_within", "span_decades"}: span_decades = log10(max/min) of the longest run of consecutive sweep
    values that are all within tolerance (0 when only one is; a decade-spaced sweep with k consecutive good
    values spans k-1 decades).
    """
    lrs = _as_1d(learning_rates, "learning_rates")
    sc = _as_1d(scores, "scores")
    if lrs.size != sc.size:
        raise ValueError(f"learning_rates and scores must have the same length, got {lrs.size} and {sc.size}")
    if np.any(lrs <= 0):
        raise ValueError(f"learning rates must be > 0, got {lrs.tolist()}")
    if lrs.size == 0:
        return {"reference": math.nan, "n_within": 0, "n_total": 0, "lrs_within": [], "span_decades": 0.0}
    order = np.argsort(lrs)
    lrs, sc = lrs[order], sc[order]
    ref = float(sc.max()) if reference is None else float(reference)
    within = sc >= ref - tolerance - 1e-12
    best_span, start = 0.0, None
    for i, ok in enumerate(within):
        if ok and start is None:
            start = i
        if ok:
            best_span = max(best_span, math.log10(lrs[i] / lrs[start]))
        else:
            start = None
    return {
        "reference": ref,
        "n_within": int(within.sum()),
        "n_total": int(lrs.size),
        "lrs_within": lrs[within].tolist(),
        "span_decades": float(best_span),
    }


def bootstrap_ci_curve(
    curves: Sequence[Sequence[float]],
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = 2_000,
    seed: int = 0,
) -> tuple[list[float], list[float]]:
    """Pointwise percentile-bootstrap CI of the mean curve over runs (rows: runs, columns: aligned steps).

    The same resampled set of runs is used for every column, as a run's curve is one observation.
    Returns (low, high) lists, nan where there are fewer than two runs.
    """
    _check_confidence(confidence)
    mat = np.asarray(curves, dtype=np.float64)
    if mat.ndim != 2:
        raise ValueError(f"curves must be a 2-d array (runs x steps), got shape {mat.shape}")
    if mat.shape[0] < 2:
        nan = [math.nan] * mat.shape[1]
        return nan, list(nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, mat.shape[0], size=(n_resamples, mat.shape[0]))
    means = mat[idx].mean(axis=1)  # (n_resamples, steps)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return low.tolist(), high.tolist()
