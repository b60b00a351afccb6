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
import logging
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hf_adaopt import report as report_mod
from hf_adaopt import results, stats
from hf_adaopt.logs import get_logger
from hf_adaopt.results import json_safe

logger = get_logger(__name__)

# The default grid: the seed experiment's optimizers (AdaOpt, SGD with momentum, Adam, RMSprop), AdamW, and
# the learning-rate-free peers (prodigy, dadapt, schedulefree, dog) that are installed (`hf-adaopt[peers]`).
# On digits, 9 optimizers x 5 seeds take a few minutes on 2 CPU cores (README: measured time).
CORE_OPTIMIZERS = ("adaopt", "sgd", "adam", "adamw", "rmsprop")
DEFAULT_SEEDS = 5
# Per-task defaults of the comparison (the command line wins). digits: the seed's 10 epochs, and an evaluation
# every 2% of training (every 9 steps = 5 per epoch) so that steps-to-threshold resolves the first epochs,
# where the optimizers differ; each evaluation of the 360 validation digits costs ~10 ms.
COMPARE_DEFAULTS = {"digits": {"num_train_epochs": 10, "eval_strategy": "steps", "eval_steps": 0.02}}
# Trajectories longer than this are stored downsampled in results.jsonl (the stability metrics use all points).
MAX_TRAJECTORY_POINTS = 1000
ARTEFACTS = (
    results.RESULTS_FILE,
    results.RESULTS_JSON,
    results.REPORT_FILE,
    results.CONFIG_FILE,
    *report_mod.PLOT_FILES.values(),
)

# Compare options that must not reach the per-run parser because compare sets them per run.
_PER_RUN_OPTIONS = ("--seed", "--optimizer", "--output_dir", "--push_to_hub", "--hub_model_id", "--task")

