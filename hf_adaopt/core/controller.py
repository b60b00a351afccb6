"""AdaOpt's scalar controller: from one step's statistics to the per-tensor step sizes. Pure Python, on the host.

``plan_step`` runs the concerns in order, each a pure function of its inputs (tested one by one in
``tests/test_controller.py``):

1. ``finiteness``     -- skip a step whose numbers are not finite; count the fused step's masked elements
2. ``initial_scale``  -- the first step's base scale d0 (Polyak's step from the loss, or from ``assumed_loss``)
3. ``signal_shares``  -- the gradient's signal share S/(S+N) per tensor (McCandlish et al. 2018), and the gate
   ``noise_scaled_start`` -- at the first trusted reading of that share past warmup, d0 scaled by floor / share if
   below the floor (``linear_secant``: the r a linear loss reads at that share, the secant's noise model)
4. ``secant_factor``  -- the landscape factor mu from the last step's directional derivatives
5. ``loss_guard``     -- halve d on a loss spike, and never grow past that again
6. ``progress_ceiling`` -- d grows past d0 at most as far as the loss has fallen, or while the secant reads linear
7. ``trust_bound``    -- the first version's caps relative to the weights' RMS (off by default)
8. ``step_sizes``     -- s * d * phi per tensor, s the group's lr over the reference lr

The math is in the docstring of ``hf_adaopt.core.optimizer``. The settings a plan reads come from param group 0
(``settings``): the public ones of ``AdaOpt(...)`` and the private ones of ``_variants.SETTINGS``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from hf_adaopt.core.functional import STAT_ROWS, bias_corrections, is_sharded

# The secant ratio r is clamped to [SECANT_R_MIN, SECANT_R_MAX]: one step changes the base scale by at most
# a factor 4**adapt_rate up (r = 3/4) or down (r = -3): 1.74x per step at the default adapt_rate 0.4.
SECANT_R_MAX = 0.75
SECANT_R_MIN = -3.0
# r >= 1/2 means the directional derivative kept at least half its value across the step: on a quadratic the
# step was at most half the greedy optimum, so growing is safe even if noise inflated the reading.
TRUSTED_GROWTH_R = 0.5
# The reading allowed for noise (``noise_linear_reading``): linear if r is at least this fraction of what a linear
# loss reads at the measured signal share, and trusted only while that is at least 1 - this (below it the reading is
# over nine parts noise to one of signal, and dividing it out would amplify the noise).
NOISE_LINEAR_FRACTION = 0.9
# The base scale never leaves this band, whatever the statistics say.
MIN_BASE_SCALE = 1e-10
MAX_BASE_SCALE = 10.0
# The first version's trust bound (``trust_bounds``, off by default): no step moves the weight matrices by more
# than this fraction of their RMS (LARS/LAMB's trust ratio, one global number) ...
MAX_UPDATE_RATIO = 0.01
# ... and the base scale itself stays below this fraction of their RMS. Measured on digits at 20 epochs (v1):
# without it, late flat stretches grew d to 0.2 and a single large gradient then undid the training.
MAX_SCALE_RATIO = 0.03
# EMA factor of the loss guard's running mean and variance.
LOSS_EMA_BETA = 0.98
# A spike must also be a rise of at least this fraction of the running mean (on a plateau the loss's
# standard deviation is tiny, and a 4-sigma rise is no sign of divergence).
LOSS_SPIKE_MIN_RISE = 0.1
# Multiplier applied to the base scale when the loss spikes.
LOSS_SPIKE_BACKOFF = 0.5

# The share of a known horizon (``total_steps``) over which the step decays linearly to 0, the controller's step
# held: a warmup-stable-decay schedule (Hagele et al. 2024 find 10-20% of the run at its end does what a cosine
# does; the decay at the end does the work).
COOLDOWN_FRACTION = 0.2

NUM_STATS = len(STAT_ROWS)

# The controller's running numbers: one set for the optimizer, a copy in every param group (for logging and
# checkpoints: the state dict saves the groups).
CONTROLLER_DEFAULTS = {
    "base_scale": None,  # d; None until the first step
    "reference_lr": None,  # the largest lr the groups were created with, fixed at the first step
    "landscape_factor": 1.0,  # last mu
    "variance_factor": 1.0,  # numel-weighted mean signal fraction S / (S + N) of the last step
    "effective_lr": None,  # s * d of the last step
    "secant_after": 0.0,  # EMA of b = g_t . u_{t-1} / |g_t|
    "secant_before": 0.0,  # EMA of a = g_{t-1} . u_{t-1} / |g_{t-1}|
    "prev_grad_norm": 0.0,
    "loss_mean": 0.0,
    "loss_var": 0.0,
    "loss_count": 0,
    "meta_step": 0,  # steps taken (skipped ones excluded)
    "skipped_steps": 0,
    "loss_spikes": 0,
    "last_spike": 0,  # meta_step of the last spike: one spike halves the step once, then a cool-down
    "scale_ceiling": None,  # the base scale after the last spike's backoff: the step never grows past it again
    "scale_start": None,  # the first step's base scale (progress ceiling)
    "loss_start": None,  # the first step's loss (progress ceiling)
    "loss_fast": 0.0,  # EMA (beta1) of the loss, not bias-corrected (progress ceiling)
    "loss_fast_count": 0,
    "scale_log_mean": None,  # tracking: EMA (beta1) of log d over the steps the secant EMAs read
    "scale_lag": None,  # tracking: [d_{t-1}, d_{t-2}]: the reading at step t is about the step taken at t-2
    "ramp_done": False,  # tracking with ramp: the reading stopped being linear
    "cooldown_begun": None,  # earned_cooldown: the last step before the decay, once it has begun
    "start_floor": None,  # noise_scaled_start: the scaled start, under which the progress ceiling never holds d
    "start_checked": False,  # noise_scaled_start: the start has been read against the signal share (once)
}


# ---------------------------------------------------------------------------------------------------
# The one host sync
# ---------------------------------------------------------------------------------------------------
def read_scalars(stats: Tensor, tensors: dict, loss: Tensor | float | None,
                 first_l1: Tensor | None = None) -> list[float]:
    """Reduce the stacked statistics across ranks (one all_reduce) and bring them to the host (one sync).

    Layout: the ``STAT_ROWS`` x n tensors, flattened, then the loss, then (first step with a loss only) sum |g|
    per tensor. Replicated tensors (DDP) hold the same value on every rank and are averaged; shards (FSDP2
    DTensors) hold partial sums and are summed; the loss is a per-rank value and is averaged.
    """
    loss_t = torch.zeros((), dtype=stats.dtype, device=stats.device) if loss is None else (
        torch.as_tensor(loss, dtype=stats.dtype).to(stats.device))
    parts = [stats.reshape(-1), loss_t.reshape(1)] + ([] if first_l1 is None else [first_l1.to(stats.device)])
    vec = torch.cat(parts)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            sharded = [is_sharded(p) for p in tensors["params"]]
            torch.distributed.all_reduce(vec, op=torch.distributed.ReduceOp.SUM)
            per_tensor = [1.0 if s else float(world) for s in sharded]
            divisor = torch.tensor(per_tensor * NUM_STATS + [float(world)] + (per_tensor if first_l1 is not None
                                                                               else []),
                                   dtype=vec.dtype, device=vec.device)
            vec = vec / divisor
    return vec.tolist()  # this is the step's single CPU-GPU sync point


def unpack(values: Sequence[float], n: int) -> tuple[dict[str, list[float]], float, list[float]]:
    """``read_scalars``' vector as (rows by name, the loss, sum |g| per tensor or [])."""
    rows = {name: list(values[i * n:(i + 1) * n]) for i, name in enumerate(STAT_ROWS)}
    return rows, values[NUM_STATS * n], list(values[NUM_STATS * n + 1:])


