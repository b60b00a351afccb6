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

When it runs: ``fused=True``, or by default (``fused=None`` with ``foreach`` unset) on CPU; on CUDA the compiled graph
is opt-in (``fused=True``) until a GPU run has measured it. Where it cannot run, the foreach step takes the step, and
every such fallback is said once per optimizer with its reason (``decline_reason``): tensors the fused step does not
take (non-contiguous, DTensor shards, more than one kind of device) -- a warning under ``fused=True``, an info line by
default -- and a kernel that cannot be built or compiled (a warning, and the optimizer stays on foreach). A fallback
never applies a step twice: the foreach step takes over only the tensors the fused call did not write (each tensor's
version counters say which it wrote; the CPU kernel writes each tensor whole or not at all), and an error while the
compiled graph runs is raised, not retried.

The math is the reference's (``single_tensor_stats`` / ``single_tensor_apply`` in ``functional.py``);
``tests/test_fused.py`` holds both backends equal to it.
"""

from __future__ import annotations

import logging
import math
import weakref

import torch
from torch import Tensor

from hf_adaopt.core.functional import READING_ROWS, STAT_ROWS, cast_grads, subsample
from hf_adaopt.core.logs import get_logger

__all__ = ["CARRIED_ROWS", "SCALAR_ROWS", "FusedUnavailable", "decline_reason", "fused_apply", "fused_stats",
           "use_fused", "with_fallback"]

logger = get_logger(__name__)

# Rows of the per-step scalar table (one column per tensor), computed on the host in float64 and cast to the state's
# dtype in the update; the CPU kernel's enum (kOneMinusBeta1 ...) is generated from this tuple (fused_cpu.py).
SCALAR_ROWS = ("one_minus_beta1", "beta2", "one_minus_beta2", "eps_c2", "keep", "step_c2_c1", "dir_c2_c1")
# Rows the update returns (one column per tensor) for the next step's statistics: the state's sums on the subsample
# after the update, and the number of elements whose gradient was not finite (kCarriedMSq ... in the kernel).
CARRIED_ROWS = ("m_sq", "v_sum", "param_sq", "dir_sq", "masked")


class FusedUnavailable(RuntimeError):
    """The fused step cannot run here (no compiler, a failed compile, or tensors it does not handle)."""


def decline_reason(params: list[Tensor], *, explicit: bool) -> tuple[str, str] | None:
    """Why the fused step does not take these parameters, as (kind, sentence), or None if it takes them: plain
    contiguous tensors, all on the CPU, or all on CUDA under ``fused=True`` (``explicit``)."""
    if torch.compiler.is_compiling():
        return "compiling", ""  # inside a user's torch.compile the foreach step is traced into their graph instead
    kinds = sorted({p.device.type for p in params})
    if len(kinds) > 1:
        return "devices", f"the parameters are on more than one kind of device ({', '.join(kinds)})"
    if kinds and kinds[0] not in ("cpu", "cuda"):
        return "device", f"the parameters are on {kinds[0]}; the fused step runs on CPU and CUDA"
    if kinds == ["cuda"] and not explicit:
        return "cuda", ("on CUDA the fused step (a torch.compile graph) is opt-in until a GPU run has measured it; "
                        "fused=True turns it on")
    for kind, bad in (("DTensor shards (FSDP2)", [i for i, p in enumerate(params) if hasattr(p, "to_local")]),
                      ("not contiguous", [i for i, p in enumerate(params) if not p.is_contiguous()])):
        if bad:
            p = params[bad[0]]
            return kind, (f"{len(bad)} of {len(params)} parameters are {kind} (the first: parameter {bad[0]} of "
                          f"this step, shape {tuple(p.shape)}, stride {tuple(p.stride())})")
    return None


def use_fused(optimizer, params: list[Tensor], *, explicit: bool) -> bool:
    """Whether ``optimizer`` takes this step fused. Where it does not, it says why, once per kind of reason (a
    warning where ``fused=True`` asked for it, an info line by default), and keeps the sentence in
    ``optimizer._fused_declined``."""
    declined = decline_reason(params, explicit=explicit)
    optimizer._fused_declined = declined[1] if declined else None
    if declined and declined[1]:
        said = optimizer.__dict__.setdefault("_fused_said", set())
        if declined[0] not in said:
            said.add(declined[0])
            logger.log(logging.WARNING if explicit else logging.INFO,
                       "AdaOpt: the foreach step instead of the fused one: %s", declined[1])
    return declined is None


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
    carried: dict[str, list[Tensor]] = {name: [] for name in CARRIED_ROWS}
    for i, (p, g, m, v, direction, pre, reading) in enumerate(
            zip(params, grads, exp_avgs, exp_avg_sqs, directions, pres, readings)):
        s = dict(zip(SCALAR_ROWS, scalars[:, i].to(m.dtype).unbind()))
        g = g.to(m.dtype)
        finite = torch.isfinite(g)  # elements with a non-finite gradient are left as they were, and counted
        g_sub = subsample(torch.where(finite, g, 0.0))  # ... and count as a zero gradient in the sums
        read = {"after": (g_sub * direction).sum(), "grad_sq": (g_sub * g_sub).sum(), "pre": pre.reshape(())}
        reading.copy_(torch.stack([read[name] for name in READING_ROWS]))
        m_new = m + s["one_minus_beta1"] * (g - m)  # m.lerp_(g, 1 - beta1)
        v_new = v * s["beta2"] + s["one_minus_beta2"] * (g * g)
        update = m_new / (v_new.sqrt() + s["eps_c2"])
        p_new = (p.to(m.dtype) * s["keep"] - s["step_c2_c1"] * update).to(p.dtype)  # low precision: one rounding
        p_new, m_new = torch.where(finite, p_new, p), torch.where(finite, m_new, m)
        v_new = torch.where(finite, v_new, v)
        p.copy_(p_new)
        m.copy_(m_new)
        v.copy_(v_new)
        m_sub, v_sub, p_sub = subsample(m_new), subsample(v_new), subsample(p_new).to(m.dtype)
        new_direction = torch.where(subsample(finite), s["dir_c2_c1"] * m_sub / (v_sub.sqrt() + s["eps_c2"]),
                                    direction)
        direction.copy_(new_direction)
        pre.copy_((g_sub * new_direction).sum().reshape(1))
        sums = {"m_sq": m_sub * m_sub, "v_sum": v_sub, "param_sq": p_sub * p_sub,
                "dir_sq": new_direction * new_direction, "masked": ~finite}
        for name in CARRIED_ROWS:
            carried[name].append(sums[name].sum().to(scalars.dtype))
    return torch.stack([torch.stack(carried[name]) for name in CARRIED_ROWS])


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
        compiled = _compiled_fn(name, fn)
    except Exception as exc:  # no torch.compile to be had: the caller falls back to foreach
        raise FusedUnavailable(f"torch.compile of the fused {name} failed: {type(exc).__name__}: {exc}") from exc
    try:
        return compiled(*args)
    except torch._dynamo.exc.TorchDynamoException as exc:
        # tracing or compiling failed (inductor's errors come wrapped as BackendCompilerFailed): before the graph ran.
        # Any other error came while it ran, perhaps after its writes, and is raised as it is: a step is never retried.
        raise FusedUnavailable(f"torch.compile of the fused {name} failed: {type(exc).__name__}: {exc}") from exc


def _cpu(fn, *args):
    try:
        return fn(*args)
    except (RuntimeError, OSError, ImportError) as exc:  # no compiler, a failed build, tensors it refuses
        raise FusedUnavailable(f"the fused CPU kernel is unavailable: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------------- the stages
def fused_stats(tensors: dict, carried: Tensor) -> Tensor:
    """The statistics' rows (``STAT_ROWS``) from what the last fused update wrote: the reading (per-tensor state),
    and the state's sums and the masked-element count it returned (``carried``, ``CARRIED_ROWS``). Reads no tensor
    memory. ``grad_check`` is 0: the update masks non-finite gradient elements instead of skipping the step."""
    reading = torch.stack(tensors["readings"]).to(carried.dtype).to(carried.device)  # (n, len(READING_ROWS))
    rows = dict(zip(READING_ROWS, reading.unbind(1)))
    rows["before"] = rows.pop("pre")  # the pre the reading kept is the secant's "before"
    rows.update(zip(CARRIED_ROWS, carried.unbind(0)))
    rows["grad_check"] = torch.zeros_like(rows["m_sq"])
    return torch.stack([rows[name] for name in STAT_ROWS]).to(tensors["exp_avgs"][0].dtype)


def fused_apply(tensors: dict, plan: dict) -> Tensor:
    """Same as ``single_tensor_apply(tensors, plan)``, masking non-finite gradient elements. Returns the state's
    sums for the next step's ``fused_stats``."""
    carried = _fused_update(tensors, plan)
    for state in tensors["states"]:
        state["step"] += 1
    return carried


