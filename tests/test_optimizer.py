"""AdaOpt as a torch optimizer: the math (fast path == reference), the contract, and that it trains."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from hf_adaopt import AdaOpt
from hf_adaopt.core import functional
from hf_adaopt.core._variants import build as build_variant

# One tolerance for "the foreach path equals the reference" in float64.
PARITY_ATOL = 1e-10


def _toy_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3))
    return model.to(dtype)


def _toy_data(n=256, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 3, generator=g)
    y = (x @ w).argmax(1)
    return x.to(dtype), y


def _train(model, opt, x, y, steps, batch=32, feed_loss=True, seed=2):
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]).float(), y[idx])
        opt.zero_grad()
        loss.backward()
        if feed_loss:
            opt.set_loss(loss)
        opt.step()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------------------------------------ it trains
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_falls_on_a_small_problem(dtype):
    model = _toy_model(dtype)
    x, y = _toy_data(dtype=dtype)
    opt = AdaOpt(model.parameters())
    losses = _train(model, opt, x, y, steps=200)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert all(math.isfinite(v) for v in opt.diagnostics().values())


def test_bf16_parameters_keep_fp32_state():
    model = _toy_model(torch.bfloat16)
    x, y = _toy_data(dtype=torch.bfloat16)
    opt = AdaOpt(model.parameters())
    _train(model, opt, x, y, steps=3)
    for state in opt.state.values():
        for key in ("exp_avg", "exp_avg_sq", "direction", "pre"):
            assert state[key].dtype == torch.float32, key


def test_bf16_state_stays_fp32_and_exact_after_load_state_dict():
    model = _toy_model(torch.bfloat16)
    x, y = _toy_data(dtype=torch.bfloat16)
    opt = AdaOpt(model.parameters())
    _train(model, opt, x, y, steps=15)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    opt2 = AdaOpt(model.parameters())
    opt2.load_state_dict(saved)
    for p in model.parameters():
        for key in ("exp_avg", "exp_avg_sq", "direction"):
            assert opt2.state[p][key].dtype == torch.float32
            assert torch.equal(opt2.state[p][key], opt.state[p][key])


# ----------------------------------------------------------------------------- fast path == reference
def _parity_setup(foreach):
    torch.manual_seed(0)
    model = nn.ModuleDict({
        "big": nn.Linear(96, 64),  # 6144 weights > SMALL_TENSOR: exercises the block subsample
        "small": nn.Linear(64, 4),
        "frozen": nn.Linear(4, 4),
        "unused": nn.Linear(4, 4),  # gets no gradient: grad stays None
    }).double()
    empty = nn.Parameter(torch.zeros(0, dtype=torch.float64))  # zero-size parameter
    model.frozen.requires_grad_(False)
    groups = [
        {"params": [model.big.weight, model.small.weight, model.unused.weight, empty], "weight_decay": 0.1},
        {"params": [model.big.bias, model.small.bias, model.unused.bias, *model.frozen.parameters()],
         "weight_decay": 0.0, "lr": 2e-3},
    ]
    opt = build_variant(groups, lr=1e-3, foreach=foreach, warmup_steps=3, variance_power=0.5)  # every factor on
    return model, empty, opt


def _parity_run(foreach, steps=25):
    model, empty, opt = _parity_setup(foreach)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(128, 96, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (128,), generator=g)
    for _ in range(steps):
        idx = torch.randint(0, 128, (16,), generator=g)
        out = model["small"](torch.tanh(model["big"](x[idx])))
        out = model["frozen"](out) + 0.0 * empty.sum()
        loss = nn.functional.cross_entropy(out, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.set_loss(loss)
        opt.step()
    return model, opt


def test_foreach_path_equals_reference_in_float64():
    model_ref, opt_ref = _parity_run(foreach=False)
    model_fast, opt_fast = _parity_run(foreach=True)
    for (name, p_ref), p_fast in zip(model_ref.named_parameters(), model_fast.parameters()):
        torch.testing.assert_close(p_fast, p_ref, atol=PARITY_ATOL, rtol=0, msg=name)
    for key, value in opt_ref.diagnostics().items():
        assert opt_fast.diagnostics()[key] == pytest.approx(value, abs=PARITY_ATOL), key
    # the controller really moved during the run (the parity is not that of two no-ops)
    assert opt_ref.diagnostics()["base_scale"] != pytest.approx(1e-3, rel=1e-3)
    assert model_ref.unused.weight.grad is None and model_ref.unused.weight not in opt_ref.state
    assert all(p not in opt_ref.state for p in model_ref.frozen.parameters())


# --------------------------------------------------------------------------------- the step's contract
def test_state_dict_round_trip_continues_in_lockstep():
    x, y = _toy_data()
    model_a = _toy_model()
    opt_a = AdaOpt(model_a.parameters(), weight_decay=0.01)
    _train(model_a, opt_a, x, y, steps=30, seed=5)

    buf = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # what Trainer does with optimizer.pt
    model_b = _toy_model(seed=99)
    model_b.load_state_dict(saved["model"])
    opt_b = AdaOpt(model_b.parameters(), weight_decay=0.01)
    opt_b.load_state_dict(saved["opt"])

    _train(model_a, opt_a, x, y, steps=20, seed=6)
    _train(model_b, opt_b, x, y, steps=20, seed=6)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    assert opt_a.diagnostics() == opt_b.diagnostics()


def test_state_dict_holds_only_tensors_and_plain_python_values():
    model = _toy_model()
    x, y = _toy_data()
    opt = AdaOpt(model.parameters())
    _train(model, opt, x, y, steps=12)

    def check(value):
        if isinstance(value, dict):
            for k, v in value.items():
                check(k)
                check(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                check(v)
        else:
            assert value is None or isinstance(value, (torch.Tensor, bool, int, float, str)), type(value)

    check(opt.state_dict())


def test_zero_gradients_give_no_nan():
    model = _toy_model()
    opt = AdaOpt(model.parameters())
    before = copy.deepcopy(model.state_dict())
    for _ in range(20):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    for name, p in model.state_dict().items():
        assert torch.isfinite(p).all(), name
        assert torch.equal(p, before[name]), name
    assert all(math.isfinite(v) for v in opt.diagnostics().values())


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_skips_the_step_without_poisoning(foreach, bad):
    torch.manual_seed(0)
    model = nn.Linear(100, 100)  # 10,000 weights: the bad element sits outside the subsample
    opt = AdaOpt(model.parameters(), foreach=foreach)
    x = torch.randn(16, 100)
    for _ in range(5):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    params = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(opt.state_dict())

    opt.zero_grad()
    model(x).pow(2).mean().backward()
    model.weight.grad[7, 3] = bad  # index 703: in the block [512, 768) not sampled (blocks of 16 per 256)
    opt.step()

    assert opt.diagnostics()["skipped_steps"] == 1
    for name, p in model.state_dict().items():
        assert torch.equal(p, params[name]), name
    for pid, s in opt.state_dict()["state"].items():
        for key, value in s.items():
            ref = state["state"][pid][key]
            assert torch.equal(value, ref) if isinstance(value, torch.Tensor) else value == ref, key
    # and the next finite step proceeds
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.weight, params["weight"])


def test_a_frozen_noisy_body_does_not_set_the_heads_signal_share():
    """Each tensor's reading counts in proportion to its group's lr ratio: a large body whose gradient is pure noise,
    frozen at lr 0, leaves the signal share the head's (a clean gradient: share ~ 1), as it is without the body;
    counted by size alone the body's noise would set it (~0) and damp the head's step."""
    body_lr = 0.0
    torch.manual_seed(0)
    head, body = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(300, 300))
    alone = build_variant([nn.Parameter(head.detach().clone())], lr=1e-3)
    both = build_variant([{"params": [head]}, {"params": [body], "lr": body_lr}], lr=1e-3)
    direction = torch.randn(4, 4)
    for _ in range(30):
        for opt in (alone, both):
            opt.zero_grad()
            for p in opt.param_groups[0]["params"]:
                p.grad = direction.clone()
        body.grad = torch.randn(300, 300)
        alone.step()
        both.step()
    assert alone.diagnostics()["variance_factor"] > 0.9
    assert both.diagnostics()["variance_factor"] == pytest.approx(alone.diagnostics()["variance_factor"], abs=0.05)


def test_group_with_lr_zero_stays_unchanged():
    model = _toy_model()
    x, y = _toy_data()
    frozen, moving = list(model[0].parameters()), [p for m in (model[2], model[4]) for p in m.parameters()]
    opt = AdaOpt([{"params": frozen, "lr": 0.0}, {"params": moving}], lr=1e-3, weight_decay=0.1)
    before = [p.detach().clone() for p in frozen]
    moving_before = [p.detach().clone() for p in moving]
    _train(model, opt, x, y, steps=15)
    assert all(torch.equal(p, b) for p, b in zip(frozen, before))
    assert not all(torch.equal(p, b) for p, b in zip(moving, moving_before))


@pytest.mark.parametrize("foreach", [False, True])
def test_scheduler_scales_the_step(foreach):
    """group["lr"] is a multiplier of the applied step: from the same state and the same gradient, the step
    taken with LambdaLR at 0.5 moves every parameter (decay included) half as far as the step without it."""
    model = _toy_model(torch.float64)  # float64: the parameters' rounding stays far below the step
    x, y = _toy_data(dtype=torch.float64)
    opt = AdaOpt(model.parameters(), lr=1e-3, weight_decay=0.1, foreach=foreach)
    _train(model, opt, x, y, steps=25)
    halved_model, halved = copy.deepcopy((model, opt))  # one deepcopy: the copy steps its own parameters
    torch.optim.lr_scheduler.LambdaLR(halved, lambda step: 0.5)
    assert [g["lr"] for g in halved.param_groups] == [5e-4]
    moves = []
    for m, o in ((model, opt), (halved_model, halved)):
        before = [p.detach().clone() for p in m.parameters()]
        _train(m, o, x, y, steps=1, seed=3)
        moves.append([p.detach() - b for p, b in zip(m.parameters(), before)])
    assert all(full.abs().max() > 0 for full in moves[0])
    for full, half in zip(*moves):
        torch.testing.assert_close(half, 0.5 * full, rtol=1e-9, atol=1e-15)
    assert halved.diagnostics()["effective_lr"] == pytest.approx(0.5 * opt.diagnostics()["effective_lr"])


def test_closure_is_called_and_its_loss_returned():
    model = _toy_model()
    x, y = _toy_data()
    opt = AdaOpt(model.parameters())
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(30)]
    assert len(calls) == 30
    assert losses[-1] < losses[0]
    assert opt.param_groups[0]["loss_count"] == 30  # the closure's loss fed the loss guard


def test_one_host_sync_per_step(monkeypatch):
    model = _toy_model()
    x, y = _toy_data()
    opt = AdaOpt(model.parameters())
    _train(model, opt, x, y, steps=2)
    syncs = []
    real_tolist = torch.Tensor.tolist

    def counting_tolist(self):
        syncs.append(1)
        return real_tolist(self)

    def forbidden(self, *a, **k):
        raise AssertionError("per-tensor host sync in the optimizer step")

    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.set_loss(loss.detach())
    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    monkeypatch.setattr(torch.Tensor, "__float__", forbidden)
    opt.step()
    assert len(syncs) == 1


def test_state_memory_is_within_adamw_budget_plus_subsample():
    model = nn.Sequential(nn.Linear(512, 2048), nn.Linear(2048, 512), nn.LayerNorm(512))
    opt = AdaOpt(model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    state_bytes = sum(v.numel() * v.element_size() for s in opt.state.values()
                      for v in s.values() if isinstance(v, torch.Tensor))
    n = sum(p.numel() for p in model.parameters())
    assert state_bytes / n <= 8.8


def _quadratic_run(lr, start_distance, steps):
    """AdaOpt with `lr` as its first step (initial_scale=None, and no loss fed: no Polyak start), so that a test
    can start it too small or too large; with the default start every lr would run the same."""
    torch.manual_seed(0)
    target = torch.full((64,), 5.0)  # minimum away from 0: the trust bound scales with |theta|
    w = nn.Parameter(target + start_distance * torch.randn(64))
    h = torch.linspace(0.5, 2.0, 64)
    opt = build_variant([w], lr=lr, warmup_steps=2, initial_scale=None)
    factors, losses = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = (0.5 * h * (w - target) ** 2).sum()
        loss.backward()
        opt.step()
        factors.append(opt.diagnostics()["landscape_factor"])
        losses.append(loss.item())
    return factors, losses, opt


def test_landscape_factor_grows_a_too_small_step_at_the_capped_rate():
    """Far from the minimum the loss is linear along a tiny step: the secant reads r ~ 1 and d grows, by at most
    window_growth (4x) per 1 / (1 - beta1) steps, the readings' memory (v8: faster growth outran the readings)."""
    factors, _, opt = _quadratic_run(1e-4, start_distance=3.0, steps=40)
    assert factors[3:8] == pytest.approx([4.0 ** 0.1] * 5)
    assert opt.diagnostics()["base_scale"] > 100 * 1e-4


