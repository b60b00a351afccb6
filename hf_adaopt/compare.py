"""`hf-adaopt compare`: train every (optimizer, seed[, initial lr]) of a grid and report the statistics.

    hf-adaopt compare                                    # digits, default optimizers, 5 seeds (CPU, minutes)
    hf-adaopt compare --task cifar10 --optimizers adaopt,sgd,adam,rmsprop --seeds 5 --output_dir out/c10
    hf-adaopt compare --task mnist --lr_sweep 1e-5,1e-4,1e-3,1e-2,1e-1
    hf-adaopt compare --task mnist,cifar10 --output_dir out/cmp     # one comparison per task: out/cmp/<task>
    hf-adaopt compare --shard 0/2 & hf-adaopt compare --shard 1/2   # two processes share the grid
    hf-adaopt report out/compare-digits                  # rebuild the report from the stored runs

Every run is a `hf_adaopt.run.run_training` call, the Trainer path of `training_scripts/train.py`, with the
argv that `hf-adaopt train` would get (options this command does not know, e.g. `--max_train_samples 500`
or `--per_device_train_batch_size 64`, are passed through to every run). Each run writes its own directory
`<output_dir>/runs/<run_id>/` (model, eval_results.json, trainer_state.json, lr_trajectory.json, run.log),
and its summary is appended to `<output_dir>/results.jsonl` the moment it finishes (flushed and fsynced), so
an interrupted comparison resumes where it stopped: runs already in results.jsonl are never run again. The
run_id holds a hash of the run's configuration; a directory made with another configuration is refused
unless `--overwrite_output_dir` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from hf_adaopt import hub, optimizers, render, results
from hf_adaopt import report as report_mod
from hf_adaopt import run as run_mod
from hf_adaopt.analysis import DEFAULT_THRESHOLD_FRACTION
from hf_adaopt.logs import get_logger
from hf_adaopt.plots import PLOT_FILES
from hf_adaopt.run import ensure_writable_dir
from hf_adaopt.runner import (
    _INTERRUPT,
    Job,
    RunSpec,
    build_grid,
    quiet_libraries,
    run_argv,
    run_id,
    run_jobs,
    shard_grid,
    stop_if_interrupted,
)
from hf_adaopt.tasks import TASK_NAMES

logger = get_logger(__name__)

# The default grid: every optimizer of `hf_adaopt.optimizers` that is installed (the peers need `hf-adaopt[peers]`).
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
_PER_RUN_OPTIONS = ("--seed", "--optimizer", "--output_dir", "--push_to_hub", "--hub_model_id", "--task")


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
        help=f"comma-separated names, or 'all' (default): {', '.join(optimizers.BUILTIN)} and the installed "
        f"peers ({', '.join(n for n in optimizers.OPTIMIZERS if n not in optimizers.BUILTIN)}: pip install "
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


def _float_list(text: str, option: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise ValueError(f"{option} needs finite learning rates > 0, e.g. 1e-4,1e-3; got {text!r}")
    return sorted(set(values))


def _seed_list(text: str) -> list[int]:
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
    available = optimizers.available_optimizers()
    if text.strip() == "all":
        return available
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in optimizers.OPTIMIZERS]
    if unknown:
        raise ValueError(
            f"unknown optimizer(s) {unknown} in --optimizers; choose from {', '.join(optimizers.OPTIMIZERS)}"
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


def _without_option(argv: Sequence[str], option: str) -> list[str]:
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


def _check_push_target(args) -> None:
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


def _probe_dir(output_dir: str) -> str:
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
                    run_argv(RunSpec(task, optimizer, 0, lr), passthrough, _probe_dir(output_dir), epochs))
            except run_mod.UnknownArgumentsError as e:
                raise ValueError(
                    f"{e.describe(build_parser())} `hf-adaopt compare --help` lists compare's own options; the "
                    "others go to every run and must be `hf-adaopt train` options"
                ) from None
            except ValueError as e:
                raise ValueError(f"{e} (in the {optimizer} runs{'' if lr is None else f' at lr {lr:g}'})") from None
    return parsed


def main(argv: list[str] | None = None) -> int:
    """`hf-adaopt compare`; Ctrl-C stops it with exit status 130 and says how to resume (no traceback)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _INTERRUPT.handler)
    _INTERRUPT.interrupted = False
    try:
        status = _main(argv)
        stop_if_interrupted()
        return status
    except KeyboardInterrupt:
        print(
            "\nhf-adaopt compare: interrupted — rerun the same command to resume (finished runs are kept in "
            "results.jsonl; the interrupted run starts again)",
            file=sys.stderr,
        )
        return 130
    finally:
        _INTERRUPT.interrupted = False
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@dataclass
class Comparison:
    """One task's comparison, parsed and checked: the grid, where it goes, and the parse of each distinct run."""

    args: argparse.Namespace  # compare's own options, with this task's --task and --output_dir
    command: str  # `hf-adaopt compare ...` as recorded (for several tasks: this task's share of the command)
    output_dir: str
    names: list[str]
    seeds: list[int]
    lrs: list[float | None]
    passthrough: list[str]  # `hf-adaopt train` options of every run, the task's compare defaults first
    shard: tuple[int, int]
    parsed: dict  # (optimizer, lr) -> (TaskArguments, OptimizerArguments, TrainingArguments) of its seed-0 run
    probe: tuple  # the parse of the probe run (AdaOpt, seed 0, default lr), whose configuration every run shares
    config_hash: str  # of the probe's configuration

    @property
    def task(self) -> str:
        return self.args.task


