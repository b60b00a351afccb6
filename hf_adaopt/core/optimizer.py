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
  taken as 0, as SPS and MoMo do). :math:`\|g\|_1` is read from the gradient as backward left it, before any
  clipping (a hook per parameter until the first step: ``hf_adaopt.core.backward_reading``), so neither the start
  nor the progress ceiling moves with ``max_grad_norm`` (v11; read after clipping, it moved 6x on the LM). On the
  suite it landed within 2.5x of the best-tuned AdamW lr on five of six workloads, where the previous start, 1% of
  the weights' RMS, was 6-15x off on five; it reads the full fine-tune (22M gradients) as needing a small step and
  LoRA (76k) a large one. Without a loss (no :meth:`set_loss`, no closure) it takes the same step for an **assumed
  loss** of 1 (``assumed_loss``), the scale of a loss at initialisation (cross-entropy's log of the classes, a
  normalised regression's 1): one controller on both paths (v10; the plain path's previous start, 1% of the
  weights' RMS, was 6x too high on the full fine-tune and 15-150x too low on LoRA and a new head). It is held
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
* **Progress ceiling**: the step grows past its start at most as far as the loss has fallen (without a loss: not
  at all, but for the yield below),
  :math:`d_t \le d_0 (f_0/\bar f_t)^{k}`, :math:`\bar f` an EMA (:math:`\beta_1`) of the loss and :math:`k` =
  ``progress_power`` (1). Growth must be earned: on a plateau -- LoRA's zero-initialised adapter, a pretrained
  body under a new head -- the secant reads every step as too short, and from Polyak's start it grew the step
  5-10x in 30 steps and destroyed both fine-tunes (README, v5a); under the ceiling the full fine-tune ends level
  with the best-tuned AdamW and LoRA 4.3 points short (v5e, 3 seeds). A **linear reading** earns growth too
  (``ceiling_yields``, v9d): while :math:`\bar r \ge 1/2` -- the directional derivative kept half its value
  across the step, which minibatch noise never fakes, as it pulls :math:`\bar r` down -- the step passes the
  ceiling and the ceiling moves up to it. From scratch, where Polyak's start is 10-40x short (the CNN's, the
  unclipped LM's), the loss alone held the step there (power 1.5 recovered more and lost LoRA, v5i); with the
  yield the CNN went 92.7 -> 95.8% and the clipped LM 3.02 -> 2.95 bpc (3 seeds), while on the fine-tunes,
  whose readings are not linear, the ceiling holds as before.
* **Noise-scaled start** (``noise_scaled_start``, v12): Polyak's start counts the first minibatch's own decrease,
  of which the expected loss sees about the signal share :math:`\rho` (for Gaussian noise
  :math:`\sum G\,\operatorname{sign}(g) / \sum|g| \approx \rho`). At the first reading of the share past
  warmup that can be trusted (within 2x warmup), a start whose gradient has less signal than the floor
  (``min_variance_factor``, 0.1) is scaled by
  floor / :math:`\rho`, at most 1 / floor, and at most as far as the secant, allowed for its noise, reads room to the
  greedy step (none where the step overshoots). The progress ceiling then never holds the step below the scaled
  start, and still counts the loss's fall from the start as measured. A new head over a frozen body reads
  :math:`\rho` 0.02-0.03 and starts 4x higher; from scratch and LoRA read 0.17 or more and are unchanged (ablation
  v12).
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

* **Groups**: each tensor counts in proportion to its group's lr ratio (a frozen group, lr 0, for nothing): in
  the start (the first step moves a tensor by ratio x d, so Polyak's decrease is d x sum(ratio |g|_1), and the
  weights' RMS is weighted the same way), in the signal share (numel x ratio) and in the secant's gradient norm
  (ratio x |g|): a frozen body's noise no longer damps a new head's growth (v9c: plain, head alone 30 -> 41%).
* **Horizon**: with ``total_steps`` known (``AdaOpt(total_steps=...)``, :meth:`set_total_steps`, or `AdaOptCallback`
  from the Trainer's ``max_steps`` under a constant schedule) the step decays linearly to 0 over the last 20% of
  the steps from the size the controller set, which is held through the decay: a warmup-stable-decay schedule
  whose stable step AdaOpt measures (Hagele et al. 2024: the decay at the end does what a cosine does). The decay
  is earned: it begins at the first step in that last 20% at which the secant does not grow the step, and runs to
  the same end. A step still growing (or held by the progress ceiling below what the secant asks) is not trained
  yet: on the 40-step fine-tunes the planned decay cost up to 7 points, and the earned one never began there,
  while on the 3,000-step LM it took the paths from 3.8% (fed) and 7.1% (plain) behind AdamW with a tuned lr and
  cosine to within 1% (ablation v11).

Where it applies: where Adam(W) does. Where not: the first ``warmup_steps`` run at the initial scale while the
EMAs fill; the secant needs gradients that carry information from one step to the next; Polyak's start and the
progress ceiling read the assumed loss when none is given (so without a loss the step grows past its start only on
linear readings); with ``assumed_loss=None`` and no loss AdaOpt starts at 1% of the weights' RMS, and a model whose
weight matrices are all zero then has no scale to start from: it starts at ``lr``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from hf_adaopt.core import _variants, functional
from hf_adaopt.core.backward_reading import BackwardReading
from hf_adaopt.core.controller import CONTROLLER_DEFAULTS, plan_step, read_scalars
from hf_adaopt.core.functional import cast_grads, local_shard, state_dtype, subsample
from hf_adaopt.core.fused import SUMS_KEY, keep_sums_for_checkpoint
from hf_adaopt.core.logs import get_logger

__all__ = ["AdaOpt"]

logger = get_logger(__name__)

class AdaOpt(Optimizer):
    r"""Adam's direction with a step size adapted from gradient variance and the loss landscape.

    Args:
        params: parameters or param groups (dicts), as for any ``torch.optim.Optimizer``.
        lr: a multiplier, not the step size: the step starts at Polyak's step from the first loss (for a loss of
            1 without one), whatever ``lr`` is. A scheduler
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
        min_variance_factor: floor of the signal share S/(S+N), so that a noise-dominated tensor still
            moves and the base scale still adapts at the noise floor.
        warmup_steps: steps during which the step size is held at ``lr`` and the gate open, while the EMAs
            fill. Default ``round(1 / (1 - beta1))``.
        loss_spike_threshold: standard deviations above the running mean of the training loss that count
            as a spike (the base scale is halved, then the guard rests for ``warmup_steps``). ``None``
            disables the loss guard.
        total_steps: the run's length in steps, if known (`AdaOptCallback` sets it from the Trainer's ``max_steps``
            when the Trainer's schedule is constant; :meth:`set_total_steps` does it in a plain loop). The step then
            decays linearly to 0 by the last step, from the first step in the last ``COOLDOWN_FRACTION`` (20%) at
            which the secant does not grow it, at the size the controller set. ``None`` (default): no decay.
        The start (Polyak's step from the first loss, else from an assumed loss of 1) and the controller's other
            switches are fixed (``hf_adaopt.core._variants.SETTINGS``, chosen by ablation); the ablation rows and
            earlier versions are rebuilt from the private table there (``_variants.build(params, variant=...)``).
        foreach: use the multi-tensor implementation. Default: on when all parameters are on CUDA or CPU.
        fused: make the step one pass over memory (``hf_adaopt.core.fused``), as torch's fused AdamW: on CPU a C++
            kernel in torch's fused-AdamW pattern (``hf_adaopt/core/csrc/fused_cpu.cpp``), as fast as
            ``AdamW(fused=True)``; on CUDA a ``torch.compile`` graph, compiled once per parameter layout. Default
            (``None``, with ``foreach`` unset): fused on CPU, foreach on CUDA (opt in with ``fused=True`` until a GPU
            run has measured it); ``foreach=True`` or ``False`` picks that path instead, as in torch. The CPU kernel
            is built with the system's C++ compiler at the first step of the first run on a machine -- about a minute,
            said in one log line, then cached by torch (``~/.cache/torch_extensions``) and loaded in under a second.
            Where it cannot run, the foreach step does, and the log says why, once: no compiler or ``ninja``, or
            tensors it does not take (non-contiguous, DTensor shards, mixed devices; a warning under ``fused=True``).
            It leaves gradient elements that are not finite as they were instead of skipping the step (see
            :mod:`hf_adaopt.core.fused`); the step costs are in the README's step-cost table.

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
        min_variance_factor: float = 0.1,
        warmup_steps: int | None = None,
        loss_spike_threshold: float | None = 4.0,
        total_steps: int | None = None,
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
        if not 0.0 < min_variance_factor <= 1.0:
            raise ValueError(f"Invalid min_variance_factor value: {min_variance_factor} (expected (0, 1])")
        if warmup_steps is None:
            warmup_steps = round(1.0 / (1.0 - betas[0]))
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ValueError(f"Invalid warmup_steps value: {warmup_steps!r} (expected an int >= 0)")
        if loss_spike_threshold is not None and not loss_spike_threshold > 0.0:
            raise ValueError(f"Invalid loss_spike_threshold value: {loss_spike_threshold} (expected > 0 or None)")
        _check_total_steps(total_steps)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            adapt_rate=adapt_rate,
            min_variance_factor=min_variance_factor,
            warmup_steps=warmup_steps,
            loss_spike_threshold=loss_spike_threshold,
            total_steps=total_steps,
            **_variants.SETTINGS,
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)
        self._pending_loss: Tensor | float | None = None
        # Polyak's start reads the first gradient before clipping (backward_reading); no start to read, no hooks
        self._backward_reading = BackwardReading(self, state_dtype) if self.defaults["initial_decrease"] else None

    # ----------------------------------------------------------------------------------------- groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; what AdaOpt cannot honour is refused before the group is added.

        Refused: complex parameters, a Tensor, negative or non-finite ``lr``, a value of an optimizer-wide
        setting (``OPTIMIZER_WIDE``, ``betas[0]``) other than the optimizer's, and ``maximize``, ``capturable`` or
        ``differentiable`` other than False (torch's per-group flags; AdaOpt has none of them). A group added after
        the first step joins the controller's current state and steps ``base_scale * lr / reference_lr`` against
        the reference lr fixed at the first step, so its ratio to the other groups' lrs is kept.
        """
        if isinstance(param_group, dict):  # anything else: the base class raises its TypeError
            _check_group(param_group, self.defaults, index=len(self.param_groups))
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        # The lr the group was created with: the reference lr is the largest of these at the first step.
        group.setdefault("base_lr", group["lr"])
        # The controller is shared by all groups; a group added later joins its current state.
        source = self.param_groups[0] if len(self.param_groups) > 1 else {}
        for key, value in CONTROLLER_DEFAULTS.items():
            group.setdefault(key, source.get(key, value))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_pending_loss", None)
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("total_steps", None)
            for key, value in _variants.BEFORE_SETTING.items():
                group.setdefault(key, value)  # checkpoints from before these settings existed
            for key, value in CONTROLLER_DEFAULTS.items():
                group.setdefault(key, value)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            shown = {k: v for k, v in group.items() if k != "params" and k not in CONTROLLER_DEFAULTS}
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

    def set_total_steps(self, total_steps: int | None) -> None:
        """Tell AdaOpt how many steps the run will take (`AdaOptCallback` hands over the Trainer's ``max_steps``).

        The step decays linearly to 0 by the last of them, from the first step in the last ``COOLDOWN_FRACTION`` at
        which the secant does not grow it (a warmup-stable-decay schedule whose stable step AdaOpt sets itself, and
        which a step still growing does not enter). ``None``: no decay.
        """
        _check_total_steps(total_steps)
        self.defaults["total_steps"] = total_steps
        for group in self.param_groups:
            group["total_steps"] = total_steps

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

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, with the fused step's sums for the next step (exact resume on the fused path)."""
        keep_sums_for_checkpoint(self)
        return super().state_dict()

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
                if pid not in sd["state"] or p not in self.state:
                    continue
                sums = sd["state"][pid].get(SUMS_KEY)
                if isinstance(sums, Tensor):  # the fused step's float64 sums, as they were saved
                    self.state[p][SUMS_KEY] = sums.to(device=p.device, copy=True)
                if state_dtype(p) == p.dtype:
                    continue
                for key, value in sd["state"][pid].items():
                    if isinstance(value, Tensor) and value.is_floating_point() and key != SUMS_KEY:
                        self.state[p][key] = value.to(device=p.device, dtype=state_dtype(p), copy=True)

        pre = self.register_load_state_dict_pre_hook(check)  # appended: after the user's pre-hooks
        post = self.register_load_state_dict_post_hook(keep_full_precision, prepend=True)
        try:
            super().load_state_dict(state_dict)
        finally:
            pre.remove()
            post.remove()
        self.__dict__.pop("_fused_carry", None)
        self._sums_loaded = True  # the fused step's next statistics may come from the loaded state's sums

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
        tensors = self._gather(cast=not fused)
        if not tensors["params"]:
            return loss
        foreach = self._use_foreach(tensors["params"]) and len(set(tensors["betas"])) == 1
        stats_fn, apply_fn = (functional.multi_tensor_stats, functional.multi_tensor_apply) if foreach else (
            functional.single_tensor_stats, functional.single_tensor_apply)
        if fused:
            from hf_adaopt.core import fused as _fused  # imports the compilers' machinery only when used

            stats_fn, apply_fn = _fused.with_fallback(self, stats_fn, apply_fn)

        # 1. every scalar that sets the step, on the device, stacked
        stats = stats_fn(tensors)
        self.__dict__.pop("_sums_loaded", None)  # loaded sums describe the state before this step only
        first_l1 = None
        g0 = self.param_groups[0]
        if g0["base_scale"] is None and g0.get("initial_decrease"):
            if pending is None:
                logger.warning(
                    "AdaOpt: no loss for the first step (add AdaOptCallback to the Trainer, pass a closure to step(), "
                    "or call set_loss(loss) before it): " + (
                        "the step starts at initial_scale of the weights' RMS instead of Polyak's step, and the "
                        "progress ceiling is off" if g0.get("assumed_loss") is None else
                        f"Polyak's start assumes a loss of {g0['assumed_loss']:g}, and the step grows past it only "
                        "while the loss reads linear along the step (no fall of the loss to earn it with)"))
            if pending is not None or g0.get("assumed_loss") is not None:
                # the first step only: sum |g| per tensor, the first-order decrease of Adam's first step sign(g)
                first_l1 = torch.stack(torch._foreach_norm(cast_grads(tensors)["grads"], 1)).to(stats.dtype)
                if self.__dict__.get("_backward_reading") is not None:  # before clipping, where it was read
                    first_l1 = self._backward_reading.l1(tensors["params"], first_l1)
        values = read_scalars(stats, tensors, pending, first_l1)  # the one host sync (and all_reduce)
        # 2. host: skip, or move the controller and compute the per-tensor step sizes
        plan = plan_step(self.param_groups, tensors, values, has_loss=pending is not None)
        if g0["base_scale"] is not None and self.__dict__.get("_backward_reading") is not None:
            self._backward_reading.stop()  # the start is set (or was loaded): nothing more to read
            self._backward_reading = None
        if plan is None:
            return loss
        # 3. device: Adam moments, parameters, and the direction kept for the next step's secant
        apply_fn(tensors, plan)
        return loss

    # ------------------------------------------------------------------------------------ internals
    def _use_fused(self) -> bool:
        # fused=None: fused where it runs by default (CPU), unless foreach was chosen (as torch's optimizers read
        # their flags); fused.use_fused says once why a step is not fused
        fused, foreach = self.param_groups[0].get("fused"), self.param_groups[0].get("foreach")
        if fused is False or (fused is None and foreach is not None) or self.__dict__.get("_fused_failed"):
            return False
        from hf_adaopt.core.fused import use_fused

        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        return use_fused(self, params, explicit=bool(fused))

    def _use_foreach(self, params: list[Tensor]) -> bool:
        choice = self.param_groups[0]["foreach"]
        if choice is not None:
            return bool(choice)
        return all(p.device.type in ("cpu", "cuda") for p in params) and not torch.jit.is_scripting()

    def _gather(self, cast: bool = True) -> dict[str, list]:
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
                local = local_shard(p)
                if len(state) == 0:
                    # State lives on the local shard (FSDP2) in fp32 for low-precision parameters.
                    dtype = state_dtype(p)
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(local, dtype=dtype, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(local, dtype=dtype, memory_format=torch.contiguous_format)
                    state["direction"] = torch.zeros_like(subsample(local.detach()), dtype=dtype)
                    state["pre"] = torch.zeros((), dtype=dtype, device=local.device)
                if "reading" not in state:  # also a checkpoint from before the reading was kept: none yet
                    state["reading"] = torch.zeros(3, dtype=state["exp_avg"].dtype, device=local.device)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                views = cache.get(p)
                if views is None or views[0] is not m or views[1] is not v or views[2] is not local:
                    views = cache[p] = (m, v, local, subsample(m), subsample(v), subsample(local.detach()))
                grad = local_shard(p.grad)
                if cast and grad.dtype != m.dtype:
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
                if cast:  # the fused step reads whole tensors (its fallback makes these in _cast_grads)
                    out["g_subs"].append(subsample(grad))
                    out["m_subs"].append(views[3])
                    out["v_subs"].append(views[4])
                    out["p_subs"].append(views[5] if views[5].dtype == m.dtype else views[5].to(m.dtype))
        return out


# ---------------------------------------------------------------------------------------------------
# What AdaOpt refuses up front
# ---------------------------------------------------------------------------------------------------
# Settings read from the first group only: the controller (and the foreach choice) is one for the optimizer.
# (every private setting but variance_power, which is per group)
OPTIMIZER_WIDE = ("adapt_rate", "warmup_steps", "loss_spike_threshold", "total_steps",
                  *(k for k in _variants.SETTINGS if k != "variance_power"), "foreach", "fused")
# torch's per-group flags that AdaOpt does not have; a group may pass them as False (torch's test_optim does).
ABSENT_FLAGS = ("maximize", "capturable", "differentiable")
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


def _check_total_steps(total_steps: Any) -> None:
    if total_steps is not None and not (isinstance(total_steps, int) and total_steps > 0):
        raise ValueError(f"Invalid total_steps value: {total_steps!r} (expected an int > 0, or None for no decay)")


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
        local, full = local_shard(p), torch.empty(p.shape, device="meta")
        for key, views in (("exp_avg", (local, full)), ("exp_avg_sq", (local, full)),
                           ("direction", (subsample(local.detach()), subsample(full)))):
            shape = tuple(getattr(state[key], "shape", ()))
            if shape not in [tuple(v.shape) for v in views]:
                raise ValueError(f"loaded state of parameter {index} (shape {tuple(p.shape)}) has {key} of shape "
                                 f"{shape}, expected {tuple(views[0].shape)}: the state dict is from another model")


def _check_group(group: dict[str, Any], defaults: dict[str, Any], index: int) -> None:
    """Raise on param group ``index`` if AdaOpt cannot honour it, before the base class adds it."""
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
            raise ValueError(f"{key}={group[key]!r} in param group {index}: {key} is optimizer-wide (AdaOpt reads "
                             f"it once for all groups, here {defaults[key]!r}); set it in AdaOpt(...) only")
    for key in ABSENT_FLAGS:  # torch's per-group flags AdaOpt has not: False is what it does
        if key in group:
            if group[key] is not False:
                raise ValueError(f"{key}={group[key]!r} in param group {index}: AdaOpt has no {key} (only "
                                 f"{key}=False, its behaviour, is accepted)")
            del group[key]
    if "betas" in group and group["betas"][0] != defaults["betas"][0]:
        raise ValueError(f"betas[0]={group['betas'][0]!r} in param group {index}: betas[0] is optimizer-wide (the "
                         f"controller's EMAs use it, here {defaults['betas'][0]!r}); set it in AdaOpt(...) only")
