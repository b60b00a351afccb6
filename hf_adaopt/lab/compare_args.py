"""The command line of `hf-adaopt compare`: its parser and defaults, and every check that runs before the first
training run (arguments, optimizer names, the output directory, the push target), so that bad input fails in
seconds and loses nothing (`hf_adaopt.lab.compare` plans and runs the grid)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
from collections.abc import Sequence

from hf_adaopt.core.logs import get_logger
from hf_adaopt.lab import hub, registry, results
from hf_adaopt.lab import run as run_mod
from hf_adaopt.lab.analysis import DEFAULT_THRESHOLD_FRACTION
from hf_adaopt.lab.plots import PLOT_FILES
from hf_adaopt.lab.run import ensure_writable_dir
from hf_adaopt.lab.runner import (
    RunSpec,
    run_argv,
)
from hf_adaopt.lab.tasks import TASK_NAMES

logger = get_logger(__name__)

# The default grid: every optimizer of `hf_adaopt.lab.registry` that is installed (the peers need `hf-adaopt[peers]`).
# On digits, 9 optimizers x 5 seeds take a few minutes on 2 CPU cores (README: measured time).
DEFAULT_SEEDS = 5
# Per-task defaults of the comparison (the command line wins). digits: the seed's 10 epochs, and an evaluation
# every 2% of training (every 9 steps = 5 per epoch) so that steps-to-threshold resolves the first epochs,
# where the optimizers differ; each evaluation of the 360 validation digits costs ~10 ms.
COMPARE_DEFAULTS = {"digits": {"num_train_epochs": 10, "eval_strategy": "steps", "eval_steps": 0.02}}
ARTEFACTS = (
    results.RESULTS_FILE,
    results.RESULTS_JSON,
    results.REPORT_FILE,
    results.CONFIG_FILE,
    *PLOT_FILES.values(),
)

# Compare options that must not reach the per-run parser because compare sets them per run.
PER_RUN_OPTIONS = ("--seed", "--optimizer", "--output_dir", "--push_to_hub", "--hub_model_id", "--task")


# ---------------------------------------------------------------------------------------------------------
# arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hf-adaopt compare",
        description="Multi-seed comparison of optimizers on one task, with statistics, plots and a report. "
        "Options not listed here (e.g. --max_train_samples, --per_device_train_batch_size, --bf16) are passed "
        "to every run as `hf-adaopt train` options.",
        allow_abbrev=False,
    )
    p.add_argument(
        "--task",
        default="digits",
        help=f"{' | '.join(TASK_NAMES)} (digits: the offline default); several comma-separated run one "
        "comparison each, in <output_dir>/<task>",
    )
    p.add_argument(
        "--optimizers",
        default="all",
        help=f"comma-separated names, or 'all' (default): {', '.join(registry.BUILTIN)} and the installed "
        f"peers ({', '.join(n for n in registry.OPTIMIZERS if n not in registry.BUILTIN)}: pip install "
        "'hf-adaopt[peers]')",
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None, help=f"run seeds 0..N-1 (default {DEFAULT_SEEDS})")
    seeds.add_argument("--seed_list", default=None, help="explicit comma-separated seeds, e.g. 0,1,2,42")
    lrs = p.add_mutually_exclusive_group()
    lrs.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="initial lr for every optimizer (default: each optimizer's default, 1e-3 for AdaOpt, "
        "SGD, Adam, AdamW, RMSprop; 1.0 for the lr-free peers)",
    )
    lrs.add_argument(
        "--lr_sweep",
        default=None,
        help="comma-separated initial learning rates: every optimizer runs at each, e.g. 1e-5,1e-4,1e-3",
    )
    p.add_argument(
        "--num_train_epochs",
        type=float,
        default=None,
        help=f"epochs per run (default: digits {COMPARE_DEFAULTS['digits']['num_train_epochs']:g}, other tasks "
        "their training default)",
    )
    p.add_argument("--output_dir", default=None, help="default out/compare-<task>")
    p.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="delete this command's artefacts in --output_dir and start over (default: resume)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only the I-th of N interleaved parts of the grid (0 <= I < N), e.g. 0/2 and 1/2 in "
        "two processes sharing --output_dir",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="absolute eval accuracy for steps/epochs-to-threshold (default: --threshold_fraction of the "
        "best final mean accuracy across optimizers)",
    )
    p.add_argument(
        "--threshold_fraction",
        type=float,
        default=DEFAULT_THRESHOLD_FRACTION,
        help="threshold = this fraction x the best final mean accuracy (default 0.95)",
    )
    p.add_argument(
        "--push_to_hub",
        action="store_true",
        help="after the report is written, push the comparison to --hub_model_id (a dataset repo)",
    )
    p.add_argument("--hub_model_id", default=None, help="'namespace/name' of the repo for --push_to_hub")
    p.add_argument(
        "--hub_token", default=None, help="token for --push_to_hub (default: HF_TOKEN or the login)"
    )
    p.add_argument("--hub_private_repo", action="store_true", help="create the repo private")
    return p


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/2), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need N >= 1 and 0 <= I < N (shards are numbered from 0)")
    return (i, n)


def float_list(text: str, option: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise ValueError(f"{option} needs finite learning rates > 0, e.g. 1e-4,1e-3; got {text!r}")
    return sorted(set(values))


def seed_list(text: str) -> list[int]:
    try:
        seeds = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--seed_list must be comma-separated integers, e.g. 0,1,2,42; got {text!r}") from None
    if not seeds:
        raise ValueError(f"--seed_list needs at least one seed, e.g. 0,1,2; got {text!r}")
    if any(not 0 <= s < 2**32 for s in seeds):
        raise ValueError(f"--seed_list: seeds must lie in [0, 2**32) (numpy's seed range); got {text!r}")
    return seeds


def resolve_optimizers(text: str) -> list[str]:
    available = registry.available_optimizers()
    if text.strip() == "all":
        return available
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in registry.OPTIMIZERS]
    if unknown:
        raise ValueError(
            f"unknown optimizer(s) {unknown} in --optimizers; choose from {', '.join(registry.OPTIMIZERS)}"
        )
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(
            f"optimizer(s) {missing} need packages that are not installed: pip install 'hf-adaopt[peers]'"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--optimizers lists a name twice: {text!r}")
    return names


# ---------------------------------------------------------------------------------------------------------
# per-run configuration


def task_defaults(task: str, passthrough: Sequence[str], epochs: float | None) -> list[str]:
    """COMPARE_DEFAULTS of the task as argv tokens, for the options the command line does not set."""
    given = {a[2:].split("=", 1)[0] for a in passthrough if a.startswith("--")}
    if epochs is not None:
        given.add("num_train_epochs")
    return [
        token
        for name, value in COMPARE_DEFAULTS.get(task, {}).items()
        if name not in given
        for token in (f"--{name}", str(value))
    ]


# ---------------------------------------------------------------------------------------------------------
# environment and records


# ---------------------------------------------------------------------------------------------------------
# output directory


def check_output_dir(output_dir: str, chash: str, overwrite: bool) -> None:
    """Resume by default; refuse a directory made with another configuration unless overwrite is set.

    Everything that would stop the comparison later is checked here, before the first run: the directory must be
    writable, results.jsonl readable (a partial last line is cut off, see repair_results) and compare_config.json
    valid; ValueError names the file and the fix. With overwrite the artefacts are deleted later
    (`clear_output_dir`), when every task has been checked.
    """
    ensure_writable_dir(output_dir)
    ensure_writable_dir(os.path.join(output_dir, results.RUNS_SUBDIR))
    if overwrite:
        return
    old = results.load_config(output_dir).get("config_hash")
    results_path = os.path.join(output_dir, results.RESULTS_FILE)
    if os.path.isfile(results_path):
        results.repair_results(results_path)
        runs = results.load_results(output_dir)
        if old is None:
            old = next(iter({r.get("config_hash") for r in runs} - {None}), None)
    if old is not None and old != chash:
        raise ValueError(
            f"{output_dir} holds a comparison made with another run configuration (config hash {old}, this "
            f"command's is {chash}: epochs, task or training options differ). Pass --overwrite_output_dir to "
            "delete it and start over, or choose another --output_dir."
        )


def clear_output_dir(output_dir: str) -> None:
    """--overwrite_output_dir: delete this command's artefacts and run directories in `output_dir`."""
    for name in ARTEFACTS:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(output_dir, name))
    shutil.rmtree(os.path.join(output_dir, results.RUNS_SUBDIR), ignore_errors=True)
    os.makedirs(os.path.join(output_dir, results.RUNS_SUBDIR))


