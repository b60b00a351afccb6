r"""AdaOpt: Adam's direction with a step size set in real time, so that no learning-rate search is needed.

The step of every tensor :math:`i` is

.. math::
    \Delta\theta_i = -\,s_t\, d_t \left(\phi_i \frac{\hat m_i}{\sqrt{\hat v_i} + \epsilon} + \lambda\,\theta_i\right)

* :math:`\hat m, \hat v` -- Adam's bias-corrected EMAs of the gradient and of its square (Kingma & Ba, 2015).
* :math:`s_t` -- the group's ``lr`` divided by the **reference lr**, the largest ``lr`` the groups were created
  with: per-group lrs keep their ratios, and a scheduler's changes to ``lr`` act as a multiplier.
* :math:`d_t` -- **base scale**, one scalar for the optimizer; ``effective_lr`` is :math:`s_t d_t`. It starts at
  **Polyak's step** for Adam's first direction, whatever the lr: that direction is :math:`\operatorname{sign}(g)`,
  whose first-order loss decrease is :math:`d\,\|g\|_1`, and :math:`d_0 = c\, f_0 / \|g\|_1` makes it
  ``initial_decrease`` :math:`c` (3%) of the first loss :math:`f_0` (Polyak 1987, with the floor :math:`f^*`
  taken as 0, as SPS and MoMo do). On the suite it landed within 2.5x of the best-tuned AdamW lr on five of
  six workloads, where the previous start, 1% of the weights' RMS, was 6-15x off on five; it reads the full
  fine-tune (22M gradients) as needing a small step and LoRA (76k) a large one. Without a loss (no
  :meth:`set_loss`, no closure) it starts at ``initial_scale`` (1%) of the weight matrices' RMS. It is held
  there for ``warmup_steps`` while the EMAs fill, and is then multiplied every
  step by the **landscape factor** :math:`\mu_t`, a secant estimate of the curvature along the update
  (hypergradient descent, Baydin et al. 2018, in a scale-free multiplicative form). With :math:`u_{t-1}` the
  previous step's direction, compare the directional derivative before the step,
  :math:`a = g_{t-1}\cdot u_{t-1}/\|g_{t-1}\|`, with the one after it, :math:`b = g_t \cdot u_{t-1}/\|g_t\|`
  (on the subsample below, norms included). Each update sums :math:`b` and :math:`\|g_t\|` while it reads
  :math:`g_t`, and the reading steers the next step: AdaOpt reads each gradient once (ablation v7).
  On a quadratic the greedy (one-step) best step along :math:`u` is :math:`1/(1-r)` times the one taken,
  :math:`r = b/a`. So :math:`\mu_t = ((1-r^*_t)/(1-\bar r))^{\kappa\,\rho_t}`, :math:`\bar r` the ratio of EMAs of
  :math:`b` and :math:`a`, clamped so that one step changes :math:`d` by at most :math:`(4(1-r^*))^{\kappa}`.
  The fixed point is :math:`\bar r = r^*_t`. The greedy optimum (:math:`r^* = 0`) is biased low for the long run
  (short-horizon bias, Wu et al. 2018): the target is :math:`r^*_t = -\rho_t` (``secant_target`` x the signal
  share), a step up to twice the greedy one while the gradient carries signal, and the greedy one at the noise
  floor, where noise alone reads :math:`\bar r \approx 0` and any other target would make the step drift.
* :math:`\rho_t` -- **variance factor**: the share of the gradient that is signal, :math:`S/(S+N)`, with the
  signal :math:`S=\|E g\|^2` and the noise :math:`N=\operatorname{tr}\Sigma` of the mini-batch gradient read
  from the same two EMAs (McCandlish et al. 2018: the useful step shrinks as :math:`1/(1+N/S)`). A secant
  measured with noisy gradients is itself noisy, so the exponent above is scaled in both directions by the
  signal share of the momentum, :math:`S/(S+c_k N)` (the secant's EMAs average over ~:math:`1/(1-\beta_1)`
  steps, :math:`c_k` the momentum's variance relative to one gradient's): the step adapts fast while the
  averaged gradient carries signal and slowly at the noise floor (the first version damped shrinking only, by
  the per-gradient share; noise then ratcheted the step up, which needed a cap). Optionally
  (``variance_power`` p > 0, off by default), :math:`\phi_i \propto (S_i/(S_i+N_i))^{p}` (mean 1) moves the step
  towards tensors with more signal.
* **Progress ceiling**: the step grows past its start at most as far as the loss has fallen,
  :math:`d_t \le d_0 (f_0/\bar f_t)^{k}`, :math:`\bar f` an EMA (:math:`\beta_1`) of the loss and :math:`k` =
  ``progress_power`` (1). Growth must be earned: on a plateau -- LoRA's zero-initialised adapter, a pretrained
  body under a new head -- the secant reads every step as too short, and from Polyak's start it grew the step
  5-10x in 30 steps and destroyed both fine-tunes (README, v5a); under the ceiling the full fine-tune ends level
  with the best-tuned AdamW and LoRA 4.3 points short (v5e, 3 seeds). It costs a start that is too small (the
  CNN's, 40x below AdamW's best) its recovery: the step then grows only as fast as the loss falls (power 1.5
  recovered more of it and lost LoRA, v5i).
* Guards. A **loss guard** halves :math:`d` when the training loss -- given by ``set_loss`` (`AdaOptCallback`
  does it) or a closure -- jumps ``loss_spike_threshold`` standard deviations above its running mean, and from
  then on never lets :math:`d` grow past that halved value (as an lr range test keeps a fraction of the lr at
  which the loss blew up: the secant, which reads runaway growth along flat directions as progress, would
  otherwise climb straight back; on a toy MLP at adapt_rate 0.4 the final loss was 4.4 without it, 0.15 with
  it; on the suite it lifted digits from 94.7 to 96.7% and capped the BiLSTM, 63.3 to 58.1%). The first
  version's **trust bounds** (step RMS <= 1% and base scale <= 3% of the weights' RMS) are off by default
  (``trust_bounds=True`` restores them): they set the step more than the controller did, and the weights' RMS
  depends on the architecture (the README's ablation table).

What it costs: Adam's two state tensors, plus the previous direction on a fixed 1/16 subsample of each large
tensor (blocks of 16 elements out of every 256; small tensors are kept whole) -- about 8.25 bytes per fp32
parameter against AdamW's 8 and Prodigy's 16. The directional derivatives, norms and the EMAs' sums that
feed the scalars are reduced on the device, stacked, all-reduced once under ``torch.distributed``, and read
with a single host sync per step.

A step with a non-finite gradient (or statistic) changes nothing -- neither the parameters nor the state --
and is counted in ``skipped_steps``. (The fused step reads the gradient only in its update: it leaves the
non-finite elements as they were, takes the rest of the step, and counts it at the next step.)

Where it applies: where Adam(W) does. Where not: the first ``warmup_steps`` run at the initial scale while the
EMAs fill; the secant needs gradients that carry information from one step to the next; Polyak's start and the
progress ceiling need a positive loss (without one AdaOpt starts at 1% of the weights' RMS, and a model whose
weight matrices are all zero then has no scale to start from: it starts at ``lr``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from hf_adaopt.core.logs import get_logger

__all__ = ["AdaOpt"]

logger = get_logger(__name__)

# Subsample for the directional derivatives: blocks of SUBSAMPLE_BLOCK contiguous elements out of every
# SUBSAMPLE_PERIOD (contiguous blocks touch 1/16 of the cache lines; a plain stride of 16 floats would touch
# all of them). Tensors of at most SMALL_TENSOR elements are used whole.
SUBSAMPLE_BLOCK = 16
SUBSAMPLE_PERIOD = 256
SMALL_TENSOR = 4096

# The secant ratio r is clamped to [SECANT_R_MIN, SECANT_R_MAX]: one step changes the base scale by at most
# a factor 4**adapt_rate up (r = 3/4) or down (r = -3): 1.74x per step at the default adapt_rate 0.4.
SECANT_R_MAX = 0.75
SECANT_R_MIN = -3.0
# r >= 1/2 means the directional derivative kept at least half its value across the step: on a quadratic the
# step was at most half the greedy optimum, so growing is safe even if noise inflated the reading.
TRUSTED_GROWTH_R = 0.5
# The base scale never leaves this band, whatever the statistics say.
MIN_BASE_SCALE = 1e-10
MAX_BASE_SCALE = 10.0
# Trust bound: no step moves the weight matrices by more than this fraction of their RMS (LARS/LAMB's
# trust ratio, one global number). It is what protects the first steps from a far too large initial lr,
# before the secant has anything to measure.
MAX_UPDATE_RATIO = 0.01
# ... and the base scale itself stays below this fraction of their RMS (a unit-RMS direction would move them
# 3% per step). Measured on digits at 20 epochs: without it, late flat stretches grew d to 0.2 and a single
# large gradient then undid the training (final accuracy 91.8 +- 4.7% from lr 1e-5); with 0.1, 97.3-98.0%;
# with 0.03, 97.7-97.8% from lr 1e-5, 1e-3 and 1e-1 alike.
MAX_SCALE_RATIO = 0.03
# EMA factor of the loss guard's running mean and variance.
LOSS_EMA_BETA = 0.98
# A spike must also be a rise of at least this fraction of the running mean (on a plateau the loss's
# standard deviation is tiny, and a 4-sigma rise is no sign of divergence).
LOSS_SPIKE_MIN_RISE = 0.1
# Multiplier applied to the base scale when the loss spikes.
LOSS_SPIKE_BACKOFF = 0.5

NUM_STATS = 9
_CONTROLLER_DEFAULTS = {
    "base_scale": None,  # d; None until the first step, then reference_lr
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
    "scale_start": None,  # the first step's base scale (progress_power)
    "loss_start": None,  # the first step's loss (progress_power)
    "loss_fast": 0.0,  # EMA (beta1) of the loss, not bias-corrected (progress_power)
    "loss_fast_count": 0,
}


class AdaOpt(Optimizer):
    r"""Adam's direction with a step size adapted from gradient variance and the loss landscape.

    Args:
        params: parameters or param groups (dicts), as for any ``torch.optim.Optimizer``.
        lr: a multiplier, not the step size: the step starts at Polyak's step (``initial_decrease``) or at
            ``initial_scale`` of the weights' RMS, whatever ``lr`` is (with both ``None``, at ``lr``). A scheduler
            that halves ``group["lr"]`` halves the step, ``lr=0`` freezes the group, and per-group lrs keep their
            ratios: a group steps ``base_scale * lr / reference_lr``, the reference lr being the largest lr among
            the groups (fixed at the first step; a group added later is read against it). Default 1e-3.
        betas: EMA factors of the gradient and its square, as in Adam.
        eps: added to the denominator, as in Adam.
        weight_decay: decoupled weight decay (AdamW), applied as ``lr_eff * weight_decay * param``.
        adapt_rate: exponent kappa of the landscape factor; how fast the base scale follows the measured
            curvature. Larger adapts faster and is noisier. This is the knob to turn, not ``lr``. Default 0.4:
            in the ablation (README, v4d against v3i, 2 seeds) it closed the BiLSTM's gap (57.5 vs 48.8% accuracy)
            and the language model's (2.95 vs 3.04 bpc, 1 seed), left LoRA level and cost 2.9 points on the full
            fine-tune and 0.6 on digits; 0.6 overshot LoRA to chance.
        variance_power: exponent p of the per-tensor gate. Default 0: every tensor the same step size. On
            digits (5 seeds, initial lr 1e-5 / 1e-3 / 1e-1) p = 0.5 ended at 96.7 / 96.2 / 96.3% accuracy and
            p = 0 at 96.2 / 97.3 / 96.7% -- no gain from the gate there; try 0.5 where tensors differ widely
            in how noisy their gradients are.
        min_variance_factor: floor of the signal share S/(S+N), so that a noise-dominated tensor still
            moves and the base scale still adapts at the noise floor.
        warmup_steps: steps during which the step size is held at ``lr`` and the gate open, while the EMAs
            fill. Default ``round(1 / (1 - beta1))``.
        loss_spike_threshold: standard deviations above the running mean of the training loss that count
            as a spike (the base scale is halved, then the guard rests for ``warmup_steps``). ``None``
            disables the loss guard.
        initial_decrease: the first step's first-order loss decrease as a fraction of the loss (Polyak's step for
            Adam's first direction sign(g), default 0.03); used when the first step has a positive loss (given by
            ``set_loss``, as `AdaOptCallback` does, or a closure). ``None``: start from ``initial_scale``. In the
            ablation (README, v5a/v5b) 0.03 started within 2.5x of the best-tuned AdamW lr on five of six workloads;
            0.015 and 0.02, with room to grow (power 1.5), lost the full fine-tune (v6a, v6b).
        progress_power: exponent k of the progress ceiling d <= d0 * (first loss / recent loss)^k (default 1);
            ``None`` lets the secant grow the step freely. k = 1.5 (v5i, 3 seeds) was better on five workloads but
            lost LoRA (-10.6 against -4.3), k = 2 (v5f) lost LoRA and digits.
        initial_scale: the first step as a fraction of the weight matrices' RMS when there is no loss to take
            Polyak's step from, or ``initial_decrease=None`` (default 1e-2); ``None`` starts at ``lr`` instead
            (the first version).
        secant_target: the secant ratio the controller steers to, at full signal (default -1: up to twice the
            greedy step); 0 is the greedy optimum.
        signal_scaled_target: scale the target by the signal share (default True), so that it is 0 at the
            noise floor.
        symmetric_damping: scale growing as well as shrinking by the signal share (default True).
        trusted_growth: with symmetric damping, grow at full rate on a secant reading r >= 1/2 (default False:
            measured to overshoot on the language model).
        trust_bounds: the first version's caps on the step (1%) and base scale (3%) relative to the weights'
            RMS (default False).
        momentum_noise: damp the secant by the signal share of the momentum, S / (S + c N) with c the momentum's
            variance factor (about (1 - beta1) / (1 + beta1)), rather than of one gradient (default True): the
            secant reads EMAs over ~1/(1 - beta1) steps, so its noise is the momentum's. The target keeps the
            per-gradient share, so that it is still ~0 at the noise floor.
        The defaults of these were chosen by ablation on the suite (README); the first version is
        ``adapt_rate=0.1, initial_scale=None, initial_decrease=None, progress_power=None, secant_target=0,
        signal_scaled_target=False, symmetric_damping=False, trust_bounds=True, momentum_noise=False``.
        foreach: use the multi-tensor implementation. Default: on when all parameters are on CUDA or CPU.
        fused: make the step one pass over memory (``hf_adaopt.core.fused``), as torch's fused AdamW: on CPU a C++
            kernel in torch's fused-AdamW pattern (``hf_adaopt/core/csrc/fused_cpu.cpp``), built with the system's
            compiler at the first step (about a minute, then cached by torch for later processes); on CUDA a
            ``torch.compile`` graph, compiled once per parameter layout. It falls back to foreach, with a warning
            in the log, where it cannot be built. It leaves gradient elements that are not finite as they were
            instead of skipping the step (see :mod:`hf_adaopt.core.fused`). Default: off (the build, and CUDA, where it
            is not yet measured); the step costs are in the README's step-cost table. Pass ``fused=True`` for long
            runs.

    Diagnostics (no recomputation, no host sync): :meth:`diagnostics`, and per group ``effective_lr``,
    ``variance_factor``, ``landscape_factor`` and ``base_scale``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        adapt_rate: float = 0.4,
        variance_power: float = 0.0,
        min_variance_factor: float = 0.1,
        warmup_steps: int | None = None,
        loss_spike_threshold: float | None = 4.0,
        initial_scale: float | None = 1e-2,
        initial_decrease: float | None = 0.03,
        progress_power: float | None = 1.0,
        secant_target: float = -1.0,
        trust_bounds: bool = False,
        symmetric_damping: bool = True,
        trusted_growth: bool = False,
        signal_scaled_target: bool = True,
        momentum_noise: bool = True,
        foreach: bool | None = None,
        fused: bool | None = None,
    ):
        _check_lr(lr)
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if fused and foreach:
            raise ValueError("`fused` and `foreach` cannot be `True` together (got fused=True, foreach=True)")
        if not 0.0 <= adapt_rate <= 1.0:
            raise ValueError(f"Invalid adapt_rate value: {adapt_rate} (expected 0 <= adapt_rate <= 1)")
        if not 0.0 <= variance_power <= 1.0:
            raise ValueError(f"Invalid variance_power value: {variance_power} (expected 0 <= p <= 1)")
        if not 0.0 < min_variance_factor <= 1.0:
            raise ValueError(f"Invalid min_variance_factor value: {min_variance_factor} (expected (0, 1])")
        if warmup_steps is None:
            warmup_steps = round(1.0 / (1.0 - betas[0]))
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ValueError(f"Invalid warmup_steps value: {warmup_steps!r} (expected an int >= 0)")
        if loss_spike_threshold is not None and not loss_spike_threshold > 0.0:
            raise ValueError(f"Invalid loss_spike_threshold value: {loss_spike_threshold} (expected > 0 or None)")
        if initial_scale is not None and not 0.0 < initial_scale < 1.0:
            raise ValueError(f"Invalid initial_scale value: {initial_scale} (expected 0 < initial_scale < 1 or None)")
        if initial_decrease is not None and not 0.0 < initial_decrease < 1.0:
            raise ValueError(f"Invalid initial_decrease value: {initial_decrease} (expected 0 < initial_decrease < 1 "
                             "or None)")
        if progress_power is not None and not 0.0 < progress_power < math.inf:
            raise ValueError(f"Invalid progress_power value: {progress_power} (expected a finite power > 0 or None)")
        if not SECANT_R_MIN < secant_target < SECANT_R_MAX:
            raise ValueError(f"Invalid secant_target value: {secant_target} (expected {SECANT_R_MIN} < r* < "
                             f"{SECANT_R_MAX})")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            adapt_rate=adapt_rate,
            variance_power=variance_power,
            min_variance_factor=min_variance_factor,
            warmup_steps=warmup_steps,
            loss_spike_threshold=loss_spike_threshold,
            initial_scale=initial_scale,
            initial_decrease=initial_decrease,
            progress_power=progress_power,
            secant_target=secant_target,
            trust_bounds=bool(trust_bounds),
            symmetric_damping=bool(symmetric_damping),
            trusted_growth=bool(trusted_growth),
            signal_scaled_target=bool(signal_scaled_target),
            momentum_noise=bool(momentum_noise),
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)
        self._pending_loss: Tensor | float | None = None

    # ----------------------------------------------------------------------------------------- groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; what AdaOpt cannot honour is refused before the group is added.

        Refused: complex parameters, a Tensor, negative or non-finite ``lr``, and a value of an optimizer-wide
        setting (``OPTIMIZER_WIDE``, ``betas[0]``) other than the optimizer's. A group added after the first
        step joins the controller's current state and steps ``base_scale * lr / reference_lr`` against the
        reference lr fixed at the first step, so its ratio to the other groups' lrs is kept.
        """
        if isinstance(param_group, dict):  # anything else: the base class raises its TypeError
            _check_group(param_group, self.defaults)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        # The lr the group was created with: the reference lr is the largest of these at the first step.
        group.setdefault("base_lr", group["lr"])
        # The controller is shared by all groups; a group added later joins its current state.
        source = self.param_groups[0] if len(self.param_groups) > 1 else {}
        for key, value in _CONTROLLER_DEFAULTS.items():
            group.setdefault(key, source.get(key, value))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_pending_loss", None)
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            for key, value in (("initial_scale", None), ("initial_decrease", None), ("progress_power", None),
                               ("secant_target", 0.0), ("trust_bounds", True),
                               ("symmetric_damping", False), ("trusted_growth", False),
                               ("signal_scaled_target", False), ("momentum_noise", False)):
                group.setdefault(key, value)  # checkpoints from before these settings existed
            for key, value in _CONTROLLER_DEFAULTS.items():
                group.setdefault(key, value)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            shown = {k: v for k, v in group.items() if k != "params" and k not in _CONTROLLER_DEFAULTS}
            n = sum(p.numel() for p in group["params"])
            lines.append(f"Parameter Group {i} ({len(group['params'])} tensors, {n:,} elements)")
            lines += [f"    {k}: {shown[k]}" for k in sorted(shown)]
            if group["base_scale"] is not None:
                lines.append(
                    f"    adapted: effective_lr={group['effective_lr']:.3g}, base_scale={group['base_scale']:.3g}, "
                    f"variance_factor={group['variance_factor']:.3g}, "
                    f"landscape_factor={group['landscape_factor']:.3g}"
                )
        lines.append(")")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------ public API
    def set_loss(self, loss: Tensor | float | None) -> None:
        """Give the optimizer this step's training loss (consumed by the next :meth:`step`).

        A tensor is kept on its device (no host sync); it is read together with the step's other scalars.
        """
        if isinstance(loss, Tensor):
            loss = loss.detach()
            if loss.numel() != 1:
                raise ValueError(f"set_loss expects a scalar loss, got a tensor of shape {tuple(loss.shape)}")
            loss = loss.reshape(())
        elif loss is not None:
            loss = float(loss)
        self._pending_loss = loss

    def diagnostics(self) -> dict[str, float]:
        """What the last step did: effective lr, its factors and the counters (read, not recomputed)."""
        group = self.param_groups[0]
        d = group["base_scale"]
        return {
            "effective_lr": group["effective_lr"] if group["effective_lr"] is not None else group["lr"],
            "variance_factor": group["variance_factor"],
            "landscape_factor": group["landscape_factor"],
            "base_scale": d if d is not None else max(g["base_lr"] for g in self.param_groups),
            "skipped_steps": group["skipped_steps"],
            "loss_spikes": group["loss_spikes"],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the state as torch does, hooks included; another optimizer's or model's state is refused.

        The base class casts floating state to the parameter's dtype, and AdaOpt keeps fp32 state for
        bf16/fp16 parameters. The cast (``Optimizer._process_value_according_to_param_policy``) is called by
        class name, so a subclass cannot override it; instead two hooks live for this call only: a pre-hook
        that runs after the user's checks the dict the base class will load, and a post-hook that runs
        before the user's puts that dict's full-precision values back.
        """
        loaded: dict[str, Any] = {}

        def check(optimizer: Optimizer, sd: dict[str, Any]) -> None:
            _check_state_dict(self.param_groups, sd)
            loaded["state_dict"] = sd

        def keep_full_precision(optimizer: Optimizer) -> None:
            sd = loaded["state_dict"]
            saved_ids = [pid for g in sd["param_groups"] for pid in g["params"]]
            params = [p for g in self.param_groups for p in g["params"]]
            for pid, p in zip(saved_ids, params):
                if _state_dtype(p) == p.dtype or pid not in sd["state"] or p not in self.state:
                    continue
                for key, value in sd["state"][pid].items():
                    if isinstance(value, Tensor) and value.is_floating_point():
                        self.state[p][key] = value.to(device=p.device, dtype=_state_dtype(p), copy=True)

        pre = self.register_load_state_dict_pre_hook(check)  # appended: after the user's pre-hooks
        post = self.register_load_state_dict_post_hook(keep_full_precision, prepend=True)
        try:
            super().load_state_dict(state_dict)
        finally:
            pre.remove()
            post.remove()

    # ------------------------------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step. ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pending, self._pending_loss = self._pending_loss, None
        if pending is None and isinstance(loss, Tensor) and loss.numel() == 1:
            pending = loss.detach().reshape(())
        elif pending is None and isinstance(loss, (int, float)):
            pending = float(loss)

        fused = self._use_fused()
        # the fused step reads low-precision gradients as they are; the other paths compute in the state's dtype
        tensors = self._gather(cast_grads=not fused)
        if not tensors["params"]:
            return loss
        foreach = self._use_foreach(tensors["params"]) and len(set(tensors["betas"])) == 1
        stats_fn, apply_fn = (_multi_tensor_stats, _multi_tensor_apply) if foreach else (
            _single_tensor_stats, _single_tensor_apply)
        if fused:
            from hf_adaopt.core import fused as _fused  # imports the compilers' machinery only when used

            stats_fn, apply_fn = _fused.with_fallback(self, stats_fn, apply_fn)

        # 1. every scalar that sets the step, on the device, stacked
        stats = stats_fn(tensors)
        first_l1 = None
        if self.param_groups[0]["base_scale"] is None and self.param_groups[0].get("initial_decrease"):
            if pending is None:
                logger.warning("AdaOpt: no loss for the first step (add AdaOptCallback to the Trainer, pass a "
                               "closure to step(), or call set_loss(loss) before it): the step starts at "
                               "initial_scale of the weights' RMS instead of Polyak's step, and the progress "
                               "ceiling is off")
            else:
                # the first step only: sum |g| per tensor, the first-order decrease of Adam's first step sign(g)
                first_l1 = torch.stack(torch._foreach_norm(_cast_grads(tensors)["grads"], 1)).to(stats.dtype)
        values = _read_scalars(stats, tensors, pending, first_l1)  # the one host sync (and all_reduce)
        # 2. host: skip, or move the controller and compute the per-tensor step sizes
        plan = _plan_step(self.param_groups, tensors, values, has_loss=pending is not None)
        if plan is None:
            return loss
        # 3. device: Adam moments, parameters, and the direction kept for the next step's secant
        apply_fn(tensors, plan)
        return loss

    # ------------------------------------------------------------------------------------ internals
    def _use_fused(self) -> bool:
        # None is off until the fused step is measured faster, compile included, where it would be on
        if not self.param_groups[0].get("fused") or self.__dict__.get("_fused_failed"):
            return False
        from hf_adaopt.core.fused import fused_available

        return fused_available([p for group in self.param_groups for p in group["params"] if p.grad is not None])

    def _use_foreach(self, params: list[Tensor]) -> bool:
        choice = self.param_groups[0]["foreach"]
        if choice is not None:
            return bool(choice)
        return all(p.device.type in ("cpu", "cuda") for p in params) and not torch.jit.is_scripting()

    def _gather(self, cast_grads: bool = True) -> dict[str, list]:
        """Collect the tensors that have a gradient, creating their state on first use.

        Also returns the subsample views the math reads. Views of the state and of the parameters are
        cached across steps (re-creating ~4 views per tensor per step was a third of the step's Python
        overhead on small models); the cache checks identity, so a loaded state or a swapped tensor
        gets fresh views.
        """
        keys = ("params", "grads", "exp_avgs", "exp_avg_sqs", "directions", "pre", "readings", "steps",
                "group_index", "betas", "states", "g_subs", "m_subs", "v_subs", "p_subs")
        out: dict[str, list] = {k: [] for k in keys}
        cache = self.__dict__.setdefault("_views", {})
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        "AdaOpt does not support sparse gradients; use torch.optim.SparseAdam for sparse "
                        "embeddings, or nn.Embedding(sparse=False)."
                    )
                state = self.state[p]
                local = _local(p)
                if len(state) == 0:
                    # State lives on the local shard (FSDP2) in fp32 for low-precision parameters.
                    dtype = _state_dtype(p)
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(local, dtype=dtype, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(local, dtype=dtype, memory_format=torch.contiguous_format)
                    state["direction"] = torch.zeros_like(_subsample(local.detach()), dtype=dtype)
                    state["pre"] = torch.zeros((), dtype=dtype, device=local.device)
                if "reading" not in state:  # also a checkpoint from before the reading was kept: none yet
                    state["reading"] = torch.zeros(3, dtype=state["exp_avg"].dtype, device=local.device)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                views = cache.get(p)
                if views is None or views[0] is not m or views[1] is not v or views[2] is not local:
                    views = cache[p] = (m, v, local, _subsample(m), _subsample(v), _subsample(local.detach()))
                grad = _local(p.grad)
                if cast_grads and grad.dtype != m.dtype:
                    grad = grad.to(m.dtype)
                out["params"].append(p)
                out["grads"].append(grad)
                out["exp_avgs"].append(m)
                out["exp_avg_sqs"].append(v)
                out["directions"].append(state["direction"])
                out["pre"].append(state["pre"])
                out["readings"].append(state["reading"])
                out["steps"].append(state["step"])
                out["group_index"].append(gi)
                out["betas"].append(group["betas"])
                out["states"].append(state)
                if cast_grads:  # the fused step reads whole tensors (its fallback makes these in _cast_grads)
                    out["g_subs"].append(_subsample(grad))
                    out["m_subs"].append(views[3])
                    out["v_subs"].append(views[4])
                    out["p_subs"].append(views[5] if views[5].dtype == m.dtype else views[5].to(m.dtype))
        return out


def _cast_grads(tensors: dict) -> dict:
    """``tensors`` as the foreach and reference math read them: gradients in the state's dtype, and the subsample
    views (a gather for the fused step leaves low-precision gradients as they are and makes no subsample views)."""
    if len(tensors["g_subs"]) == len(tensors["grads"]):
        return tensors
    out = dict(tensors)
    out["grads"] = [g if g.dtype == m.dtype else g.to(m.dtype) for g, m in zip(tensors["grads"], tensors["exp_avgs"])]
    out["g_subs"] = [_subsample(g) for g in out["grads"]]
    out["m_subs"] = [_subsample(m) for m in tensors["exp_avgs"]]
    out["v_subs"] = [_subsample(v) for v in tensors["exp_avg_sqs"]]
    out["p_subs"] = [_subsample(_local(p).detach()).to(m.dtype) for p, m in zip(tensors["params"], tensors["exp_avgs"])]
    return out


# ---------------------------------------------------------------------------------------------------
# What AdaOpt refuses up front
# ---------------------------------------------------------------------------------------------------
# Settings read from the first group only: the controller (and the foreach choice) is one for the optimizer.
OPTIMIZER_WIDE = ("adapt_rate", "warmup_steps", "loss_spike_threshold", "initial_scale", "initial_decrease",
                  "progress_power", "secant_target",
                  "trust_bounds", "symmetric_damping", "trusted_growth", "signal_scaled_target", "momentum_noise",
                  "foreach", "fused")
# What every parameter's state holds once it has stepped.
STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "direction", "pre")
# The settings only AdaOpt has; every AdaOpt version saved them in each param group.
GROUP_KEYS = ("adapt_rate", "variance_power", "min_variance_factor", "warmup_steps", "loss_spike_threshold")


