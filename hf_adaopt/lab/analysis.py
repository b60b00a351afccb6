"""The numbers of a comparison: groups, threshold, summaries with bootstrap intervals, AdaOpt-vs-baseline tests.

`analyze(runs, config)` turns the run records of results.jsonl (`hf_adaopt.lab.results.load_results`) into what
results.json holds; `hf_adaopt.lab.render` writes it as markdown and `hf_adaopt.lab.plots` draws it.

Groups are (optimizer, initial learning rate); each group's runs differ only in the seed. AdaOpt is compared with
every baseline at the same initial learning rate.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from hf_adaopt.lab import registry, stats

REFERENCE = "adaopt"
DEFAULT_THRESHOLD_FRACTION = 0.95
DEFAULT_ALPHA = 0.05
ROBUSTNESS_TOLERANCE = 0.01  # "within 1 accuracy point of the best result"
# Metrics compared between optimizers: (key, label, unit, higher_is_better).
TESTED_METRICS = (
    ("eval_accuracy", "final eval accuracy", "%", True),
    ("eval_loss", "final eval loss", "", False),
    ("train_time_s", "training time", "s", False),
    ("steps_to_threshold", "steps to threshold", "steps", False),
)


def _lr_key(lr: float) -> float:
    return float(f"{float(lr):.6g}")


def lr_grid(rec: dict) -> float | None:
    """The run's learning-rate grid coordinate: the lr the comparison asked for, None for the optimizer's default.

    Runs without "lr_grid" (older files) use their actual learning rate.
    """
    grid = rec.get("lr_grid", rec.get("learning_rate"))
    return None if grid is None else _lr_key(grid)


def grid_order(grid: float | None) -> tuple[bool, float]:
    return (grid is None, grid or 0.0)


def group_runs(runs: Sequence[dict]) -> dict[tuple[str, float | None], list[dict]]:
    """{(optimizer, lr_grid): runs sorted by seed}, keys in display order (lr_grid None = default lr)."""
    groups: dict[tuple[str, float | None], list[dict]] = defaultdict(list)
    for rec in runs:
        groups[(rec["optimizer"], lr_grid(rec))].append(rec)
    keys = sorted(groups, key=lambda k: (registry.order_key(k[0]), grid_order(k[1])))
    return {k: sorted(groups[k], key=lambda r: r["seed"]) for k in keys}


def finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def eval_curve(rec: dict, key: str = "eval_accuracy") -> tuple[list[float], list[float], list[float]]:
    """(steps, epochs, values) of one run's evaluation curve for `key`, ordered by step."""
    points = [p for p in rec.get("eval_curve", []) if p.get(key) is not None]
    points.sort(key=lambda p: p["step"])
    return [p["step"] for p in points], [p.get("epoch", math.nan) for p in points], [p[key] for p in points]


def run_value(rec: dict, metric: str) -> float | None:
    """The per-run value of a tested or tabulated metric (None when missing)."""
    if metric in ("eval_accuracy", "eval_loss"):
        v = rec.get("eval", {}).get(metric)
    elif metric == "train_time_s":
        v = rec.get("metrics", {}).get("train_time_s", rec.get("train", {}).get("train_runtime"))
    elif metric in ("steps_to_threshold", "epochs_to_threshold"):
        v = rec.get("_derived", {}).get(metric)
    else:
        v = rec.get("metrics", {}).get(metric)
    return None if v is None else float(v)


def derive_threshold_metrics(runs: Sequence[dict], threshold: float) -> None:
    """Set rec["_derived"] = {"steps_to_threshold", "epochs_to_threshold", "total_steps"} for each run."""
    for rec in runs:
        steps, epochs, acc = eval_curve(rec)
        s = stats.steps_to_threshold(steps, acc, threshold) if steps else None
        e = stats.steps_to_threshold(epochs, acc, threshold) if steps else None
        total = rec.get("metrics", {}).get("total_steps", steps[-1] if steps else None)
        rec["_derived"] = {"steps_to_threshold": s, "epochs_to_threshold": e, "total_steps": total}


def resolve_threshold(
    groups: dict[tuple[str, float], list[dict]], threshold: float | None, fraction: float
) -> dict:
    """The convergence threshold: absolute when given, else `fraction` x the best group-mean final accuracy."""
    if threshold is not None:
        return {"value": float(threshold), "mode": "absolute", "fraction": None, "reference": None}
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"threshold_fraction must be in (0, 1], got {fraction}; e.g. 0.95")
    best_key, best = None, -math.inf
    for key, runs in groups.items():
        acc = finite(run_value(r, "eval_accuracy") for r in runs)
        if acc and stats.mean(acc) > best:
            best_key, best = key, stats.mean(acc)
    if best_key is None:
        return {"value": math.nan, "mode": "fraction", "fraction": fraction, "reference": None}
    return {
        "value": fraction * best,
        "mode": "fraction",
        "fraction": fraction,
        "reference": {"optimizer": best_key[0], "lr_grid": best_key[1], "mean_eval_accuracy": best},
    }


