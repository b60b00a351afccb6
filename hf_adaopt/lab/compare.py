"""`hf-adaopt compare`: train every (optimizer, seed[, initial lr]) of a grid and report the statistics.

    hf-adaopt compare                                    # digits, default optimizers, 5 seeds (CPU, minutes)
    hf-adaopt compare --task cifar10 --optimizers adaopt,sgd,adam,rmsprop --seeds 5 --output_dir out/c10
    hf-adaopt compare --task mnist --lr_sweep 1e-5,1e-4,1e-3,1e-2,1e-1
    hf-adaopt compare --task mnist,cifar10 --output_dir out/cmp     # one comparison per task: out/cmp/<task>
    hf-adaopt compare --shard 0/2 & hf-adaopt compare --shard 1/2   # two processes share the grid
    hf-adaopt report out/compare-digits                  # rebuild the report from the stored runs

Every run is a `hf_adaopt.lab.run.run_training` call, the Trainer path of `training_scripts/train.py`, with the
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
import dataclasses
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass

from hf_adaopt.core.logs import get_logger
from hf_adaopt.lab import hub, render, results
from hf_adaopt.lab import report as report_mod
from hf_adaopt.lab import run as run_mod
from hf_adaopt.lab.compare_args import (
    DEFAULT_SEEDS,
    PER_RUN_OPTIONS,
    build_parser,
    check_output_dir,
    check_push_target,
    check_run_arguments,
    clear_output_dir,
    float_list,
    parse_shard,
    probe_dir,
    resolve_optimizers,
    seed_list,
    task_defaults,
    without_option,
)
from hf_adaopt.lab.runner import (
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
from hf_adaopt.lab.tasks import TASK_NAMES

logger = get_logger(__name__)



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
    sub = without_option(without_option(argv, "--task"), "--output_dir") + ["--task", task]
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
        for opt in PER_RUN_OPTIONS:
            if any(a == opt or a.startswith(opt + "=") for a in passthrough):
                raise ValueError(
                    f"{opt} is set per run by compare; use --seeds/--seed_list, --optimizers, --output_dir, "
                    "--push_to_hub/--hub_model_id of `hf-adaopt compare` instead"
                )
        shard = parse_shard(args.shard)
        names = resolve_optimizers(args.optimizers)
        if args.seed_list is not None:
            seeds = seed_list(args.seed_list)
        else:
            n = DEFAULT_SEEDS if args.seeds is None else args.seeds
            if n < 1:
                raise ValueError(f"--seeds must be >= 1, got {n}")
            seeds = list(range(n))
        if args.lr_sweep is not None:
            lrs: list[float | None] = float_list(args.lr_sweep, "--lr_sweep")
        elif args.learning_rate is not None:
            lrs = float_list(repr(args.learning_rate), "--learning_rate")
        else:
            lrs = [None]
        if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
            raise ValueError(f"--threshold is an eval accuracy in (0, 1], got {args.threshold}")
        if not 0.0 < args.threshold_fraction <= 1.0:
            raise ValueError(
                f"--threshold_fraction is a fraction of the best mean accuracy in (0, 1], e.g. 0.95; got "
                f"{args.threshold_fraction}"
            )
        check_push_target(args)
        passthrough = task_defaults(task, passthrough, args.num_train_epochs) + passthrough
        parsed = check_run_arguments(task, names, lrs, passthrough, args.num_train_epochs, output_dir)
        probe = parsed.get(("adaopt", None)) or run_mod.parse_args(
            run_argv(RunSpec(task, "adaopt", 0, None), passthrough, probe_dir(output_dir), args.num_train_epochs))
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
    return run_jobs(jobs, c.output_dir, env, c.command, console=console)


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
