r"""AdaOpt's fused step: two stages, each one pass over the memory it must read, on CPU and CUDA.

* ``stats`` (before the step's one host sync): on the subsample only (~1/16 of each tensor), sum g^2, g.d (the
  secant's new reading) and p^2; the rows that read the optimizer's own state (m^2, v, d^2 on the subsample, and
  ``pre`` = g.d) were summed by the previous step's ``apply`` from the values it wrote.
* ``apply``: Adam's moments, decoupled weight decay and the parameter update, reading p, g, m, v and writing
  p, m, v once -- 28 bytes per fp32 parameter, AdamW's own traffic -- with the new direction and the next step's
  state statistics summed on the subsample in the same loop.

Non-finite gradients: the subsample's statistics reach the host before the update, and a NaN or inf there skips
the whole step, as on the foreach path. The fused step reads no more of the gradient than that before updating, so
an element outside the subsample whose gradient is not finite is caught in the update instead: that element's
parameter and moments are left as they were, and the rest of the step is taken (the foreach path, which reads the
whole gradient first, skips the step).

CPU: ``hf_adaopt/csrc/fused_cpu.cpp`` (``hf_adaopt.fused_cpu``), torch's fused-AdamW kernel pattern, built on first
use. CUDA: the same math as two ``torch.compile`` graphs (inductor generates Triton kernels), with the per-step
numbers (bias corrections, step sizes, decays, direction weights, eps, betas) entering as one float64 tensor, so a new
step is a new value, not a new graph: each parameter layout is compiled once. (On CPU, inductor gives each
reduction its own loop over memory, 1.4-2x the kernel's time; see the README's step-cost section.)

Where the kernel cannot be built or compiled, the caller (``AdaOpt.step``) falls back to the foreach path, and says
so once in the log. The math is the reference's (``_single_tensor_stats`` / ``_single_tensor_apply`` in
``optimizer.py``); ``tests/test_fused.py`` holds both backends equal to it.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

from hf_adaopt.logs import get_logger
from hf_adaopt.optimizer import _cast_grads, _subsample

__all__ = ["FusedUnavailable", "fused_apply", "fused_available", "fused_stats", "with_fallback"]

logger = get_logger(__name__)

# Rows of the per-step scalar table fed to the apply graph (one column per tensor), computed on the host in float64
# and cast to the state's dtype inside the graph.
_BETA1, _ONE_MINUS_BETA1, _BETA2, _ONE_MINUS_BETA2, _EPS_C2, _KEEP, _STEP_C2_C1, _DIR_C2_C1 = range(8)
_NUM_SCALARS = 8


class FusedUnavailable(RuntimeError):
    """The fused step cannot run here (no compiler, a failed compile, or tensors it does not handle)."""


def fused_available(params: list[Tensor]) -> bool:
    """Whether the fused step can be tried for these parameters: plain contiguous tensors, all on the CPU or all
    on one kind of CUDA device, no DTensor shards."""
    if not hasattr(torch, "compile") or torch.compiler.is_compiling():
        return False  # inside a user's torch.compile the foreach step is traced into their graph instead
    kinds = {p.device.type for p in params}
    return len(kinds) <= 1 and kinds <= {"cpu", "cuda"} and all(
        not hasattr(p, "to_local") and p.is_contiguous() for p in params)


def _backend(tensors: dict) -> str:
    """"cpu": the C++ kernel; "inductor": the compiled graphs (CUDA; on CPU only when a test asks for it)."""
    return "inductor" if _FORCE_INDUCTOR or tensors["exp_avgs"][0].device.type != "cpu" else "cpu"


_FORCE_INDUCTOR = False  # tests set it to hold the CUDA path's graphs to the reference on this CPU


# ------------------------------------------------------------------------------------------------ math
def _stats_graph(grads: list[Tensor], params: list[Tensor], directions: list[Tensor], pres: list[Tensor],
                 carried: Tensor) -> Tensor:
    """The reference's statistics (``_single_tensor_stats``), one column per tensor.

    The rows that read only the optimizer's own state (m, v and the kept direction, on the subsample) were
    computed by the previous step's apply graph, from the values it wrote (``carried``); this graph reads the new
    gradient (the full pass) and the parameters' subsample, which the user may have changed since.
    """
    grad_sq, after, param_sq = [], [], []
    for g, p, direction in zip(grads, params, directions):
        m_dtype = direction.dtype
        g_sub, p_sub = _subsample(g).to(m_dtype), _subsample(p).to(m_dtype)
        grad_sq.append((g_sub * g_sub).sum())
        after.append((g_sub * direction).sum())
        param_sq.append((p_sub * p_sub).sum())
    return _stats_rows(torch.stack([torch.stack(grad_sq), torch.stack(after), torch.stack(param_sq)]).to(
        carried.dtype), torch.stack(pres).to(carried.dtype), carried)


def _stats_rows(fresh: Tensor, pre: Tensor, carried: Tensor) -> Tensor:
    """The NUM_STATS rows of ``_read_scalars``: the fresh (grad_sq, after, param_sq), ``pre`` and the carried
    (m_sq, v_sum, dir_sq); no whole-gradient check (``grad_check`` is 0: the update masks non-finite elements)."""
    return torch.stack([fresh[0], fresh[1], pre, carried[0], carried[1], fresh[2], carried[2],
                        torch.zeros_like(fresh[0])])


def _apply_graph(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                 directions: list[Tensor], pres: list[Tensor], scalars: Tensor) -> Tensor:
    """The reference's update (``_single_tensor_apply``) for every tensor, in place.

    With the bias corrections folded into the scalars (on the host, in float64), each element costs one square
    root and one division, as in torch's fused Adam: :math:`u = (\\hat m/c_1)/(\\sqrt{\\hat v}/c_2 + \\epsilon)
    = (c_2/c_1)\\, m / (\\sqrt v + c_2\\epsilon)`, :math:`c_2 = \\sqrt{1-\beta_2^t}`. The update's direction is not
    kept as a tensor: the subsample of it that the next secant needs is recomputed from the new m and v.
    Returns the next step's statistics of the state (sum of m^2 and of v, and |direction|^2, on the subsample).
    """
    carried: list[list[Tensor]] = [[], [], []]
    for i, (p, g, m, v, direction, pre) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, directions, pres)):
        s = scalars[:, i].to(m.dtype)
        g = g.to(m.dtype)
        finite = torch.isfinite(g)  # elements with a non-finite gradient are left as they were
        m_new = m + s[_ONE_MINUS_BETA1] * (g - m)  # m.lerp_(g, 1 - beta1)
        v_new = v * s[_BETA2] + s[_ONE_MINUS_BETA2] * (g * g)
        update = m_new / (v_new.sqrt() + s[_EPS_C2])
        p_new = (p.to(m.dtype) * s[_KEEP] - s[_STEP_C2_C1] * update).to(p.dtype)  # low precision: one rounding
        p.copy_(torch.where(finite, p_new, p))
        m.copy_(torch.where(finite, m_new, m))
        v.copy_(torch.where(finite, v_new, v))
        new_direction = s[_DIR_C2_C1] * _subsample(m_new) / (_subsample(v_new).sqrt() + s[_EPS_C2])
        direction.copy_(new_direction)
        pre.copy_((_subsample(g) * new_direction).sum().reshape(1))
        m_sub = _subsample(m_new)
        carried[0].append((m_sub * m_sub).sum().to(scalars.dtype))
        carried[1].append(_subsample(v_new).sum().to(scalars.dtype))
        carried[2].append((new_direction * new_direction).sum().to(scalars.dtype))
    return torch.stack([torch.stack(row) for row in carried])


# ------------------------------------------------------------------------------------------- compiling
_compiled: dict[str, object] = {}


def _compiled_fn(name: str, fn):
    # One torch.compile wrapper per stage; dynamo keeps one graph per parameter layout under it (static
    # shapes: a layout is compiled for its own sizes, never as a dynamic-shape graph).
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _compiled[name]


def _run(name: str, fn, *args):
    try:
        return _compiled_fn(name, fn)(*args)
    except Exception as exc:  # a compiler error of any kind: the caller falls back to foreach
        raise FusedUnavailable(f"torch.compile of the fused {name} failed: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------------- the stages
def fused_stats(tensors: dict, carried: Tensor) -> Tensor:
    """Same as ``_single_tensor_stats(tensors)`` (but for ``grad_check``), given the last apply's ``carried`` rows."""
    if _backend(tensors) == "cpu":
        from hf_adaopt.fused_cpu import cpu_stats

        fresh = _cpu(cpu_stats, tensors)
        stats = _stats_rows(fresh, torch.stack(tensors["pre"]).to(fresh.dtype), carried)
    else:
        stats = _run("stats", _stats_graph, tensors["grads"], [_plain(p) for p in tensors["params"]],
                     tensors["directions"], tensors["pre"], carried)
    return stats.to(tensors["exp_avgs"][0].dtype)


def _cpu(fn, *args):
    try:
        return fn(*args)
    except (RuntimeError, OSError, ImportError) as exc:  # no compiler, a failed build, tensors it refuses
        raise FusedUnavailable(f"the fused CPU kernel is unavailable: {type(exc).__name__}: {exc}") from exc


def fused_apply(tensors: dict, plan: dict) -> Tensor:
    """Same as ``_single_tensor_apply(tensors, plan)``, as one compiled graph (state["step"] moved on the host).

    Returns the state's statistics for the next step (see ``_apply_graph``).
    """
    n = len(tensors["params"])
    table = [[0.0] * n for _ in range(_NUM_SCALARS)]
    for i, state in enumerate(tensors["states"]):
        beta1, beta2 = tensors["betas"][i]
        k = state["step"] + 1
        c1, c2 = 1.0 - beta1**k, math.sqrt(1.0 - beta2**k)  # m_hat = m / c1, sqrt(v_hat) = sqrt(v) / c2
        table[_BETA1][i], table[_ONE_MINUS_BETA1][i] = beta1, 1.0 - beta1
        table[_BETA2][i], table[_ONE_MINUS_BETA2][i] = beta2, 1.0 - beta2
        table[_EPS_C2][i] = plan["eps"][i] * c2
        table[_KEEP][i] = 1.0 - plan["decays"][i]
        table[_STEP_C2_C1][i] = plan["step_sizes"][i] * c2 / c1
        table[_DIR_C2_C1][i] = plan["dir_weights"][i] * c2 / c1
    device = tensors["exp_avgs"][0].device
    scalars = torch.tensor(table, dtype=torch.float64)
    if _backend(tensors) == "cpu":
        from hf_adaopt.fused_cpu import cpu_apply

        carried = _cpu(cpu_apply, tensors, scalars)
    else:
        # `pre` enters as a 1-element view: a write to a 0-d float64 input is lost by torch.compile (AOTAutograd,
        # torch 2.13; float32 is not affected), a write to its 1-d view is not.
        carried = _run("apply", _apply_graph, [_plain(p) for p in tensors["params"]], tensors["grads"],
                       tensors["exp_avgs"], tensors["exp_avg_sqs"], tensors["directions"],
                       [x.view(1) for x in tensors["pre"]], scalars.to(device, non_blocking=True))
    for state in tensors["states"]:  # only once the update is done: a failed compile leaves the step to foreach
        state["step"] += 1
    return carried


def _plain(p: Tensor) -> Tensor:
    # The parameter's data as a plain tensor: dynamo guards and mutates it like any other input.
    return p.detach()


class _Carry:
    """The state statistics an apply graph computed for the next step, valid while the state is untouched.

    Valid for the same state tensors (weak references: a loaded state dict replaces them) at the same versions
    (``Tensor._version`` counts in-place writes; writes through ``.data`` escape it, as they escape autograd).
    """

    def __init__(self, tensors: dict, stats: Tensor):
        state = _state_tensors(tensors)
        self.refs = [weakref.ref(t) for t in state]
        self.versions = [t._version for t in state]
        self.stats = stats

    def valid_for(self, tensors: dict) -> bool:
        state = _state_tensors(tensors)
        return len(state) == len(self.refs) and all(
            r() is t and t._version == k for r, t, k in zip(self.refs, state, self.versions))


def _state_tensors(tensors: dict) -> list[Tensor]:
    return [*tensors["exp_avgs"], *tensors["exp_avg_sqs"], *tensors["directions"]]


def with_fallback(optimizer, stats_fn, apply_fn):
    """The fused stages for ``optimizer``, each falling back to ``stats_fn`` / ``apply_fn`` (foreach) if it cannot
    compile; after a failure the optimizer stays on the fallback (``optimizer._fused_failed`` holds the reason).

    The statistics graph needs the previous apply graph's ``carried`` rows: at the first step, and whenever the
    state changed outside the fused step (a loaded state dict, a skipped step), ``stats_fn`` computes them all.
    """

    def fall_back(exc: Exception) -> None:
        optimizer._fused_failed = str(exc)
        logger.warning("AdaOpt: the fused step is unavailable, using the foreach step instead (%s)", exc)

    def stats(tensors: dict) -> Tensor:
        carry = optimizer.__dict__.pop("_fused_carry", None)
        if not getattr(optimizer, "_fused_failed", None) and carry is not None and carry.valid_for(tensors):
            try:
                return fused_stats(tensors, carry.stats)
            except FusedUnavailable as exc:
                fall_back(exc)
        return stats_fn(_cast_grads(tensors))

    def apply(tensors: dict, plan: dict) -> None:
        if not getattr(optimizer, "_fused_failed", None):
            try:
                carried = fused_apply(tensors, plan)
            except FusedUnavailable as exc:
                fall_back(exc)
            else:
                optimizer._fused_carry = _Carry(tensors, carried)
                return
        apply_fn(_cast_grads(tensors), plan)

    return stats, apply
