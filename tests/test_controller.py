"""The controller's concerns, one pure function each (hf_adaopt.core.controller), tested on their own."""

from __future__ import annotations

import math

import pytest
import torch

from hf_adaopt import AdaOpt
from hf_adaopt.core import controller as ctl
from hf_adaopt.core._variants import SETTINGS
from hf_adaopt.core.controller import CONTROLLER_DEFAULTS

SET = {**SETTINGS, "adapt_rate": 0.4, "warmup_steps": 10, "loss_spike_threshold": 4.0}


def _rows(n=2, **override):
    rows = {name: [1.0] * n for name in ctl.STAT_ROWS}
    rows["masked"] = [0.0] * n
    rows.update(override)
    return rows


def test_unpack_names_the_rows_in_their_stacking_order():
    n = 2
    values = [float(i) for i in range(ctl.NUM_STATS * n)] + [7.5, 0.25, 0.5]
    rows, loss, l1 = ctl.unpack(values, n)
    assert rows["grad_sq"] == [0.0, 1.0] and rows["masked"] == [16.0, 17.0] and rows["dir_sq"] == [12.0, 13.0]
    assert loss == 7.5 and l1 == [0.25, 0.5]


@pytest.mark.parametrize("row", ["m_sq", "v_sum", "param_sq", "dir_sq", "grad_check", "masked"])
def test_a_non_finite_state_or_gradient_skips_the_step(row):
    skip, _, reading_ok = ctl.finiteness(_rows(**{row: [1.0, math.nan]}), 1.0, [])
    assert skip and reading_ok


def test_a_non_finite_loss_skips_the_step_and_a_reading_overflow_only_drops_the_reading():
    assert ctl.finiteness(_rows(), math.inf, [])[0]
    assert ctl.finiteness(_rows(after=[math.inf, 0.0]), 1.0, []) == (False, False, False)
    assert ctl.finiteness(_rows(masked=[0.0, 3.0]), 1.0, []) == (False, True, True)


def test_initial_scale_is_polyaks_step_with_a_loss_and_a_share_of_the_weights_rms_without():
    # 3% of the loss 2.0 over sum|g| 4.0
    assert ctl.initial_scale(SET, 1e-3, param_sq=16.0, numel=4.0, loss=2.0, l1=4.0) == pytest.approx(0.015)
    # 1% of rms(theta) = sqrt(16 / 4) = 2
    assert ctl.initial_scale(SET, 1e-3, param_sq=16.0, numel=4.0, loss=None, l1=4.0) == pytest.approx(0.02)
    # all-zero matrices have no scale: the lr
    assert ctl.initial_scale(SET, 1e-3, param_sq=0.0, numel=4.0, loss=None, l1=0.0) == 1e-3
    assert ctl.initial_scale({**SET, "initial_scale": None, "initial_decrease": None}, 5e-4, 16.0, 4.0, 2.0, 4.0) == 5e-4


def test_signal_shares_read_signal_and_noise_from_the_two_emas():
    # one step k=20 past warmup, beta1 0.9: a pure-signal tensor (v_hat == m_hat^2) and a pure-noise one (m ~ 0)
    b1, b2, k = 0.9, 0.999, 20
    bc1, bc2 = 1 - b1**k, 1 - b2**k
    phis, share, momentum_share, raw_share = ctl.signal_shares(
        [k, k], [(b1, b2), (b1, b2)], [10, 30], m_sq=[bc1**2, 0.0], v_sum=[bc2, bc2], warmup=10,
        floors=[0.1, 0.1], powers=[1.0, 1.0])
    assert share == pytest.approx((10 * 1.0 + 30 * 0.1) / 40)
    assert momentum_share == pytest.approx((10 * 1.0 + 30 * 0.1) / 40)
    assert raw_share == pytest.approx(10 * 1.0 / 40)  # the noise model reads the share without the floor
    # the gate moves the step towards the signal at a constant numel-weighted mean
    assert phis[0] > 1.0 > phis[1] and (10 * phis[0] + 30 * phis[1]) / 40 == pytest.approx(1.0)