def _steps_censored(runs: Sequence[dict], censor_at: float) -> tuple[list[float], int]:
    """Steps to threshold per run with unreached runs set to `censor_at` (ranked last), and how many reached."""
    values, reached = [], 0
    for r in runs:
        s = r["_derived"]["steps_to_threshold"]
        reached += s is not None
        values.append(censor_at if s is None else s)
    return values, reached


def summarize_group(runs: Sequence[dict], confidence: float, n_resamples: int, seed: int) -> dict:
    metrics = {}
    for key in (
        "eval_accuracy",
        "eval_loss",
        "train_time_s",
        "steps_to_threshold",
        "epochs_to_threshold",
        "lr_variance",
        "lr_cv",
        "lr_mean",
    ):
        raw = [run_value(r, key) for r in runs]
        values = finite(raw)
        summary = stats.summarize(values, confidence, n_resamples, seed)
        summary["values"] = raw
        summary["n_missing"] = len(raw) - len(values)  # unreached thresholds, non-finite losses
        metrics[key] = summary
    return {
        "optimizer": runs[0]["optimizer"],
        "lr_grid": lr_grid(runs[0]),
        "learning_rate": _lr_key(runs[0]["learning_rate"]),
        "seeds": [r["seed"] for r in runs],
        "run_ids": [r["run_id"] for r in runs],
        "n": len(runs),
        "reached_threshold": sum(r["_derived"]["steps_to_threshold"] is not None for r in runs),
        "metrics": metrics,
        "final_eval": [r.get("eval", {}) for r in runs],
    }


def compare_groups(
    groups: dict[tuple[str, float], list[dict]],
    confidence: float,
    n_resamples: int,
    seed: int,
    alpha: float,
) -> list[dict]:
    """AdaOpt vs each baseline at the same initial lr, per tested metric; Holm over the baselines (and lrs).

    The Holm family is one metric and one test: all AdaOpt-vs-baseline comparisons of that metric.
    Steps to threshold: runs that never reach it are censored at (largest step seen + 1) and ranked last;
    Welch's test and Hedges' g need every run to reach it and are left undefined otherwise.
    """
    max_step = 0.0
    for runs in groups.values():
        for r in runs:
            steps, _, _ = eval_curve(r)
            max_step = max([max_step, *steps])
    censor_at = max_step + 1.0
    out: list[dict] = []
    for (name, grid), ref_runs in groups.items():
        if name != REFERENCE:
            continue
        for (base, base_grid), base_runs in groups.items():
            if base == REFERENCE or base_grid != grid:
                continue
            for metric, label, _, higher in TESTED_METRICS:
                if metric == "steps_to_threshold":
                    a, ra = _steps_censored(ref_runs, censor_at)
                    b, rb = _steps_censored(base_runs, censor_at)
                    censored = ra < len(a) or rb < len(b)
                else:
                    a = finite(run_value(r, metric) for r in ref_runs)
                    b = finite(run_value(r, metric) for r in base_runs)
                    censored = False
                if not a or not b:
                    continue
                row = stats.compare_samples(a, b, confidence, n_resamples, seed)
                if censored:
                    row.update(welch_t=math.nan, welch_df=math.nan, welch_p=math.nan)
                    row.update(cohens_d=math.nan, hedges_g=math.nan, mean_diff=math.nan)
                    row.update(diff_ci_low=math.nan, diff_ci_high=math.nan)
                row.update(
                    optimizer=REFERENCE,
                    baseline=base,
                    lr_grid=grid,
                    learning_rate=_lr_key(ref_runs[0]["learning_rate"]),
                    baseline_learning_rate=_lr_key(base_runs[0]["learning_rate"]),
                    metric=metric,
                    metric_label=label,
                    higher_is_better=higher,
                    censored=censored,
                )
                out.append(row)
    metric_order = [m for m, *_ in TESTED_METRICS]
    out.sort(
        key=lambda r: (metric_order.index(r["metric"]), grid_order(r["lr_grid"]), registry.order_key(r["baseline"]))
    )
    for metric in metric_order:
        rows = [r for r in out if r["metric"] == metric]
        for test in ("welch", "mwu"):
            adjusted = stats.holm([r[f"{test}_p"] for r in rows])
            for r, p in zip(rows, adjusted, strict=False):
                r[f"{test}_p_holm"] = p
    for r in out:
        p = r["welch_p_holm"] if not r["censored"] else r["mwu_p_holm"]
        r["primary_test"] = "welch" if not r["censored"] else "mwu"
        r["significant"] = bool(p is not None and not math.isnan(p) and p < alpha)
        # "better" by the direction of the location difference (Cliff's delta is defined even when censored)
        sign = r["cliffs_delta"] if r["censored"] else r["mean_diff"]
        if not r["significant"] or sign == 0 or math.isnan(sign):
            r["better"] = None
        else:
            r["better"] = REFERENCE if (sign > 0) == r["higher_is_better"] else r["baseline"]
    return out


