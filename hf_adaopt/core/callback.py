"""`transformers.Trainer` callbacks: feed AdaOpt the training loss, log what it does, keep its lr trajectory.

No math lives here: the callbacks read what the optimizer already computed (``optimizer.diagnostics()``,
``param_groups``) and never call ``.item()`` (no host sync of their own).

What the Trainer (transformers 5.x) does and why the code below is shaped by it:

* No callback event receives the loss. `AdaOptCallback` registers a forward hook on the ``model`` the
  callbacks receive and keeps ``outputs["loss"]`` of every training micro-batch as a detached tensor; in
  ``on_pre_optimizer_step`` (after gradient clipping, just before ``optimizer.step()``) it hands the mean over
  the gradient-accumulation micro-batches to ``optimizer.set_loss``. Each rank feeds its local loss; AdaOpt
  reduces its scalars across ranks itself.
* Callbacks run in list order and the ``report_to`` integrations come before user callbacks, so a key added
  in ``on_log`` would never reach TensorBoard & co. `AdaOptCallback` therefore moves itself to the front of
  the Trainer's callback list (right after ``DefaultFlowCallback``) at ``on_init_end`` / ``on_train_begin``.
  ``Trainer.log`` appends a copy of the logs to ``state.log_history`` before the callbacks run, so the keys
  are added to that entry too.
* ``trainer.evaluate()`` returns the dict it logs: only training logs (those with a ``"loss"`` key) get the
  ``adaopt/`` keys.
* The trajectory survives ``resume_from_checkpoint``: both callbacks are ``ExportableState``, so the Trainer
  saves it in each checkpoint's ``trainer_state.json``, and ``on_train_begin`` restores it from there. With
  ``restore_callback_states_from_checkpoint=True`` the Trainer replaces the callback by a new instance built
  from that state (appended last; it moves itself forward again): read ``.trajectory`` from the instance in
  ``trainer.callback_handler.callbacks`` then, not from the one you passed in.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, ExportableState

from hf_adaopt.core.logs import get_logger

__all__ = [
    "AdaOptCallback", "TrajectoryCallback", "unwrap_optimizer", "group_effective_lrs", "DIAGNOSTIC_KEYS", "LOG_PREFIX"
]

logger = get_logger(__name__)

#: Keys of ``AdaOpt.diagnostics()`` that `AdaOptCallback` logs, each as ``LOG_PREFIX + key``.
DIAGNOSTIC_KEYS = ("effective_lr", "variance_factor", "landscape_factor", "base_scale", "skipped_steps", "loss_spikes")
LOG_PREFIX = "adaopt/"
# Trainer schedules that leave the decay to AdaOpt (with a known horizon)
_CONSTANT_SCHEDULES = ("constant", "constant_with_warmup")
TRAJECTORY_FILE = "lr_trajectory.json"
# Per-step trajectory entries of AdaOptCallback beside "step" and "lr" (= effective lr).
_ADAOPT_TRAJECTORY_KEYS = ("variance_factor", "landscape_factor", "base_scale")


def unwrap_optimizer(optimizer: Any) -> Any:
    """The optimizer inside accelerate's ``AcceleratedOptimizer`` (and similar wrappers that keep ``.optimizer``)."""
    for _ in range(8):  # wrappers nest at most a couple of levels; the bound only guards against cycles
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer


def _calling_handler() -> CallbackHandler | None:
    """The `CallbackHandler` whose ``call_event`` is running the current callback method (None if not found).

    No callback event receives the handler or the Trainer, so we look one or two frames up.
    """
    frame = sys._getframe(1)
    for _ in range(6):
        frame = frame.f_back
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, CallbackHandler):
            return owner
    return None


def group_effective_lrs(optimizer) -> dict[str, float]:
    """``{"adaopt/effective_lr/<i>": step}`` for every param group ``i`` whose ``lr`` differs from group 0's.

    The step is the group's ``effective_lr`` (its ``lr`` before AdaOpt's first step, as ``diagnostics()`` reports
    group 0's); group 0's is ``adaopt/effective_lr``.
    """
    groups = optimizer.param_groups
    out = {}
    for i, group in enumerate(groups[1:], start=1):
        if group["lr"] != groups[0]["lr"]:
            step = group.get("effective_lr")
            out[f"{LOG_PREFIX}effective_lr/{i}"] = step if step is not None else group["lr"]
    return out


