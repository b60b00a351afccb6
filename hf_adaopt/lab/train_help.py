"""`hf-adaopt train --help`: the project's options first, then the Trainer options that matter, with the defaults a run
applies (not TrainingArguments' own); `--help_all` adds every other TrainingArguments option.

The help is the `HfArgumentParser` that parses the command line (same options, types and choices), regrouped and
with the seed defaults (`run.seed_defaults`) put in place of transformers' for display only: parsing still puts the
seed defaults on the command line, as `run.parse_command_line` says.
"""

from __future__ import annotations

import argparse
import dataclasses

from hf_adaopt.lab import registry
from hf_adaopt.lab.tasks import TASK_NAMES, get_task

HELP_FLAGS = ("-h", "--help", "--help_all", "--help-all")

# The Trainer options `--help` lists, in this order; `--help_all` lists the others too.
TRAINER_OPTIONS = (
    "output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "per_device_eval_batch_size", "gradient_accumulation_steps", "weight_decay", "adam_beta1", "adam_beta2",
    "adam_epsilon", "max_grad_norm", "lr_scheduler_type", "warmup_steps", "eval_strategy", "eval_steps",
    "logging_steps", "save_strategy", "save_steps", "report_to", "seed", "bf16", "fp16", "use_cpu",
    "dataloader_num_workers", "resume_from_checkpoint", "push_to_hub", "hub_model_id", "hub_token",
)
# The Trainer's own optimizer choice: `hf-adaopt train` hands the Trainer its optimizer (--optimizer), so the
# Trainer never reads these; run.parse_command_line refuses them.
IGNORED_TRAINER_OPTIONS = ("optim", "optim_args")


def task_epochs() -> str:
    """``digits 10, mnist 10, ...``: every task's number of epochs."""
    return ", ".join(f"{name} {get_task(name).DEFAULT_EPOCHS}" for name in TASK_NAMES)


def _default_notes(task: str, optimizer: str) -> dict[str, str]:
    """What the seed defaults that depend on --task / --optimizer are, beside the value they take here."""
    lr_free = ", ".join(registry.LR_FREE)
    others = "the others" if optimizer in registry.LR_FREE else f"the others, {optimizer} here"
    return {
        "output_dir": "out/<task>-<optimizer>",
        "learning_rate": (f"{registry.LR_FREE_MULTIPLIER:g} for {lr_free}, whose lr multiplies the step they "
                          f"estimate; {registry.SEED_LR:g} for {others}. AdaOpt's lr is a multiplier too, not its "
                          "step: the logs' adaopt/effective_lr is the step"),
        "num_train_epochs": f"for --task {task}; per task: {task_epochs()}",
    }


def build_help_parser(parser: argparse.ArgumentParser, dataclass_types, seed_defaults: dict, *, task: str,
                      optimizer: str, prog: str, full: bool) -> argparse.ArgumentParser:
    """`parser` (the HfArgumentParser of `dataclass_types`, made for this help only) regrouped and annotated."""
    from transformers import TrainingArguments

    parser.prog = prog
    parser.usage = f"{prog} [--task TASK] [--optimizer OPTIMIZER] [--output_dir DIR] [OPTIONS]"
    parser.description = (
        "Train one task with one optimizer through transformers.Trainer, then evaluate it and write the run to "
        f"--output_dir. Defaults shown are the ones this run applies (--task {task}, --optimizer {optimizer}); "
        "`--task T --help` shows task T's. The experiment guide, training_scripts/README.md, has the table of "
        "defaults per task."
    )
    parser.epilog = (
        "The Trainer's --optim and --optim_args are refused: --optimizer chooses the optimizer. Every option also "
        "takes dashes (--output-dir). "
        + ("" if full else "`--help_all` lists every other TrainingArguments option (all accepted), with "
           "transformers' defaults.")
    )
    notes = _default_notes(task, optimizer)
    ours = {f.name for dc in dataclass_types if dc is not TrainingArguments for f in dataclasses.fields(dc)}
    groups = {
        "ours": parser.add_argument_group(f"{prog} options"),
        "trainer": parser.add_argument_group(
            "Trainer options (TrainingArguments): the ones a run sets or you most often change, with the defaults "
            f"{prog} applies"),
        "other": parser.add_argument_group("other TrainingArguments options, with transformers' defaults"),
    }
    order = {name: i for i, name in enumerate(TRAINER_OPTIONS)}
    placed: dict[str, list] = {key: [] for key in groups}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            action.option_strings = ["-h", "--help"]
            action.help = "show this help and exit (--help_all: with every TrainingArguments option)"
            placed["ours"].insert(0, action)
            continue
        # the dash spellings still parse (the real parser has them); shown once, in the epilog
        action.option_strings = [o for o in action.option_strings if "-" not in o[2:]] or action.option_strings
        if action.choices is not None and len(action.choices) > 4:
            action.help = f"{action.help} One of: {', '.join(map(str, action.choices))}."
            action.metavar = action.dest.upper()
        if action.dest in IGNORED_TRAINER_OPTIONS:
            action.help = "refused: --optimizer chooses the optimizer (the Trainer never reads this option here)"
            action.default = argparse.SUPPRESS
        if action.dest in seed_defaults:
            action.default = seed_defaults[action.dest]
            if action.dest in notes:
                action.default = f"{action.default} ({notes[action.dest]})"
        if action.dest in ours:
            placed["ours"].append(action)
        elif action.dest in order:
            placed["trainer"].append(action)
        else:
            placed["other"].append(action)
    placed["trainer"].sort(key=lambda a: order[a.dest])
    for key, group in groups.items():
        group._group_actions[:] = placed[key]
    parser._action_groups[:] = [groups["ours"], groups["trainer"]] + ([groups["other"]] if full else [])
    return parser