def test_uncapped_secant_grows_as_fast_as_its_reading_says():
    """v7b's secant (capped_growth off) grows 1.5x and more per step on the same problem."""
    torch.manual_seed(0)
    target = torch.full((64,), 5.0)
    w = nn.Parameter(target + 3.0 * torch.randn(64))
    h = torch.linspace(0.5, 2.0, 64)
    opt = build_variant([w], variant="v7b", lr=1e-4, warmup_steps=2, initial_scale=None)
    factors = []
    for _ in range(8):
        opt.zero_grad()
        (0.5 * h * (w - target) ** 2).sum().backward()
        opt.step()
        factors.append(opt.diagnostics()["landscape_factor"])
    assert min(factors[3:8]) > 1.5


def test_landscape_factor_shrinks_an_overshooting_step():
    """Starting 0.01 from the minimum with lr 0.1, every step overshoots: the secant reads r < 0."""
    factors, _, opt = _quadratic_run(0.1, start_distance=0.01, steps=40)
    assert max(factors[2:]) < 1.0
    assert opt.diagnostics()["base_scale"] < 0.7 * 0.1  # below its start, lr


def test_a_loss_spike_halves_the_step_and_caps_it_from_then_on():
    """The loss guard: a spike halves the base scale, and the step never grows past that value again (the
    secant's growth would otherwise climb straight back into the step that made the loss spike)."""
    torch.manual_seed(0)
    w = nn.Parameter(5.0 + 3.0 * torch.randn(64))  # far from the minimum: the secant keeps growing the step
    opt = build_variant([w], warmup_steps=2, progress_power=None)  # the loss guard alone (a flat loss allows no growth)
    scales = []
    for t in range(40):
        opt.zero_grad()
        (0.5 * (w - 5.0) ** 2).sum().backward()
        opt.set_loss(10.0 if t == 20 else 1.0 + 0.01 * (t % 2))  # a flat loss with one spike at step 21
        before = opt.param_groups[0]["base_scale"]
        opt.step()
        scales.append(opt.param_groups[0]["base_scale"])
        if t == 20:
            assert opt.diagnostics()["loss_spikes"] == 1
            assert scales[-1] <= 0.5 * before * opt.diagnostics()["landscape_factor"] * (1 + 1e-12)
    ceiling = opt.param_groups[0]["scale_ceiling"]
    assert ceiling == pytest.approx(scales[20])
    assert max(scales[20:]) <= ceiling and max(scales[:20]) > ceiling  # it had grown past it before the spike


