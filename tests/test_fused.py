"""AdaOpt's fused step: equal to the reference on both backends, built or compiled once, non-finite gradients masked,
and a foreach fallback when it cannot be built.

Backends: "cpu" is the C++ kernel (hf_adaopt/core/csrc/fused_cpu.cpp, built once per machine, ~60 s on two cores, then
cached by torch); "inductor" is the torch.compile graphs CUDA uses, run here on the CPU (each parameter layout costs
one compile of two graphs, ~10-30 s), so the tests share two layouts: a float64 one (parity at PARITY_ATOL) and a
mixed fp32/bf16 one (parity at the stated bf16 tolerance).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from hf_adaopt import AdaOpt
from hf_adaopt.core import fused_cpu
from hf_adaopt.core import fused as fused_module
from hf_adaopt.core.functional import SMALL_TENSOR, SUBSAMPLE_PERIOD
from hf_adaopt.core._variants import build as build_variant

# fused == reference in float64 (the same bound as foreach == reference in tests/test_optimizer.py)
PARITY_ATOL = 1e-10
# bf16 parameters: the fused step rounds decay and step once, the reference twice (an ulp, 0.4%, apart at most per
# step), and the difference reaches the fp32 parameters through the forward pass and the shared controller
BF16_RTOL, BF16_ATOL = 2e-2, 1e-3


@pytest.fixture(params=["cpu", "inductor"])
def backend(request, monkeypatch):
    monkeypatch.setattr(fused_module, "_FORCE_INDUCTOR", request.param == "inductor")
    return request.param


def _float64_setup(fused):
    """Several groups, weight decay, a parameter without gradient, a frozen one and a zero-size one."""
    torch.manual_seed(0)
    model = nn.ModuleDict({
        "big": nn.Linear(97, 64),  # 6208 weights > SMALL_TENSOR: the block subsample, and 64 past the last block
        "small": nn.Linear(64, 4),
        "frozen": nn.Linear(4, 4),
        "unused": nn.Linear(4, 4),  # grad stays None
    }).double()
    empty = nn.Parameter(torch.zeros(0, dtype=torch.float64))
    model.frozen.requires_grad_(False)
    groups = [
        {"params": [model.big.weight, model.small.weight, model.unused.weight, empty], "weight_decay": 0.1},
        {"params": [model.big.bias, model.small.bias, model.unused.bias, *model.frozen.parameters()],
         "weight_decay": 0.0, "lr": 2e-3},
    ]
    opt = build_variant(groups, lr=1e-3, foreach=False, fused=fused, warmup_steps=3, variance_power=0.5)
    return model, empty, opt


def _float64_steps(model, empty, opt, steps, done=0):
    """Steps done+1..steps of a fixed sequence of batches."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(128, 97, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (128,), generator=g)
    for i in range(steps):
        idx = torch.randint(0, 128, (16,), generator=g)
        if i < done:
            continue
        out = model["frozen"](model["small"](torch.tanh(model["big"](x[idx])))) + 0.0 * empty.sum()
        loss = nn.functional.cross_entropy(out, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.set_loss(loss)
        opt.step()


def _mixed_setup(fused):
    """fp32 and bf16 parameters (fp32 state), two groups with their own beta2 and weight decay."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(80, 64), nn.Tanh(), nn.Linear(64, 3))
    model[2].to(torch.bfloat16)
    groups = [{"params": model[0].parameters(), "weight_decay": 0.05},
              {"params": model[2].parameters(), "betas": (0.9, 0.99), "weight_decay": 0.0}]
    return model, AdaOpt(groups, lr=1e-3, foreach=False, fused=fused, warmup_steps=2)


def _mixed_steps(model, opt, steps):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 80, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    for _ in range(steps):
        idx = torch.randint(0, 64, (16,), generator=g)
        loss = nn.functional.cross_entropy(model[2](model[1](model[0](x[idx])).bfloat16()).float(), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.set_loss(loss)
        opt.step()


def _assert_fused_ran(opt):
    assert getattr(opt, "_fused_failed", None) is None
    assert getattr(opt, "_fused_carry", None) is not None


def test_fused_step_equals_reference_in_float64_and_compiles_once(backend):
    model_ref, empty_ref, opt_ref = _float64_setup(fused=False)
    model, empty, opt = _float64_setup(fused=True)
    _float64_steps(model_ref, empty_ref, opt_ref, steps=25)
    # the first two steps compile (the apply graph at the first, the statistics graph at the second)...
    _float64_steps(model, empty, opt, steps=2)
    # ... and no later step does: a recompile raises, and would show as a fallback to foreach
    with torch._dynamo.config.patch(error_on_recompile=True):
        _float64_steps(model, empty, opt, steps=25, done=2)
    _assert_fused_ran(opt)
    for (name, p_ref), p in zip(model_ref.named_parameters(), model.parameters()):
        torch.testing.assert_close(p, p_ref, atol=PARITY_ATOL, rtol=0, msg=name)
    for p_ref, p in zip(model_ref.parameters(), model.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "direction", "pre") if p_ref in opt_ref.state else ():
            torch.testing.assert_close(opt.state[p][key], opt_ref.state[p_ref][key], atol=PARITY_ATOL, rtol=0)
    for key, value in opt_ref.diagnostics().items():
        assert opt.diagnostics()[key] == pytest.approx(value, abs=PARITY_ATOL), key
    assert opt_ref.diagnostics()["base_scale"] != pytest.approx(1e-3, rel=1e-3)  # the controller moved
    assert model.unused.weight not in opt.state and all(p not in opt.state for p in model.frozen.parameters())
    assert empty in opt.state and opt.state[empty]["step"] == 25


def test_fused_step_after_load_state_dict_continues_like_the_reference(backend):
    """A loaded state replaces the tensors the last fused step measured: the next statistics are computed anew."""
    model_ref, empty_ref, opt_ref = _float64_setup(fused=False)
    model, empty, opt = _float64_setup(fused=True)
    _float64_steps(model_ref, empty_ref, opt_ref, steps=12)
    _float64_steps(model, empty, opt, steps=6)
    saved = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(saved)
    _float64_steps(model, empty, opt, steps=12, done=6)
    _assert_fused_ran(opt)
    for p_ref, p in zip(model_ref.parameters(), model.parameters()):
        torch.testing.assert_close(p, p_ref, atol=PARITY_ATOL, rtol=0)


def test_fused_step_with_bf16_parameters_and_fp32_state_matches_reference(backend):
    model_ref, opt_ref = _mixed_setup(fused=False)
    model, opt = _mixed_setup(fused=True)
    _mixed_steps(model_ref, opt_ref, steps=12)
    _mixed_steps(model, opt, steps=12)
    _assert_fused_ran(opt)
    for p_ref, p in zip(model_ref.parameters(), model.parameters()):
        assert opt.state[p]["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(p, p_ref, rtol=BF16_RTOL, atol=BF16_ATOL)
        m, m_ref = opt.state[p]["exp_avg"], opt_ref.state[p_ref]["exp_avg"]
        assert (m - m_ref).norm() <= BF16_RTOL * m_ref.norm()  # elementwise, gradients differ where bf16 rounded
    assert opt.diagnostics()["base_scale"] == pytest.approx(opt_ref.diagnostics()["base_scale"], rel=BF16_RTOL)


def test_fused_falls_back_to_foreach_when_compilation_fails(backend, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no C++ compiler here")

    if backend == "cpu":
        monkeypatch.setattr(fused_cpu, "extension", broken)
    else:
        monkeypatch.setattr(fused_module, "_compiled_fn", broken)
    model_foreach, empty_foreach, _ = _float64_setup(fused=False)
    opt_foreach = AdaOpt([{"params": [p for p in model_foreach.parameters() if p.requires_grad] + [empty_foreach]}],
                         foreach=True, warmup_steps=3)
    model, empty, _ = _float64_setup(fused=True)
    opt = AdaOpt([{"params": [p for p in model.parameters() if p.requires_grad] + [empty]}], fused=True,
                 warmup_steps=3)
    with caplog.at_level(logging.WARNING, logger="hf_adaopt.core.fused"):
        _float64_steps(model_foreach, empty_foreach, opt_foreach, steps=5)
        _float64_steps(model, empty, opt, steps=5)
    assert "no C++ compiler here" in opt._fused_failed
    assert sum("fused step is unavailable" in r.getMessage() for r in caplog.records) == 1  # said once
    for p_ref, p in zip(model_foreach.parameters(), model.parameters()):
        torch.testing.assert_close(p, p_ref, atol=PARITY_ATOL, rtol=0)


def test_fused_is_off_by_default():
    model = nn.Linear(4, 2)
    opt = AdaOpt(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    assert opt.param_groups[0]["fused"] is None and not opt._use_fused()


def test_fused_and_foreach_together_is_a_value_error():
    with pytest.raises(ValueError, match="`fused` and `foreach` cannot be `True` together"):
        AdaOpt(nn.Linear(4, 2).parameters(), fused=True, foreach=True)


def test_fused_in_a_param_group_other_than_the_optimizers_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="fused=True in param group 1: fused is optimizer-wide"):
        AdaOpt([{"params": model[0].parameters()}, {"params": model[1].parameters(), "fused": True}])


def test_checkpoint_without_fused_loads_and_steps():
    model = nn.Linear(4, 2)
    opt = AdaOpt(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    state = opt.__getstate__()
    for group in state["param_groups"]:
        del group["fused"]
    opt2 = AdaOpt.__new__(AdaOpt)
    opt2.__setstate__(state)
    assert opt2.param_groups[0]["fused"] is None
    opt2.step()


def _one_tensor_steps(fused, grads, threads=None):
    """A 6,000-element parameter (23 blocks and a tail) stepped with the given gradients; returns it and its state."""
    torch.manual_seed(5)
    p = nn.Parameter(torch.randn(6000))
    opt = AdaOpt([p], fused=fused, foreach=False, warmup_steps=1)
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        for k, grad in enumerate(grads):
            p.grad = grad.clone()
            opt.set_loss(torch.tensor(2.0 - 0.01 * k))
            opt.step()
    finally:
        torch.set_num_threads(before)
    return p.detach().clone(), opt


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_fused_step_masks_non_finite_gradient_elements_and_counts_the_step(backend, where):
    """The fused step reads the gradient only in the update: it leaves the non-finite elements as they were, takes
    the rest of the step, and counts a skipped step when the next step reads what the update summed."""
    g = torch.Generator().manual_seed(6)
    grads = [torch.randn(6000, generator=g) for _ in range(7)]
    # block 1: element 100 is past its first 16 (not in the subsample), element 3 is in it
    position = SUBSAMPLE_PERIOD + (100 if where == "outside" else 3)
    assert 6000 > SMALL_TENSOR
    p_five, _ = _one_tensor_steps(True, grads[:5])
    p_ref, _ = _one_tensor_steps(True, grads[:6])
    for bad in (float("nan"), float("inf")):
        poisoned = grads[5].clone()
        poisoned[position] = bad
        p, opt = _one_tensor_steps(True, grads[:5] + [poisoned])
        state = opt.state[opt.param_groups[0]["params"][0]]
        for key in ("exp_avg", "exp_avg_sq", "direction", "pre", "reading"):
            assert torch.isfinite(state[key]).all(), key
        assert p[position] == p_five[position]  # left as it was after step 5
        others = torch.ones(6000, dtype=torch.bool)
        others[position] = False
        assert torch.equal(p[others], p_ref[others])  # the rest of the step was taken, with the same plan
        assert opt.param_groups[0]["skipped_steps"] == 0  # not known yet: the plan was made before the update
        p, opt = _one_tensor_steps(True, grads[:5] + [poisoned, grads[6]])
        assert opt.param_groups[0]["skipped_steps"] == 1 and torch.isfinite(p).all()


def test_reference_skips_the_step_for_a_non_finite_gradient():
    g = torch.Generator().manual_seed(7)
    grads = [torch.randn(6000, generator=g) for _ in range(4)]
    poisoned = grads[3].clone()
    poisoned[SUBSAMPLE_PERIOD + 100] = float("nan")  # outside the subsample: the whole-gradient check sees it
    p_three, _ = _one_tensor_steps(False, grads[:3])
    p, opt = _one_tensor_steps(False, grads[:3] + [poisoned])
    assert torch.equal(p, p_three) and opt.param_groups[0]["skipped_steps"] == 1


def test_fused_cpu_kernel_does_not_depend_on_the_number_of_threads():
    g = torch.Generator().manual_seed(8)
    grads = [torch.randn(6000, generator=g) for _ in range(5)]
    p_one, opt_one = _one_tensor_steps(True, grads, threads=1)
    p_two, opt_two = _one_tensor_steps(True, grads, threads=2)
    assert torch.equal(p_one, p_two)
    assert opt_one.diagnostics() == opt_two.diagnostics()


def test_fused_cpu_kernel_refuses_bad_tensors_before_writing_any():
    ext = fused_cpu.extension()
    p, g = torch.zeros(10), torch.ones(10)
    m, v, d, pre, reading = torch.zeros(10), torch.zeros(10), torch.zeros(10), torch.zeros(()), torch.zeros(3)
    bad_p = torch.zeros(20)[::2]  # not contiguous
    scalars = torch.ones(8, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="parameter 1 must be a contiguous CPU tensor"):
        ext.apply([p, bad_p], [g, torch.ones(10)], [m, m.clone()], [v, v.clone()], [d, d.clone()],
                  [pre, pre.clone()], [reading, reading.clone()], scalars)
    assert torch.equal(p, torch.zeros(10)) and torch.equal(m, torch.zeros(10))  # the first tensor was not stepped
    one = torch.ones(8, 1, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="gradient 0 differs from its parameter in dtype or size"):
        ext.apply([p], [g.double()], [m], [v], [d], [pre], [reading], one)
    with pytest.raises(RuntimeError, match="unsupported dtypes"):
        ext.apply([p.long()], [g.long()], [m], [v], [d], [pre], [reading], one)
    with pytest.raises(RuntimeError, match="the state of parameter 0 does not match it"):
        ext.apply([p], [g], [m], [v], [d[:4]], [pre], [reading], one)