def lr_sweep_analysis(summaries: Sequence[dict], confidence: float, tolerance: float) -> dict | None:
    """Per optimizer: final accuracy vs initial lr and the robustness counts; None without a sweep."""
    by_opt: dict[str, list[dict]] = defaultdict(list)
    for g in summaries:
        by_opt[g["optimizer"]].append(g)
    if not any(len([g for g in v if g["lr_grid"] is not None]) > 1 for v in by_opt.values()):
        return None
    overall = max(
        (g["metrics"]["eval_accuracy"]["mean"] for g in summaries if g["metrics"]["eval_accuracy"]["n"]),
        default=math.nan,
    )
    out = {"tolerance": tolerance, "overall_best": overall, "optimizers": {}}
    for name in sorted(by_opt, key=registry.order_key):
        rows = sorted((g for g in by_opt[name] if g["lr_grid"] is not None), key=lambda g: g["lr_grid"])
        rows = [g for g in rows if g["metrics"]["eval_accuracy"]["n"]]
        lrs = [g["lr_grid"] for g in rows]
        means = [g["metrics"]["eval_accuracy"]["mean"] for g in rows]
        out["optimizers"][name] = {
            "by_lr": [
                {
                    "learning_rate": g["lr_grid"],
                    "mean": g["metrics"]["eval_accuracy"]["mean"],
                    "ci_low": g["metrics"]["eval_accuracy"]["ci_low"],
                    "ci_high": g["metrics"]["eval_accuracy"]["ci_high"],
                    "n": g["n"],
                }
                for g in rows
            ],
            "vs_overall_best": stats.lr_sweep_robustness(lrs, means, reference=overall, tolerance=tolerance),
            "vs_own_best": stats.lr_sweep_robustness(lrs, means, tolerance=tolerance),
        }
    return out


def _environment(runs: Sequence[dict], config: dict) -> dict:
    recorded = dict(config.get("environment", {}))
    env = {**recorded.pop("versions", {}), **recorded}
    for r in runs:
        for k, v in (r.get("environment") or {}).items():
            env.setdefault(k, v)
    # the device each run recorded when it ended (with the torch threads it used), not the one before the runs
    devices = sorted({r["environment"]["device"] for r in runs if (r.get("environment") or {}).get("device")})
    if devices:
        env["device"] = "; ".join(devices)
    return env