def test_signal_shares_keep_the_gate_open_during_warmup():
    phis, share, _, _ = ctl.signal_shares([3], [(0.9, 0.999)], [5], [0.0], [1.0], warmup=10, floors=[0.1], powers=[0.5])
    assert phis == [1.0] and share == 1.0


def test_secant_factor_grows_on_a_linear_reading_and_shrinks_on_an_overshoot():
    settings = {**SET, "signal_scaled_target": False, "symmetric_damping": False}
    grow = ctl.secant_factor(settings, secant_after=0.9, secant_before=1.0, t=20, signal_fraction=1.0, rate_fraction=1.0)
    assert grow == pytest.approx((2.0 / (1.0 - ctl.SECANT_R_MAX)) ** 0.4)  # r clamped to 3/4, target -1
    shrink = ctl.secant_factor(settings, -2.0, 1.0, 20, signal_fraction=1.0, rate_fraction=0.5)
    assert shrink == pytest.approx((2.0 / 3.0) ** (0.4 * 0.5))  # damped by the rate's signal share
    assert ctl.secant_factor(settings, -1.0, 1.0, 20, signal_fraction=1.0, rate_fraction=1.0) == pytest.approx(1.0)


def test_secant_factor_holds_during_warmup_and_on_an_empty_reading():
    assert ctl.secant_factor(SET, 0.9, 1.0, t=10, signal_fraction=1.0, rate_fraction=1.0) == 1.0
    assert ctl.secant_factor(SET, 0.9, 0.0, t=20, signal_fraction=1.0, rate_fraction=1.0) == 1.0


def test_secant_ema_divides_each_derivative_by_its_gradients_norm():
    c = {**CONTROLLER_DEFAULTS, "secant_after": 0.0, "secant_before": 0.0, "prev_grad_norm": 2.0}
    out = ctl.secant_ema(c, t=5, beta1=0.9, grad_norm=4.0, after=8.0, before=6.0)
    assert out == {"secant_after": pytest.approx(0.1 * 2.0), "secant_before": pytest.approx(0.1 * 3.0),
                   "prev_grad_norm": 4.0}
    # scaling the gradients (clipping) leaves r = after / before unchanged
    scaled = ctl.secant_ema({**c, "prev_grad_norm": 0.2}, t=5, beta1=0.9, grad_norm=0.4, after=0.8, before=0.6)
    assert scaled["secant_after"] / scaled["secant_before"] == pytest.approx(out["secant_after"] / out["secant_before"])


def test_loss_guard_halves_on_a_spike_sets_a_ceiling_and_rests():
    c = {**CONTROLLER_DEFAULTS, "loss_mean": 1.0, "loss_var": 1e-4, "loss_count": 50, "last_spike": 0}
    d, out = ctl.loss_guard(0.01, 2.0, c, t=50, warmup=10, threshold=4.0)
    assert d == 0.005 and out["scale_ceiling"] == 0.005 and out["loss_spikes"] == 1 and out["last_spike"] == 50
    d, out = ctl.loss_guard(0.01, 2.0, {**c, "last_spike": 45}, t=50, warmup=10, threshold=4.0)  # cooling down
    assert d == 0.01 and "scale_ceiling" not in out
    d, out = ctl.loss_guard(0.01, 1.05, c, t=50, warmup=10, threshold=4.0)  # under the 10% minimum rise
    assert d == 0.01 and out["loss_count"] == 51 and out["loss_mean"] == pytest.approx(1.0 + 0.02 * 0.05)


def test_progress_ceiling_allows_growth_only_as_far_as_the_loss_fell():
    c = dict(CONTROLLER_DEFAULTS)
    d, out = ctl.progress_ceiling(0.01, 4.0, c, beta1=0.9, power=1.0)
    assert d == 0.01 and out["scale_start"] == 0.01 and out["loss_start"] == 4.0
    c.update(out)
    for _ in range(200):  # the loss has halved: d may reach twice its start, not more
        d, out = ctl.progress_ceiling(1.0, 2.0, c, beta1=0.9, power=1.0)
        c.update(out)
    assert d == pytest.approx(0.02)


