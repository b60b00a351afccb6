"""AdaOpt's fused step: the default on CPU, equal to the reference on both backends, built or compiled once, non-finite
gradients masked, every fallback to foreach said once with its reason and never taking a step twice, and the kernel's
constants and results shared with Python and independent of the thread count.

Backends: "cpu" is the C++ kernel (hf_adaopt/core/csrc/fused_cpu.cpp, built once per machine, ~1-2 min on two cores,
then cached by torch); "inductor" is the torch.compile graph CUDA uses, run here on the CPU (each parameter layout
costs one compile of one graph, ~10-30 s), so the tests share two layouts: a float64 one (parity at PARITY_ATOL) and a
mixed fp32/bf16 one (parity at the stated bf16 tolerance).
"""

from __future__ import annotations

import copy
import inspect
import logging
import sys

import pytest
import torch
from torch import nn

from hf_adaopt import AdaOpt
from hf_adaopt.core import _variants
from hf_adaopt.core import fused as fused_module
from hf_adaopt.core import fused_cpu
from hf_adaopt.core._variants import build as build_variant
from hf_adaopt.core.functional import SMALL_TENSOR, SUBSAMPLE_BLOCK, SUBSAMPLE_PERIOD

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
    # the first step compiles the update's graph (its statistics come from foreach, the next ones from the update)...
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