# ---------------------------------------------------------------------------------------------------------
# quiet runs


# ---------------------------------------------------------------------------------------------------------
# the runner (compare and suite)


# ---------------------------------------------------------------------------------------------------------
# main


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """argv minus `option VALUE` / `option=VALUE`."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == option:
            skip = True
        elif not token.startswith(option + "="):
            out.append(token)
    return out


def check_push_target(args) -> None:
    if not args.push_to_hub:
        return
    if not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id 'namespace/name'")
    try:
        hub.check_push_target(args.hub_model_id, args.hub_token)
    except ImportError as e:
        raise ValueError(f"--push_to_hub needs the hub extra: pip install 'hf-adaopt[hub]' ({e})") from None
    except hub.HubPushError as e:
        raise ValueError(f"--push_to_hub: {e}") from None
    except ValueError as e:
        raise ValueError(f"--hub_model_id: {e}") from None


def probe_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "probe")


def check_run_arguments(task: str, names, lrs, passthrough, epochs, output_dir) -> dict:
    """Parse the argv of every distinct run (each optimizer at each lr, seed 0) as its run will, so that an option
    `hf-adaopt train` refuses (a typo, a bad value, --optimizer_kwargs an optimizer rejects, a missing data file) stops
    the comparison before its first run. Returns {(optimizer, lr): (TaskArguments, OptimizerArguments,
    TrainingArguments)}: every run of the grid is one of these with its seed and directory replaced."""
    parsed = {}
    for optimizer in names:
        for lr in lrs:
            try:
                parsed[(optimizer, lr)] = run_mod.parse_args(
                    run_argv(RunSpec(task, optimizer, 0, lr), passthrough, probe_dir(output_dir), epochs))
            except run_mod.UnknownArgumentsError as e:
                raise ValueError(
                    f"{e.describe(build_parser())} `hf-adaopt compare --help` lists compare's own options; the "
                    "others go to every run and must be `hf-adaopt train` options"
                ) from None
            except ValueError as e:
                raise ValueError(f"{e} (in the {optimizer} runs{'' if lr is None else f' at lr {lr:g}'})") from None
    return parsed