def _task_argv(argv: list[str], task: str, output_dir: str | None) -> list[str]:
    """One task's share of a several-task command line: --task TASK, --output_dir OUTPUT_DIR/TASK."""
    sub = _without_option(_without_option(argv, "--task"), "--output_dir") + ["--task", task]
    return sub + (["--output_dir", os.path.join(output_dir, task)] if output_dir is not None else [])


def parse(argv: list[str], parser: argparse.ArgumentParser) -> list[Comparison]:
    """Every task's comparison, each checked before the first run of the first (argparse's exit 2 otherwise)."""
    args, passthrough = parser.parse_known_args(argv)
    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown or not tasks:
        parser.error(f"--task {args.task!r}: unknown task(s) {unknown}; choose from {', '.join(TASK_NAMES)}")
    if len(tasks) == 1:
        args.task = tasks[0]
        return [_parse_task(args, passthrough, "hf-adaopt compare " + shlex.join(argv), parser)]
    if args.push_to_hub:
        parser.error("--push_to_hub takes one --task at a time (one results repo per task)")
    comparisons = []
    for task in tasks:
        task_args = argparse.Namespace(**vars(args))
        task_args.task = task
        if args.output_dir is not None:
            task_args.output_dir = os.path.join(args.output_dir, task)
        command = "hf-adaopt compare " + shlex.join(_task_argv(argv, task, args.output_dir))
        comparisons.append(_parse_task(task_args, list(passthrough), command, parser))
    return comparisons


def _parse_task(args, passthrough: list[str], command: str, parser) -> Comparison:
    task = args.task
    output_dir = args.output_dir or os.path.join("out", f"compare-{task}")
    try:
        for opt in _PER_RUN_OPTIONS:
            if any(a == opt or a.startswith(opt + "=") for a in passthrough):
                raise ValueError(
                    f"{opt} is set per run by compare; use --seeds/--seed_list, --optimizers, --output_dir, "
                    "--push_to_hub/--hub_model_id of `hf-adaopt compare` instead"
                )
        shard = parse_shard(args.shard)
        names = resolve_optimizers(args.optimizers)
        if args.seed_list is not None:
            seeds = _seed_list(args.seed_list)
        else:
            n = DEFAULT_SEEDS if args.seeds is None else args.seeds
            if n < 1:
                raise ValueError(f"--seeds must be >= 1, got {n}")
            seeds = list(range(n))
        if args.lr_sweep is not None:
            lrs: list[float | None] = _float_list(args.lr_sweep, "--lr_sweep")
        elif args.learning_rate is not None:
            lrs = _float_list(repr(args.learning_rate), "--learning_rate")
        else:
            lrs = [None]
        if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
            raise ValueError(f"--threshold is an eval accuracy in (0, 1], got {args.threshold}")
        if not 0.0 < args.threshold_fraction <= 1.0:
            raise ValueError(
                f"--threshold_fraction is a fraction of the best mean accuracy in (0, 1], e.g. 0.95; got "
                f"{args.threshold_fraction}"
            )
        _check_push_target(args)
        passthrough = task_defaults(task, passthrough, args.num_train_epochs) + passthrough
        parsed = check_run_arguments(task, names, lrs, passthrough, args.num_train_epochs, output_dir)
        probe = parsed.get(("adaopt", None)) or run_mod.parse_args(
            run_argv(RunSpec(task, "adaopt", 0, None), passthrough, _probe_dir(output_dir), args.num_train_epochs))
        chash = results.config_hash(results.canonical_config(*probe))
        check_output_dir(output_dir, chash, args.overwrite_output_dir)
    except ValueError as e:
        parser.error(str(e))
    return Comparison(args, command, output_dir, names, seeds, lrs, passthrough, shard, parsed, probe, chash)


