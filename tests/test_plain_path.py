"""The plain path: AdaOpt stepped as most PyTorch loops step it (``opt.step()``, no closure, no loss) never climbs.

* torch's own test problem, test_optim's ``test_forloop_goes_right_direction``: ``(W x + b)^2`` with W (10, 5) and b
  (10,) from randn, contiguous or not, 20 steps of ``loss = closure(); opt.step()``, with no scheduler or each of
  the seven scheduler sets of ``OptimizerInfo(Adam)``, at lr 1e-3 and 1e-1: the loss must end below its start.
* a 20-64-64-3 MLP classifier on a fixed teacher problem, 300 steps of batch 64: within 1.5x AdamW(1e-3)'s loss.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import (
    ConstantLR,
    ExponentialLR,
    LinearLR,
    PolynomialLR,
    ReduceLROnPlateau,
    StepLR,
)

from hf_adaopt import AdaOpt

# OptimizerInfo(Adam).scheduler_inputs in torch/testing/_internal/common_optimizers.py (torch 2.13), and none
SCHEDULERS = {
    "none": [],
    "exponential": [lambda o: ExponentialLR(o, gamma=0.9)],
    "linear": [lambda o: LinearLR(o, start_factor=0.4, total_iters=4)],
    "constant+exponential": [lambda o: ConstantLR(o, factor=0.4, total_iters=4), lambda o: ExponentialLR(o, gamma=0.9)],
    "exponential+plateau": [lambda o: ExponentialLR(o, gamma=0.9), lambda o: ReduceLROnPlateau(o)],
    "constant": [lambda o: ConstantLR(o, factor=0.4, total_iters=4)],
    "polynomial": [lambda o: PolynomialLR(o, power=0.9, total_iters=4)],
    "step+plateau": [lambda o: StepLR(o, gamma=0.9, step_size=10), lambda o: ReduceLROnPlateau(o)],
}


def _goes_right_direction(contiguous: bool, schedulers: list, lr: float) -> tuple[float, float]:
    torch.manual_seed(0)
    if contiguous:
        weight, bias = nn.Parameter(torch.randn(10, 5)), nn.Parameter(torch.randn(10))
    else:
        weight, bias = nn.Parameter(torch.randn(10, 5, 2)[..., 0]), nn.Parameter(torch.randn(10, 2)[..., 0])
    x = torch.randn(5)
    opt = AdaOpt([weight, bias], lr=lr, foreach=False)
    scheds = [make(opt) for make in schedulers]

    def closure():
        opt.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(20):
        loss = closure()
        opt.step()
        for s in scheds:
            s.step(loss.item()) if isinstance(s, ReduceLROnPlateau) else s.step()
    return initial, closure().item()


@pytest.mark.parametrize("contiguous, scheduler, lr",
                         list(itertools.product((True, False), SCHEDULERS, (1e-3, 1e-1))),
                         ids=lambda v: str(v))
def test_torchs_goes_right_direction_problem_ends_below_its_start(contiguous, scheduler, lr):
    initial, final = _goes_right_direction(contiguous, SCHEDULERS[scheduler], lr)
    assert final < initial, f"{initial:.1f} -> {final:.1f}"


def _mlp_loss(make, seed: int, steps: int = 300) -> float:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(1024, 20, generator=g)
    teacher = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 3))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        y = teacher(x).argmax(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = make(model.parameters())
    batches = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 1024, (64,), generator=batches)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y).item()


@pytest.mark.parametrize("seed", [0, 1])
def test_a_small_mlp_in_a_plain_loop_trains_like_adamw(seed):
    adamw = _mlp_loss(lambda ps: torch.optim.AdamW(ps, lr=1e-3), seed)
    adaopt = _mlp_loss(lambda ps: AdaOpt(ps, foreach=False), seed)
    assert adaopt < 1.5 * adamw, f"AdaOpt {adaopt:.3f} vs AdamW(1e-3) {adamw:.3f}"