# ---------------------------------------------------------------------------------------------------
# The concerns, one pure function each
# ---------------------------------------------------------------------------------------------------
def finiteness(rows: dict[str, list[float]], loss: float, l1: Sequence[float]) -> tuple[bool, bool, bool]:
    """(skip, masked, reading_ok): skip a step whose state, gradient check or loss is not finite; ``masked``: the
    last fused update left non-finite gradient elements as they were (a skipped step, counted one step late);
    ``reading_ok``: the last gradient's reading did not overflow (else the secant skips it)."""
    now = [*rows["m_sq"], *rows["v_sum"], *rows["param_sq"], *rows["dir_sq"], *rows["grad_check"],
           *rows["masked"], loss, *l1]
    skip = not math.isfinite(sum(now))  # a NaN or inf anywhere makes the sum non-finite
    reading_ok = math.isfinite(sum([*rows["grad_sq"], *rows["after"], *rows["before"]]))
    return skip, sum(rows["masked"]) > 0.0, reading_ok


def initial_scale(settings: dict, reference_lr: float, param_sq: float, numel: float, loss: float | None,
                  l1: float) -> float:
    """The first step's base scale d0.

    With a positive loss and ``initial_decrease`` c: Polyak's step for Adam's first direction sign(g), whose
    first-order loss decrease is d * sum|g| -- d0 = c * loss / sum|g| (the floor f* taken as 0). Otherwise
    ``initial_scale`` of the weight matrices' RMS (``param_sq`` / ``numel`` on the subsample), or the lr when that
    is None or the matrices are all zero.
    """
    initial = settings["initial_scale"]
    d = reference_lr if initial is None or param_sq <= 0.0 else initial * math.sqrt(param_sq / numel)
    if settings["initial_decrease"] and loss is not None and loss > 0.0 and l1 > 0.0:
        d = settings["initial_decrease"] * loss / l1
    return d


