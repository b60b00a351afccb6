"""Train one task with one optimizer through `transformers.Trainer`: `hf-adaopt train` and `training_scripts/train.py`.

```
hf-adaopt train --task digits --optimizer adaopt --output_dir out/digits-adaopt
accelerate launch training_scripts/train.py --task cifar10 --optimizer sgd --output_dir out/c10-sgd
```

Arguments are `TaskArguments` (the task and its data), `OptimizerArguments` and `TrainingArguments`, parsed
with `HfArgumentParser` like the transformers example scripts. Where the command line does not set them,
the seed experiment's settings apply (`seed_defaults`): lr 1e-3 (1.0 for the learning-rate-free peers, whose
lr is a multiplier), batch size 32, the task's epochs, weight decay 0, a constant schedule, evaluation every
epoch, logging every 10 steps, no checkpoints, no reporting integration.

The optimizer reaches the Trainer as `optimizer_cls_and_kwargs` (an optimizer factory), the route that also
works under FSDP; the Trainer builds the scheduler from `lr_scheduler_type` (constant by default here).
A run writes to `--output_dir`: the model, `train_results.json`, `eval_results.json`, `all_results.json`,
`trainer_state.json` (log history), `lr_trajectory.json` (the callback) and `run_config.json`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from hf_adaopt.baselines import DEFAULT_LR, OPTIMIZERS, build_optimizer
from hf_adaopt.tasks import TASK_NAMES, DataUnavailableError, TaskArguments, get_task

logger = logging.getLogger(__name__)

# Logging interval (optimizer steps) when --logging_steps is not given: small enough for a loss curve on
# digits (45 steps per epoch).
DEFAULT_LOGGING_STEPS = 10
DEFAULT_EVAL_BATCH_SIZE = 128  # evaluation only: does not change the results, only their speed

TRAINING_ARGS_RECORDED = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "seed",
    "bf16",
    "gradient_accumulation_steps",
    "weight_decay",
    "max_grad_norm",
    "lr_scheduler_type",
    "world_size",
)


@dataclass
class OptimizerArguments:
    optimizer: str = field(default="adaopt", metadata={"help": f"One of: {', '.join(OPTIMIZERS)}."})
    optimizer_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "JSON dict of extra constructor arguments, e.g. '{\"d0\": 1e-4}' for prodigy."},
    )

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown --optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
        if isinstance(self.optimizer_kwargs, str):
            try:
                self.optimizer_kwargs = json.loads(self.optimizer_kwargs)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--optimizer_kwargs must be a JSON object, got {self.optimizer_kwargs!r}") from exc
        if self.optimizer_kwargs is not None and not isinstance(self.optimizer_kwargs, dict):
            raise ValueError(f"--optimizer_kwargs must be a JSON object, got {self.optimizer_kwargs!r}")


def seed_defaults(task: str, optimizer: str) -> dict[str, Any]:
    """The `TrainingArguments` values a run uses when the command line does not set them."""
    return {
        "output_dir": os.path.join("out", f"{task}-{optimizer}"),
        "learning_rate": DEFAULT_LR[optimizer],
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": DEFAULT_EVAL_BATCH_SIZE,
        "num_train_epochs": get_task(task).DEFAULT_EPOCHS,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "eval_strategy": "epoch",
        "logging_steps": DEFAULT_LOGGING_STEPS,
        "save_strategy": "no",
        "report_to": "none",
    }


def _given_flags(argv: list[str]) -> set[str]:
    """Names of the `--flags` on a command line (`--name value`, `--name=value`, `--no_name`)."""
    names = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            names.add(name)
            if name.startswith("no_"):
                names.add(name[3:])
    return names


def parse_args(argv: list[str] | None = None):
    """`(TaskArguments, OptimizerArguments, TrainingArguments)` from a command line, seed defaults filled in."""
    from transformers import HfArgumentParser, TrainingArguments

    argv = list(sys.argv[1:] if argv is None else argv)
    # A first pass for the task and optimizer, which the defaults depend on.
    pre = HfArgumentParser((TaskArguments, OptimizerArguments), add_help=False)  # --help: the full parser
    task_args, opt_args, _ = pre.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if task_args.task not in TASK_NAMES:
        raise ValueError(f"Unknown --task {task_args.task!r}; choose one of {', '.join(TASK_NAMES)}.")
    given = _given_flags(argv)
    # The defaults go first on the command line, so TrainingArguments.__post_init__ sees them as if typed.
    defaults = [
        token
        for name, value in seed_defaults(task_args.task, opt_args.optimizer).items()
        if name not in given
        for token in (f"--{name}", str(value))
    ]
    parser = HfArgumentParser((TaskArguments, OptimizerArguments, TrainingArguments))
    parsed = tuple(parser.parse_args_into_dataclasses(args=defaults + argv))
    training_args = parsed[2]
    if training_args.push_to_hub and training_args.hub_model_id:
        # A repo id the Hub would refuse is caught before hours of training, not after.
        from hf_adaopt.hub import validate_repo_id

        validate_repo_id(training_args.hub_model_id)
    return parsed


class OptimizerFactory:
    """Trainer's optimizer-factory protocol: `Trainer` calls `factory(model, **kwargs)` to build the optimizer.

    Gives every optimizer the same decay / no-decay param groups (the Trainer's convention), whatever the
    distributed setup (the model is the one the Trainer optimizes, FSDP-wrapped or not).
    """

    def __init__(self, name: str):
        self.name = name

    def __call__(self, model, *, lr, weight_decay=0.0, **kwargs):
        from hf_adaopt.trainer import param_groups

        return build_optimizer(self.name, param_groups(model, weight_decay), lr=lr, weight_decay=weight_decay, **kwargs)


def _optimizer_kwargs(opt_args: OptimizerArguments, training_args) -> dict[str, Any]:
    kwargs = {"lr": training_args.learning_rate, "weight_decay": training_args.weight_decay}
    if opt_args.optimizer not in ("sgd", "rmsprop", "dog"):
        kwargs["betas"] = (training_args.adam_beta1, training_args.adam_beta2)
    if opt_args.optimizer != "sgd":
        kwargs["eps"] = training_args.adam_epsilon
    kwargs.update(opt_args.optimizer_kwargs or {})
    return kwargs


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1:
        return value.item()
    return getattr(value, "value", str(value))  # enums -> their value


def environment(training_args) -> tuple[dict[str, str], str]:
    """Package versions and a one-line device description, for run_config.json and reports."""
    import accelerate
    import datasets
    import torch
    import transformers

    import hf_adaopt

    versions = {
        "python": platform.python_version(),
        "hf_adaopt": hf_adaopt.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
    }
    device = training_args.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        name = f"{name}, {torch.get_num_threads()} threads"
    return versions, f"{device.type} ({name}) x{training_args.world_size}"


def run_training(task_args: TaskArguments, opt_args: OptimizerArguments, training_args) -> dict:
    """Train and evaluate one run; write its files to `training_args.output_dir`. See the module docstring."""
    from transformers import Trainer, set_seed

    from hf_adaopt.callback import AdaOptCallback, LRTrajectoryCallback

    if opt_args.optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {opt_args.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
    push_to_hub = bool(training_args.push_to_hub)
    if push_to_hub:
        # hf_adaopt.hub publishes after every local file is written; Trainer's own push would contact the Hub
        # at construction and write its own card.
        training_args = copy.copy(training_args)
        training_args.push_to_hub = False

    set_seed(training_args.seed)  # model init
    setup = get_task(task_args.task).prepare(task_args, training_args)
    callback = AdaOptCallback() if opt_args.optimizer == "adaopt" else LRTrajectoryCallback()
    optimizer_kwargs = _optimizer_kwargs(opt_args, training_args)
    trainer_cls = setup.trainer_cls or Trainer
    trainer = trainer_cls(
        model=setup.model,
        args=training_args,
        train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset,
        data_collator=setup.data_collator,
        compute_metrics=setup.compute_metrics,
        processing_class=setup.processing_class,
        optimizer_cls_and_kwargs=(lambda: OptimizerFactory(opt_args.optimizer), dict(optimizer_kwargs)),
        callbacks=[callback],
        **setup.trainer_kwargs,
    )

    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_metrics = dict(train_result.metrics)
    train_metrics["train_samples"] = len(setup.train_dataset)
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()

    # evaluate() before save_model(): it switches schedule-free optimizers to their averaged weights
    eval_metrics = trainer.evaluate()
    saved_eval = {**eval_metrics, "eval_samples": len(setup.eval_dataset)}
    trainer.log_metrics("eval", saved_eval)
    trainer.save_metrics("eval", saved_eval)
    trainer.save_model()

    inner = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    if trainer.is_world_process_zero():
        versions, device = environment(training_args)
        recorded = {name: getattr(training_args, name) for name in TRAINING_ARGS_RECORDED}
        run_config = {
            "task_args": asdict(task_args),
            "optimizer": opt_args.optimizer,
            "optimizer_class": type(inner).__name__,
            # what was asked for, then everything the optimizer's constructor resolved (e.g. SGD's momentum)
            "optimizer_kwargs": _jsonable(optimizer_kwargs),
            "optimizer_defaults": _jsonable({k: v for k, v in inner.defaults.items() if k != "params"}),
            "training_args": _jsonable(recorded),
            "command": " ".join(sys.argv),
            "versions": versions,
            "device": device,
        }
        with open(os.path.join(training_args.output_dir, "run_config.json"), "w") as f:
            json.dump(run_config, f, indent=2)
        if push_to_hub:
            from hf_adaopt.hub import push_run

            repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
            push_run(
                training_args.output_dir,
                repo_id=repo_id,
                token=training_args.hub_token,
                private=bool(training_args.hub_private_repo),
                revision=training_args.hub_revision,
            )
    return {
        "eval": eval_metrics,
        "train": train_metrics,
        "log_history": trainer.state.log_history,
        "lr_trajectory": callback.trajectory,
        "output_dir": str(training_args.output_dir),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse, train, print the evaluation dict in the Trainer's format (main process only)."""
    try:
        task_args, opt_args, training_args = parse_args(argv)
    except ValueError as exc:  # a bad command line: say what and how to fix it, like argparse (exit 2)
        print(f"hf-adaopt train: error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_training(task_args, opt_args, training_args)
    except DataUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__name__ == "HubPushError":  # local results are written; only the push failed
            print(f"error: {exc}", file=sys.stderr)
            return 3
        raise
    if training_args.process_index == 0:
        print(result["eval"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