def test_the_ceiling_yields_to_a_linear_reading_and_holds_on_noise():
    """ceiling_yields (the default): where the secant reads the loss as linear along the step (far from the minimum
    of a quadratic), the step grows past the progress ceiling on a flat loss, and the ceiling moves up with it; where
    the gradient is noise (r ~ 0) the ceiling holds the step at its start."""
    torch.manual_seed(0)
    far = nn.Parameter(5.0 + 3.0 * torch.randn(64))
    noisy = nn.Parameter(torch.randn(64))
    linear, noise = build_variant([far], warmup_steps=2), build_variant([noisy], warmup_steps=2)
    starts = {}
    for t in range(40):
        for opt in (linear, noise):
            opt.zero_grad()
            opt.set_loss(1.0)  # flat: the loss earns no growth
        (0.5 * (far - 5.0) ** 2).sum().backward()
        noisy.grad = torch.randn(64)
        for opt in (linear, noise):
            opt.step()
            starts.setdefault(id(opt), opt.param_groups[0]["base_scale"])
    grown = linear.param_groups[0]
    assert grown["ceiling_yields"] and grown["base_scale"] > 4 * starts[id(linear)]
    assert grown["scale_start"] == pytest.approx(grown["base_scale"], rel=0.5)  # the ceiling followed the step up
    held = noise.param_groups[0]
    assert held["base_scale"] <= starts[id(noise)] * (1 + 1e-12)
    assert held["scale_start"] == starts[id(noise)]