def signal_shares(steps: Sequence[int], betas: Sequence[tuple[float, float]], numels: Sequence[int],
                  m_sq: Sequence[float], v_sum: Sequence[float], *, warmup: int, floors: Sequence[float],
                  powers: Sequence[float]) -> tuple[list[float], float, float, float]:
    """(phi per tensor, the numel-weighted signal share S/(S+N), the same for the momentum S/(S+c_k N), and the
    signal share without the floors: the secant's noise model reads that one, ``noise_linear_reading``).

    From the EMAs before this step's gradient: with c_k the variance of the debiased EMA m_hat relative to the
    gradient's, E[m_hat^2] = S + c_k sigma^2 and E[v_hat] = S + sigma^2. ``floors`` is ``min_variance_factor`` per
    tensor; ``powers`` the per-tensor ``variance_power`` p of the gate phi ~ share^p, normalised to mean 1: the
    gate moves the step between tensors at a constant mean (the overall scale is the landscape's job).
    """
    fractions, averaged, phis, raws = [], [], [], []
    for i, k in enumerate(steps):
        fraction = 1.0  # S / (S + N): the share of the gradient that is signal
        smoothed = 1.0  # S / (S + c_k N): the same for the momentum, which averages 1/(1-beta1) gradients
        raw = 1.0
        if k >= warmup and k > 0:
            b1, b2 = betas[i]
            bc1, bc2 = bias_corrections(k, b1, b2)
            m_hat_sq, v_hat = m_sq[i] / bc1**2, v_sum[i] / bc2
            ck = (1.0 - b1) * (1.0 + b1**k) / ((1.0 + b1) * (1.0 - b1**k))
            noise = max(v_hat - m_hat_sq, 0.0) / max(1.0 - ck, 1e-12)
            signal = max(m_hat_sq - ck * noise, 0.0)
            if signal + noise > 0.0:
                raw = signal / (signal + noise)
                fraction = max(raw, floors[i])
                smoothed = max(signal / (signal + ck * noise), floors[i])
        fractions.append(fraction)
        raws.append(raw)
        averaged.append(smoothed)
        phis.append(fraction ** powers[i])
    total = float(sum(numels)) or 1.0
    signal_fraction = sum(w * f for w, f in zip(numels, fractions)) / total
    momentum_fraction = sum(w * f for w, f in zip(numels, averaged)) / total
    mean_gate = sum(w * f for w, f in zip(numels, phis)) / total
    raw_fraction = sum(w * f for w, f in zip(numels, raws)) / total
    return [f / mean_gate for f in phis], signal_fraction, momentum_fraction, raw_fraction


def secant_ema(c: dict, t: int, beta1: float, grad_norm: float, after: float, before: float) -> dict:
    """The EMAs of the directional derivatives after (b) and before (a) the last step, each divided by the norm
    of the gradient it was measured with (so clipping by max_grad_norm does not bias r = b/a)."""
    if t >= 2 and grad_norm > 0.0 and c["prev_grad_norm"] > 0.0:
        return {"secant_after": beta1 * c["secant_after"] + (1.0 - beta1) * after / grad_norm,
                "secant_before": beta1 * c["secant_before"] + (1.0 - beta1) * before / c["prev_grad_norm"],
                "prev_grad_norm": grad_norm}
    return {"secant_after": c["secant_after"], "secant_before": c["secant_before"], "prev_grad_norm": grad_norm}