def test_trust_bound_caps_the_step_and_the_scale_by_the_weights_rms():
    # rms(theta) = 1 over 4 elements; a direction of rms 0.5
    assert ctl.trust_bound(1.0, param_sq=4.0, dir_sq=1.0, numel=4.0) == pytest.approx(0.02)
    assert ctl.trust_bound(1.0, param_sq=4.0, dir_sq=1e-6, numel=4.0) == pytest.approx(0.03)
    assert ctl.trust_bound(1e-4, param_sq=4.0, dir_sq=1.0, numel=4.0) == 1e-4


def test_step_sizes_scale_each_tensor_by_its_groups_lr_ratio():
    groups = [{"lr": 1e-3, "weight_decay": 0.1, "eps": 1e-8}, {"lr": 0.0, "weight_decay": 0.0, "eps": 1e-6},
              {"lr": 5e-4, "weight_decay": 0.0, "eps": 1e-8}]
    ratios = ctl.lr_ratios(groups, reference_lr=1e-3)
    assert ratios == pytest.approx([1.0, 0.0, 0.5]) and ctl.lr_ratios(groups, reference_lr=0.0) == [0.0] * 3
    plan = ctl.step_sizes(groups, [0, 1, 2], d=0.02, phis=[1.0, 1.0, 2.0], ratios=ratios)
    assert plan["step_sizes"] == pytest.approx([0.02, 0.0, 0.02])
    assert plan["decays"] == pytest.approx([0.002, 0.0, 0.0])
    assert plan["dir_weights"] == pytest.approx([1.0, 0.0, 1.0])
    assert plan["eps"] == [1e-8, 1e-6, 1e-8]


def test_cooldown_decays_linearly_to_zero_over_the_last_fifth_of_a_known_horizon():
    assert [ctl.cooldown_factor(t, 10) for t in (1, 8, 9, 10)] == [1.0, 1.0, pytest.approx(2 / 3), pytest.approx(1 / 3)]
    assert ctl.cooldown_factor(10**6, None) == 1.0
    factors = [ctl.cooldown_factor(t, 1000) for t in range(1, 1001)]
    assert factors[799] == 1.0 and factors[800] < 1.0 and factors[-1] == pytest.approx(1 / 201)
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    # a decay that began later (earned_cooldown) runs from its own start to the same end
    assert ctl.cooldown_start(10) == 8 and ctl.cooldown_start(1000) == 800
    assert [ctl.cooldown_factor(t, 10, start=9) for t in (9, 10)] == [1.0, pytest.approx(1 / 2)]


def test_noise_linear_reading_allows_for_the_noise_that_pulls_r_down():
    # w = (1 - 0.9) / (1 - 0.9**20) = 0.1139: a linear loss at signal share 0.03 reads r = 0.03 / (0.03 + w 0.97) = 0.21
    linear = ctl.linear_secant(0.03, 20, 0.9)
    assert linear == pytest.approx(0.03 / (0.03 + 0.1 / (1 - 0.9**20) * 0.97))
    assert ctl.noise_linear_reading(0.9 * linear + 1e-9, 1.0, linear)  # a new head's reading: linear
    assert not ctl.noise_linear_reading(0.85 * linear, 1.0, linear)
    # a full fine-tune's: signal share 0.11, r 0.4, 0.76 of the 0.53 a linear loss would read there
    assert not ctl.noise_linear_reading(0.4, 1.0, ctl.linear_secant(0.11, 20, 0.9))
    # at a signal share of 0.005 a linear loss would read r 0.04: the reading is noise, and is not trusted
    assert not ctl.noise_linear_reading(0.45, 1.0, ctl.linear_secant(0.005, 20, 0.9))
    # no signal share, or no reading before the step: nothing to read
    assert ctl.linear_secant(0.0, 20, 0.9) == 0.0 and not ctl.noise_linear_reading(0.45, 1.0, 0.0)
    assert not ctl.noise_linear_reading(0.45, 0.0, linear)