def _fused_update(tensors: dict, plan: dict) -> Tensor:
    """The update on the device, in place; ``state["step"]`` is left to the caller (moved on the host)."""
    table: dict[str, list[float]] = {name: [] for name in SCALAR_ROWS}
    for i, state in enumerate(tensors["states"]):
        beta1, beta2 = tensors["betas"][i]
        k = state["step"] + 1
        c1, c2 = 1.0 - beta1**k, math.sqrt(1.0 - beta2**k)  # m_hat = m / c1, sqrt(v_hat) = sqrt(v) / c2
        table["one_minus_beta1"].append(1.0 - beta1)
        table["beta2"].append(beta2)
        table["one_minus_beta2"].append(1.0 - beta2)
        table["eps_c2"].append(plan["eps"][i] * c2)
        table["keep"].append(1.0 - plan["decays"][i])
        table["step_c2_c1"].append(plan["step_sizes"][i] * c2 / c1)
        table["dir_c2_c1"].append(plan["dir_weights"][i] * c2 / c1)
    device = tensors["exp_avgs"][0].device
    scalars = torch.tensor([table[name] for name in SCALAR_ROWS], dtype=torch.float64)
    if _backend(tensors) == "cpu":
        from hf_adaopt.core.fused_cpu import cpu_apply

        carried = _cpu(cpu_apply, tensors, scalars)
    else:
        # `pre` enters as a 1-element view: a write to a 0-d float64 input is lost by torch.compile (AOTAutograd,
        # torch 2.13; float32 is not affected), a write to its 1-d view is not.
        carried = _run("apply", _apply_graph, [_plain(p) for p in tensors["params"]], tensors["grads"],
                       tensors["exp_avgs"], tensors["exp_avg_sqs"], tensors["directions"],
                       [x.view(1) for x in tensors["pre"]], tensors["readings"], scalars.to(device, non_blocking=True))
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
        self.states = list(tensors["states"])  # whose sums the columns are (for checkpoints)

    def current(self) -> bool:
        """Nothing it watches has been replaced or written since the update."""
        return all(r() is not None and r()._version == k for r, k in zip(self.refs, self.versions))

    def valid_for(self, tensors: dict) -> bool:
        watched = _watched(tensors)
        return len(watched) == len(self.refs) and all(
            r() is t and t._version == k for r, t, k in zip(self.refs, watched, self.versions))


