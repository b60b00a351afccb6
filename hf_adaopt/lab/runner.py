"""The runner of `hf-adaopt compare` and `hf-adaopt suite`: the grid, each run's argv, and training the runs one
after the other in this process, each run's results line appended to results.jsonl the moment it finishes.

A grid cell is a `RunSpec` (task, optimizer, seed, lr); a `Job` is one to execute (its run_id, configuration hash,
`hf-adaopt train` argv and, when the caller parsed it already, its arguments). `run_jobs` trains the jobs through
`hf_adaopt.lab.run.run_training`, sends each run's console output to its run.log and writes its record (`make_record`)
through `hf_adaopt.lab.results`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from hf_adaopt.lab import registry, results, stats
from hf_adaopt.lab import run as run_mod
from hf_adaopt.lab.results import json_safe

# Trajectories longer than this are stored downsampled in results.jsonl (the stability metrics use all points).
MAX_TRAJECTORY_POINTS = 1000


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid. lr None = the optimizer's default initial learning rate."""

    task: str
    optimizer: str
    seed: int
    lr: float | None

    def sort_key(self) -> tuple:
        return (self.task, self.lr is None, self.lr or 0.0, registry.order_key(self.optimizer), self.seed)


def build_grid(
    task: str, names: Sequence[str], seeds: Sequence[int], lrs: Sequence[float | None]
) -> list[RunSpec]:
    """The full grid in run order: seed by seed, every lr and optimizer within a seed.

    Interleaving (rather than all seeds of one optimizer in a row) keeps drifts in machine load from
    lining up with one optimizer's training times, and makes a partial comparison cover every optimizer.
    Within the i-th seed the optimizer order is rotated by i, so the first run of a process (which pays
    one-off warm-up costs) is not always the same optimizer's.
    """
    opts = sorted(names, key=registry.order_key)
    grid = []
    for i, seed in enumerate(sorted(seeds)):
        rotated = opts[i % len(opts) :] + opts[: i % len(opts)]
        grid += [RunSpec(task, o, seed, lr) for lr in lrs for o in rotated]
    return grid


def shard_grid(grid: Sequence[RunSpec], index: int, count: int) -> list[RunSpec]:
    """Every count-th run of the grid's order starting at index: the shards partition the grid."""
    return [spec for i, spec in enumerate(grid) if i % count == index]


def run_argv(spec: RunSpec, passthrough: Sequence[str], run_dir: str, epochs: float | None) -> list[str]:
    """The `hf-adaopt train` argv of one run: `passthrough`, then the optimizer entry's own options (e.g.
    `adamw-cosine`'s schedule, which so wins over a workload's constant one), then the cell's settings."""
    argv = [*passthrough, *registry.get(spec.optimizer).train_argv()]
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
    # steps / epochs to a threshold are not recorded here: the threshold depends on every run's result
    # (a fraction of the best mean), so the report computes them from eval_curve (analysis.derive_thresholds)
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


def quiet_libraries() -> None:
    """Progress bars and info logs of the libraries off (each run's own output goes to its run.log)."""
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    with contextlib.suppress(ImportError):
        import transformers

        transformers.logging.set_verbosity_warning()


@dataclass
class Job:
    """One run to execute: its grid cell, id, configuration hash, `hf-adaopt train` argv and (optionally) its parse.

    `argv`'s `--output_dir` is the run's directory; `extra` is merged into its results line (the suite adds its
    workload name)."""

    spec: RunSpec
    rid: str
    chash: str
    argv: list[str]  # what the run's run.log and results line record; parsed when `args` is None
    extra: dict = field(default_factory=dict)
    args: tuple | None = None  # (TaskArguments, OptimizerArguments, TrainingArguments), when already parsed


def _run_dir_of(argv: Sequence[str]) -> str:
    """The value of the last --output_dir of an argv (the run's directory)."""
    return argv[max(i for i, a in enumerate(argv) if a == "--output_dir") + 1]


def run_jobs(jobs: Sequence[Job], output_dir: str, env: dict, command: str, *, console=sys.stderr,
             desc: str = "runs") -> int:
    """Train `jobs` one after the other in this process, appending each record to results.jsonl as it ends.

    Returns 0, or after the first failed run 2 when its data cannot be used (DataFileError, DataUnavailableError), else
    1 (its traceback goes to the run's run.log; finished runs are kept).
    """
    results_path = os.path.join(output_dir, results.RESULTS_FILE)
    with tqdm(total=len(jobs), desc=desc, unit="run", file=console, dynamic_ncols=True) as bar:
        for job in jobs:
            spec, rid = job.spec, job.rid
            run_dir = _run_dir_of(job.argv)
            shutil.rmtree(run_dir, ignore_errors=True)  # an earlier attempt that did not finish
            os.makedirs(run_dir)
            t_args, o_args, tr_args = job.args or run_mod.parse_args(job.argv)
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
                command, job.argv, run_dir,
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