@pytest.mark.parametrize("rho", [0.5, 0.1, 0.02])
def test_a_noisy_linear_loss_reads_the_r_of_the_noise_model(rho):
    """On a linear loss (no curvature: a perfect reading is r = 1) with gradient noise at signal share rho, the
    secant reads r = rho / (rho + w (1 - rho)), w = 0.1 the last gradient's weight in Adam's momentum: the model
    ``noise_linear_reading`` divides out."""
    torch.manual_seed(0)
    n = 4096
    signal = torch.full((n,), 0.01)
    sigma = math.sqrt(float(signal.pow(2).sum()) * (1.0 - rho) / rho / n)
    p = torch.nn.Parameter(torch.zeros(n))
    opt = AdaOpt([p])
    readings = []
    for t in range(150):
        p.grad = signal + sigma * torch.randn(n)
        opt.step()
        group = opt.param_groups[0]
        if t >= 30:
            readings.append(group["secant_after"] / group["secant_before"])
    assert sum(readings) / len(readings) == pytest.approx(rho / (rho + 0.1 * (1.0 - rho)), abs=0.02)


def test_noise_scaled_start_credits_a_noisy_first_gradient_with_the_floors_share():
    def factor(share, r, linear=None):
        return ctl.noise_scaled_start(share, 0.1, r, 1.0, ctl.linear_secant(share, 10, 0.9) if linear is None
                                      else linear)

    assert factor(0.1, 0.5) == 1.0 and factor(0.6, 0.5) == 1.0  # at or above the floor: as it was
    linear = ctl.linear_secant(0.025, 10, 0.9)
    assert factor(0.025, linear) == pytest.approx(4.0)  # a new head over a frozen body, reading linear: floor / share
    assert factor(0.005, 0.9, linear=0.2) == pytest.approx(10.0)  # at most 1 / floor
    # only as far as the secant reads room: half-way to linear leaves room for 2x, a step past the greedy one none
    assert factor(0.025, 0.5 * linear) == pytest.approx(2.0)
    assert factor(0.025, -0.1) == 1.0
    # a reading that is mostly noise (a linear loss would read under 0.1 there) scales nothing
    assert factor(0.005, 0.9) == 1.0


def test_the_expected_decrease_of_a_sign_step_is_about_the_signal_share():
    """What noise_scaled_start rests on: for a gradient at signal share rho, the first-order decrease of the expected
    loss along sign(g) is about rho times the minibatch's own, sum |g|."""
    torch.manual_seed(0)
    n = 100_000
    for rho in (0.03, 0.1, 0.2):
        signal = torch.ones(n)
        g = signal + math.sqrt(1.0 / rho - 1.0) * torch.randn(n)
        assert float((signal * g.sign()).sum() / g.abs().sum()) == pytest.approx(rho, rel=0.1)


@pytest.mark.parametrize("rho,scaled", [(0.03, True), (0.5, False), (0.0, False)])
def test_polyaks_start_is_scaled_when_the_first_signal_share_is_below_the_floor(rho, scaled):
    """Past warmup, at the first reading of the signal share that can be trusted, a gradient at 0.03 (under the floor,
    0.1) has its start scaled up by about floor / share, once; at 0.5 nothing changes, nor on pure noise, whose
    reading is never trusted."""
    from hf_adaopt.core._variants import build

    torch.manual_seed(0)
    n = 4096
    signal = torch.full((n,), 0.01 if rho else 0.0)
    sigma = math.sqrt(float(signal.pow(2).sum()) * (1.0 - rho) / rho / n) if rho else 0.01
    grads = [signal + sigma * torch.randn(n) for _ in range(30)]
    runs, scales = {}, {}
    for on in (True, False):
        p = torch.nn.Parameter(torch.zeros(n))
        opt = build([p], noise_scaled_start=on)
        scales[on] = []
        for g in grads:
            p.grad = g.clone()
            opt.set_loss(1.0)
            opt.step()
            scales[on].append(opt.param_groups[0]["base_scale"])
        runs[on] = opt.param_groups[0]
    assert runs[True]["start_checked"]
    # the progress ceiling still counts the loss's fall from the start as measured; the scaled start is its floor
    assert runs[True]["scale_start"] == runs[False]["scale_start"]
    differ = [t for t in range(30) if scales[True][t] != scales[False][t]]
    if scaled:
        first = differ[0]
        assert 10 <= first < 20  # past warmup (10 steps), within 2x warmup
        factor = scales[True][first] / scales[False][first]
        assert 2.0 < factor <= 10.0
        assert runs[True]["start_floor"] == pytest.approx(scales[True][first])
    else:
        assert not differ and runs[True]["start_floor"] is None