class TrajectoryCallback(TrainerCallback, ExportableState):
    """Records ``optimizer.param_groups[0]["lr"]`` at every step (subclasses record other step sizes).

    ``.trajectory`` is ``{"step": [...], "lr": [...]}``; ``step`` is the ``global_step`` the optimizer step
    completes (1-based). On ``on_train_end`` the main process writes it, plus ``"optimizer"`` (class name),
    to ``<output_dir>/lr_trajectory.json``. Kept across ``resume_from_checkpoint`` (saved in
    ``trainer_state.json``).
    """

    trajectory_keys: tuple[str, ...] = ("step", "lr")

    def __init__(self):
        self.trajectory: dict[str, list] = self._empty_trajectory()
        self.optimizer_name: str | None = None

    # ------------------------------------------------------------------------------- state (checkpoints)
    def state(self) -> dict:
        return {"args": {}, "attributes": {"trajectory": {k: list(v) for k, v in self.trajectory.items()}}}

    def _empty_trajectory(self) -> dict[str, list]:
        return {key: [] for key in self.trajectory_keys}

    def _restore(self, state) -> None:
        """Start empty on a fresh run; on a resumed one, take the trajectory saved in the checkpoint."""
        if state.global_step == 0:
            self.trajectory = self._empty_trajectory()
            return
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):  # several callbacks of this class: the Trainer keeps a list
            saved = saved[0] if saved else None
        trajectory = (saved or {}).get("attributes", {}).get("trajectory")
        # (trainer_state.json is written with sort_keys: compare the keys, not their order)
        if not isinstance(trajectory, Mapping) or set(trajectory) != set(self.trajectory_keys):
            trajectory = self.trajectory  # nothing saved (checkpoint made without this callback)
        # Steps after the checkpoint are re-run by the resumed training; drop them if we still hold them.
        keep = sum(1 for s in trajectory["step"] if s <= state.global_step)
        self.trajectory = {k: list(trajectory[k][:keep]) for k in self.trajectory_keys}

    # ---------------------------------------------------------------------------------------- events
    def on_train_begin(self, args, state, control, **kwargs):
        self._restore(state)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None:
            return
        optimizer = unwrap_optimizer(optimizer)
        self.optimizer_name = type(optimizer).__name__
        # global_step is incremented after this event: the step being completed is global_step + 1.
        self._record(state.global_step + 1, optimizer)

    def _record(self, step: int, optimizer) -> None:
        self.trajectory["step"].append(step)
        self.trajectory["lr"].append(self._step_size(optimizer))

    def _step_size(self, optimizer) -> float:
        return float(optimizer.param_groups[0]["lr"])

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        path = os.path.join(args.output_dir, TRAJECTORY_FILE)
        with open(path, "w") as f:
            json.dump({**self.trajectory, "optimizer": self.optimizer_name}, f)
        logger.info("Wrote the per-step learning-rate trajectory to %s", path)