def secant_factor(settings: dict, secant_after: float, secant_before: float, t: int, *, signal_fraction: float,
                  rate_fraction: float) -> float:
    """The landscape factor mu = ((1 - r*) / (1 - r))^(kappa rho), r the ratio of the secant EMAs.

    On a quadratic the greedy (one-step) best step along u is 1/(1 - r) times the one taken; the fixed point is
    r = r* (``secant_target``, scaled by the signal share when ``signal_scaled_target``: noise alone reads r ~ 0,
    and a target away from 0 would drift the step at the noise floor). A secant measured with noisy gradients is
    itself noisy: shrinking (and, with ``symmetric_damping``, growing) is damped by the signal share
    ``rate_fraction`` (``trusted_growth``: except a reading r >= TRUSTED_GROWTH_R, which noise alone rarely makes).
    """
    if t <= settings["warmup_steps"] or secant_before == 0.0:
        return 1.0
    kappa = settings["adapt_rate"]
    target = settings["secant_target"]
    if settings["signal_scaled_target"]:
        target *= signal_fraction
    r = secant_after / secant_before if secant_before > 0.0 else SECANT_R_MIN
    r = min(max(r, SECANT_R_MIN), SECANT_R_MAX)
    trusted = settings["trusted_growth"] and r >= TRUSTED_GROWTH_R
    damped = r <= target or (settings["symmetric_damping"] and not trusted)
    return ((1.0 - target) / (1.0 - r)) ** (kappa * rate_fraction if damped else kappa)


def tracked_scale(d: float, c: dict, t: int, settings: dict, *, signal_fraction: float,
                  rate_fraction: float, read: bool) -> tuple[float, dict]:
    """(d, updates), tracking: the secant EMAs read steps of the (log-)mean size d_bar, so the greedy step they
    measured is d_bar / (1 - r); d moves towards (1 - r*) times that, by the fraction kappa rho of the log gap per
    step, growing at most ``window_growth`` (2x) per 1/(1 - beta1) steps (the readings' memory: faster growth
    outruns them) and shrinking at most 2x per step. ``read``: the secant EMAs took a new reading this step."""
    beta1 = settings["betas"][0]
    lag = list(c["scale_lag"] or [d, d])
    log_mean = c["scale_log_mean"]
    if read:
        about = math.log(lag[1])  # the step the new reading is about
        log_mean = about if log_mean is None else beta1 * log_mean + (1.0 - beta1) * about
    out = {"scale_log_mean": log_mean}
    new = d
    if (settings["ramp"] and t <= settings["warmup_steps"] and read and c["secant_before"] > 0.0
            and not c["ramp_done"]):
        # an lr range test while the EMAs fill: double while the loss is still linear along the step
        if linear_reading(c["secant_after"], c["secant_before"]):
            new = 2.0 * d
        else:
            out["ramp_done"] = True
    elif t > settings["warmup_steps"] and c["secant_before"] != 0.0 and log_mean is not None:
        target = settings["secant_target"] * (signal_fraction if settings["signal_scaled_target"] else 1.0)
        r = c["secant_after"] / c["secant_before"] if c["secant_before"] > 0.0 else SECANT_R_MIN
        r = min(max(r, SECANT_R_MIN), SECANT_R_MAX)
        greedy = log_mean + math.log((1.0 - target) / (1.0 - r))
        move = settings["adapt_rate"] * rate_fraction * (greedy - math.log(d))
        move = min(max(move, -math.log(2.0)), (1.0 - beta1) * math.log(settings["window_growth"]))
        new = d * math.exp(move)
    out["scale_lag"] = [new, lag[0]]
    return new, out


def cooldown_start(total_steps: int) -> int:
    """The last step before the decay: the decay takes the last COOLDOWN_FRACTION of ``total_steps``."""
    return total_steps - max(1, round(COOLDOWN_FRACTION * total_steps))


def cooldown_factor(t: int, total_steps: int | None, start: int | None = None) -> float:
    """The decay multiplier of step t (1-based) of ``total_steps``: 1 up to step ``start`` (default
    ``cooldown_start``), then linear to 0 (at step total_steps it is 1 / (decay steps + 1), never 0)."""
    if not total_steps:
        return 1.0
    start = cooldown_start(total_steps) if start is None else start
    if t <= start:
        return 1.0
    return max(total_steps + 1 - t, 1) / (total_steps - start + 1)