def plan(c: Comparison) -> tuple[list[RunSpec], list[Job]]:
    """This shard's part of the grid, and a Job for each of its runs not yet in results.jsonl.

    A run's arguments are its (optimizer, lr) parse with its seed and directory replaced: parsed once, not per run.
    """
    grid = build_grid(c.task, c.names, c.seeds, c.lrs)
    mine = shard_grid(grid, *c.shard)
    done = results.finished_run_ids(c.output_dir)
    jobs = []
    for spec in mine:
        t_args, o_args, tr_args = c.parsed[(spec.optimizer, spec.lr)]
        chash = results.config_hash(results.canonical_config(t_args, o_args, tr_args))
        rid = run_id(spec, chash)
        if rid in done:
            continue
        run_dir = os.path.join(c.output_dir, results.RUNS_SUBDIR, rid)
        args = (t_args, o_args, dataclasses.replace(tr_args, seed=spec.seed, output_dir=run_dir))
        jobs.append(Job(spec, rid, chash, run_argv(spec, c.passthrough, run_dir, c.args.num_train_epochs), args=args))
    return mine, jobs


def execute(c: Comparison, env: dict, console) -> int:
    """Record the comparison's configuration, then train its runs that are not finished (0, or run_jobs' status)."""
    args = c.args
    if args.overwrite_output_dir:
        clear_output_dir(c.output_dir)
    results.write_config(
        c.output_dir,
        {
            "command": c.command,
            "args": vars(args),
            "passthrough": c.passthrough,
            "config_hash": c.config_hash,
            "run_config": results.canonical_config(*c.probe),
            "threshold": args.threshold,
            "threshold_fraction": args.threshold_fraction,
            "grid": {"task": c.task, "optimizers": c.names, "seeds": c.seeds, "learning_rates": c.lrs},
            "environment": env,
        },
    )
    mine, jobs = plan(c)
    n_grid = len(c.names) * len(c.seeds) * len(c.lrs)
    shard_index, shard_count = c.shard
    shard_txt = f" (shard {shard_index}/{shard_count}: {len(mine)})" if shard_count > 1 else ""
    print(
        f"compare {c.task}: {n_grid} runs in the grid{shard_txt}, {len(mine) - len(jobs)} already finished "
        f"in {c.output_dir}, {len(jobs)} to run",
        file=console,
        flush=True,
    )
    return run_jobs(jobs, c.output_dir, env, c.command, threshold=args.threshold, console=console)


def finish(c: Comparison, console) -> int:
    """The report, the push (--push_to_hub) and the summary table; 1 when the push failed, else 0."""
    args = c.args
    result = report_mod.build_report(c.output_dir, args.threshold, args.threshold_fraction)
    status = 0
    print(
        f"wrote {os.path.join(c.output_dir, results.RESULTS_FILE)}, results.json, report.md and "
        f"{len(result['plots'])} plots to {c.output_dir}",
        file=console,
    )
    if args.push_to_hub:
        try:
            hub.push_comparison(c.output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
            print(f"pushed {c.output_dir} to {args.hub_model_id}", file=console)
        except (hub.HubPushError, ValueError, OSError, ImportError) as e:  # each names the problem and the fix
            print(f"push to {args.hub_model_id} failed: {e}\nlocal results are kept in {c.output_dir}", file=console)
            status = 3  # the push failed, the results are written: the same status as `train` and `push`
    console.flush()
    print()
    print(render.summary_table(result))
    sys.stdout.flush()
    return status


def _main(argv: list[str] | None = None) -> int:
    """parse / plan / execute / finish, one task after the other (every task checked before the first run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    comparisons = parse(argv, build_parser())
    quiet_libraries()
    console = sys.stderr
    status = 0
    for c in comparisons:
        env = results.environment()
        failed = execute(c, env, console)
        status = failed or finish(c, console) or status  # a failed run skips its task's report, not the next task
    return status

if __name__ == "__main__":
    raise SystemExit(main())