@pytest.mark.parametrize("corrected", [True, False])
def test_the_ceiling_yields_to_a_reading_linear_within_its_noise(corrected):
    """noise_corrected_yield (v12b, off by default): a linear loss whose gradient is 97% noise, as a new head's over a
    frozen body, reads r ~ 0.24, under the 1/2 of the plain test; allowed for that noise, the reading is linear, and
    without a loss (plain) the step grows past its start. Without the correction it is held there."""
    torch.manual_seed(0)
    n, rho = 1024, 0.03
    signal = torch.full((n,), 0.01)
    sigma = math.sqrt(float(signal.pow(2).sum()) * (1.0 - rho) / rho / n)
    p = nn.Parameter(torch.zeros(n))
    opt = build_variant([p], noise_corrected_yield=corrected, noise_scaled_start=False)  # the yield alone
    scales = []
    for _ in range(100):
        p.grad = signal + sigma * torch.randn(n)
        opt.step()
        scales.append(opt.param_groups[0]["base_scale"])
    if corrected:
        assert scales[-1] > 4 * scales[0]
    else:
        assert max(scales) <= scales[0] * (1 + 1e-12)


@pytest.mark.parametrize("fall", [1.0, 4.0])
def test_the_step_grows_past_its_start_only_as_far_as_the_loss_has_fallen(fall):
    """progress_power 1 without ceiling_yields: however hard the secant pushes, d <= d0 * first loss / recent loss
    (EMA over beta1)."""
    torch.manual_seed(0)
    w = nn.Parameter(5.0 + 3.0 * torch.randn(64))  # far from the minimum: the secant keeps growing the step
    free = build_variant([w], warmup_steps=2, progress_power=None)
    held = build_variant([nn.Parameter(w.detach().clone())], warmup_steps=2, progress_power=1.0, ceiling_yields=False)
    for opt in (free, held):
        p = opt.param_groups[0]["params"][0]
        for t in range(40):
            opt.zero_grad()
            (0.5 * (p - 5.0) ** 2).sum().backward()
            opt.set_loss(1.0 / fall if t >= 5 else 1.0)  # the loss falls by `fall` at step 6, then stays
            opt.step()
    start = held.param_groups[0]["scale_start"]
    assert free.param_groups[0]["base_scale"] > 2 * fall * start  # the secant alone grows far past the start
    # held at the ceiling, which the EMA of the loss has (nearly) reached by step 40
    assert 0.9 * fall * start <= held.param_groups[0]["base_scale"] <= fall * start * (1 + 1e-12)


