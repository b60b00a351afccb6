"""The numbers of a `hf-adaopt suite` directory (results.jsonl + suite_config.json); `suite_report` renders them.

Per workload: the final metric of every (optimizer, initial lr) cell over seeds (mean, std, bootstrap CI); the
best-tuned AdamW cell (the best of both AdamW rows, `registry.ADAMW_ROWS`: constant lr, and warmup + cosine where it
ran); each AdaOpt row's (`registry.ADAOPT_ROWS`: fed the loss, and plain) gap to it from each initial lr, its worst
case and the lrs within tolerance (1 point of accuracy, 1% of bits per character); every optimizer's rank at its
default; steps to a training-loss threshold; Welch and Mann-Whitney tests of each AdaOpt row against each optimizer
at its default (Holm-adjusted per row). Across workloads: mean rank at defaults and worst-case gap per optimizer,
and each AdaOpt row's worst initial lr.

Gaps are signed so that negative is worse than the best-tuned AdamW: accuracy points (mean - best) for
accuracy, percent ((best - mean) / best x 100) for bits per character.

A suite run with ``--baseline`` (`hf_adaopt.lab.suite`) ran only the AdaOpt rows: every other cell is the baseline's
as stored (`BASELINE_FILE` in the output directory, merged by `analyze_workload`), and all that compares cells
(gaps, best AdamW, threshold, ranks, tests, targets) is computed again over the merged cells.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

from hf_adaopt.lab import registry, results, stats
from hf_adaopt.lab.results import SUITE_CONFIG_FILE as CONFIG_FILE

TOLERANCE = 1.0  # points of accuracy, or percent of bpc: "within tolerance of the best-tuned AdamW"
THRESHOLD_FACTOR = 1.1  # steps to reach 1.1x the best-tuned AdamW's final training loss
RESULTS_JSON = "results.json"
BASELINE_FILE = "baseline.json"  # the non-AdaOpt cells a --baseline run takes, as `suite.read_baseline` read them
REPORT_MD = "report.md"
PLOT_FILES = {"sensitivity": "lr_sensitivity.png", "effective_lr": "effective_lr.png"}


def load(output_dir: str) -> tuple[dict, list[dict], dict | None]:
    """The suite's configuration, the records of its current grid (results of older grids are ignored) and, for a
    run with --baseline, the baseline it stored (`BASELINE_FILE`; else None)."""
    path = os.path.join(output_dir, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{output_dir} is not a suite directory: {CONFIG_FILE} is missing (run `hf-adaopt suite "
                         f"--output_dir {output_dir}` first)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); rerun the suite command to rewrite it") from None
    wanted = set(config.get("run_ids", []))
    records = results.load_results(output_dir) if os.path.isfile(
        os.path.join(output_dir, results.RESULTS_FILE)) else []
    baseline = None
    if config.get("baseline"):
        try:
            with open(os.path.join(output_dir, BASELINE_FILE), encoding="utf-8") as f:
                baseline = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"{output_dir} ran with --baseline but its {BASELINE_FILE} is missing: rerun the suite "
                             f"command ({config.get('command')}) to store it again") from None
    return config, [r for r in records if r["run_id"] in wanted], baseline


def final_value(rec: dict) -> float | None:
    """The workload's metric of one run: accuracy in %, or bits per character."""
    ev = rec.get("eval", {})
    if rec.get("metric") == "bpc":
        loss = ev.get("eval_loss")
        return None if loss is None or not math.isfinite(loss) else loss / math.log(2.0)
    acc = ev.get("eval_accuracy")
    return None if acc is None else 100.0 * acc


def gap(value: float, best: float, metric: str) -> float:
    """Signed distance to the best-tuned AdamW: negative is worse (points, or % of bpc)."""
    if not math.isfinite(value):
        return -math.inf
    return value - best if metric == "accuracy" else (best - value) / best * 100.0