def test_fused_is_the_default_on_cpu():
    model = nn.Linear(4, 2)
    opt = AdaOpt(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert opt.param_groups[0]["fused"] is None and opt._use_fused()
    _assert_fused_ran(opt)


@pytest.mark.parametrize("foreach", [False, True])
def test_an_explicit_foreach_choice_is_not_fused(foreach):
    """As in torch: fused=None defers to a foreach the user set (False: the reference loop, True: foreach)."""
    model = nn.Linear(4, 2)
    opt = AdaOpt(model.parameters(), foreach=foreach)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert not opt._use_fused() and getattr(opt, "_fused_carry", None) is None


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


def _one_tensor_steps(fused, grads, threads=None, loss=True):
    """One parameter, the gradients' size (6,000: 23 blocks and a tail), stepped with them (and a loss, unless
    ``loss`` is False); returns it and its state."""
    torch.manual_seed(5)
    p = nn.Parameter(torch.randn(grads[0].numel()))
    opt = AdaOpt([p], fused=fused, foreach=False, warmup_steps=1)
    if not loss:  # the start from the weights' RMS: no L1 norm read outside the kernel (see the threads test)
        _variants.configure(opt, assumed_loss=None)
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        for k, grad in enumerate(grads):
            p.grad = grad.clone()
            if loss:
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


# The kernel's parallel branch: tensors of more than one chunk (64 periods of 256 = 16,384 elements) with >1 thread.
CHUNK = 64 * SUBSAMPLE_PERIOD


def test_fused_cpu_kernel_does_not_depend_on_the_number_of_threads():
    """100,000 elements are 7 chunks: with 2 threads at::parallel_for splits them, and the per-chunk sums are added
    in chunk order, so the step is bitwise the one thread's (checked by mutation: summing per task instead of per
    chunk, or skipping a chunk, fails this test). It also equals the reference.

    Without a loss and with ``assumed_loss=None``, the start is read from the weights' RMS: Polyak's start reads the
    first gradient's L1 norm (``torch._foreach_norm(grads, 1)`` in ``AdaOpt.step``, outside the kernel), which on this
    CPU differs in its last bits between 1 and 2 threads for 100,000 elements."""
    numel = 100_000
    assert numel > 2 * CHUNK
    g = torch.Generator().manual_seed(8)
    grads = [torch.randn(numel, generator=g) for _ in range(5)]
    p_one, opt_one = _one_tensor_steps(True, grads, threads=1, loss=False)
    p_two, opt_two = _one_tensor_steps(True, grads, threads=2, loss=False)
    _assert_fused_ran(opt_two)
    assert torch.equal(p_one, p_two)
    state_one, state_two = (o.state[o.param_groups[0]["params"][0]] for o in (opt_one, opt_two))
    for key in ("exp_avg", "exp_avg_sq", "direction", "pre", "reading"):
        assert torch.equal(state_one[key], state_two[key]), key
    assert opt_one.diagnostics() == opt_two.diagnostics()
    p_ref, _ = _one_tensor_steps(False, grads, loss=False)
    torch.testing.assert_close(p_two, p_ref, rtol=1e-5, atol=1e-6)  # fp32: rounding apart, not a chunk apart


def test_fused_cpu_kernel_refuses_bad_tensors_before_writing_any():
    ext = fused_cpu.extension()
    p, g = torch.zeros(10), torch.ones(10)
    m, v, d, pre, reading = torch.zeros(10), torch.zeros(10), torch.zeros(10), torch.zeros(()), torch.zeros(3)
    bad_p = torch.zeros(20)[::2]  # not contiguous
    scalars = torch.ones(len(fused_module.SCALAR_ROWS), 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="parameter 1 must be a contiguous CPU tensor"):
        ext.apply([p, bad_p], [g, torch.ones(10)], [m, m.clone()], [v, v.clone()], [d, d.clone()],
                  [pre, pre.clone()], [reading, reading.clone()], scalars)
    assert torch.equal(p, torch.zeros(10)) and torch.equal(m, torch.zeros(10))  # the first tensor was not stepped
    one = torch.ones(len(fused_module.SCALAR_ROWS), 1, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="gradient 0 differs from its parameter in dtype or size"):
        ext.apply([p], [g.double()], [m], [v], [d], [pre], [reading], one)
    with pytest.raises(RuntimeError, match="unsupported dtypes"):
        ext.apply([p.long()], [g.long()], [m], [v], [d], [pre], [reading], one)
    with pytest.raises(RuntimeError, match="the state of parameter 0 does not match it"):
        ext.apply([p], [g], [m], [v], [d[:4]], [pre], [reading], one)
    rows = len(fused_module.SCALAR_ROWS)
    with pytest.raises(RuntimeError, match=rf"scalars must be a contiguous float64 \({rows}, 1\)"):
        ext.apply([p], [g], [m], [v], [d], [pre], [reading], torch.ones(8, 1, dtype=torch.float64))  # the old layout
    assert torch.equal(p, torch.zeros(10)) and p._version == 0


# ------------------------------------------------------------------------------------- the constants, shared
def test_the_kernels_constants_are_rendered_from_the_python_definitions_and_name_the_build(monkeypatch):
    header = fused_cpu.constants_header()
    for line in (f"kBlock = {SUBSAMPLE_BLOCK};", f"kPeriod = {SUBSAMPLE_PERIOD};", f"kSmall = {SMALL_TENSOR};",
                 "enum { kOneMinusBeta1, kBeta2, kOneMinusBeta2, kEpsC2, kKeep, kStepC2C1, kDirC2C1, kNumScalars };",
                 "enum { kCarriedMSq, kCarriedVSum, kCarriedParamSq, kCarriedDirSq, kCarriedMasked, kNumCarried };",
                 "enum { kReadingAfter, kReadingGradSq, kReadingPre, kNumReading };"):
        assert line in header
    name, source, _ = fused_cpu._build_spec()
    assert source.startswith(header)
    monkeypatch.setattr(fused_cpu, "SUBSAMPLE_BLOCK", 2 * SUBSAMPLE_BLOCK)
    other_name, other_source, _ = fused_cpu._build_spec()
    assert f"kBlock = {2 * SUBSAMPLE_BLOCK};" in other_source and other_name != name  # a new build, not a stale one


def test_every_scalar_row_is_read_by_both_backends():
    """No row of the per-step table is written and never read (the old beta1 row was)."""
    cpp = (fused_cpu.resources.files("hf_adaopt.core") / "csrc" / "fused_cpu.cpp").read_text()
    graph = inspect.getsource(fused_module._apply_graph)
    for row in fused_module.SCALAR_ROWS:
        assert f"s[k{fused_cpu._camel(row)}]" in cpp, row
        assert f's["{row}"]' in graph, row


# ------------------------------------------------------------------------------------------- building
def test_the_first_build_is_said_in_one_line_and_a_cached_build_is_silent(monkeypatch, tmp_path, caplog):
    from torch.utils import cpp_extension

    builds = []

    def fake_load_inline(name, build_directory, **kwargs):  # what torch leaves in its cache: the module
        builds.append(name)
        (tmp_path / name / f"{name}.so").write_bytes(b"")
        return "the module"

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load_inline", fake_load_inline)
    monkeypatch.setattr(fused_cpu, "_extension", None)
    with caplog.at_level(logging.DEBUG, logger="hf_adaopt.core.fused_cpu"):
        assert fused_cpu.extension() == "the module"
        assert fused_cpu.extension() == "the module"  # loaded once per process
        monkeypatch.setattr(fused_cpu, "_extension", None)  # a later process: torch's cache has it
        assert fused_cpu.extension() == "the module"
    [record] = [r for r in caplog.records if r.name == "hf_adaopt.core.fused_cpu"]
    assert len(builds) == 2 and record.levelno == logging.WARNING
    message = record.getMessage()
    assert "building its fused CPU kernel (about a minute, once per machine" in message
    assert str(tmp_path / builds[0]) in message


# ------------------------------------------------------------------------------------- fallbacks, said once
class _Fake:
    """A stand-in parameter on a device this machine lacks, or a DTensor shard (it has ``to_local``)."""

    def __init__(self, device, shard=False):
        self.device, self.shape = torch.device(device), (4,)
        if shard:
            self.to_local = lambda: torch.zeros(4)

    def is_contiguous(self):
        return True

    def stride(self):
        return (1,)


@pytest.mark.parametrize("params, explicit, reason", [
    (lambda: [torch.zeros(2), torch.zeros(3)], False, None),
    (lambda: [_Fake("cuda")], False, "on CUDA the fused step (a torch.compile graph) is opt-in"),
    (lambda: [_Fake("cuda")], True, None),
    (lambda: [torch.zeros(2), _Fake("cuda")], True, "more than one kind of device (cpu, cuda)"),
    (lambda: [torch.zeros(2, device="meta")], False, "the parameters are on meta"),
    (lambda: [torch.zeros(2), _Fake("cpu", shard=True)], True, "1 of 2 parameters are DTensor shards (FSDP2)"),
    (lambda: [torch.zeros(2), torch.zeros(3, 4).t()], True,
     "1 of 2 parameters are not contiguous (the first: parameter 1 of this step, shape (4, 3), stride (1, 4))"),
], ids=["cpu", "cuda_default", "cuda_fused_true", "mixed_devices", "meta", "dtensor", "non_contiguous"])
def test_decline_reason_says_why_the_fused_step_does_not_take_the_parameters(params, explicit, reason):
    declined = fused_module.decline_reason(params(), explicit=explicit)
    assert (declined is None) if reason is None else reason in declined[1]


@pytest.fixture
def info_logs():
    """hf_adaopt's INFO records kept: once transformers is imported its verbosity (WARNING) filters them (logs.py)."""
    tf_logging = sys.modules.get("transformers.utils.logging")
    if tf_logging is None:
        yield
        return
    before = tf_logging.get_verbosity()
    tf_logging.set_verbosity(logging.INFO)
    try:
        yield
    finally:
        tf_logging.set_verbosity(before)


@pytest.mark.parametrize("fused, level", [(None, logging.INFO), (True, logging.WARNING)])
def test_parameters_the_fused_step_cannot_take_step_foreach_and_say_why_once(caplog, info_logs, fused, level):
    """The default falls back quietly (an info line); fused=True that cannot be honoured warns. Either says it once."""
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(6, 4).t())  # a transposed view: not contiguous
    bias = nn.Parameter(torch.randn(4))
    opt = AdaOpt([weight, bias], fused=fused, warmup_steps=1)
    with caplog.at_level(logging.INFO, logger="hf_adaopt.core.fused"):
        for _ in range(3):
            weight.grad, bias.grad = torch.ones_like(weight), torch.ones_like(bias)
            opt.step()
    [record] = [r for r in caplog.records if "instead of the fused one" in r.getMessage()]
    assert record.levelno == level and "1 of 2 parameters are not contiguous" in record.getMessage()
    assert "not contiguous" in opt._fused_declined
    assert getattr(opt, "_fused_carry", None) is None and opt.state[weight]["step"] == 3