class AdaOptCallback(TrajectoryCallback):
    """Feeds `AdaOpt` the training loss and logs its diagnostics as ``adaopt/<key>`` in the Trainer's logs.

    Use it with any way of giving the Trainer an AdaOpt: ``optimizers=(opt, sched)`` or
    ``optimizer_cls_and_kwargs=(AdaOpt, {...})``::

        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                          optimizers=(AdaOpt(model.parameters()), None), callbacks=[AdaOptCallback()])

    * Loss: a forward hook on the model captures ``outputs["loss"]`` of each training micro-batch (detached,
      on the device); the mean over the gradient-accumulation window goes to ``optimizer.set_loss`` right
      before ``optimizer.step()``. Models that return no loss (tuple outputs, a ``compute_loss_func``) get
      no loss fed; AdaOpt then runs its plain path: Polyak's step for an assumed loss of 1, growth past it
      only on linear readings, no loss guard (it logs a warning at the first step).
    * Logs: every training log (``logging_steps``) gets ``adaopt/effective_lr``, ``adaopt/variance_factor``,
      ``adaopt/landscape_factor``, ``adaopt/base_scale``, ``adaopt/skipped_steps``, ``adaopt/loss_spikes``,
      on the main process; they reach ``state.log_history`` and the ``report_to`` integrations (TensorBoard,
      trackio, ...). Evaluation logs -- and so the dict ``trainer.evaluate()`` returns -- are left unchanged.
    * Two learning rates in one log. The Trainer's own ``learning_rate`` is the scheduler's value of param group
      0's ``lr``: for AdaOpt a *multiplier* (and the ratio between groups), not the step. ``adaopt/effective_lr``
      is the step group 0 took, ``base_scale * lr / reference_lr``. Every other group whose ``lr`` differs from
      group 0's gets its own step as ``adaopt/effective_lr/<i>`` (``i`` its index in ``optimizer.param_groups``),
      e.g. a new head at 1e-3 over a body at 1e-5 logs ``adaopt/effective_lr/1``; groups at group 0's lr step
      exactly as group 0 and are not repeated. The other keys are one number for the whole optimizer:
      ``base_scale`` (the adapted scale d), ``variance_factor`` (the gradient's signal share), ``landscape_factor``
      (the secant's factor on d at the last step, before the guards), and the counters ``skipped_steps`` and ``loss_spikes``.
    * Trajectory: ``.trajectory`` holds per optimizer step ``step``, ``lr`` (AdaOpt's effective lr),
      ``variance_factor``, ``landscape_factor``, ``base_scale``; written to ``<output_dir>/lr_trajectory.json``
      at the end of training and kept across checkpoint resume.

    * Horizon (``horizon=True``, the default): when the Trainer's schedule is constant, the Trainer's ``max_steps``
      goes to ``optimizer.set_total_steps`` at the start of training (unless the optimizer has a ``total_steps``
      already), so that AdaOpt decays its step at the end of the run: from the first step in its last 20% at which
      the secant no longer grows the step (a step still growing is not trained yet, and is not decayed). Another
      schedule is in charge of the decay itself.

    Args:
        feed_loss: capture the training loss and give it to the optimizer (default True).
        horizon: hand the Trainer's ``max_steps`` to the optimizer (default True; on the suite's 3,000-step LM the
            decay took AdaOpt from 3.8-7.1% behind AdamW with a tuned lr and cosine to within 1%, and it leaves the
            40-step fine-tunes, whose step is still growing at the end, as they were: ablation v11).
    """

    trajectory_keys = ("step", "lr", *_ADAOPT_TRAJECTORY_KEYS)

    def __init__(self, feed_loss: bool = True, horizon: bool = True):
        super().__init__()
        self.feed_loss = feed_loss
        self.horizon = horizon
        self._hook = None
        self._loss_sum: torch.Tensor | None = None  # detached, on the model's device
        self._n_micro = 0
        self._loss_prescaled = False
        self._warned: set[str] = set()

    def state(self) -> dict:
        out = super().state()
        out["args"] = {"feed_loss": self.feed_loss, "horizon": self.horizon}
        return out

    # -------------------------------------------------------------------------------- ordering
    def _run_before_reporters(self) -> None:
        """Move this callback ahead of the ``report_to`` integrations so its log keys reach them."""
        handler = _calling_handler()
        if handler is None:
            self._warn_once(
                "order",
                "AdaOptCallback could not find the Trainer's callback list; the adaopt/ keys reach "
                "state.log_history but may miss report_to integrations that run before this callback.",
            )
            return
        callbacks = handler.callbacks
        if not any(cb is self for cb in callbacks):
            return
        callbacks[:] = [cb for cb in callbacks if cb is not self]
        position = 1 if callbacks and isinstance(callbacks[0], DefaultFlowCallback) else 0
        callbacks.insert(position, self)

    def on_init_end(self, args, state, control, **kwargs):
        self._run_before_reporters()

    # ------------------------------------------------------------------------------------ loss
    def _capture_loss(self, module, args, kwargs, output) -> None:
        if not module.training or not torch.is_grad_enabled():
            return  # evaluation / prediction forwards
        loss = None
        if isinstance(output, Mapping):  # ModelOutput and plain dicts
            loss = output.get("loss")
        else:
            loss = getattr(output, "loss", None)
        if not isinstance(loss, torch.Tensor):
            self._warn_once(
                "no_loss",
                "AdaOptCallback found no `loss` in the model's outputs (tuple outputs or a custom compute_loss); "
                "AdaOpt runs without the training loss (no loss guard).",
            )
            return
        loss = loss.detach().float()
        if loss.numel() != 1:
            loss = loss.mean()  # DataParallel returns one loss per device
        loss = loss.reshape(())
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._n_micro += 1
        # Models that take `num_items_in_batch` return sum / (items in the whole accumulation window):
        # their micro-batch losses add up to the window's mean instead of averaging to it.
        self._loss_prescaled = kwargs.get("num_items_in_batch") is not None

    def _window_loss(self, args) -> torch.Tensor | None:
        if self._n_micro == 0:
            return None
        if self._loss_prescaled:
            loss = self._loss_sum
            if getattr(args, "average_tokens_across_devices", False) and args.world_size > 1:
                # the divisor counted the items of every rank: scale back to this rank's mean
                loss = loss * args.world_size
            return loss
        return self._loss_sum / self._n_micro

    def _reset_window(self) -> None:
        self._loss_sum = None
        self._n_micro = 0

    # ---------------------------------------------------------------------------------- events
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._run_before_reporters()
        super().on_train_begin(args, state, control, **kwargs)
        inner = unwrap_optimizer(optimizer)
        if inner is not None and not (hasattr(inner, "diagnostics") and hasattr(inner, "set_loss")):
            raise TypeError(
                f"AdaOptCallback needs an AdaOpt optimizer (with set_loss and diagnostics), got "
                f"{type(inner).__name__}; use TrajectoryCallback to record the lr of other optimizers."
            )
        schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        if (self.horizon and inner is not None and state.max_steps and state.max_steps > 0
                and schedule in _CONSTANT_SCHEDULES and inner.param_groups[0].get("total_steps") is None):
            inner.set_total_steps(int(state.max_steps))
        self._remove_hook()
        self._reset_window()
        if self.feed_loss and model is not None:
            self._hook = model.register_forward_hook(self._capture_loss, with_kwargs=True)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        loss = self._window_loss(args)
        self._reset_window()
        if loss is not None and optimizer is not None:
            unwrap_optimizer(optimizer).set_loss(loss)

    def _record(self, step: int, optimizer) -> None:
        diagnostics = optimizer.diagnostics()
        self.trajectory["step"].append(step)
        self.trajectory["lr"].append(float(diagnostics["effective_lr"]))
        for key in _ADAOPT_TRAJECTORY_KEYS:
            self.trajectory[key].append(float(diagnostics[key]))

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        # Only training logs: eval logs carry "<prefix>_loss", and evaluate() returns what it logs.
        if not state.is_world_process_zero or not logs or "loss" not in logs or optimizer is None:
            return
        optimizer = unwrap_optimizer(optimizer)
        if not hasattr(optimizer, "diagnostics"):
            return
        diagnostics = optimizer.diagnostics()
        added = {LOG_PREFIX + key: diagnostics[key] for key in DIAGNOSTIC_KEYS if key in diagnostics}
        added.update(group_effective_lrs(optimizer))
        logs.update(added)
        # Trainer.log appended a copy of `logs` to log_history before calling the callbacks.
        if state.log_history:
            last = state.log_history[-1]
            if last.get("step") == state.global_step and last.get("loss") == logs["loss"]:
                last.update(added)

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hook()
        self._reset_window()
        super().on_train_end(args, state, control, **kwargs)

    # ---------------------------------------------------------------------------------- helpers
    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)