@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid. lr None = the optimizer's default initial learning rate."""

    task: str
    optimizer: str
    seed: int
    lr: float | None

    def sort_key(self) -> tuple:
        return (self.task, self.lr is None, self.lr or 0.0, report_mod._order_key(self.optimizer), self.seed)


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
        help="digits (offline default) | mnist | cifar10 | imdb | squad; several comma-separated run one "
        "comparison each, in <output_dir>/<task>",
    )
    p.add_argument(
        "--optimizers",
        default="all",
        help=f"comma-separated names, or 'all' (default): {', '.join(CORE_OPTIMIZERS)} and the installed "
        "learning-rate-free peers (prodigy, dadapt, schedulefree, dog: pip install 'hf-adaopt[peers]')",
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
        default=report_mod.DEFAULT_THRESHOLD_FRACTION,
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
    from hf_adaopt.baselines import OPTIMIZERS, available_optimizers

    available = available_optimizers()
    if text.strip() == "all":
        return available
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        raise ValueError(
            f"unknown optimizer(s) {unknown} in --optimizers; choose from {', '.join(OPTIMIZERS)}"
        )
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(
            f"optimizer(s) {missing} need packages that are not installed: pip install 'hf-adaopt[peers]'"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--optimizers lists a name twice: {text!r}")
    return names


def build_grid(
    task: str, optimizers: Sequence[str], seeds: Sequence[int], lrs: Sequence[float | None]
) -> list[RunSpec]:
    """The full grid in run order: seed by seed, every lr and optimizer within a seed.

    Interleaving (rather than all seeds of one optimizer in a row) keeps drifts in machine load from
    lining up with one optimizer's training times, and makes a partial comparison cover every optimizer.
    Within the i-th seed the optimizer order is rotated by i, so the first run of a process (which pays
    one-off warm-up costs) is not always the same optimizer's.
    """
    opts = sorted(optimizers, key=report_mod._order_key)
    grid = []
    for i, seed in enumerate(sorted(seeds)):
        rotated = opts[i % len(opts) :] + opts[: i % len(opts)]
        grid += [RunSpec(task, o, seed, lr) for lr in lrs for o in rotated]
    return grid


def shard_grid(grid: Sequence[RunSpec], index: int, count: int) -> list[RunSpec]:
    """Every count-th run of the grid's order starting at index: the shards partition the grid."""
    return [spec for i, spec in enumerate(grid) if i % count == index]


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


def run_argv(spec: RunSpec, passthrough: Sequence[str], run_dir: str, epochs: float | None) -> list[str]:
    """The `hf-adaopt train` argv of one run."""
    argv = list(passthrough)
    argv += [
        "--task",
        spec.task,
        "--optimizer",
        spec.optimizer,
        "--seed",
        str(spec.seed),
        "--output_dir",
        run_dir,
    ]
    if spec.lr is not None:
        argv += ["--learning_rate", repr(spec.lr)]
    if epochs is not None:
        argv += ["--num_train_epochs", repr(epochs)]
    if not any(a == "--report_to" or a.startswith("--report_to=") for a in passthrough):
        argv += ["--report_to", "none"]
    # quiet per-run Trainer: no tqdm bars, warnings only (the log goes to the run's run.log)
    argv += ["--disable_tqdm", "True", "--log_level", "warning"]
    return argv


def run_id(spec: RunSpec, chash: str) -> str:
    lr = "default" if spec.lr is None else f"{spec.lr:g}"
    return f"{spec.task}-{spec.optimizer}-lr{lr}-seed{spec.seed}-{chash}"


# ---------------------------------------------------------------------------------------------------------
# environment and records


def _downsample(traj: dict, max_points: int = MAX_TRAJECTORY_POINTS) -> dict:
    steps = traj.get("step", [])
    n = len(steps)
    lists = {k: list(v) for k, v in traj.items() if isinstance(v, (list, tuple)) and len(v) == n}
    if n <= max_points:
        return lists
    idx = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return {k: [v[i] for i in idx] for k, v in lists.items()}


def training_time(history: Sequence[dict], train_runtime: float | None) -> float | None:
    """The Trainer's train_runtime minus the evaluations it ran during training (their eval_runtime).

    Evaluation costs the same for every optimizer and, with frequent evaluations, is a large part of
    train_runtime on small tasks; subtracting it leaves the time spent training.
    """
    if train_runtime is None:
        return None
    in_training = 0.0
    for entry in history:
        if "train_runtime" in entry:  # the summary entry: later evaluations ran after train()
            break
        in_training += float(entry.get("eval_runtime", 0.0) or 0.0)
    return max(0.0, float(train_runtime) - in_training)


def make_record(
    spec: RunSpec,
    rid: str,
    chash: str,
    result: dict,
    training_args,
    config: dict,
    elapsed: float,
    env: dict,
    command: str,
    argv: Sequence[str],
    run_dir: str,
    threshold: float | None,
) -> dict:
    """The results.jsonl line of one finished run."""
    history = result.get("log_history", [])
    curve: dict[int, dict] = {}
    for entry in history:
        if "eval_accuracy" in entry or "eval_loss" in entry:
            curve[entry["step"]] = {
                "step": entry["step"],
                "epoch": entry.get("epoch"),
                "eval_loss": json_safe(entry.get("eval_loss")),
                "eval_accuracy": json_safe(entry.get("eval_accuracy")),
            }
    eval_curve = [curve[s] for s in sorted(curve)]
    train_curve = [{"step": e["step"], "loss": json_safe(e["loss"])} for e in history if "loss" in e]
    traj = result.get("lr_trajectory") or {}
    lr_values = [v for v in traj.get("lr", []) if v is not None and math.isfinite(v)]
    lr_stats = stats.lr_stability(lr_values)
    ev, tr = dict(result.get("eval", {})), dict(result.get("train", {}))
    metrics = {
        "train_time_s": training_time(history, tr.get("train_runtime")),
        "train_runtime_s": tr.get("train_runtime"),
        "final_eval_accuracy": ev.get("eval_accuracy"),
        "final_eval_loss": json_safe(ev.get("eval_loss")),
        "best_eval_accuracy": max(
            (p["eval_accuracy"] for p in eval_curve if p["eval_accuracy"] is not None), default=None
        ),
        "total_steps": max([e.get("step", 0) for e in history] + list(traj.get("step", [])) + [0]),
        **{f"lr_{k}": json_safe(v) for k, v in lr_stats.items() if k != "n"},
    }
    if threshold is not None:
        acc = [
            (p["step"], p["epoch"], p["eval_accuracy"]) for p in eval_curve if p["eval_accuracy"] is not None
        ]
        metrics["threshold"] = threshold
        metrics["steps_to_threshold"] = stats.steps_to_threshold(
            [a[0] for a in acc], [a[2] for a in acc], threshold
        )
        metrics["epochs_to_threshold"] = stats.steps_to_threshold(
            [a[1] for a in acc], [a[2] for a in acc], threshold
        )
    return {
        "task": spec.task,
        "optimizer": spec.optimizer,
        "seed": spec.seed,
        "learning_rate": float(training_args.learning_rate),
        "lr_grid": spec.lr,
        "run_id": rid,
        "config_hash": chash,
        "eval": json_safe(ev),
        "train": json_safe(tr),
        "eval_curve": eval_curve,
        "train_loss_curve": train_curve,
        "lr_trajectory": _downsample(traj),
        "metrics": metrics,
        "elapsed_s": elapsed,
        "config": config,
        "run_dir": os.path.relpath(run_dir),
        "train_command": "hf-adaopt train " + shlex.join(argv),
        "command": command,
        "environment": {**env["versions"], "device": results.device_description()},  # the threads this run used
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---------------------------------------------------------------------------------------------------------
# output directory


def prepare_output_dir(output_dir: str, chash: str, overwrite: bool) -> None:
    """Resume by default; refuse a directory made with another configuration unless overwrite is set.

    Everything that would stop the comparison later is checked here, before the first run: the directory must be
    writable, results.jsonl readable (a partial last line is cut off, see repair_results) and compare_config.json
    valid; ValueError names the file and the fix.
    """
    from hf_adaopt.run import ensure_writable_dir

    ensure_writable_dir(output_dir)
    if overwrite:
        for name in ARTEFACTS:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output_dir, name))
        shutil.rmtree(os.path.join(output_dir, results.RUNS_SUBDIR), ignore_errors=True)
    ensure_writable_dir(os.path.join(output_dir, results.RUNS_SUBDIR))
    existing = results.load_config(output_dir)
    old = existing.get("config_hash")
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


# ---------------------------------------------------------------------------------------------------------
# quiet runs


@contextlib.contextmanager
def _run_output_to(log_path: str):
    """Send one run's console output (prints, warnings, log records) to its run.log."""
    with open(log_path, "a", encoding="utf-8") as log:
        swapped = []
        console = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        for name in (None, "transformers", "hf_adaopt", "accelerate", "datasets"):
            for h in logging.getLogger(name).handlers:
                # handlers that write to the console only (not files, not a caller's own capture such as pytest's)
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in console:
                    previous = h.setStream(log)
                    if previous is not None:
                        swapped.append((h, previous))
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield log
        finally:
            for h, stream in swapped:
                h.setStream(stream)


def _quiet_libraries() -> None:
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    with contextlib.suppress(ImportError):
        import transformers

        transformers.logging.set_verbosity_warning()


# ---------------------------------------------------------------------------------------------------------
# the runner (compare and suite)


@dataclass
class Job:
    """One run to execute: its grid cell, id, configuration hash and `hf-adaopt train` argv.

    `argv`'s `--output_dir` is the run's directory; `extra` is merged into its results line (the suite adds its
    workload name)."""

    spec: RunSpec
    rid: str
    chash: str
    argv: list[str]
    extra: dict = field(default_factory=dict)


def _run_dir_of(argv: Sequence[str]) -> str:
    """The value of the last --output_dir of an argv (the run's directory)."""
    return argv[max(i for i, a in enumerate(argv) if a == "--output_dir") + 1]


def run_jobs(jobs: Sequence[Job], output_dir: str, env: dict, command: str, *, threshold: float | None = None,
             console=sys.stderr, desc: str = "runs") -> int:
    """Train `jobs` one after the other in this process, appending each record to results.jsonl as it ends.

    Returns 0, or after the first failed run 2 when its data cannot be used (DataFileError, DataUnavailableError), else
    1 (its traceback goes to the run's run.log; finished runs are kept).
    """
    from tqdm.auto import tqdm

    from hf_adaopt import run as run_mod

    results_path = os.path.join(output_dir, results.RESULTS_FILE)
    with tqdm(total=len(jobs), desc=desc, unit="run", file=console, dynamic_ncols=True) as bar:
        for job in jobs:
            spec, rid = job.spec, job.rid
            run_dir = _run_dir_of(job.argv)
            shutil.rmtree(run_dir, ignore_errors=True)  # an earlier attempt that did not finish
            os.makedirs(run_dir)
            t_args, o_args, tr_args = run_mod.parse_args(job.argv)
            where = job.extra.get("workload", "")
            bar.set_postfix_str(
                f"{where} {spec.optimizer} seed {spec.seed}".strip() + ("" if spec.lr is None else f" lr {spec.lr:g}")
            )
            log_path = os.path.join(run_dir, "run.log")
            start = time.perf_counter()
            try:
                with _run_output_to(log_path) as log:
                    print("hf-adaopt train " + shlex.join(job.argv), file=log, flush=True)
                    result = run_mod.run_training(t_args, o_args, tr_args)
            except Exception as e:
                with open(log_path, "a", encoding="utf-8") as log:
                    import traceback

                    traceback.print_exc(file=log)
                bar.close()
                print(
                    f"run {rid} failed: {type(e).__name__}: {e}\nThe traceback is in {log_path}. Finished runs are "
                    "kept in results.jsonl; rerun the same command to resume.",
                    file=console,
                )
                return 2 if isinstance(e, (run_mod.DataFileError, run_mod.DataUnavailableError)) else 1  # 2: bad input
            elapsed = time.perf_counter() - start
            record = make_record(
                spec, rid, job.chash, result, tr_args, results.recorded_config(t_args, o_args, tr_args), elapsed, env,
                command, job.argv, run_dir, threshold,
            )
            record.update(job.extra)
            results.append_record(results_path, record)
            stop_if_interrupted()  # a Ctrl-C that a finalizer swallowed during the run: stop now, the run is saved
            acc = record["eval"].get("eval_accuracy")
            bar.set_postfix_str(
                f"last: {where} {spec.optimizer} seed {spec.seed} acc {acc:.4f}".replace("  ", " ")
                if acc is not None
                else f"last: {rid}"
            )
            bar.update(1)
    return 0


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


def _main_tasks(argv: list[str], tasks: list[str], output_dir: str | None, parser) -> int:
    """One comparison per task, each in its own directory (<output_dir>/<task>, default out/compare-<task>)."""
    if "--push_to_hub" in argv:
        parser.error("--push_to_hub takes one --task at a time (one results repo per task)")
    subs = []
    for task in tasks:
        sub = _without_option(_without_option(argv, "--task"), "--output_dir") + ["--task", task]
        if output_dir is not None:
            sub += ["--output_dir", os.path.join(output_dir, task)]
        subs.append(sub)
    for sub in subs:  # every task's arguments are checked before the first run of the first task
        _main(sub, check_only=True)
    status = 0
    for sub in subs:
        status = _main(sub) or status
    return status


def _check_push_target(args) -> None:
    if not args.push_to_hub:
        return
    if not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id 'namespace/name'")
    try:
        from hf_adaopt import hub

        hub.check_push_target(args.hub_model_id, args.hub_token)
    except ImportError as e:
        raise ValueError(f"--push_to_hub needs the hub extra: pip install 'hf-adaopt[hub]' ({e})") from None
    except hub.HubPushError as e:
        raise ValueError(f"--push_to_hub: {e}") from None
    except ValueError as e:
        raise ValueError(f"--hub_model_id: {e}") from None


def check_run_arguments(task: str, optimizers, lrs, passthrough, epochs, output_dir) -> tuple:
    """Parse the argv of every distinct run (each optimizer at each lr) as its run will, so that an option `hf-adaopt
    train` refuses (a typo, a bad value, --optimizer_kwargs an optimizer rejects, a missing data file) stops the
    comparison before its first run. Returns the parse of the probe run (AdaOpt, seed 0, default lr), whose
    configuration every run shares."""
    from hf_adaopt import run as run_mod

    probe_dir = os.path.join(output_dir, "probe")
    for optimizer in optimizers:
        for lr in lrs:
            try:
                run_mod.parse_args(run_argv(RunSpec(task, optimizer, 0, lr), passthrough, probe_dir, epochs))
            except run_mod.UnknownArgumentsError as e:
                raise ValueError(
                    f"{e.describe(build_parser())} `hf-adaopt compare --help` lists compare's own options; the "
                    "others go to every run and must be `hf-adaopt train` options"
                ) from None
            except ValueError as e:
                raise ValueError(f"{e} (in the {optimizer} runs{'' if lr is None else f' at lr {lr:g}'})") from None
    return run_mod.parse_args(run_argv(RunSpec(task, "adaopt", 0, None), passthrough, probe_dir, epochs))


class _Interrupt:
    """Ctrl-C: a SIGINT raises KeyboardInterrupt as usual and is also remembered, because Python drops an exception
    raised inside a finalizer (`__del__`), and accelerate runs gc.collect() at the end of every training run."""

    interrupted = False

    def handler(self, signum, frame):
        self.interrupted = True
        raise KeyboardInterrupt


_INTERRUPT = _Interrupt()


def stop_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed since compare started, even if its exception was lost."""
    if _INTERRUPT.interrupted:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """`hf-adaopt compare`; Ctrl-C stops it with exit status 130 and says how to resume (no traceback)."""
    import signal
    import threading

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


def _main(argv: list[str] | None = None, check_only: bool = False) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)
    from hf_adaopt.tasks import TASK_NAMES

    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown or not tasks:
        parser.error(f"--task {args.task!r}: unknown task(s) {unknown}; choose from {', '.join(TASK_NAMES)}")
    if len(tasks) > 1:
        return _main_tasks(argv, tasks, args.output_dir, parser)
    console = sys.stderr
    task = args.task.strip()
    output_dir = args.output_dir or os.path.join("out", f"compare-{task}")
    epochs = args.num_train_epochs
    try:
        for opt in _PER_RUN_OPTIONS:
            if any(a == opt or a.startswith(opt + "=") for a in passthrough):
                raise ValueError(
                    f"{opt} is set per run by compare; use --seeds/--seed_list, --optimizers, --output_dir, "
                    "--push_to_hub/--hub_model_id of `hf-adaopt compare` instead"
                )
        shard_index, shard_count = parse_shard(args.shard)
        optimizers = resolve_optimizers(args.optimizers)
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
        passthrough = task_defaults(task, passthrough, epochs) + passthrough
        p_task, p_opt, p_train = check_run_arguments(task, optimizers, lrs, passthrough, epochs, output_dir)
        shared_hash = results.config_hash(results.canonical_config(p_task, p_opt, p_train))
        prepare_output_dir(output_dir, shared_hash, args.overwrite_output_dir and not check_only)
    except ValueError as e:
        parser.error(str(e))
    if check_only:
        return 0

    from hf_adaopt import run as run_mod

    _quiet_libraries()
    command = "hf-adaopt compare " + shlex.join(argv)
    env = results.environment()
    results.write_config(
        output_dir,
        {
            "command": command,
            "args": vars(args),
            "passthrough": passthrough,
            "config_hash": shared_hash,
            "run_config": results.canonical_config(p_task, p_opt, p_train),
            "threshold": args.threshold,
            "threshold_fraction": args.threshold_fraction,
            "grid": {"task": task, "optimizers": optimizers, "seeds": seeds, "learning_rates": lrs},
            "environment": env,
        },
    )

    grid = build_grid(task, optimizers, seeds, lrs)
    mine = shard_grid(grid, shard_index, shard_count)
    done = results.finished_run_ids(output_dir)
    plans = []
    for spec in mine:
        run_dir = os.path.join(output_dir, results.RUNS_SUBDIR, "pending")
        spec_argv = run_argv(spec, passthrough, run_dir, epochs)
        t_args, o_args, tr_args = run_mod.parse_args(spec_argv)
        chash = results.config_hash(results.canonical_config(t_args, o_args, tr_args))
        rid = run_id(spec, chash)
        if rid not in done:
            plans.append((spec, rid, chash))
    shard_txt = f" (shard {shard_index}/{shard_count}: {len(mine)})" if shard_count > 1 else ""
    print(
        f"compare {task}: {len(grid)} runs in the grid{shard_txt}, {len(mine) - len(plans)} already finished "
        f"in {output_dir}, {len(plans)} to run",
        file=console,
        flush=True,
    )

    results_path = os.path.join(output_dir, results.RESULTS_FILE)
    jobs = [Job(spec, rid, chash, run_argv(spec, passthrough, os.path.join(output_dir, results.RUNS_SUBDIR, rid), epochs))
            for spec, rid, chash in plans]
    failed = run_jobs(jobs, output_dir, env, command, threshold=args.threshold, console=console)
    if failed:
        return failed

    result = report_mod.build_report(output_dir, args.threshold, args.threshold_fraction)
    status = 0
    print(
        f"wrote {results_path}, results.json, report.md and {len(result['plots'])} plots to {output_dir}",
        file=console,
    )
    if args.push_to_hub:
        from hf_adaopt.hub import push_comparison

        try:
            push_comparison(
                output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo
            )
            print(f"pushed {output_dir} to {args.hub_model_id}", file=console)
        except Exception as e:  # the hub module's errors name the problem and the fix
            print(
                f"push to {args.hub_model_id} failed: {e}\nlocal results are kept in {output_dir}",
                file=console,
            )
            status = 1
    console.flush()
    print()
    print(report_mod.summary_table(result))
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
