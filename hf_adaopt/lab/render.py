"""The markdown of a comparison: report.md and the console table, from `hf_adaopt.lab.analysis.analyze`'s result."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

from hf_adaopt.lab.analysis import REFERENCE, group_label, pct
from hf_adaopt.lab.plots import PLOT_FILES


def num(v: float | None, fmt: str = ".4g") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def pval(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def fmt_summary(s: dict, scale: float = 1.0, digits: int = 2, ci: bool = True) -> str:
    if not s["n"]:
        return "–"
    m = f"{s['mean'] * scale:.{digits}f}"
    sd = "" if math.isnan(s["std"]) else f" ± {s['std'] * scale:.{digits}f}"
    if ci and not math.isnan(s["ci_low"]):
        return f"{m}{sd} [{s['ci_low'] * scale:.{digits}f}, {s['ci_high'] * scale:.{digits}f}]"
    return m + sd


def _group_cells(g: dict, multi_lr: bool, acc_test: dict | None) -> dict[str, str]:
    """Every cell a per-group table may show, by column key: the one row builder of both group tables."""
    m = g["metrics"]
    steps = m["steps_to_threshold"]
    reference = g["optimizer"] == REFERENCE
    return {
        "optimizer": group_label(g["optimizer"], g["lr_grid"], multi_lr),
        "lr": f"{g['learning_rate']:g}",
        "n": str(g["n"]),
        "accuracy": fmt_summary(m["eval_accuracy"], 100, 2),
        "loss": fmt_summary(m["eval_loss"], 1, 4, ci=False),
        "loss_ci": fmt_summary(m["eval_loss"], 1, 4),
        "time": fmt_summary(m["train_time_s"], 1, 1, ci=False),
        "time_ci": fmt_summary(m["train_time_s"], 1, 1),
        "steps": f"{steps['mean']:.0f} ({g['reached_threshold']}/{g['n']})" if steps["n"] else f"– (0/{g['n']})",
        "steps_ci": fmt_summary(steps, 1, 0) + f" ({g['reached_threshold']}/{g['n']} reached)",
        "epochs": fmt_summary(m["epochs_to_threshold"], 1, 2, ci=False),
        "lr_variance": num(m["lr_variance"]["mean"], ".3g"),
        "lr_cv": num(m["lr_cv"]["mean"], ".3f"),
        "lr_cv_std": fmt_summary(m["lr_cv"], 1, 3, ci=False),
        "acc_diff": "ref" if reference else (f"{round(-100 * acc_test['mean_diff'], 2) + 0.0:+.2f}" if acc_test else "–"),
        "acc_p": "" if reference else (pval(acc_test["welch_p_holm"]) if acc_test else "–"),
    }


def group_table(result: dict, columns: Sequence[tuple[str, str]]) -> str:
    """A markdown table with one row per (optimizer, lr) group; `columns` are (header, cell key of `_group_cells`)."""
    multi_lr = len(result["lr_grid"]) > 1
    acc_test = {(c["baseline"], c["lr_grid"]): c for c in result["comparisons"] if c["metric"] == "eval_accuracy"}
    rows = []
    for g in result["groups"]:
        cells = _group_cells(g, multi_lr, acc_test.get((g["optimizer"], g["lr_grid"])))
        rows.append([cells[key] for _, key in columns])
    return markdown_table([header for header, _ in columns], rows)


def summary_table(result: dict) -> str:
    """The console/markdown table: one row per (optimizer, lr) with the headline numbers and AdaOpt tests."""
    return group_table(result, (
        ("optimizer", "optimizer"),
        ("lr", "lr"),
        ("n", "n"),
        ("eval acc % (mean ± std [95% CI])", "accuracy"),
        ("eval loss", "loss"),
        ("train s", "time"),
        (f"steps→{pct(result['threshold']['value'], 1)}%", "steps"),
        ("lr CV", "lr_cv"),
        ("acc − AdaOpt (pts)", "acc_diff"),
        ("p Welch (Holm)", "acc_p"),
    ))


# The per-group table of report.md: (header, cell key of `_group_cells`).
REPORT_GROUP_COLUMNS = (
    ("optimizer", "optimizer"),
    ("lr", "lr"),
    ("n", "n"),
    ("eval accuracy (%)", "accuracy"),
    ("eval loss", "loss_ci"),
    ("train time (s)", "time_ci"),
    ("steps to threshold", "steps_ci"),
    ("epochs to threshold", "epochs"),
    ("lr variance", "lr_variance"),
    ("lr CV", "lr_cv_std"),
)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def comparison_table(result: dict) -> str:
    multi_lr = len(result["lr_grid"]) > 1
    header = [
        "metric",
        "baseline",
        "Δ mean (AdaOpt − base) [95% CI]",
        "Welch p",
        "Welch p (Holm)",
        "MWU p",
        "MWU p (Holm)",
        "Hedges' g",
        "Cliff's δ",
        "significant",
    ]
    rows = []
    for c in result["comparisons"]:
        scale, digits = (
            (100, 2) if c["metric"] == "eval_accuracy" else (1, 4 if c["metric"] == "eval_loss" else 1)
        )
        diff = "censored" if c["censored"] else f"{c['mean_diff'] * scale:+.{digits}f}"
        if not c["censored"] and not math.isnan(c["diff_ci_low"]):
            diff += f" [{c['diff_ci_low'] * scale:+.{digits}f}, {c['diff_ci_high'] * scale:+.{digits}f}]"
        verdict = "no"
        if c["significant"]:
            verdict = "yes, AdaOpt better" if c["better"] == REFERENCE else f"yes, {c['baseline']} better"
        rows.append(
            [
                c["metric_label"] + (" (pts)" if c["metric"] == "eval_accuracy" else ""),
                group_label(c["baseline"], c["lr_grid"], multi_lr),
                diff,
                pval(c["welch_p"]),
                pval(c["welch_p_holm"]),
                pval(c["mwu_p"]),
                pval(c["mwu_p_holm"]),
                num(c["hedges_g"], ".2f"),
                num(c["cliffs_delta"], ".2f"),
                verdict,
            ]
        )
    return markdown_table(header, rows)


def _fmt_eval_dict(d: dict) -> str:
    # The Trainer prints its metrics dict with Python's repr: {'eval_loss': 0.12, 'eval_accuracy': 0.96, ...}
    return repr({k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()})


def render_markdown(result: dict, plots: Sequence[str]) -> str:
    thr = result["threshold"]
    multi_lr = len(result["lr_grid"]) > 1
    env = result["environment"]
    cfg = result["run_config"] or {}
    out = [f"# Optimizer comparison: {result['task']}", ""]
    out += [
        f"{result['n_runs']} runs: optimizers {', '.join(result['optimizers'])}; seeds "
        f"{', '.join(map(str, result['seeds']))}; initial learning rate(s) "
        + ", ".join("per-optimizer default" if g is None else f"{g:g}" for g in result["lr_grid"])
        + ".",
        "",
        "## Summary",
        "",
        *[f"- {s}" for s in result["summary"]],
        "",
        summary_table(result),
        "",
        "## Setup",
        "",
        "Command:",
        "",
        "```",
        str(result["command"] or "(not recorded)"),
        "```",
        "",
    ]
    if cfg:
        out += [
            "Per-run configuration (shared by all runs):",
            "",
            "```json",
            json.dumps(cfg, indent=1, sort_keys=True),
            "```",
            "",
        ]
    out += ["Environment:", "", "| item | value |", "|---|---|"]
    for k, v in sorted(env.items()):
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in sorted(v.items()))
        out.append(f"| {k} | {v} |")
    out += [
        "",
        "## Results per optimizer",
        "",
        "Mean ± sample std over seeds [95% percentile-bootstrap CI of the mean]. Training time is the Trainer's "
        "`train_runtime` minus the evaluations run during training; runs ran one after another in one process, "
        "so wall-clock times also reflect the machine's load at the time.",
        "",
    ]
    out += [group_table(result, REPORT_GROUP_COLUMNS), ""]
    if thr["mode"] == "absolute":
        out.append(
            f"Convergence threshold: eval accuracy ≥ {pct(thr['value'])}% (given with `--threshold`)."
        )
    else:
        ref = thr["reference"] or {}
        out.append(
            f"Convergence threshold: eval accuracy ≥ {pct(thr['value'])}% = {thr['fraction']:g} × the best final "
            f"mean accuracy ({pct(ref.get('mean_eval_accuracy'))}%, "
            f"{group_label(ref.get('optimizer', '?'), ref.get('lr_grid'), multi_lr)}). Steps/epochs to "
            "threshold are at the resolution of the evaluation interval; means are over the runs that reached it."
        )
    out += [
        "",
        "LR stability: variance and coefficient of variation (std / mean) of the learning rate the optimizer "
        "recorded at every optimizer step (AdaOpt: its effective lr). Optimizers run with a constant schedule "
        "whose step size is the fixed `lr` (SGD, Adam, AdamW, RMSprop) have 0 by construction; for the "
        "learning-rate-free peers the value is whatever their `param_groups[0]['lr']` holds.",
        "",
        "## AdaOpt vs baselines",
        "",
        result["methods"]["tests"]
        + ". "
        + result["methods"]["effect_sizes"]
        + ". Significant: "
        + result["methods"]["significance"]
        + ".",
        "",
    ]
    if result["comparisons"]:
        out += [comparison_table(result), ""]
    else:
        out += ["(no AdaOpt runs, or no baseline at the same initial learning rate: nothing to compare)", ""]
    if result["lr_sweep"]:
        sw = result["lr_sweep"]
        out += [
            "## Learning-rate sensitivity",
            "",
            f"Initial learning rates whose mean final accuracy ends within {100 * sw['tolerance']:g} point of the "
            f"best result over all optimizers ({pct(sw['overall_best'])}%), and of the optimizer's own best.",
            "",
        ]
        rows = []
        for name, o in sw["optimizers"].items():
            a, b = o["vs_overall_best"], o["vs_own_best"]
            rows.append(
                [
                    name,
                    f"{a['n_within']}/{a['n_total']}",
                    f"{a['span_decades']:g}",
                    f"{b['n_within']}/{b['n_total']}",
                    f"{b['span_decades']:g}",
                    ", ".join(f"{x['learning_rate']:g}: {pct(x['mean'])}" for x in o["by_lr"]),
                ]
            )
        out += [
            markdown_table(
                [
                    "optimizer",
                    "within 1 pt of best",
                    "span (decades)",
                    "within 1 pt of own best",
                    "span (decades)",
                    "mean accuracy % by lr",
                ],
                rows,
            ),
            "",
        ]
    if plots:
        out += ["## Plots", ""]
        captions = {
            PLOT_FILES["accuracy"]: "Eval accuracy vs step (mean over seeds, 95% bootstrap CI band)",
            PLOT_FILES["loss"]: "Eval loss vs step (mean over seeds, 95% bootstrap CI band)",
            PLOT_FILES[
                "lr"
            ]: "Learning rate over training (AdaOpt: effective lr), one line per run, log scale",
            PLOT_FILES["final"]: "Final eval accuracy per run, with the mean and its 95% CI",
            PLOT_FILES["sensitivity"]: "Final eval accuracy vs initial learning rate (mean, 95% CI)",
        }
        for p in plots:
            out += [f"![{captions.get(p, p)}]({p})", ""]
    out += ["## Final eval dicts (Trainer format)", ""]
    for g in result["groups"]:
        out += [f"**{group_label(g['optimizer'], g['lr_grid'], multi_lr)}**", "", "```"]
        out += [f"seed {s}: {_fmt_eval_dict(d)}" for s, d in zip(g["seeds"], g["final_eval"], strict=False)]
        out += ["```", ""]
    return "\n".join(out).rstrip() + "\n"


def write_or_check(path: str, text: str, argv: list[str]) -> int:
    """A committed rendering's command line: write ``text`` to ``path``, or with ``--check`` in ``argv`` write nothing
    and return 1 if the file differs from ``text`` (or is missing), 0 if it is a fresh render."""
    if "--check" in argv:
        if not os.path.exists(path):
            return 1
        with open(path, encoding="utf-8") as f:
            return int(f.read() != text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return 0