def _watched(tensors: dict) -> list[Tensor]:
    return [*tensors["exp_avgs"], *tensors["exp_avg_sqs"], *tensors["directions"], *tensors["params"]]


# Per-parameter state: the fused update's float64 sums for the next step (a column of ``carried``), written when a
# state dict is taken (not every step) so that they reach checkpoints; ``AdaOpt.load_state_dict`` puts them back
# unrounded (the base class casts state to the parameter's dtype).
SUMS_KEY = "fused_sums"


def keep_sums_for_checkpoint(optimizer) -> None:
    """Put the last fused update's sums in the per-parameter state, if they still describe it (else none). Loaded sums
    that no step has read yet are kept as they are."""
    if optimizer.__dict__.get("_sums_loaded"):
        return
    for state in optimizer.state.values():
        state.pop(SUMS_KEY, None)
    carry = optimizer.__dict__.get("_fused_carry")
    if carry is not None and carry.current():
        for state, column in zip(carry.states, carry.stats.unbind(1)):
            state[SUMS_KEY] = column


def with_fallback(optimizer, stats_fn, apply_fn):
    """The fused stages for ``optimizer``, falling back to ``stats_fn`` / ``apply_fn`` (foreach) where the update
    cannot be built; after a failure the optimizer stays on the fallback (``optimizer._fused_failed`` says why).

    The statistics come from the last fused update; at the first step, and whenever the state or parameters changed
    outside it (a loaded state dict, a skipped step, an in-place edit), ``stats_fn`` computes them from the tensors.
    A failed update hands ``apply_fn`` only the tensors it did not write: no tensor takes the step twice.
    """

    def fall_back(exc: Exception, written: int, n: int) -> None:
        optimizer._fused_failed = str(exc)
        done = (f"; it failed after writing {written} of {n} tensors, and the foreach step took the step for the "
                "other ones only" if written else "")
        logger.warning("AdaOpt: the fused step is unavailable, using the foreach step instead (%s)%s", exc, done)

    def stats(tensors: dict) -> Tensor:
        carry = optimizer.__dict__.pop("_fused_carry", None)
        if carry is not None and carry.valid_for(tensors):
            return fused_stats(tensors, carry.stats)
        if optimizer.__dict__.pop("_sums_loaded", False) and all(SUMS_KEY in st for st in tensors["states"]):
            # a checkpoint's: the sums the last fused update before it wrote, so that a resumed run reads what the
            # uninterrupted one reads (the foreach sums differ in the last bits)
            return fused_stats(tensors, torch.stack([st[SUMS_KEY] for st in tensors["states"]], 1))
        return stats_fn(cast_grads(tensors))

    def apply(tensors: dict, plan: dict) -> None:
        if not getattr(optimizer, "_fused_failed", None):
            versions = _versions(tensors)
            try:
                carried = _fused_update(tensors, plan)
            except FusedUnavailable as exc:
                # Which tensors the call wrote: their version counters moved (the CPU kernel moves them as it
                # writes each tensor, whole; a compiled graph's errors before it runs write nothing).
                written = [i for i, k in enumerate(_versions(tensors)) if k != versions[i]]
                for i in written:
                    tensors["states"][i]["step"] += 1
                fall_back(exc, len(written), len(versions))
                rest = sorted(set(range(len(versions))) - set(written))
                if rest:  # this step's masked-element count of the written tensors is lost with the call's result
                    tensors, plan = _select(tensors, rest), {k: [v[i] for i in rest] for k, v in plan.items()}
                    apply_fn(cast_grads(tensors), plan)
                return
            for state in tensors["states"]:
                state["step"] += 1
            optimizer._fused_carry = _Carry(tensors, carried)
            return
        apply_fn(cast_grads(tensors), plan)

    return stats, apply


def _versions(tensors: dict) -> list[tuple[int, ...]]:
    # each tensor's in-place write count: its parameter, moments and direction
    return [(p._version, m._version, v._version, d._version) for p, m, v, d in
            zip(tensors["params"], tensors["exp_avgs"], tensors["exp_avg_sqs"], tensors["directions"])]


def _select(tensors: dict, keep: list[int]) -> dict:
    """``tensors`` for the tensors at the indices ``keep`` (every per-tensor list; the empty ones stay empty)."""
    n = len(tensors["params"])
    return {k: [v[i] for i in keep] if isinstance(v, list) and len(v) == n else v for k, v in tensors.items()}
