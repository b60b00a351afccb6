"""AdaOpt's tensor math: the reference implementation, one tensor at a time, and the foreach one.

Both do the same two things each step (the fused step in ``fused.py`` does them in one pass):

* ``*_stats``: the rows of per-tensor sums the controller reads (``STAT_ROWS``, see ``controller.py``), stacked on
  the device. The gradient's own reading (``after``, ``grad_sq``, ``before``) was summed by the last update.
* ``*_apply``: Adam's moments, decoupled weight decay and the update with the controller's per-tensor step sizes;
  on the subsample it writes this gradient's reading for the next step and keeps the direction taken.

``tests/test_optimizer.py`` holds the foreach path equal to the reference, and ``tests/test_fused.py`` the fused one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Subsample for the directional derivatives: blocks of SUBSAMPLE_BLOCK contiguous elements out of every
# SUBSAMPLE_PERIOD (contiguous blocks touch 1/16 of the cache lines; a plain stride of 16 floats would touch
# all of them). Tensors of at most SMALL_TENSOR elements are used whole. The C++ kernel takes these values
# from here (``fused_cpu.py``).
SUBSAMPLE_BLOCK = 16
SUBSAMPLE_PERIOD = 256
SMALL_TENSOR = 4096

# The rows of the statistics every path stacks, one column per tensor, in this order:
# grad_sq, after, before: the reading of the last step's gradient (|g|^2, g.u_old, and g.u before that update),
#   summed during its update on the subsample;
# m_sq, v_sum, param_sq, dir_sq: the state now (sums of m^2, v, theta^2 and the direction^2 on the subsample);
# grad_check: |g|^2 of this gradient, whole, only for its finiteness (the fused step masks instead: 0);
# masked: elements of the last fused update whose gradient was not finite (0 on the other paths).
STAT_ROWS = ("grad_sq", "after", "before", "m_sq", "v_sum", "param_sq", "dir_sq", "grad_check", "masked")
# The layout of state["reading"], written by each update for the next step.
READING_ROWS = ("after", "grad_sq", "pre")


# ---------------------------------------------------------------------------------------------------
# Helpers shared by every path
# ---------------------------------------------------------------------------------------------------
def state_dtype(p: Tensor) -> torch.dtype:
    # Low-precision parameters keep fp32 state: the EMAs of squared gradients underflow in bf16.
    return torch.float32 if p.dtype in (torch.bfloat16, torch.float16) else p.dtype


def local_shard(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def is_sharded(t: Tensor) -> bool:
    return hasattr(t, "to_local") and any(getattr(pl, "is_shard", lambda: False)() for pl in t.placements)


def subsample(t: Tensor) -> Tensor:
    """A fixed view of ~1/16 of a tensor's elements: blocks of 16 out of every 256 (small tensors whole)."""
    flat = t.reshape(-1)
    n = flat.numel()
    if n <= SMALL_TENSOR:
        return flat
    usable = (n // SUBSAMPLE_PERIOD) * SUBSAMPLE_PERIOD
    return flat[:usable].view(-1, SUBSAMPLE_PERIOD)[:, :SUBSAMPLE_BLOCK]


def bias_corrections(step: int, beta1: float, beta2: float) -> tuple[float, float]:
    return 1.0 - beta1**step, 1.0 - beta2**step


def cast_grads(tensors: dict) -> dict:
    """``tensors`` as the foreach and reference math read them: gradients in the state's dtype, and the subsample
    views (a gather for the fused step leaves low-precision gradients as they are and makes no subsample views)."""
    if len(tensors["g_subs"]) == len(tensors["grads"]):
        return tensors
    out = dict(tensors)
    out["grads"] = [g if g.dtype == m.dtype else g.to(m.dtype) for g, m in zip(tensors["grads"], tensors["exp_avgs"])]
    out["g_subs"] = [subsample(g) for g in out["grads"]]
    out["m_subs"] = [subsample(m) for m in tensors["exp_avgs"]]
    out["v_subs"] = [subsample(v) for v in tensors["exp_avg_sqs"]]
    out["p_subs"] = [subsample(local_shard(p).detach()).to(m.dtype) for p, m in zip(tensors["params"], tensors["exp_avgs"])]
    return out


# ---------------------------------------------------------------------------------------------------
# Reference implementation: one tensor at a time, reads like the math
# ---------------------------------------------------------------------------------------------------
def single_tensor_stats(tensors: dict) -> Tensor:
    rows: list[list[Tensor]] = [[], [], [], [], [], [], [], [], []]
    for g, m_sub, v_sub, p_sub, direction, reading in zip(
        tensors["grads"], tensors["m_subs"], tensors["v_subs"], tensors["p_subs"], tensors["directions"],
        tensors["readings"],
    ):
        after, grad_sq, before = reading  # the last step's, summed in its update (single_tensor_apply)
        rows[0].append(grad_sq)
        rows[1].append(after)
        rows[2].append(before)
        rows[3].append((m_sub**2).sum())  # sum of m^2 (bias-corrected on the host)
        rows[4].append(v_sub.sum())  # sum of v
        rows[5].append((p_sub**2).sum())  # |theta|^2 (subsample)
        rows[6].append((direction**2).sum())  # |previous step direction|^2 (subsample)
        rows[7].append((g * g).sum())  # over the whole tensor: the non-finite check (the fused step masks instead)
        rows[8].append(torch.zeros((), dtype=g.dtype, device=g.device))  # masked: the fused step's
    return torch.stack([torch.stack(r).to(rows[0][0].device) for r in rows])


def single_tensor_apply(tensors: dict, plan: dict) -> None:
    for i, (p, g, m, v, direction, state, (beta1, beta2)) in enumerate(zip(
        tensors["params"], tensors["grads"], tensors["exp_avgs"], tensors["exp_avg_sqs"],
        tensors["directions"], tensors["states"], tensors["betas"],
    )):
        # this step's reading for the next step's secant, on the subsample: b = g_t . u_{t-1}, |g_t|^2, and
        # a = g_{t-1} . u_{t-1} (kept from the last step in `pre`)
        g_sub = tensors["g_subs"][i]
        tensors["readings"][i].copy_(torch.stack([(g_sub * direction).sum(), (g_sub * g_sub).sum(), state["pre"]]))
        # Adam's moments
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        state["step"] += 1
        bc1, bc2 = bias_corrections(state["step"], beta1, beta2)
        denom = v.sqrt() / math.sqrt(bc2) + plan["eps"][i]
        u = (m / bc1) / denom  # Adam's direction
        # decoupled weight decay, then the step
        local = local_shard(p)
        if plan["decays"][i] != 0.0:
            local.mul_(1.0 - plan["decays"][i])
        local.add_((-plan["step_sizes"][i] * u).to(local.dtype))
        # the direction actually taken (weighted like the step), kept on the subsample for the next secant,
        # and the directional derivative before the step, a = g_t . u_t
        direction.copy_(plan["dir_weights"][i] * subsample(u))
        state["pre"].copy_((tensors["g_subs"][i] * direction).sum())


# ---------------------------------------------------------------------------------------------------
# Fast implementation: multi-tensor (foreach) kernels; tests hold it equal to the reference
# ---------------------------------------------------------------------------------------------------
def multi_tensor_stats(tensors: dict) -> Tensor:
    # Sums of squares as norms (one kernel launch per list instead of three per tensor); sum(v) is the
    # L1 norm since v >= 0. The gradient's reading was summed by the last update (multi_tensor_apply).
    check = torch._foreach_norm(tensors["grads"])  # the whole gradient: the non-finite check
    m_norm = torch._foreach_norm(tensors["m_subs"])
    v_sum = torch._foreach_norm(tensors["v_subs"], 1)
    p_norm = torch._foreach_norm(tensors["p_subs"])
    dir_norm = torch._foreach_norm(tensors["directions"])
    device = check[0].device
    rows = [torch.stack(r).to(device) for r in (m_norm, v_sum, p_norm, dir_norm, check)]
    for i in (0, 2, 3, 4):
        rows[i] = rows[i].square()
    after, grad_sq, before = torch.stack(tensors["readings"]).to(device).unbind(1)  # the last step's
    return torch.stack([grad_sq, after, before, rows[0], rows[1], rows[2], rows[3], rows[4],
                        torch.zeros_like(rows[4])])


def multi_tensor_apply(tensors: dict, plan: dict) -> None:
    # Betas are per group; the foreach kernels take one value, so groups with other betas (rare) are
    # handled by the reference loop.
    beta1, beta2 = tensors["betas"][0]
    params = [local_shard(p) for p in tensors["params"]]
    grads = tensors["grads"]
    m, v = tensors["exp_avgs"], tensors["exp_avg_sqs"]

    # This step's reading for the next step's secant (see single_tensor_apply), before the direction moves on.
    g_subs = tensors["g_subs"]
    after = [x.sum() for x in torch._foreach_mul(g_subs, tensors["directions"])]
    grad_sq = torch.stack(torch._foreach_norm(g_subs)).square()
    reading = torch.stack([torch.stack(after).to(grad_sq.device), grad_sq,
                           torch.stack(tensors["pre"]).to(grad_sq.device)], dim=1)
    torch._foreach_copy_(tensors["readings"], list(reading.unbind(0)))

    torch._foreach_lerp_(m, grads, 1.0 - beta1)
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
    for state in tensors["states"]:
        state["step"] += 1
    steps = [state["step"] for state in tensors["states"]]
    bc1 = [1.0 - beta1**k for k in steps]
    bc2_sqrt = [math.sqrt(1.0 - beta2**k) for k in steps]

    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(denom, plan["eps"])

    decays = plan["decays"]
    if any(x != 0.0 for x in decays):
        torch._foreach_mul_(params, [1.0 - x for x in decays])
    neg_steps = [-s / b for s, b in zip(plan["step_sizes"], bc1)]
    same_dtype = [p.dtype == mm.dtype for p, mm in zip(params, m)]
    if all(same_dtype):
        torch._foreach_addcdiv_(params, m, denom, neg_steps)
    else:
        # Low-precision parameters: the update is computed in the state's precision, then rounded once.
        updates = torch._foreach_div(m, denom)
        torch._foreach_mul_(updates, neg_steps)
        torch._foreach_add_(params, updates)

    # The direction actually taken (weighted like the step) on the subsample, and a = g_t . u_t.
    new_dirs = torch._foreach_div(tensors["m_subs"], [subsample(x) for x in denom])
    torch._foreach_mul_(new_dirs, [w / b for w, b in zip(plan["dir_weights"], bc1)])
    torch._foreach_copy_(tensors["directions"], new_dirs)
    pre = [x.sum() for x in torch._foreach_mul(tensors["g_subs"], tensors["directions"])]
    torch._foreach_copy_(tensors["pre"], pre)