def analyze(
    runs: Sequence[dict],
    config: dict | None = None,
    threshold: float | None = None,
    threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION,
    alpha: float = DEFAULT_ALPHA,
    confidence: float = stats.DEFAULT_CONFIDENCE,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """The machine-readable report (what results.json holds) from the run records."""
    config = config or {}
    if not runs:
        raise ValueError("no finished runs to report on: results.jsonl is empty")
    runs = [dict(r) for r in runs]
    groups = group_runs(runs)
    thr = resolve_threshold(groups, threshold, threshold_fraction)
    derive_threshold_metrics(runs, thr["value"])
    summaries = [summarize_group(g, confidence, n_resamples, seed) for g in groups.values()]
    comparisons = compare_groups(groups, confidence, n_resamples, seed, alpha)
    sweep = lr_sweep_analysis(summaries, confidence, ROBUSTNESS_TOLERANCE)
    tasks = sorted({r["task"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    n_min = min((g["n"] for g in summaries), default=0)
    n_ref = max((g["n"] for g in summaries if g["optimizer"] == REFERENCE), default=0)
    family_size = sum(c["metric"] == "eval_accuracy" for c in comparisons)
    result = {
        "task": tasks[0] if len(tasks) == 1 else tasks,
        "n_runs": len(runs),
        "optimizers": sorted({r["optimizer"] for r in runs}, key=registry.order_key),
        "lr_grid": sorted({lr_grid(r) for r in runs}, key=grid_order),
        "seeds": seeds,
        "command": config.get("command") or next((r.get("command") for r in runs if r.get("command")), None),
        "environment": _environment(runs, config),
        "run_config": next((r.get("config") for r in runs if r.get("config")), {}),
        "threshold": thr,
        "alpha": alpha,
        "confidence": confidence,
        "n_resamples": n_resamples,
        "bootstrap_seed": seed,
        "methods": {
            "ci": f"percentile bootstrap of the mean over seeds, {n_resamples} resamples, seed {seed}",
            "tests": "Welch's t test (primary) and Mann-Whitney U (exact permutation distribution when "
            f"feasible), two-sided; Holm-adjusted within each metric over its {family_size} "
            "AdaOpt-vs-baseline comparison(s)",
            "significance": f"Holm-adjusted Welch p < {alpha} (Mann-Whitney when steps to threshold are censored)",
            "effect_sizes": "Hedges' g (bias-corrected Cohen's d) and Cliff's delta = P(AdaOpt > baseline) - "
            "P(AdaOpt < baseline)",
            "mwu_floor": {
                "n_per_group": n_min,
                "smallest_p": stats.min_mann_whitney_p(n_ref or n_min, n_min) if n_min else None,
                "family_size": family_size,
            },
        },
        "groups": summaries,
        "comparisons": comparisons,
        "lr_sweep": sweep,
    }
    result["summary"] = plain_summary(result)
    return result


def pct(v: float | None, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}"


def group_label(name: str, grid: float | None, multi_lr: bool) -> str:
    if not multi_lr:
        return name
    return f"{name} @ default lr" if grid is None else f"{name} @ {grid:g}"


def _final_values(group: dict) -> list[tuple]:
    return [(d.get("eval_accuracy"), d.get("eval_loss")) for d in group["final_eval"]]


def plain_summary(result: dict) -> list[str]:
    """Sentences that say which AdaOpt-vs-baseline differences are significant and which are not."""
    alpha = result["alpha"]
    multi_lr = len(result["lr_grid"]) > 1
    lines = []
    for metric, label, _unit, _ in TESTED_METRICS:
        rows = [c for c in result["comparisons"] if c["metric"] == metric]
        if not rows:
            continue
        better = [c for c in rows if c["better"] == REFERENCE]
        worse = [c for c in rows if c["significant"] and c["better"] != REFERENCE]
        same = [c for c in rows if not c["significant"] and not c["censored"]]
        same_censored = [c for c in rows if not c["significant"] and c["censored"]]

        def names(cs):
            return ", ".join(group_label(c["baseline"], c["lr_grid"], multi_lr) for c in cs)

        parts = []
        if better:
            parts.append(f"significantly better than {names(better)}")
        if worse:
            parts.append(f"significantly worse than {names(worse)}")
        if same:
            parts.append(f"not significantly different from {names(same)}")
        if same_censored:
            parts.append(
                f"no significant difference in the rank test with unreached runs ranked last for {names(same_censored)}"
            )
        lines.append(
            f"**{label.capitalize()}**: AdaOpt is " + "; ".join(parts) + f" (Holm-adjusted, α = {alpha})."
        )
    floor = result["methods"]["mwu_floor"]
    if floor["smallest_p"] is not None and floor["family_size"]:
        smallest_adj = min(1.0, floor["smallest_p"] * floor["family_size"])
        if smallest_adj >= alpha:
            lines.append(
                f"With {floor['n_per_group']} seeds per optimizer the smallest possible two-sided Mann-Whitney p "
                f"is {floor['smallest_p']:.4f}; after Holm over {floor['family_size']} comparisons it is at least "
                f"{smallest_adj:.3f}, so the rank test cannot reach α = {alpha} here — run more seeds "
                "(`--seeds`) for a non-parametric confirmation."
            )
    by_grid: dict = defaultdict(list)
    for g in result["groups"]:
        by_grid[g["lr_grid"]].append(g)
    for groups in by_grid.values():
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                if a["n"] > 1 and a["seeds"] == b["seeds"] and _final_values(a) == _final_values(b):
                    lines.append(
                        f"{group_label(a['optimizer'], a['lr_grid'], multi_lr)} and "
                        f"{group_label(b['optimizer'], b['lr_grid'], multi_lr)} gave identical final evaluations on "
                        "every seed: they ran the same algorithm here (e.g. AdamW with weight_decay 0 is Adam)."
                    )
    thr = result["threshold"]
    unreached = [
        f"{group_label(g['optimizer'], g['lr_grid'], multi_lr)} ({g['reached_threshold']}/{g['n']})"
        for g in result["groups"]
        if g["reached_threshold"] < g["n"]
    ]
    if unreached:
        lines.append(
            f"Runs that did not all reach the convergence threshold ({pct(thr['value'])}% eval accuracy): "
            + ", ".join(unreached)
            + "."
        )
    if result["lr_sweep"]:
        for name, sw in result["lr_sweep"]["optimizers"].items():
            r = sw["vs_overall_best"]
            lines.append(
                f"LR sweep, {name}: {r['n_within']} of {r['n_total']} initial learning rates end within 1 point of "
                f"the best result ({pct(r['reference'])}%), a contiguous span of {r['span_decades']:g} decades."
            )
    return lines