def loss_guard(d: float, loss: float, c: dict, t: int, *, warmup: int, threshold: float) -> tuple[float, dict]:
    """(d, updates): a loss ``threshold`` standard deviations (and LOSS_SPIKE_MIN_RISE) above its running mean halves
    d and sets a ceiling at the halved value (as an lr range test keeps a fraction of the lr at which the loss blew
    up); then the guard rests for ``warmup`` steps. Also moves the running mean and variance."""
    out = {}
    cooling = t - c["last_spike"] <= warmup
    if (c["loss_count"] > warmup and t > warmup and not cooling
            and loss > c["loss_mean"] + max(threshold * math.sqrt(c["loss_var"]),
                                            LOSS_SPIKE_MIN_RISE * abs(c["loss_mean"]))):
        d *= LOSS_SPIKE_BACKOFF
        out.update(scale_ceiling=d, loss_spikes=c["loss_spikes"] + 1, last_spike=t)
    delta = loss - c["loss_mean"]
    if c["loss_count"] == 0:
        out.update(loss_mean=loss, loss_var=0.0)
    else:
        out.update(loss_mean=c["loss_mean"] + (1.0 - LOSS_EMA_BETA) * delta,
                   loss_var=LOSS_EMA_BETA * (c["loss_var"] + (1.0 - LOSS_EMA_BETA) * delta * delta))
    out["loss_count"] = c["loss_count"] + 1
    return d, out


def progress_ceiling(d: float, loss: float, c: dict, *, beta1: float, power: float) -> tuple[float, dict]:
    """(d, updates): d <= d0 (first loss / recent loss)^power, the recent loss an EMA (beta1) of the loss. Growth
    must be earned: on a plateau the secant reads every step as too short. With ``ceiling_yields`` (plan_step) a
    linear reading earns it too: from scratch Polyak's start is 10-40x short and the loss alone would hold it there."""
    out = {}
    loss_start, scale_start = c["loss_start"], c["scale_start"]
    if loss_start is None:
        loss_start, scale_start = loss, d
        out.update(loss_start=loss, scale_start=d)
    fast = beta1 * c["loss_fast"] + (1.0 - beta1) * loss
    count = c["loss_fast_count"] + 1
    out.update(loss_fast=fast, loss_fast_count=count)
    recent = fast / (1.0 - beta1**count)
    return min(d, scale_start * (loss_start / recent) ** power), out


def linear_reading(secant_after: float, secant_before: float) -> bool:
    """Whether the secant reads the loss as linear along the step: r >= TRUSTED_GROWTH_R, the directional derivative
    kept at least half its value across the step. Minibatch noise pulls r down, never up (a linear loss reads r =
    1.00 full-batch, 0.96 at batch 256, 0.78 at batch 32: ablation v8's secant probe), so such a reading is evidence
    that the step is short, not an artefact of noise."""
    return secant_before > 0.0 and secant_after / secant_before >= TRUSTED_GROWTH_R


def linear_secant(signal_share: float, k: int, beta1: float) -> float:
    """The secant ratio r a linear loss reads at signal share rho (S/(S+N), without its floor), k steps into Adam.

    a = g_{t-1} . u_{t-1} is read with the gradient that made u_{t-1}: Adam's m_hat holds it with weight
    w = (1 - beta1) / (1 - beta1^k), so its noise adds w N to the signal's S, while b = g_t . u_{t-1} is read with a
    fresh gradient: r = S / (S + w N) = rho / (rho + w (1 - rho)). ``tests/test_controller.py`` holds the secant to it
    on a noisy linear loss (rho 0.5, 0.1, 0.02 read 0.91, 0.53, 0.17)."""
    if not 0.0 < signal_share <= 1.0:
        return 0.0
    w = (1.0 - beta1) / (1.0 - beta1 ** max(k, 1))
    return signal_share / (signal_share + w * (1.0 - signal_share))


def noise_linear_reading(secant_after: float, secant_before: float, linear: float) -> bool:
    """Whether the secant reads the loss as linear once the noise that pulls r down is allowed for: r at least
    NOISE_LINEAR_FRACTION of ``linear`` (``linear_secant``), while that is at least 1 - NOISE_LINEAR_FRACTION.

    A new head over a frozen body reads rho 0.02-0.05 and r 0.2-0.4, linear to within the noise, where the plain
    test r >= 1/2 cannot pass; a full fine-tune reads rho 0.1 and r 0.4, 0.77 of linear, and is not (ablation v12).
    """
    return (secant_before > 0.0 and linear >= 1.0 - NOISE_LINEAR_FRACTION
            and secant_after / secant_before >= NOISE_LINEAR_FRACTION * linear)