def is_better(metric: str):
    return (lambda a, b: a > b) if metric == "accuracy" else (lambda a, b: a < b)


def _worst_value(metric: str) -> float:
    # a diverged run (NaN loss) counts as the worst possible result, not as a missing one
    return 0.0 if metric == "accuracy" else math.inf


def _mean(values: Sequence[float | None]) -> float:
    """Mean of the finite values (nan when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _mean_gap(gaps: Iterable[float]) -> float:
    """The mean of a row's gaps across workloads (points and % of bpc alike, as the worst gap mixes them); a
    diverged workload (-inf) makes it -inf."""
    gaps = list(gaps)
    return sum(gaps) / len(gaps) if gaps else math.nan


def _summary(values: Sequence[float]) -> dict:
    """stats.summarize, or -- when a run diverged (inf) -- the count and an infinite mean."""
    if all(math.isfinite(v) for v in values):
        return stats.summarize(values)
    worst = max(values, key=lambda v: abs(v))
    nan = math.nan
    return {"n": len(values), "mean": worst, "std": nan, "ci_low": nan, "ci_high": nan, "median": nan,
            "min": min(values), "max": max(values)}


def steps_to_loss(rec: dict, threshold: float) -> float | None:
    """First logged step whose training loss is at or below `threshold`."""
    for point in rec.get("train_loss_curve", []):
        loss = point.get("loss")
        if loss is not None and math.isfinite(loss) and loss <= threshold:
            return float(point["step"])
    return None


def _final_train_loss(rec: dict) -> float | None:
    curve = [p["loss"] for p in rec.get("train_loss_curve", []) if p.get("loss") is not None]
    return curve[-1] if curve else None


def _effective_lr(rec: dict, index: int) -> float | None:
    """The adapted step an lr-free optimizer took first (index 0) or last (-1), from its lr trajectory."""
    lrs = [x for x in (rec.get("lr_trajectory") or {}).get("lr", []) if x]
    return lrs[index] if lrs else None


# The numbers that compare a cell with the others: computed again over the cells a --baseline run merges.
DERIVED = ("gap", "within", "default_rank")
# A cell's means over seeds (nan where undefined, which results.json stores as null).
SEED_MEANS = ("train_time_s", "lr_cv", "final_train_loss", "effective_lr_start", "effective_lr_end")


def stored_cell(c: dict, metric: str) -> dict:
    """A cell as results.json stored it, back as the analysis made it: a diverged run's value (null) the worst value
    again, null means nan, the summary of its values, and none of the numbers that compare it with other cells."""
    values = [_worst_value(metric) if v is None else v for v in c["values"]]
    cell = {k: v for k, v in c.items() if k not in DERIVED}
    cell.update({k: math.nan for k in SEED_MEANS if cell.get(k) is None})
    return {**cell, "values": values, **_summary(values)}


def analyze_workload(name: str, metric: str, records: Sequence[dict], default_cell: dict,
                     baseline: dict | None = None) -> dict:
    """One workload's numbers from its records; `baseline` (the workload's entry of a --baseline run's
    `BASELINE_FILE`) adds its stored cells where the records have none (a record's cell wins)."""
    better = is_better(metric)
    groups: dict[tuple[str, float | None], list[dict]] = {}
    for r in records:
        groups.setdefault((r["optimizer"], r["lr_grid"]), []).append(r)
    cells = []
    for (opt, lr), runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        values = [final_value(r) for r in runs]
        values = [_worst_value(metric) if v is None else v for v in values]
        summary = _summary(values)
        cells.append({
            "optimizer": opt, "lr": lr, "seeds": [r["seed"] for r in runs], "values": values, **summary,
            "train_time_s": _mean([r["metrics"].get("train_time_s") for r in runs]),
            "lr_cv": _mean([r["metrics"].get("lr_cv") for r in runs]),
            "final_train_loss": _mean([_final_train_loss(r) for r in runs]),
            # mean over seeds of the first and the last step size taken (nan where the lr is not adapted)
            "effective_lr_start": _mean([_effective_lr(r, 0) for r in runs]),
            "effective_lr_end": _mean([_effective_lr(r, -1) for r in runs]),
        })
    baseline = baseline or {}
    taken = [stored_cell(c, metric) for c in baseline.get("cells", []) if (c["optimizer"], c["lr"]) not in groups]
    cells = sorted(cells + taken, key=lambda c: (registry.order_key(c["optimizer"]), c["lr"] is None, c["lr"] or 0.0))
    n_taken = sum(c["n"] for c in taken)
    # the mean seconds of a run: a taken run counts at the baseline's mean for the workload
    seconds = [r.get("elapsed_s") for r in records] + [baseline.get("run_seconds")] * n_taken
    out: dict[str, Any] = {"name": name, "metric": metric, "n_runs": len(records), "cells": cells,
                           "run_seconds": _mean(seconds)}
    if baseline:
        out["n_baseline_runs"] = n_taken
    adamw = [c for c in cells if c["optimizer"] in registry.ADAMW_ROWS and math.isfinite(c["mean"])]
    if not adamw:
        return out
    best = adamw[0]
    for c in adamw[1:]:
        if better(c["mean"], best["mean"]):
            best = c
    out["best_adamw"] = {"optimizer": best["optimizer"], "lr": best["lr"], "mean": best["mean"],
                         "ci_low": best["ci_low"], "ci_high": best["ci_high"]}
    threshold = THRESHOLD_FACTOR * best["final_train_loss"] if math.isfinite(best["final_train_loss"]) else None
    out["loss_threshold"] = threshold
    for c in cells:
        c["gap"] = gap(c["mean"], best["mean"], metric)
        c["within"] = c["gap"] >= -TOLERANCE
        runs = groups.get((c["optimizer"], c["lr"]))
        if runs is None:  # a baseline's cell: its steps counted to the baseline's threshold, kept where it is this one
            if threshold != baseline.get("loss_threshold"):
                c.pop("steps_to_threshold", None)
                c.pop("reached_threshold", None)
        elif threshold is not None:
            hits = [steps_to_loss(r, threshold) for r in runs]
            reached = [h for h in hits if h is not None]
            c["steps_to_threshold"] = _mean(reached) if reached else None
            c["reached_threshold"] = f"{len(reached)}/{len(hits)}"
    for row in registry.ADAOPT_ROWS:  # each AdaOpt row's sweep, under its own name (w["adaopt"], w["adaopt-plain"])
        ada = [c for c in cells if c["optimizer"] == row]
        if ada:
            worst = min(ada, key=lambda c: c["gap"])
            out[row] = {
                "lrs": [c["lr"] for c in ada], "gaps": [c["gap"] for c in ada],
                "worst_lr": worst["lr"], "worst_mean": worst["mean"], "worst_gap": worst["gap"],
                "decades_within": sum(c["within"] for c in ada), "n_lrs": len(ada),
            }
    # the default cells, ranked (1 = best); ties share the better rank
    defaults = [c for c in cells if c["optimizer"] in default_cell and _same_lr(c["lr"], default_cell[c["optimizer"]])]
    for c in defaults:
        c["default_rank"] = 1 + sum(better(o["mean"], c["mean"]) for o in defaults)
    out["defaults"] = [{"optimizer": c["optimizer"], "lr": c["lr"], "mean": c["mean"], "gap": c["gap"],
                        "rank": c["default_rank"]} for c in defaults]
    sf = [c for c in cells if c["optimizer"] == "schedulefree"]
    if len(sf) > 1:  # tuned: the best of its lrs, where it ran more than its default
        tuned = sf[0]
        for c in sf[1:]:
            if better(c["mean"], tuned["mean"]):
                tuned = c
        out["schedulefree_tuned"] = {"lr": tuned["lr"], "mean": tuned["mean"], "gap": tuned["gap"]}
    # significance: each AdaOpt row at its default against every other default cell (Welch and MWU, Holm over the
    # tests of that row; the second row is not tested against the first again)
    tests = []
    for i, row in enumerate(registry.ADAOPT_ROWS):
        ref = next((c for c in defaults if c["optimizer"] == row), None)
        if ref is None:
            continue
        family = []
        for c in defaults:
            if c is ref or c["optimizer"] in registry.ADAOPT_ROWS[:i]:
                continue
            if not all(math.isfinite(v) for v in c["values"] + ref["values"]):
                continue
            cmp = stats.compare_samples(c["values"], ref["values"])
            family.append({"reference": row, "optimizer": c["optimizer"], "lr": c["lr"], "diff": cmp["mean_diff"],
                           "welch_p": cmp["welch_p"], "mwu_p": cmp["mwu_p"]})
        for key in ("welch_p", "mwu_p"):
            ps = [t[key] for t in family]
            finite = [p if p is not None and math.isfinite(p) else 1.0 for p in ps]
            for t, adj in zip(family, stats.holm(finite) if finite else []):
                t[key + "_holm"] = adj
        tests += family
    if tests:
        out["tests"] = tests
    return out


def _same_lr(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-6)


def default_cell_of(w: dict, row: str) -> dict | None:
    """`row`'s cell at its default lr on an analysed workload `w` (its ranked `defaults`), or None where it did not
    run there."""
    lr = next((d["lr"] for d in w.get("defaults", []) if d["optimizer"] == row), "none")
    return next((c for c in w["cells"] if c["optimizer"] == row and c["lr"] == lr), None)


def _without_option(args: Sequence[str], option: str, value: str) -> list[str] | None:
    """`args` without the pair `option value`, or None when they lack it."""
    args = list(args)
    for i in range(len(args) - 1):
        if args[i] == option and args[i + 1] == value:
            return args[:i] + args[i + 2:]
    return None


def targets(workloads: dict, specs: dict) -> dict:
    """Issue 19's targets, measured per AdaOpt row at its default cell (gaps to the best-tuned AdamW, signed as
    everywhere: negative is worse):

    - ``short`` / ``long``: the gap per workload; long = a workload where AdamW ran on warmup + cosine too;
    - ``long_vs_schedulefree``: the row's gap minus Schedule-Free's (at its default) on each long workload;
    - ``same_from_every_lr``: workloads where every initial lr of the row gave the same values, of those with two;
    - ``clipping``: per pair (clipped, unclipped: the same settings and ``--max_grad_norm 0``), the first step without
      clipping over the first step with it (1 = invariant);
    - ``groups``: the gap on the workloads with discriminative lrs (``--body_lr_scale``);
    - ``diverged``: the workloads where a run of the row ended non-finite.
    """
    long = [n for n, w in workloads.items() if any(c["optimizer"] == "adamw-cosine" for c in w["cells"])]
    pairs = []
    for n, spec in specs.items():
        base = _without_option(spec.get("args", []), "--max_grad_norm", "0")
        pairs += [(m, n) for m, other in specs.items() if m != n and base is not None and list(other.get("args", []))
                  == base and m in workloads and n in workloads]
    out = {}
    for row in registry.ADAOPT_ROWS:
        t = {"short": {}, "long": {}, "long_vs_schedulefree": {}, "same_from_every_lr": [0, 0], "clipping": {},
             "groups": {}, "diverged": []}
        for n, w in workloads.items():
            cell = default_cell_of(w, row)
            if cell is None or "gap" not in cell:
                continue
            t["long" if n in long else "short"][n] = cell["gap"]
            sf = default_cell_of(w, "schedulefree")
            if n in long and sf is not None:
                t["long_vs_schedulefree"][n] = cell["gap"] - sf["gap"]
            if "--body_lr_scale" in specs.get(n, {}).get("args", []):
                t["groups"][n] = cell["gap"]
            cells = [c for c in w["cells"] if c["optimizer"] == row]
            if len(cells) > 1:
                t["same_from_every_lr"][1] += 1
                t["same_from_every_lr"][0] += all(c["values"] == cells[0]["values"] for c in cells)
            if any(v == _worst_value(w["metric"]) or math.isnan(v) for c in cells for v in c["values"]):
                t["diverged"].append(n)  # a run that ended non-finite counts as the worst value (_worst_value)
        for clipped, unclipped in pairs:
            a, b = (default_cell_of(workloads[x], row) for x in (clipped, unclipped))
            if a and b and a["effective_lr_start"] > 0.0:
                t["clipping"][f"{unclipped} / {clipped}"] = b["effective_lr_start"] / a["effective_lr_start"]
        out[row] = t
    return out


def analyze(config: dict, records: Sequence[dict], baseline: dict | None = None) -> dict:
    """The suite's numbers from its records and, for a --baseline run, the cells it took from `baseline` (its
    `BASELINE_FILE`): the result names it under "baseline" (where from, and how many runs it stands for)."""
    default_cell = config.get("default_cell", {})
    taken = (baseline or {}).get("workloads", {})
    workloads = {}
    for name, spec in config.get("workloads", {}).items():
        recs = [r for r in records if r.get("workload") == name]
        if recs or name in taken:
            workloads[name] = analyze_workload(name, spec["metric"], recs, default_cell, taken.get(name))
    # across workloads: mean rank and worst gap at the default, per optimizer
    summary: dict[str, dict] = {}
    for name, w in workloads.items():
        for d in w.get("defaults", []):
            s = summary.setdefault(d["optimizer"], {"ranks": {}, "gaps": {}})
            s["ranks"][name] = d["rank"]
            s["gaps"][name] = d["gap"]
    for s in summary.values():
        s["mean_rank"] = _mean(list(s["ranks"].values()))
        s["worst_gap"] = min(s["gaps"].values())
        s["mean_gap"] = _mean_gap(s["gaps"].values())
    # each AdaOpt row's worst initial lr per workload: result["adaopt_worst_gap"], result["adaopt-plain_worst_gap"], ...
    ada_worst = {}
    for row in registry.ADAOPT_ROWS:
        worst = {n: w[row]["worst_gap"] for n, w in workloads.items() if row in w}
        if worst:
            ada_worst[f"{row}_worst_gap"] = worst
            ada_worst[f"{row}_worst_mean_gap"] = _mean_gap(worst.values())
    tuned_sf = [w["schedulefree_tuned"]["gap"] for w in workloads.values() if "schedulefree_tuned" in w]
    sf_workloads = [w for w in workloads.values() if sum(c["optimizer"] == "schedulefree" for c in w["cells"]) > 1]
    n_runs = sum(w["n_runs"] for w in workloads.values())
    elapsed = sum(r.get("elapsed_s") or 0.0 for r in records)
    result = {
        "command": config.get("command"), "suite_version": config.get("suite_version"),
        "environment": config.get("environment", {}),
        "workload_specs": config.get("workloads", {}), "seeds": config.get("seeds"),
        "tolerance": TOLERANCE, "threshold_factor": THRESHOLD_FACTOR,
        "n_runs": n_runs, "n_planned": len(config.get("run_ids", [])), "run_seconds": elapsed,
        "workloads": workloads, "workload_order": list(workloads), "summary": summary,
        **ada_worst,
        "targets": targets(workloads, config.get("workloads", {})),
        "schedulefree_tuned_mean_gap": _mean_gap(tuned_sf) if tuned_sf and len(tuned_sf) == len(sf_workloads) else None,
    }
    if baseline:  # where the cells not run here come from, and how many runs they stand for
        result["baseline"] = {**{k: baseline.get(k) for k in ("path", "revision", "command")},
                              "n_runs": sum(w.get("n_baseline_runs", 0) for w in workloads.values())}
    return result
