"""Glue between `AdaOpt` and `transformers.Trainer`: param groups, a constant schedule, both Trainer routes.

Two ways to train with AdaOpt (pair either with `hf_adaopt.AdaOptCallback`)::

    opt, sched = create_optimizer_and_scheduler(model, args)
    trainer = Trainer(model=model, args=args, optimizers=(opt, sched), callbacks=[AdaOptCallback()], ...)

    trainer = Trainer(model=model, args=args, optimizer_cls_and_kwargs=adaopt_cls_and_kwargs(args),
                      callbacks=[AdaOptCallback()], ...)   # the route that also works under FSDP

Recommended ``TrainingArguments``:

* ``lr_scheduler_type="constant"``: AdaOpt reads ``group["lr"]`` as a multiplier of its own step size, so a
  decaying schedule decays AdaOpt's adapted step on top of its own annealing. The Trainer's default is
  ``"linear"``; ``optimizers=(opt, None)`` and ``optimizer_cls_and_kwargs=`` both get that default
  unless ``lr_scheduler_type`` says otherwise (``create_optimizer_and_scheduler`` returns a constant one).
* ``max_grad_norm``: the Trainer's default 1.0 or 0 (off): the secant normalizes each directional derivative by
  the norm of the gradient it was measured with, so clipping does not bias it (the suite runs both).
* ``learning_rate``: a multiplier and the ratio between groups, not the step: AdaOpt's step starts at Polyak's
  step from the first loss (which `AdaOptCallback` feeds) whatever the lr; each group counts in that start in
  proportion to its lr ratio (a frozen group for nothing).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import TrainingArguments, get_constant_schedule
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
from transformers.trainer_pt_utils import get_parameter_names

from hf_adaopt.core.logs import get_logger
from hf_adaopt.core.optimizer import AdaOpt

__all__ = [
    "create_optimizer_and_scheduler", "adaopt_cls_and_kwargs", "decay_parameter_names", "param_groups", "warn_schedule",
]

logger = get_logger(__name__)

# Trainer.get_decay_parameter_names (transformers 5.x): no weight decay for biases and normalization weights.
_NO_DECAY_NAME_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def decay_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that get weight decay, by the Trainer's convention (``get_decay_parameter_names``)."""
    return get_parameter_names(model, ALL_LAYERNORM_LAYERS, _NO_DECAY_NAME_PATTERNS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The Trainer's two groups: trainable decay parameters with ``weight_decay``, the others with 0.

    Empty groups are dropped (e.g. a model without biases or norms).
    """
    decay = set(decay_parameter_names(model))
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decay and p.requires_grad],
         "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if n not in decay and p.requires_grad],
         "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _adaopt_kwargs(args: TrainingArguments, overrides: dict[str, Any]) -> dict[str, Any]:
    """lr, betas and eps from `args` (the weight decay goes to the param groups), then `overrides`."""
    kwargs = {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}
    return {**kwargs, **overrides}


def schedule_settings(args: TrainingArguments) -> list[str]:
    """The settings in `args` that schedule ``group["lr"]`` (anything but a constant multiplier), as ``name=value``."""
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    settings = [] if scheduler == "constant" else [f"lr_scheduler_type={scheduler!r}"]
    if args.warmup_steps:
        settings.append(f"warmup_steps={args.warmup_steps!r}")
    if args.lr_scheduler_kwargs:
        settings.append(f"lr_scheduler_kwargs={args.lr_scheduler_kwargs!r}")
    return settings


def warn_schedule(args: TrainingArguments, what_happens: str) -> str | None:
    """One warning, the same words for every helper, naming the schedule settings of `args` and `what_happens` to
    them; nothing when the schedule is constant. Returns the message (None when nothing was said)."""
    settings = schedule_settings(args)
    if not settings:
        return None
    message = (
        f"{', '.join(settings)}: {what_happens}. AdaOpt reads group['lr'] as a multiplier of the step it adapts, "
        "so a schedule scales that step: lr_scheduler_type='constant' without warmup is the recommended setting "
        "(AdaOptCallback hands AdaOpt the Trainer's max_steps for a decay at the end)."
    )
    logger.warning(message)
    return message


def create_optimizer_and_scheduler(
    model: nn.Module, args: TrainingArguments, **adaopt_kwargs: Any
) -> tuple[AdaOpt, torch.optim.lr_scheduler.LambdaLR]:
    """An `AdaOpt` over the Trainer's decay / no-decay groups and a constant schedule, for ``optimizers=``.

    ``lr``, ``betas``, ``eps`` and the weight decay come from ``args`` (``learning_rate``, ``adam_beta1``,
    ``adam_beta2``, ``adam_epsilon``, ``weight_decay``); ``adaopt_kwargs`` override them or set AdaOpt's own
    options (``adapt_rate``, ``foreach``, ...). The schedule is constant whatever ``args.lr_scheduler_type``,
    ``args.warmup_steps`` and ``args.lr_scheduler_kwargs`` say (the Trainer uses the scheduler it is given); a
    warning names the settings it replaces (`warn_schedule`).
    """
    if "params" in adaopt_kwargs:
        raise TypeError("create_optimizer_and_scheduler builds the param groups from `model`; do not pass `params`")
    weight_decay = adaopt_kwargs.pop("weight_decay", args.weight_decay)
    optimizer = AdaOpt(param_groups(model, weight_decay), **_adaopt_kwargs(args, adaopt_kwargs))
    warn_schedule(args, "not applied, create_optimizer_and_scheduler returns a constant schedule (to keep a schedule, "
                  "pass your own scheduler in Trainer(optimizers=(optimizer, scheduler)))")
    return optimizer, get_constant_schedule(optimizer)


def adaopt_cls_and_kwargs(args: TrainingArguments, **kw: Any) -> tuple[type[AdaOpt], dict[str, Any]]:
    """``(AdaOpt, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)``; the Trainer builds the param groups.

    The kwargs take ``lr``, ``betas`` and ``eps`` from ``args``; ``kw`` overrides them or adds AdaOpt options.
    The Trainer creates the scheduler from ``args.lr_scheduler_type`` (and ``warmup_steps``,
    ``lr_scheduler_kwargs``): a warning says so unless the schedule is constant (`warn_schedule`).
    """
    for key in ("params", "weight_decay"):
        if key in kw:
            raise TypeError(
                f"adaopt_cls_and_kwargs got {key}={kw[key]!r}: the Trainer sets the param groups and their "
                "weight decay from TrainingArguments; set args.weight_decay instead"
            )
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    warn_schedule(args, "the Trainer builds this schedule and multiplies AdaOpt's adapted step by it" if scheduler != "constant"
                  else "not applied, the Trainer's 'constant' schedule has no warmup and takes no arguments")
    return AdaOpt, _adaopt_kwargs(args, kw)