def noise_scaled_start(signal_share: float, floor: float, secant_after: float, secant_before: float,
                       linear: float) -> float:
    """The factor on Polyak's start at the first trusted reading of the signal share past warmup.

    The start made the first step's first-order decrease on its own minibatch c of the loss; of that, the expected
    loss sees the signal's part, about the signal share rho (sum G sign(g) / sum |g| = 0.030, 0.10, 0.21 at rho 0.03,
    0.1, 0.2 for Gaussian noise). The controller credits every gradient at least the share ``floor``
    (``min_variance_factor``): a start read from a gradient with less signal is scaled by floor / rho, at most
    1 / floor, so that its expected decrease is the floor's. Only as far as the secant reads room for it: a reading
    r = b/a is, allowed for the noise (``linear``, ``linear_secant``), 1 - d/d_greedy on a quadratic, so the factor is
    at most the greedy step over this one, and nothing is scaled where the step overshoots (r <= 0: gradients that
    flip sign also read as noise) or where the reading is mostly noise (``linear`` under 1 - NOISE_LINEAR_FRACTION).
    A new head over a frozen body reads rho 0.02-0.03 and starts 4x higher; a full fine-tune reads 0.05-0.07
    (1.5-2x); from scratch and LoRA read 0.17 or more: no change.
    """
    if signal_share >= floor or secant_before <= 0.0 or linear < 1.0 - NOISE_LINEAR_FRACTION:
        return 1.0
    corrected = secant_after / secant_before / linear  # 1 - d / d_greedy
    if corrected <= 0.0:
        return 1.0
    factor = min(floor / signal_share, 1.0 / floor) if signal_share > 0.0 else 1.0 / floor
    if corrected < 1.0:
        factor = min(factor, 1.0 / (1.0 - corrected))
    return max(factor, 1.0)


def trust_bound(d: float, param_sq: float, dir_sq: float, numel: float) -> float:
    """The first version's caps: the RMS step d * rms(u) <= MAX_UPDATE_RATIO * rms(theta), and d itself <=
    MAX_SCALE_RATIO * rms(theta), over the weight matrices (on the subsample)."""
    if param_sq > 0.0 and dir_sq > 0.0:
        d = min(d, MAX_UPDATE_RATIO * math.sqrt(param_sq / dir_sq))
    if param_sq > 0.0:
        d = min(d, MAX_SCALE_RATIO * math.sqrt(param_sq / numel))
    return d


def lr_ratios(groups: Sequence[dict], reference_lr: float, key: str = "lr") -> list[float]:
    """Each group's s = lr / reference lr (``key`` "base_lr": the lr it was created with); 0 without a reference."""
    return [group[key] / reference_lr if reference_lr > 0.0 else 0.0 for group in groups]


def step_sizes(groups: Sequence[dict], group_index: Sequence[int], d: float, phis: Sequence[float],
               ratios: Sequence[float]) -> dict:
    """The plan the tensor math applies: per tensor the step s * d * phi, the decay s * d * wd, the weight of the
    direction kept for the next secant (s * phi: the actual step's direction), and eps; s = ``ratios`` of its group
    (``lr_ratios``)."""
    plan = {"step_sizes": [], "decays": [], "dir_weights": [], "eps": []}
    for i, gi in enumerate(group_index):
        group, s = groups[gi], ratios[gi]
        plan["step_sizes"].append(s * d * phis[i])
        plan["decays"].append(s * d * group["weight_decay"])
        plan["dir_weights"].append(s * phis[i])
        plan["eps"].append(group["eps"])
    return plan