def test_initial_decrease_sets_the_first_step_from_the_loss_whatever_the_lr():
    # Polyak's step for Adam's first direction sign(g): the first-order decrease d * sum|g| is 3% of the loss
    x, y = _toy_data()
    firsts = []
    for lr in (1e-5, 1e-1):
        model = _toy_model()
        opt = build_variant(model.parameters(), lr=lr, initial_decrease=0.03)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        l1 = sum(float(p.grad.abs().sum()) for p in model.parameters())
        opt.set_loss(loss.detach())
        opt.step()
        firsts.append(opt.diagnostics()["effective_lr"])
        assert firsts[-1] == pytest.approx(0.03 * loss.item() / l1, rel=1e-5)
    assert firsts[0] == firsts[1]


def test_a_first_step_without_a_loss_says_how_to_give_one(caplog):
    x, y = _toy_data()
    for feed in (True, False):
        model = _toy_model()
        opt = AdaOpt(model.parameters())
        caplog.clear()
        with caplog.at_level("WARNING", logger="hf_adaopt.core.optimizer"):
            _train(model, opt, x, y, steps=2, feed_loss=feed)
        warned = [r.getMessage() for r in caplog.records if "no loss for the first step" in r.getMessage()]
        assert len(warned) == (0 if feed else 1)  # once, at the first step only
    assert "AdaOptCallback" in warned[0] and "set_loss" in warned[0]