def _check_lr(lr: Any) -> None:
    if isinstance(lr, Tensor):
        raise ValueError(f"lr as a Tensor is not supported by AdaOpt (got {lr!r}): the step size is set on the "
                         "host every step; pass a Python float")
    if not 0.0 <= lr < math.inf:  # also refuses nan
        raise ValueError(f"Invalid learning rate: {lr} (expected a finite lr >= 0)")


def _check_state_dict(groups: list[dict], state_dict: dict[str, Any]) -> None:
    """Raise on a state dict of another optimizer or another model, naming the group or parameter."""
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(groups) or any(len(a["params"]) != len(b["params"])
                                               for a, b in zip(saved_groups, groups)):
        return  # the base class refuses it with its own message
    for i, saved in enumerate(saved_groups):
        missing = [k for k in GROUP_KEYS if k not in saved]
        if missing:
            raise ValueError(f"loaded param group {i} lacks {missing}: not a state dict of AdaOpt "
                             f"(the group has {sorted(k for k in saved if k != 'params')})")
    params = [p for g in groups for p in g["params"]]
    saved_ids = [pid for g in saved_groups for pid in g["params"]]
    for index, (pid, p) in enumerate(zip(saved_ids, params)):
        state = state_dict["state"].get(pid)
        if not state:
            continue
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"loaded state of parameter {index} lacks {missing}: not a state dict of AdaOpt "
                             f"(the state has {sorted(state)})")
        # The state lives on the local shard (FSDP2); a resharded checkpoint may hold the full shape.
        local, full = _local(p), torch.empty(p.shape, device="meta")
        for key, views in (("exp_avg", (local, full)), ("exp_avg_sq", (local, full)),
                           ("direction", (_subsample(local.detach()), _subsample(full)))):
            shape = tuple(getattr(state[key], "shape", ()))
            if shape not in [tuple(v.shape) for v in views]:
                raise ValueError(f"loaded state of parameter {index} (shape {tuple(p.shape)}) has {key} of shape "
                                 f"{shape}, expected {tuple(views[0].shape)}: the state dict is from another model")


