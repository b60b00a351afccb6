r"""AdaOpt's fused step: one pass over memory, on CPU and CUDA.

* ``fused_apply``: Adam's moments, decoupled weight decay and the parameter update, reading p, g, m, v and writing
  p, m, v once -- 28 bytes per fp32 parameter, AdamW's own traffic. On the subsample (~1/16 of each tensor) the
  same loop writes the new direction and sums what the next step's controller reads: this gradient's reading for
  the secant (g.d_old, |g|^2 and the last ``pre``, into ``state["reading"]``), the new ``pre``, and the state's
  m^2, v, p^2 and d^2 (returned).
* ``fused_stats``: the next step's statistics from those sums, before its one host sync. It reads no tensor memory.
  Where the state or parameters changed since the last fused update (a loaded state dict, an in-place edit), the
  foreach statistics stand in.

Non-finite gradients: nothing of the gradient is read before the update, so the update catches them. An element
whose gradient is not finite keeps its parameter, moments and direction, counts as a zero gradient in the sums,
and is counted; the next step adds one to ``skipped_steps``. The rest of the step is taken. (The foreach and
reference paths read the whole gradient first and skip the step.)

CPU: ``hf_adaopt/core/csrc/fused_cpu.cpp`` (``hf_adaopt.core.fused_cpu``), torch's fused-AdamW kernel pattern, built on first
use. CUDA: the same math as a ``torch.compile`` graph (inductor generates Triton kernels), with the per-step
numbers (bias corrections, step sizes, decays, direction weights, eps, betas) entering as one float64 tensor, so a new
step is a new value, not a new graph: each parameter layout is compiled once. (On CPU, inductor gives each
reduction its own loop over memory; see the README's step-cost section.)

Where the kernel cannot be built or compiled, the caller (``AdaOpt.step``) falls back to the foreach path, and says
so once in the log. The math is the reference's (``_single_tensor_stats`` / ``_single_tensor_apply`` in
``optimizer.py``); ``tests/test_fused.py`` holds both backends equal to it.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

from hf_adaopt.core.logs import get_logger
from hf_adaopt.core.functional import cast_grads, subsample

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
def _apply_graph(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                 directions: list[Tensor], pres: list[Tensor], readings: list[Tensor], scalars: Tensor) -> Tensor:
    """The reference's update (``_single_tensor_apply``) for every tensor, in place (CUDA's backend).

    With the bias corrections folded into the scalars (on the host, in float64), each element costs one square
    root and one division, as in torch's fused Adam: :math:`u = (\\hat m/c_1)/(\\sqrt{\\hat v}/c_2 + \\epsilon)
    = (c_2/c_1)\\, m / (\\sqrt v + c_2\\epsilon)`, :math:`c_2 = \\sqrt{1-\\beta_2^t}`. The update's direction is
    not kept as a tensor: the subsample of it that the next secant needs is recomputed from the new m and v.
    Writes this step's reading and ``pre``; returns the state's sums on the subsample (m^2, v, p^2, d^2) and the
    number of elements whose gradient was not finite.
    """
    carried: list[list[Tensor]] = [[], [], [], [], []]
    for i, (p, g, m, v, direction, pre, reading) in enumerate(
            zip(params, grads, exp_avgs, exp_avg_sqs, directions, pres, readings)):
        s = scalars[:, i].to(m.dtype)
        g = g.to(m.dtype)
        finite = torch.isfinite(g)  # elements with a non-finite gradient are left as they were, and counted
        g_sub = subsample(torch.where(finite, g, 0.0))  # ... and count as a zero gradient in the sums
        reading.copy_(torch.stack([(g_sub * direction).sum(), (g_sub * g_sub).sum(), pre.reshape(())]))
        m_new = m + s[_ONE_MINUS_BETA1] * (g - m)  # m.lerp_(g, 1 - beta1)
        v_new = v * s[_BETA2] + s[_ONE_MINUS_BETA2] * (g * g)
        update = m_new / (v_new.sqrt() + s[_EPS_C2])
        p_new = (p.to(m.dtype) * s[_KEEP] - s[_STEP_C2_C1] * update).to(p.dtype)  # low precision: one rounding
        p_new, m_new, v_new = torch.where(finite, p_new, p), torch.where(finite, m_new, m), torch.where(finite, v_new, v)
        p.copy_(p_new)
        m.copy_(m_new)
        v.copy_(v_new)
        m_sub, v_sub, p_sub = subsample(m_new), subsample(v_new), subsample(p_new).to(m.dtype)
        new_direction = torch.where(subsample(finite), s[_DIR_C2_C1] * m_sub / (v_sub.sqrt() + s[_EPS_C2]), direction)
        direction.copy_(new_direction)
        pre.copy_((g_sub * new_direction).sum().reshape(1))
        carried[0].append((m_sub * m_sub).sum().to(scalars.dtype))
        carried[1].append(v_sub.sum().to(scalars.dtype))
        carried[2].append((p_sub * p_sub).sum().to(scalars.dtype))
        carried[3].append((new_direction * new_direction).sum().to(scalars.dtype))
        carried[4].append((~finite).sum().to(scalars.dtype))
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


def _cpu(fn, *args):
    try:
        return fn(*args)
    except (RuntimeError, OSError, ImportError) as exc:  # no compiler, a failed build, tensors it refuses
        raise FusedUnavailable(f"the fused CPU kernel is unavailable: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------------- the stages
def fused_stats(tensors: dict, carried: Tensor) -> Tensor:
    """``_read_scalars``' rows from what the last fused update wrote: the reading (per-tensor state), and the
    state's sums and the masked-element count it returned (``carried``). Reads no tensor memory. ``grad_check``
    is 0: the update masks non-finite gradient elements instead of skipping the step."""
    reading = torch.stack(tensors["readings"]).to(carried.dtype)  # (n, 3): after, grad_sq, before
    after, grad_sq, before = reading.to(carried.device).unbind(1)
    m_sq, v_sum, param_sq, dir_sq, masked = carried
    return torch.stack([grad_sq, after, before, m_sq, v_sum, param_sq, dir_sq, torch.zeros_like(m_sq), masked]).to(
        tensors["exp_avgs"][0].dtype)


def fused_apply(tensors: dict, plan: dict) -> Tensor:
    """Same as ``_single_tensor_apply(tensors, plan)`` (state["step"] moved on the host), masking non-finite
    gradient elements. Returns the state's sums for the next step's ``fused_stats``."""
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
        from hf_adaopt.core.fused_cpu import cpu_apply

        carried = _cpu(cpu_apply, tensors, scalars)
    else:
        # `pre` enters as a 1-element view: a write to a 0-d float64 input is lost by torch.compile (AOTAutograd,
        # torch 2.13; float32 is not affected), a write to its 1-d view is not.
        carried = _run("apply", _apply_graph, [_plain(p) for p in tensors["params"]], tensors["grads"],
                       tensors["exp_avgs"], tensors["exp_avg_sqs"], tensors["directions"],
                       [x.view(1) for x in tensors["pre"]], tensors["readings"], scalars.to(device, non_blocking=True))
    for state in tensors["states"]:  # only once the update is done: a failed build leaves the step to foreach
        state["step"] += 1
    return carried


def _plain(p: Tensor) -> Tensor:
    # The parameter's data as a plain tensor: dynamo guards and mutates it like any other input.
    return p.detach()


class _Carry:
    """The state's sums a fused update computed for the next step, valid while the state and parameters are
    untouched: the same tensors (weak references: a loaded state dict replaces them) at the same versions
    (``Tensor._version`` counts in-place writes; writes through ``.data`` escape it, as they escape autograd).
    """

    def __init__(self, tensors: dict, stats: Tensor):
        watched = _watched(tensors)
        self.refs = [weakref.ref(t) for t in watched]
        self.versions = [t._version for t in watched]
        self.stats = stats

    def valid_for(self, tensors: dict) -> bool:
        watched = _watched(tensors)
        return len(watched) == len(self.refs) and all(
            r() is t and t._version == k for r, t, k in zip(self.refs, watched, self.versions))


def _watched(tensors: dict) -> list[Tensor]:
    return [*tensors["exp_avgs"], *tensors["exp_avg_sqs"], *tensors["directions"], *tensors["params"]]


def with_fallback(optimizer, stats_fn, apply_fn):
    """The fused stages for ``optimizer``, falling back to ``stats_fn`` / ``apply_fn`` (foreach) where the update
    cannot be built; after a failure the optimizer stays on the fallback (``optimizer._fused_failed`` says why).

    The statistics come from the last fused update; at the first step, and whenever the state or parameters changed
    outside it (a loaded state dict, a skipped step, an in-place edit), ``stats_fn`` computes them from the tensors.
    """

    def fall_back(exc: Exception) -> None:
        optimizer._fused_failed = str(exc)
        logger.warning("AdaOpt: the fused step is unavailable, using the foreach step instead (%s)", exc)

    def stats(tensors: dict) -> Tensor:
        carry = optimizer.__dict__.pop("_fused_carry", None)
        if carry is not None and carry.valid_for(tensors):
            return fused_stats(tensors, carry.stats)
        return stats_fn(cast_grads(tensors))

    def apply(tensors: dict, plan: dict) -> None:
        if not getattr(optimizer, "_fused_failed", None):
            try:
                carried = fused_apply(tensors, plan)
            except FusedUnavailable as exc:
                fall_back(exc)
            else:
                optimizer._fused_carry = _Carry(tensors, carried)
                return
        apply_fn(cast_grads(tensors), plan)

    return stats, apply