def test_without_a_loss_the_first_step_is_polyaks_for_the_assumed_loss():
    """The plain path (no set_loss, no closure): the same start as fed, 3% of a loss of 1 (assumed_loss) over
    sum |g|; the progress ceiling holds it there (no fall of the loss), so it grows only on linear readings."""
    model = _toy_model()
    x, y = _toy_data()
    opt = AdaOpt(model.parameters())
    nn.functional.cross_entropy(model(x), y).backward()
    l1 = sum(float(p.grad.abs().sum()) for p in model.parameters())
    opt.step()
    assert opt.param_groups[0]["assumed_loss"] == 1.0
    assert opt.diagnostics()["effective_lr"] == pytest.approx(0.03 * 1.0 / l1, rel=1e-5)
    assert opt.param_groups[0]["scale_start"] == opt.param_groups[0]["base_scale"]
    assert opt.param_groups[0]["loss_count"] == 0  # the loss guard reads real losses only


def test_without_a_loss_and_assumed_loss_none_the_first_step_is_a_fraction_of_the_weights_rms():
    model = _toy_model()
    x, y = _toy_data()
    opt = build_variant(model.parameters(), initial_decrease=0.03, initial_scale=1e-2, assumed_loss=None)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # no set_loss, no closure: nothing to take Polyak's step from
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    rms = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in matrices) / sum(p.numel() for p in matrices))
    # the weights moved by one step since; the start was read before it
    assert opt.diagnostics()["effective_lr"] == pytest.approx(1e-2 * rms, rel=1e-2)


@pytest.mark.parametrize("lr", [1e-4, 1e-2, 1e-1])
def test_deterministic_quadratic_converges_from_any_initial_lr(lr):
    """From a first step of lr (1e-4: a thousandth of the good step; 0.1 the good step's order) the controller
    finds the step: at lr 1e-4 without adaptation the loss falls by 1.4% in 300 steps."""
    _, losses, _ = _quadratic_run(lr, start_distance=3.0, steps=300)
    assert losses[-1] < 1e-4 * losses[0]


def test_repr_and_diagnostics():
    model = _toy_model()
    opt = AdaOpt([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 1e-4}], lr=3e-4)
    assert set(opt.diagnostics()) == {"effective_lr", "variance_factor", "landscape_factor",
                                      "base_scale", "skipped_steps", "loss_spikes"}
    assert opt.diagnostics()["effective_lr"] == 3e-4
    x, y = _toy_data()
    _train(model, opt, x, y, steps=15)
    # after steps: group 0's numbers as the controller wrote them, each under its own name
    g0 = opt.param_groups[0]
    assert opt.diagnostics() == {k: g0[k] for k in ("effective_lr", "variance_factor", "landscape_factor",
                                                    "base_scale", "skipped_steps", "loss_spikes")}
    assert g0["variance_factor"] != g0["landscape_factor"]
    assert opt.param_groups[1]["effective_lr"] == pytest.approx(g0["effective_lr"] / 3)
    text = repr(opt)
    assert text.startswith("AdaOpt (") and "lr: 0.0003" in text and "adapt_rate" in text


def test_param_group_added_later_joins_the_controller():
    model = _toy_model()
    x, y = _toy_data()
    opt = AdaOpt(list(model[0].parameters()) + list(model[2].parameters()))
    _train(model, opt, x, y, steps=20)
    opt.add_param_group({"params": list(model[4].parameters())})
    assert opt.param_groups[1]["base_scale"] == opt.param_groups[0]["base_scale"]
    _train(model, opt, x, y, steps=5)
    assert opt.param_groups[1]["base_scale"] == opt.param_groups[0]["base_scale"]


def test_empty_optimizer_step_is_a_no_op():
    p = nn.Parameter(torch.ones(3))
    opt = AdaOpt([p])
    assert opt.step() is None  # no gradients at all
    assert torch.equal(p, torch.ones(3))


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -1.0}, "Invalid learning rate: -1.0"),
        ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1: -0.1"),
        ({"eps": 0.0}, "Invalid epsilon value: 0.0"),
        ({"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
        ({"adapt_rate": 2.0}, "Invalid adapt_rate value: 2.0"),
        ({"variance_power": -1.0}, "Invalid variance_power value: -1.0"),
        ({"min_variance_factor": 0.0}, "Invalid min_variance_factor value: 0.0"),
        ({"warmup_steps": -3}, "Invalid warmup_steps value: -3"),
        ({"loss_spike_threshold": 0.0}, "Invalid loss_spike_threshold value: 0.0"),
        ({"initial_decrease": 1.5}, "Invalid initial_decrease value: 1.5"),
        ({"progress_power": -1.0}, "Invalid progress_power value: -1.0"),
        ({"progress_power": float("nan")}, "Invalid progress_power value: nan"),
        ({"assumed_loss": 0.0}, "Invalid assumed_loss value: 0.0"),
    ],
)
def test_invalid_arguments_name_the_bad_value(kwargs, message):
    # the private settings (variance_power, initial_decrease, progress_power) are checked by the variants' builder
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_variant(_toy_model().parameters(), **kwargs)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="momentum"):
        AdaOpt(_toy_model().parameters(), momentum=0.9)