# ---------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------
def plan_step(groups: list[dict], tensors: dict, values: list[float], *, has_loss: bool) -> dict | None:
    """Move the controller one step and return the per-tensor plan (``step_sizes``), or None to skip the step.

    Reads the settings from group 0 and writes the controller's numbers (``CONTROLLER_DEFAULTS``) and each group's
    ``effective_lr`` into every group.
    """
    n = len(tensors["params"])
    rows, loss, l1 = unpack(values, n)
    g0 = groups[0]
    beta1 = g0["betas"][0]
    warmup = g0["warmup_steps"]

    skip, masked, reading_ok = finiteness(rows, loss, l1)
    if skip or masked:
        for group in groups:
            group["skipped_steps"] += 1
    if skip:
        return None
    if not reading_ok:  # a reading that overflowed: the secant skips it
        rows["grad_sq"], rows["after"], rows["before"] = [0.0] * n, [0.0] * n, [0.0] * n

    c = {k: g0.get(k, v) for k, v in CONTROLLER_DEFAULTS.items()}
    if c["reference_lr"] is None:  # first step (or a checkpoint from before reference_lr existed)
        c["reference_lr"] = max(g["base_lr"] for g in groups)
    matrices = [i for i in range(n) if tensors["params"][i].dim() >= 2] or list(range(n))
    p2 = sum(rows["param_sq"][i] for i in matrices)
    n2 = float(sum(tensors["directions"][i].numel() for i in matrices))
    if c["base_scale"] is None:
        # Each tensor counts in proportion to its group's lr ratio (a frozen group, lr 0, for nothing): the first
        # step moves a tensor by ratio * d, so its first-order decrease is d * sum(ratio * |g|_1).
        created = lr_ratios(groups, c["reference_lr"], "base_lr") if c["reference_lr"] > 0.0 else [1.0] * len(groups)
        weight = [created[gi] for gi in tensors["group_index"]]
        counted = [i for i in matrices if weight[i] > 0.0] or [i for i in range(n) if weight[i] > 0.0] or matrices
        wp2 = sum(weight[i] * rows["param_sq"][i] for i in counted)
        wn2 = float(sum(weight[i] * tensors["directions"][i].numel() for i in counted))
        wl1 = sum(weight[i] * l1[i] for i in range(len(l1)))
        c["base_scale"] = initial_scale(g0, c["reference_lr"], wp2, wn2, loss if has_loss else g0["assumed_loss"],
                                        wl1)
    c["meta_step"] += 1
    t = c["meta_step"]

    per_tensor = [groups[gi] for gi in tensors["group_index"]]
    # Each tensor's reading counts in proportion to how far the step moves it (its group's lr ratio s): a body at
    # 0.01x the head's lr, or frozen at 0, does not set the head's signal share, nor the secant's gradient norm.
    ratios = lr_ratios(groups, c["reference_lr"])
    moved = [ratios[gi] for gi in tensors["group_index"]]
    if not any(moved):
        moved = [1.0] * n
    phis, signal_fraction, momentum_fraction, raw_fraction = signal_shares(
        tensors["steps"], tensors["betas"], [s * p.numel() for s, p in zip(moved, tensors["params"])],
        rows["m_sq"], rows["v_sum"],
        warmup=warmup, floors=[g["min_variance_factor"] for g in per_tensor],
        powers=[g["variance_power"] for g in per_tensor])
    # the secant reads EMAs over ~1/(1-beta1) steps: their noise is the momentum's (momentum_noise)
    rate_fraction = momentum_fraction if g0["momentum_noise"] else signal_fraction

    # The reading is the last step's, summed during the last update on the subsample (norm included): the fused
    # step reads each gradient once, in the update, so nothing of this step's gradient is known before it.
    ema = secant_ema(c, t, beta1, math.sqrt(sum(s * s * q for s, q in zip(moved, rows["grad_sq"]))),
                     sum(rows["after"]), sum(rows["before"]))
    read = ema["secant_after"] != c["secant_after"] or ema["secant_before"] != c["secant_before"]
    c.update(ema)
    # the signal share is read once the EMAs hold the momentum's memory of gradients, 1 / (1 - beta1) (or warmup)
    reading_from = max(warmup, round(1.0 / (1.0 - beta1)))
    if (g0["noise_scaled_start"] and not c["start_checked"] and t > reading_from and g0["initial_decrease"]
            and (has_loss or g0["assumed_loss"] is not None)):
        # the first reading of the signal share that can be trusted (a linear loss would read r >= 0.1 there; the
        # share is estimated from 10 gradients at the end of warmup, and on a new head read 0.000-0.007 at step 11
        # and 0.03-0.04 by step 12-14), and no later than twice that: Polyak's start counted the first minibatch's
        # decrease, of which the expected loss sees the signal's part. The progress ceiling keeps counting the
        # loss's fall from the start as measured, and never holds the step below the scaled one: the two credits
        # combine by max, not product (the product let a full fine-tune's step grow 2.4x past its best, ablation v12)
        linear = linear_secant(raw_fraction, max(tensors["steps"]), beta1)
        trusted = c["secant_before"] > 0.0 and linear >= 1.0 - NOISE_LINEAR_FRACTION
        if trusted and t <= 2 * reading_from:
            factor = noise_scaled_start(raw_fraction, g0["min_variance_factor"], c["secant_after"], c["secant_before"],
                                        linear)
            if factor > 1.0:
                c["base_scale"] *= factor
                c["start_floor"] = c["base_scale"]
        c["start_checked"] = trusted or t >= 2 * reading_from
    total = g0.get("total_steps")
    # earned_cooldown: the decay waits, past its planned start, for the first step the secant does not grow
    earning = bool(g0["earned_cooldown"] and total and c["cooldown_begun"] is None)
    anneal = 1.0 if earning else cooldown_factor(t, total, c["cooldown_begun"])
    if anneal < 1.0:  # the decay: the controller's step is held, the decay scales what is applied
        d, mu = c["base_scale"], 1.0
    elif g0["tracking"]:
        d, updates = tracked_scale(c["base_scale"], c, t, g0, signal_fraction=signal_fraction,
                                   rate_fraction=rate_fraction, read=read)
        c.update(updates)
        mu = d / c["base_scale"]
    else:
        mu = secant_factor(g0, c["secant_after"], c["secant_before"], t, signal_fraction=signal_fraction,
                           rate_fraction=rate_fraction)
        if g0["capped_growth"]:  # the readings lag 1/(1-beta1) steps: grow at most window_growth over that time
            mu = min(mu, g0["window_growth"] ** (1.0 - beta1))
        d = c["base_scale"] * mu
    if earning and t > cooldown_start(total) and mu <= 1.0:
        # the step has stopped growing: it is the stable step, and the decay begins here (a step the secant still
        # grows, or one the progress ceiling holds below what the secant asks, is not trained yet)
        c["cooldown_begun"] = t - 1
        anneal = cooldown_factor(t, total, t - 1)

    if has_loss and g0["loss_spike_threshold"] is not None:
        d, updates = loss_guard(d, loss, c, t, warmup=warmup, threshold=g0["loss_spike_threshold"])
        c.update(updates)
    if c["scale_ceiling"] is not None:  # a step that once made the loss spike is not taken again
        d = min(d, c["scale_ceiling"])
    # Without a loss the ceiling reads the assumed one: no fall, so the step grows past its start only on linear
    # readings (the secant alone grew a full fine-tune's step 10x, and no loss would say that was not progress).
    ceiling_loss = loss if has_loss else g0["assumed_loss"]
    if g0["progress_power"] and ceiling_loss is not None and ceiling_loss > 0.0:
        capped, updates = progress_ceiling(d, ceiling_loss, c, beta1=beta1, power=g0["progress_power"])
        c.update(updates)
        held = capped if c["start_floor"] is None else max(capped, min(d, c["start_floor"]))
        linear = linear_reading(c["secant_after"], c["secant_before"]) or (
            g0["noise_corrected_yield"]
            and noise_linear_reading(c["secant_after"], c["secant_before"],
                                     linear_secant(raw_fraction, max(tensors["steps"]), beta1)))
        if g0["ceiling_yields"] and t > warmup and linear:
            if held < d:  # let the step through, and move the ceiling up to it: from here growth is earned again
                c["scale_start"] *= d / capped
        else:
            d = held
    if g0["trust_bounds"]:
        # before the first step there is no direction yet; Adam's first direction is sign(g), of RMS 1
        u2 = sum(rows["dir_sq"][i] for i in matrices) if t > 1 else n2
        d = trust_bound(d, p2, u2, n2)
    d = min(max(d, MIN_BASE_SCALE), MAX_BASE_SCALE)
    c["base_scale"], c["landscape_factor"], c["variance_factor"] = d, mu, signal_fraction

    if anneal < 1.0 and g0["earned_decay"]:
        # the decay goes as deep as the gradient is noise: to d * S / (S + N) at the end, McCandlish et al.'s
        # noise-optimal step (an under-trained run, all signal, keeps its step)
        anneal = 1.0 - (1.0 - signal_fraction) * (1.0 - anneal)
    plan = step_sizes(groups, tensors["group_index"], d * anneal, phis, ratios)
    for group, s in zip(groups, ratios):
        group.update(c)
        group["effective_lr"] = s * d * anneal  # the gate's numel-weighted mean is 1
    return plan