class _FailingKernel:
    """The built kernel, then an error: it writes the first ``write`` tensors of the call (all of them if None)."""

    def __init__(self, write=None):
        self.real, self.write = fused_cpu.extension(), write

    def apply(self, *lists):
        *tensor_lists, scalars = lists
        k = len(tensor_lists[0]) if self.write is None else self.write
        self.real.apply(*[t[:k] for t in tensor_lists], scalars[:, :k].contiguous())
        raise RuntimeError("injected failure after the kernel's writes")


def _linear_step(**kwargs):
    """nn.Linear(97, 64) (weight 6,208 elements, bias 64) after one step of AdaOpt(**kwargs)."""
    torch.manual_seed(0)
    model = nn.Linear(97, 64)
    opt = AdaOpt(model.parameters(), warmup_steps=1, **kwargs)
    loss = model(torch.randn(16, 97, generator=torch.Generator().manual_seed(9))).pow(2).mean()
    loss.backward()
    opt.set_loss(loss)
    opt.step()
    return model, opt


@pytest.mark.parametrize("write", [None, 1], ids=["after_all_writes", "after_the_first_tensor"])
def test_a_fused_step_that_fails_after_its_writes_is_not_applied_twice(monkeypatch, caplog, write):
    """The foreach fallback takes the step only for the tensors the failed call did not write: every tensor ends
    exactly one step on, the kernel's where it wrote, foreach's elsewhere."""
    model_fused, opt_fused = _linear_step(fused=True)
    model_foreach, opt_foreach = _linear_step(foreach=True)
    failing = _FailingKernel(write)
    monkeypatch.setattr(fused_cpu, "extension", lambda: failing)
    with caplog.at_level(logging.WARNING, logger="hf_adaopt.core.fused"):
        model, opt = _linear_step(fused=True)
    assert "injected failure after the kernel's writes" in opt._fused_failed
    written = 2 if write is None else write
    [record] = [r for r in caplog.records if "fused step is unavailable" in r.getMessage()]
    assert f"after writing {written} of 2 tensors" in record.getMessage()
    for i, (p, p_fused, p_foreach) in enumerate(zip(model.parameters(), model_fused.parameters(),
                                                    model_foreach.parameters())):
        p_one, opt_one = (p_fused, opt_fused) if i < written else (p_foreach, opt_foreach)
        assert not torch.equal(p, p_one.new_zeros(p.shape))
        assert torch.equal(p, p_one), i
        for key in ("exp_avg", "exp_avg_sq", "direction", "pre", "reading", "step"):
            assert torch.equal(torch.as_tensor(opt.state[p][key]), torch.as_tensor(opt_one.state[p_one][key])), key