def test_sparse_gradients_get_a_clear_error():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = AdaOpt(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


def test_set_loss_rejects_non_scalars():
    opt = AdaOpt(_toy_model().parameters())
    with pytest.raises(ValueError, match="scalar loss"):
        opt.set_loss(torch.ones(3))


def test_subsample_is_a_fixed_sixteenth_of_large_tensors():
    t = torch.arange(10_000.0)
    sub = functional.subsample(t)
    assert sub.numel() == (10_000 // 256) * 16
    assert sub[0, :3].tolist() == [0.0, 1.0, 2.0] and sub[1, 0].item() == 256.0
    small = torch.arange(100.0)
    assert torch.equal(functional.subsample(small), small)


def test_import_needs_torch_only():
    """`import hf_adaopt` and a step work when transformers, accelerate, datasets and the Hub are absent."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for m in ('transformers', 'accelerate', 'datasets', 'huggingface_hub', 'evaluate'): sys.modules[m] = None\n"
        "import torch, hf_adaopt\n"
        "p = torch.nn.Parameter(torch.ones(3)); opt = hf_adaopt.AdaOpt([p]); p.grad = torch.ones(3); opt.step()\n"
        "print(opt.diagnostics()['effective_lr'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip()) == pytest.approx(1e-2)  # the first step: 1% of the weights' RMS (1)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_with_adaptation_switched_off_adaopt_is_adamw_step_for_step(foreach, weight_decay):
    """The controller's oracle: no secant (adapt_rate 0), no trust bounds, no loss guard, no progress ceiling and
    the user's lr as the start -- AdaOpt must then be torch's AdamW exactly (float64, 30 steps, two groups)."""
    model_a, model_b = _toy_model(torch.float64), _toy_model(torch.float64)
    x, y = _toy_data(dtype=torch.float64)

    def groups(model):
        return [{"params": [p for p in model.parameters() if p.dim() > 1]},
                {"params": [p for p in model.parameters() if p.dim() == 1], "weight_decay": 0.0}]

    ada = build_variant(groups(model_a), lr=3e-3, weight_decay=weight_decay, adapt_rate=0.0, trust_bounds=False,
                 loss_spike_threshold=None, initial_scale=None, initial_decrease=None, progress_power=None,
                 foreach=foreach)
    ref = torch.optim.AdamW(groups(model_b), lr=3e-3, weight_decay=weight_decay, foreach=foreach)
    _train(model_a, ada, x, y, steps=30)
    _train(model_b, ref, x, y, steps=30, feed_loss=False)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)
    assert ada.diagnostics()["effective_lr"] == 3e-3


def test_total_steps_decays_the_applied_step_and_holds_the_controllers():
    model = _toy_model()
    x, y = _toy_data()
    # the planned cooldown (the default's earned one begins at the same step or later: tested below)
    opt = build_variant(model.parameters(), total_steps=50, foreach=False, earned_cooldown=False)
    lrs, scales = [], []
    for _ in range(50):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lrs.append(opt.diagnostics()["effective_lr"])
        scales.append(opt.diagnostics()["base_scale"])
    assert all(s == scales[39] for s in scales[40:])  # held through the decay
    assert lrs[40:] == pytest.approx([scales[39] * (50 + 1 - t) / 11 for t in range(41, 51)])


def _regression_run(earned: bool, steps: int = 200, linear: bool = False):
    """A noisy linear regression (or a linear loss, which the secant reads as a step that is always too short)."""
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = x @ torch.randn(10, 1)
    model = nn.Linear(10, 1)
    opt = build_variant(model.parameters(), total_steps=steps, earned_cooldown=earned, foreach=False)
    lrs = []
    for _ in range(steps):
        batch = torch.randint(0, 256, (32,))
        out = model(x[batch])
        loss = out.mean() if linear else ((out - y[batch]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()  # no loss: the plain path, whose step grows past its start only on linear readings
        lrs.append(opt.diagnostics()["effective_lr"])
    return opt, lrs


def test_earned_cooldown_begins_once_the_step_stops_growing():
    planned, earned = _regression_run(False), _regression_run(True)
    begun = earned[0].param_groups[0]["cooldown_begun"]
    assert begun is not None and 160 <= begun < 200  # at or after the planned start (step 160 of 200)
    assert earned[1][-1] < 0.05 * earned[1][begun - 1]  # decayed to near 0 by the end
    assert earned[1][:160] == planned[1][:160]  # the same run until the planned start


def test_earned_cooldown_does_not_decay_a_step_the_secant_still_grows():
    opt, lrs = _regression_run(True, linear=True)
    assert opt.param_groups[0]["cooldown_begun"] is None  # a linear loss reads as a short step at every step
    assert lrs[-1] >= lrs[159]


def test_total_steps_is_validated():
    with pytest.raises(ValueError, match="Invalid total_steps value: 0"):
        AdaOpt(_toy_model().parameters(), total_steps=0)
    opt = AdaOpt(_toy_model().parameters())
    with pytest.raises(ValueError, match="Invalid total_steps value: 2.5"):
        opt.set_total_steps(2.5)


@pytest.mark.parametrize("feed_loss", [True, False], ids=["fed", "plain"])
def test_a_frozen_group_counts_for_nothing_in_the_start(feed_loss):
    """Body at lr 0 under a head at 1e-3 starts where the head alone starts: only what moves sets the first step."""
    x, y = _toy_data()
    starts = []
    for with_body in (True, False):
        model = _toy_model()
        head = list(model[4].parameters())
        body = [p for m in (model[0], model[2]) for p in m.parameters()]
        groups = ([{"params": body, "lr": 0.0}] if with_body else []) + [{"params": head, "lr": 1e-3}]
        opt = AdaOpt(groups, foreach=False)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if not with_body:
            for p in body:
                p.grad = None
        if feed_loss:
            opt.set_loss(loss)
        opt.step()
        starts.append(opt.diagnostics()["base_scale"])
    assert starts[0] == pytest.approx(starts[1], rel=1e-12)


def test_a_group_at_a_tenth_of_the_lr_counts_a_tenth_in_polyaks_start():
    x, y = _toy_data()
    model = _toy_model()
    body = [p for m in (model[0], model[2]) for p in m.parameters()]
    head = list(model[4].parameters())
    opt = AdaOpt([{"params": body, "lr": 1e-4}, {"params": head, "lr": 1e-3}], foreach=False)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    l1 = 0.1 * sum(p.grad.abs().sum() for p in body) + sum(p.grad.abs().sum() for p in head)
    opt.set_loss(loss)
    opt.step()
    assert opt.diagnostics()["base_scale"] == pytest.approx(0.03 * loss.item() / l1.item(), rel=1e-5)


def test_the_progress_ceiling_never_holds_the_step_under_its_noise_scaled_start():
    """noise_scaled_start (v12): a flat loss earns no growth, and a noisy gradient's start is scaled up at the end of
    warmup; the ceiling, still counted from the start as measured, then holds the step at the scaled start rather
    than pulling it back to the measured one."""
    torch.manual_seed(0)
    n, rho = 1024, 0.03
    signal = torch.full((n,), 0.01)
    sigma = math.sqrt(float(signal.pow(2).sum()) * (1.0 - rho) / rho / n)
    p = nn.Parameter(torch.zeros(n))
    opt = build_variant([p], noise_corrected_yield=False)
    scales = []
    for _ in range(40):
        p.grad = signal + sigma * torch.randn(n)
        opt.set_loss(1.0)  # flat
        opt.step()
        scales.append(opt.param_groups[0]["base_scale"])
    floor = opt.param_groups[0]["start_floor"]
    assert floor is not None and floor > 2 * scales[0]
    assert scales[10] == floor  # scaled at step 11, the first past warmup
    assert min(scales[10:]) >= floor * (1 - 1e-12)