def _check_group(group: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Raise on a param group AdaOpt cannot honour, before the base class adds it."""
    if "params" in group and not isinstance(group["params"], (Tensor, set)):
        group["params"] = list(group["params"])  # a generator would be used up by this check
    params = group.get("params", [])
    for p in [params] if isinstance(params, Tensor) else params:
        p = p[1] if isinstance(p, tuple) else p  # (name, tensor) pairs
        if isinstance(p, Tensor) and p.is_complex():
            raise ValueError(
                f"AdaOpt does not support complex parameters (got dtype {p.dtype}, shape {tuple(p.shape)}); "
                "keep the parameter real with torch.view_as_real (a trailing dimension of 2) and rebuild it "
                "with torch.view_as_complex in forward"
            )
    _check_lr(group.get("lr", defaults["lr"]))
    for key in OPTIMIZER_WIDE:
        if key in group and group[key] != defaults[key]:
            raise ValueError(f"{key}={group[key]!r} in a param group: {key} is optimizer-wide (AdaOpt reads "
                             f"it once for all groups, here {defaults[key]!r}); set it in AdaOpt(...) only")
    if "betas" in group and group["betas"][0] != defaults["betas"][0]:
        raise ValueError(f"betas[0]={group['betas'][0]!r} in a param group: betas[0] is optimizer-wide (the "
                         f"controller's EMAs use it, here {defaults['betas'][0]!r}); set it in AdaOpt(...) only")


# ---------------------------------------------------------------------------------------------------
# Helpers shared by both implementations
# ---------------------------------------------------------------------------------------------------
def _state_dtype(p: Tensor) -> torch.dtype:
    # Low-precision parameters keep fp32 state: the EMAs of squared gradients underflow in bf16.
    return torch.float32 if p.dtype in (torch.bfloat16, torch.float16) else p.dtype


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _is_sharded(t: Tensor) -> bool:
    return hasattr(t, "to_local") and any(getattr(pl, "is_shard", lambda: False)() for pl in t.placements)


def _subsample(t: Tensor) -> Tensor:
    """A fixed view of ~1/16 of a tensor's elements: blocks of 16 out of every 256 (small tensors whole)."""
    flat = t.reshape(-1)
    n = flat.numel()
    if n <= SMALL_TENSOR:
        return flat
    usable = (n // SUBSAMPLE_PERIOD) * SUBSAMPLE_PERIOD
    return flat[:usable].view(-1, SUBSAMPLE_PERIOD)[:, :SUBSAMPLE_BLOCK]


def _bias_corrections(step: int, beta1: float, beta2: float) -> tuple[float, float]:
    return 1.0 - beta1**step, 1.0 - beta2**step


def _read_scalars(stats: Tensor, tensors: dict, loss: Tensor | float | None,
                  first_l1: Tensor | None = None) -> list[float]:
    """Reduce the stacked statistics across ranks (one all_reduce) and bring them to the host (one sync).

    Layout of ``stats``: NUM_STATS rows (grad_sq, after, before: the last step's reading; m_sq, v_sum, param_sq,
    dir_sq: the state now; grad_check: this gradient's |g|^2, for its finiteness; masked: elements of the last fused
    update whose gradient was not finite) x n tensors,
    flattened, then the loss, then (first step with ``initial_decrease`` only) sum |g| per tensor.
    Replicated tensors (DDP) hold the same value on every rank and are averaged; shards (FSDP2 DTensors)
    hold partial sums and are summed; the loss is a per-rank value and is averaged.
    """
    loss_t = torch.zeros((), dtype=stats.dtype, device=stats.device) if loss is None else (
        torch.as_tensor(loss, dtype=stats.dtype).to(stats.device))
    parts = [stats.reshape(-1), loss_t.reshape(1)] + ([] if first_l1 is None else [first_l1.to(stats.device)])
    vec = torch.cat(parts)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            sharded = [_is_sharded(p) for p in tensors["params"]]
            torch.distributed.all_reduce(vec, op=torch.distributed.ReduceOp.SUM)
            per_tensor = [1.0 if s else float(world) for s in sharded]
            divisor = torch.tensor(per_tensor * NUM_STATS + [float(world)] + (per_tensor if first_l1 is not None
                                                                               else []),
                                   dtype=vec.dtype, device=vec.device)
            vec = vec / divisor
    values = vec.tolist()  # this is the step's single CPU-GPU sync point
    return values


def _plan_step(groups: list[dict], tensors: dict, values: list[float], *, has_loss: bool) -> dict | None:
    """The scalar controller: base scale, landscape factor, loss guard, variance factors. Pure Python.

    Returns the per-tensor step sizes and direction weights, or None when the step is skipped.
    """
    n = len(tensors["params"])
    grad_sq, after, before, m_sq, v_sum, param_sq, dir_sq, _, masked = (
        values[i * n:(i + 1) * n] for i in range(NUM_STATS))
    loss = values[NUM_STATS * n]
    g0 = groups[0]
    beta1, beta2 = g0["betas"]
    warmup, kappa = g0["warmup_steps"], g0["adapt_rate"]

    if not math.isfinite(sum(values[3 * n:])):  # a NaN or inf in this step's numbers makes the sum non-finite
        for group in groups:
            group["skipped_steps"] += 1
        return None
    if sum(masked) > 0.0:
        # The fused step reads the gradient only in the update: there it left the elements whose gradient was not
        # finite as they were and took the rest of the step. It counts as a skipped step, one step late.
        for group in groups:
            group["skipped_steps"] += 1
    if not math.isfinite(sum(values[:3 * n])):  # a reading that overflowed: the secant skips it
        grad_sq, after, before = [0.0] * n, [0.0] * n, [0.0] * n

    # The controller is one set of scalars for the whole optimizer; every group holds a copy.
    c = {k: g0.get(k, v) for k, v in _CONTROLLER_DEFAULTS.items()}
    if c["reference_lr"] is None:  # first step (or a checkpoint from before reference_lr existed)
        c["reference_lr"] = max(g["base_lr"] for g in groups)
    matrices = [i for i in range(n) if tensors["params"][i].dim() >= 2] or list(range(n))
    p2 = sum(param_sq[i] for i in matrices)
    n2 = float(sum(tensors["directions"][i].numel() for i in matrices))
    if c["base_scale"] is None:
        # The first step: the user's lr, or (initial_scale) a fraction of the weights' RMS, whatever the lr
        initial = g0.get("initial_scale")
        c["base_scale"] = c["reference_lr"] if initial is None or p2 <= 0.0 else initial * math.sqrt(p2 / n2)
        l1 = sum(values[NUM_STATS * n + 1:])
        if g0.get("initial_decrease") and has_loss and loss > 0.0 and l1 > 0.0:
            # Polyak's step for Adam's first direction sign(g): a first-order loss decrease of d * sum|g|, set
            # to initial_decrease of the loss (the floor f* taken as 0)
            c["base_scale"] = g0["initial_decrease"] * loss / l1
    c["meta_step"] += 1
    t = c["meta_step"]

    # Variance factor per tensor, from the EMAs before this step's gradient: with c_k the variance of the
    # debiased EMA m_hat relative to the gradient's, E[m_hat^2] = S + c_k sigma^2 and E[v_hat] = S + sigma^2.
    phis, fractions, averaged, weights = [], [], [], []
    for i in range(n):
        group = groups[tensors["group_index"][i]]
        k = tensors["steps"][i]
        fraction = 1.0  # S / (S + N): the share of the gradient that is signal
        smoothed = 1.0  # S / (S + c_k N): the same for the momentum, which averages 1/(1-beta1) gradients
        if k >= warmup and k > 0:
            b1, b2 = tensors["betas"][i]
            bc1, bc2 = _bias_corrections(k, b1, b2)
            m_hat_sq, v_hat = m_sq[i] / bc1**2, v_sum[i] / bc2
            ck = (1.0 - b1) * (1.0 + b1**k) / ((1.0 + b1) * (1.0 - b1**k))
            noise = max(v_hat - m_hat_sq, 0.0) / max(1.0 - ck, 1e-12)
            signal = max(m_hat_sq - ck * noise, 0.0)
            if signal + noise > 0.0:
                fraction = max(signal / (signal + noise), group["min_variance_factor"])
                smoothed = max(signal / (signal + ck * noise), group["min_variance_factor"])
        fractions.append(fraction)
        averaged.append(smoothed)
        phis.append(fraction ** group["variance_power"])
        weights.append(tensors["params"][i].numel())
    total = float(sum(weights)) or 1.0
    signal_fraction = sum(w * f for w, f in zip(weights, fractions)) / total
    # the secant reads EMAs over ~1/(1-beta1) steps: their noise is the momentum's (momentum_noise)
    rate_fraction = sum(w * f for w, f in zip(weights, averaged)) / total if g0.get("momentum_noise", True) \
        else signal_fraction
    # The gate redistributes the step across tensors (towards those with more signal) at a constant mean:
    # the overall scale is the landscape controller's job, and scaling it down here as well would only
    # make the controller push back (measured on digits: lower accuracy than the redistributing gate).
    mean_gate = sum(w * f for w, f in zip(weights, phis)) / total
    phis = [f / mean_gate for f in phis]

    # Landscape factor: secant along a step's direction, from the directional derivatives before and after
    # that step. Both are divided by the norm of the gradient they were measured with, so clipping by
    # max_grad_norm does not bias r. The reading is the last step's (g_{t-1}.u_{t-2} against g_{t-2}.u_{t-2}),
    # summed during the last update: the fused step reads each gradient once, in the update, so nothing of this
    # step's gradient is known before it. For the same reason the norm is taken on the subsample the
    # derivatives are measured on (what one more pass over the gradient costs: the step-cost table's
    # "one read of the gradients" row).
    # The secant is measured with noisy gradients: its exponent is scaled by the signal fraction, so
    # that at the noise floor the step is no longer driven by noise (which would only ever shrink it).
    grad_norm = math.sqrt(sum(grad_sq))
    if t >= 2 and grad_norm > 0.0 and c["prev_grad_norm"] > 0.0:
        c["secant_after"] = beta1 * c["secant_after"] + (1.0 - beta1) * sum(after) / grad_norm
        c["secant_before"] = beta1 * c["secant_before"] + (1.0 - beta1) * sum(before) / c["prev_grad_norm"]
    mu = 1.0
    target = g0.get("secant_target", 0.0)
    if g0.get("signal_scaled_target", False):
        # noise alone reads r ~ 0: a target away from 0 only where the gradient carries signal, so that the
        # noise floor does not drift the step
        target *= signal_fraction
    if t > warmup and c["secant_before"] != 0.0:
        r = c["secant_after"] / c["secant_before"] if c["secant_before"] > 0.0 else SECANT_R_MIN
        r = min(max(r, SECANT_R_MIN), SECANT_R_MAX)
        # Growing is trusted at full rate (r near 1 is a strong, consistent reading even in noise);
        # shrinking is scaled by the signal share, since noise alone always reads as overshoot. The fixed
        # point is r = secant_target: 0 is the greedy (one-step) optimum, r* < 0 a step (1 - r*) times longer.
        # symmetric_damping: shrinking and growing are both scaled by the signal share (trusted_growth: except a
        # growth reading so strong, r >= TRUSTED_GROWTH_R, that noise alone rarely makes it).
        trusted = g0.get("trusted_growth", False) and r >= TRUSTED_GROWTH_R
        damped = r <= target or (g0.get("symmetric_damping", False) and not trusted)
        mu = ((1.0 - target) / (1.0 - r)) ** (kappa * rate_fraction if damped else kappa)
    d = c["base_scale"] * mu
    c["prev_grad_norm"] = grad_norm

    # Loss guard: a spike well above the running mean halves the step.
    threshold = g0["loss_spike_threshold"]
    if has_loss and threshold is not None:
        cooling = t - c["last_spike"] <= warmup
        if (c["loss_count"] > warmup and t > warmup and not cooling
                and loss > c["loss_mean"] + max(threshold * math.sqrt(c["loss_var"]),
                                                LOSS_SPIKE_MIN_RISE * abs(c["loss_mean"]))):
            d *= LOSS_SPIKE_BACKOFF
            c["scale_ceiling"] = d
            c["loss_spikes"] += 1
            c["last_spike"] = t
        delta = loss - c["loss_mean"]
        if c["loss_count"] == 0:
            c["loss_mean"], c["loss_var"] = loss, 0.0
        else:
            c["loss_mean"] += (1.0 - LOSS_EMA_BETA) * delta
            c["loss_var"] = LOSS_EMA_BETA * (c["loss_var"] + (1.0 - LOSS_EMA_BETA) * delta * delta)
        c["loss_count"] += 1
    if c.get("scale_ceiling") is not None:  # a step that once made the loss spike is not taken again
        d = min(d, c["scale_ceiling"])
    power = g0.get("progress_power")
    if power and has_loss and loss > 0.0:
        # growth must be earned: the step grows past its start at most as (first loss / recent loss)^power
        if c["loss_start"] is None:
            c["loss_start"], c["scale_start"] = loss, d
        c["loss_fast"] = beta1 * c["loss_fast"] + (1.0 - beta1) * loss
        c["loss_fast_count"] += 1
        recent = c["loss_fast"] / (1.0 - beta1 ** c["loss_fast_count"])
        d = min(d, c["scale_start"] * (c["loss_start"] / recent) ** power)

    # Trust bound over the weight matrices: the RMS step d * rms(u) stays below MAX_UPDATE_RATIO * rms(theta).
    # Before the first step there is no direction yet; Adam's first direction is sign(g), of RMS 1.
    u2 = sum(dir_sq[i] for i in matrices) if t > 1 else n2
    if g0.get("trust_bounds", True) and p2 > 0.0 and u2 > 0.0:
        d = min(d, MAX_UPDATE_RATIO * math.sqrt(p2 / u2))
    # ... and d itself stays below MAX_SCALE_RATIO * rms(theta): Adam's direction can jump from tiny to RMS ~1
    # in one step (a large gradient after a flat stretch), and the bound above only sees the last direction.
    if g0.get("trust_bounds", True) and p2 > 0.0:
        d = min(d, MAX_SCALE_RATIO * math.sqrt(p2 / n2))
    d = min(max(d, MIN_BASE_SCALE), MAX_BASE_SCALE)
    c["base_scale"], c["landscape_factor"] = d, mu

    # Per-tensor step: s (scheduler multiplier) * d * phi. The direction kept for the next secant is the
    # actual step's direction, so it is weighted by s * phi as well.
    step_sizes, decays, dir_weights = [], [], []
    for i in range(n):
        group = groups[tensors["group_index"][i]]
        s = group["lr"] / c["reference_lr"] if c["reference_lr"] > 0.0 else 0.0
        step_sizes.append(s * d * phis[i])
        decays.append(s * d * group["weight_decay"])
        dir_weights.append(s * phis[i])
    c["variance_factor"] = signal_fraction
    for group in groups:
        group.update(c)
        s = group["lr"] / c["reference_lr"] if c["reference_lr"] > 0.0 else 0.0
        group["effective_lr"] = s * d  # the gate's numel-weighted mean is 1
    return {"step_sizes": step_sizes, "decays": decays, "dir_weights": dir_weights,
            "eps": [groups[gi]["eps"] for gi in tensors["group_index"]]}


# ---------------------------------------------------------------------------------------------------
# Reference implementation: one tensor at a time, reads like the math
# ---------------------------------------------------------------------------------------------------
def _single_tensor_stats(tensors: dict) -> Tensor:
    rows: list[list[Tensor]] = [[], [], [], [], [], [], [], [], []]
    for g, m_sub, v_sub, p_sub, direction, reading in zip(
        tensors["grads"], tensors["m_subs"], tensors["v_subs"], tensors["p_subs"], tensors["directions"],
        tensors["readings"],
    ):
        after, grad_sq, before = reading  # the last step's, summed in its update (_single_tensor_apply)
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


def _single_tensor_apply(tensors: dict, plan: dict) -> None:
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
        bc1, bc2 = _bias_corrections(state["step"], beta1, beta2)
        denom = v.sqrt() / math.sqrt(bc2) + plan["eps"][i]
        u = (m / bc1) / denom  # Adam's direction
        # decoupled weight decay, then the step
        local = _local(p)
        if plan["decays"][i] != 0.0:
            local.mul_(1.0 - plan["decays"][i])
        local.add_((-plan["step_sizes"][i] * u).to(local.dtype))
        # the direction actually taken (weighted like the step), kept on the subsample for the next secant,
        # and the directional derivative before the step, a = g_t . u_t
        direction.copy_(plan["dir_weights"][i] * _subsample(u))
        state["pre"].copy_((tensors["g_subs"][i] * direction).sum())


# ---------------------------------------------------------------------------------------------------
# Fast implementation: multi-tensor (foreach) kernels; tests hold it equal to the reference
# ---------------------------------------------------------------------------------------------------
def _multi_tensor_stats(tensors: dict) -> Tensor:
    # Sums of squares as norms (one kernel launch per list instead of three per tensor); sum(v) is the
    # L1 norm since v >= 0. The gradient's reading was summed by the last update (_multi_tensor_apply).
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


def _multi_tensor_apply(tensors: dict, plan: dict) -> None:
    # Betas are per group; the foreach kernels take one value, so groups with other betas (rare) are
    # handled by the reference loop.
    beta1, beta2 = tensors["betas"][0]
    params = [_local(p) for p in tensors["params"]]
    grads = tensors["grads"]
    m, v = tensors["exp_avgs"], tensors["exp_avg_sqs"]

    # This step's reading for the next step's secant (see _single_tensor_apply), before the direction moves on.
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
    new_dirs = torch._foreach_div(tensors["m_subs"], [_subsample(x) for x in denom])
    torch._foreach_mul_(new_dirs, [w / b for w, b in zip(plan["dir_weights"], bc1)])
    torch._foreach_copy_(tensors["directions"], new_dirs)
    pre = [x.sum() for x in torch._foreach_mul(tensors["g_subs"], tensors["directions"])]
    torch._foreach_copy_(tensors["pre"], pre)
