"""Polyak's start reads the first gradient before clipping (``hf_adaopt.core.backward_reading``): the start and the
progress ceiling do not change with ``clip_grad_norm_``, on both paths, under gradient accumulation and under a
GradScaler; without clipping the start is bit-identical to one read at the step; the hooks go after the first step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_adaopt import AdaOpt


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    return model, x, y


def _first_step(clip: float | None, *, fed: bool = True, accumulate: int = 1, scaler=None, reading: bool = True):
    """(the first step's effective lr, the ceiling's start, the parameters after 5 steps)."""
    model, x, y = _problem()
    opt = AdaOpt(model.parameters())
    if not reading:
        opt._backward_reading.stop()
        opt._backward_reading = None
    first = None
    for _ in range(5):
        opt.zero_grad()
        for xb, yb in zip(x.chunk(accumulate), y.chunk(accumulate)):
            loss = nn.functional.cross_entropy(model(xb), yb) * 40.0 / accumulate  # large enough to be clipped
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        if fed:
            opt.set_loss(loss * accumulate)
        scaler.step(opt) if scaler else opt.step()
        if scaler:
            scaler.update()
        if first is None:
            first = (opt.param_groups[0]["effective_lr"], opt.param_groups[0]["scale_start"])
    return first, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("fed", [True, False], ids=["fed", "plain"])
def test_the_start_and_the_ceiling_do_not_change_with_clipping(fed):
    (unclipped, _), (clipped, _), (hard, _) = (_first_step(c, fed=fed) for c in (None, 1.0, 0.01))
    assert unclipped == clipped == hard  # (first effective lr, the ceiling's start)
    # read at the step, clipping would have moved it: the clipped gradient is smaller, so the start larger
    ((at_step, _), _) = _first_step(1.0, fed=fed, reading=False)
    assert at_step > 2.0 * unclipped[0]


def test_without_clipping_the_run_is_bit_identical_to_one_read_at_the_step():
    (a, pa), (b, pb) = _first_step(None), _first_step(None, reading=False)
    assert a == b
    assert all(torch.equal(p, q) for p, q in zip(pa, pb))


def test_accumulated_gradients_are_read_once_accumulated():
    (one, _), (two, _) = _first_step(None, fed=False), _first_step(1.0, fed=False, accumulate=2)
    assert two == pytest.approx(one, rel=1e-5)  # the same gradient, summed in two parts, then clipped


def test_a_grad_scaler_is_divided_out():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # torch >= 2.3, below the package's floor (2.4)
    (plain, _), (scaled, _) = _first_step(None), _first_step(1.0, scaler=scaler)
    assert scaled == pytest.approx(plain, rel=1e-5)


def test_the_hooks_are_removed_after_the_first_step_and_on_resume():
    model, x, y = _problem()
    opt = AdaOpt(model.parameters())
    reading = opt._backward_reading
    assert len(reading._handles) == 4  # one per parameter
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert opt._backward_reading is None and reading._handles == [] and reading._l1 == {}
    resumed = AdaOpt(model.parameters())
    resumed.load_state_dict(opt.state_dict())
    resumed.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert resumed._backward_reading._l1 == {}  # a loaded start is not read again
    resumed.step()
    assert resumed._backward_reading is None
