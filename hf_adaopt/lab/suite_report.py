"""Tables, plots and README blocks of a `hf-adaopt suite` directory, from `hf_adaopt.lab.suite_analysis`'s numbers:
report.md, results.json and the two plots in the directory (`hf-adaopt report DIR`), and the blocks of the README
and the experiment guide rendered from the committed results (`python -m hf_adaopt.lab.suite_report --update_readme`).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from collections.abc import Sequence

from hf_adaopt.lab import registry, render, results
from hf_adaopt.lab.suite_analysis import (
    PLOT_FILES,
    REPORT_MD,
    RESULTS_JSON,
    TOLERANCE,
    analyze,
    default_cell_of,
    gap,
    is_better,
    load,
)

# ---------------------------------------------------------------------------------------------------------
# rendering


def _lr(lr: float | None) -> str:
    return "default" if lr is None else f"{lr:g}"


def _fmt_gap(g: float | None, metric: str) -> str:
    if g is None:
        return "–"
    if not math.isfinite(g):
        return "diverged"
    return f"{g:+.2f}" + ("" if metric == "accuracy" else "%")


def _fmt_value(c: dict, metric: str) -> str:
    digits = 2 if metric == "accuracy" else 3
    if not math.isfinite(c["mean"]):
        return "diverged"
    text = f"{c['mean']:.{digits}f}"
    if c["n"] > 1 and math.isfinite(c["std"]):
        text += f" ± {c['std']:.{digits}f} [{c['ci_low']:.{digits}f}, {c['ci_high']:.{digits}f}]"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return render.markdown_table(header, rows)


def _defaults_by_rank(result: dict) -> list[tuple[str, float | None]]:
    """(optimizer, its default lr) in the order of the mean rank at the defaults."""
    order = sorted(result["summary"], key=lambda o: (result["summary"][o]["mean_rank"], registry.order_key(o)))
    return [(opt, next((d["lr"] for w in result["workloads"].values() for d in w.get("defaults", [])
                        if d["optimizer"] == opt), None)) for opt in order]


def summary_markdown(result: dict) -> str:
    """The table across workloads: every optimizer at its default, plus AdaOpt's worst initial lr."""
    names = list(result["workloads"])
    metric = {n: result["workloads"][n]["metric"] for n in names}
    header = ["optimizer (default lr)", *[f"{n} ({'pts' if metric[n] == 'accuracy' else '% bpc'})" for n in names],
              "mean rank", "mean gap", "worst gap"]
    rows = []
    for opt, lr in _defaults_by_rank(result):
        s = result["summary"][opt]
        rows.append([f"{registry.label(opt)} ({_lr(lr)})",
                     *[_fmt_gap(s["gaps"].get(n), metric[n]) + (f" (#{s['ranks'][n]})" if n in s["ranks"] else "")
                       for n in names],
                     f"{s['mean_rank']:.2f}", f"{s['mean_gap']:+.2f}", f"{s['worst_gap']:+.2f}"])
    ws = result["workloads"]
    for row in _adaopt_rows(result):
        rows.append([f"{registry.label(row)}, worst of its initial lrs", *[
            (_fmt_gap(ws[n][row]["worst_gap"], metric[n]) + f" (lr {_lr(ws[n][row]['worst_lr'])})")
            if row in ws[n] else "–" for n in names], "", f"{result[f'{row}_worst_mean_gap']:+.2f}",
            f"{min(result[f'{row}_worst_gap'].values()):+.2f}"])
    if any("schedulefree_tuned" in w for w in ws.values()):
        rows.append(["Schedule-Free AdamW, best of 1e-3/2.5e-3/1e-2", *[
            (_fmt_gap(ws[n]["schedulefree_tuned"]["gap"], metric[n]) + f" (lr {_lr(ws[n]['schedulefree_tuned']['lr'])})")
            if "schedulefree_tuned" in ws[n] else "–" for n in names], "",
            "" if result.get("schedulefree_tuned_mean_gap") is None else f"{result['schedulefree_tuned_mean_gap']:+.2f}",
            ""])
    rows.append(["best-tuned AdamW (reference)", *[
        (f"{ws[n]['best_adamw']['mean']:.{2 if metric[n] == 'accuracy' else 3}f}"
         + ("%" if metric[n] == "accuracy" else " bpc") + f" at {_best_adamw_cell(ws[n]['best_adamw'])}")
        if "best_adamw" in ws[n] else "–" for n in names], "", "", ""])
    return _table(header, rows)


def _adaopt_rows(result: dict) -> list[str]:
    """The AdaOpt rows (`registry.ADAOPT_ROWS`) that ran on some workload of `result` (committed v1 results: "adaopt")."""
    return [row for row in registry.ADAOPT_ROWS if any(row in w for w in result["workloads"].values())]


def _best_adamw_cell(best: dict) -> str:
    """Where the best-tuned AdamW is: its lr, and its schedule when it is not the constant row's."""
    row = best.get("optimizer", "adamw")
    return _lr(best["lr"]) + ("" if row == "adamw" else f" ({registry.label(row)})")


def verdict_lines(result: dict) -> list[str]:
    """One line per workload and AdaOpt row on AdaOpt's robustness, in plain words."""
    lines = []
    for name, w in result["workloads"].items():
        for row in registry.ADAOPT_ROWS:
            a = w.get(row)
            if not a or "best_adamw" not in w:
                continue
            unit = " point" if w["metric"] == "accuracy" else "% of bpc"
            lines.append(
                f"- **{name}**: {registry.label(row)} is within {TOLERANCE:g}{unit} of the best-tuned AdamW "
                f"(lr {_best_adamw_cell(w['best_adamw'])}) from {a['decades_within']} of its {a['n_lrs']} initial lrs; "
                f"worst case {_fmt_gap(a['worst_gap'], w['metric'])} at lr {_lr(a['worst_lr'])}."
            )
    return lines


def adaopt_sweep_markdown(result: dict) -> str:
    """Each AdaOpt row's final metric from each initial lr, per workload, beside the best-tuned AdamW."""
    rows_run = _adaopt_rows(result)
    ws = [w for w in result["workloads"].values() if any(r in w for r in rows_run) and "best_adamw" in w]
    if not ws:
        return ""
    lrs = {row: sorted({lr for w in ws if row in w for lr in w[row]["lrs"]}) for row in rows_run}
    within = (["decades within"] if len(rows_run) == 1
              else [f"{registry.label(row)}: lrs within" for row in rows_run])
    header = ["workload (metric)", *[f"{registry.label(row)} from {_lr(lr)}" for row in rows_run for lr in lrs[row]],
              "best-tuned AdamW", *within]
    rows = []
    for w in ws:
        digits = 2 if w["metric"] == "accuracy" else 3
        cells = []
        for row in rows_run:
            by_lr = {c["lr"]: c for c in w["cells"] if c["optimizer"] == row}
            cells += [_mean_std(by_lr.get(lr), w["metric"], with_gap=False) for lr in lrs[row]]
        best = w["best_adamw"]
        unit = "acc %" if w["metric"] == "accuracy" else "bpc"
        rows.append([f"{w['name']} ({unit})", *cells, f"{best['mean']:.{digits}f} (lr {_best_adamw_cell(best)})",
                     *[f"{w[row]['decades_within']} of {w[row]['n_lrs']}" if row in w else "–" for row in rows_run]])
    return _table(header, rows)


def workloads_markdown(result: dict) -> str:
    """What each workload is, and how long one of its runs took here (mean over the grid)."""
    rows = []
    for name, w in result["workloads"].items():
        spec = result["workload_specs"].get(name, {})
        rows.append([name, spec.get("model", ""), spec.get("data", ""),
                     "accuracy" if w["metric"] == "accuracy" else "bits/char", spec.get("about", ""),
                     f"{w.get('run_seconds', math.nan):.0f}"])
    return _table(["workload", "model", "data (licence), train / validation", "metric", "why it is here",
                   "s per run"], rows)


def ablation_markdown(variants: dict, results: dict[str, dict], reference: dict) -> str:
    """The ablation table: per variant, AdaOpt's worst result over the lrs it ran, per workload; the gap to the
    suite's best-tuned AdamW where the workload's settings were the suite's (`comparable_workloads`, per variant
    or for all)."""
    names = [n for n in reference["workloads"] if any(n in r["workloads"] for r in results.values())]
    rows = []
    for v in variants["variants"]:
        result = results.get(v["name"])
        if result is None:
            continue
        comparable = set(v.get("comparable_workloads", variants.get("comparable_workloads", [])))
        cells = []
        for n in names:
            w = result["workloads"].get(n)
            if not w or not w.get("cells"):
                cells.append("–")
                continue
            metric = w["metric"]
            better = is_better(metric)
            worst = w["cells"][0]
            for c in w["cells"][1:]:
                if better(worst["mean"], c["mean"]):
                    worst = c
            digits = 2 if metric == "accuracy" else 3
            text = "diverged" if not math.isfinite(worst["mean"]) else f"{worst['mean']:.{digits}f}"
            best = reference["workloads"].get(n, {}).get("best_adamw")
            if n in comparable and best and math.isfinite(worst["mean"]):
                text += f" ({_fmt_gap(gap(worst['mean'], best['mean'], metric), metric)})"
            lrs = sorted({c["lr"] for c in w["cells"]})
            if len(lrs) > 1:
                text += f", worst of {len(lrs)} lrs"
            cells.append(text)
        rows.append([v["name"], v["change"], *cells])
    header = ["variant", "what changed", *[f"{n} ({'acc %' if reference['workloads'][n]['metric'] == 'accuracy' else 'bpc'})"
                                          for n in names]]
    return _table(header, rows)


def _mean_std(c: dict | None, metric: str, with_gap: bool = True) -> str:
    """A cell's mean ± std over seeds (and its gap): "–" where it did not run, "diverged" where a run did."""
    if c is None:
        return "–"
    digits = 2 if metric == "accuracy" else 3
    if not math.isfinite(c["mean"]):
        return "diverged"
    spread = f" ± {c['std']:.{digits}f}" if c["n"] > 1 and math.isfinite(c["std"]) else ""
    return f"{c['mean']:.{digits}f}{spread}" + (f" ({_fmt_gap(c.get('gap'), metric)})" if with_gap else "")


def _steps(c: dict | None) -> str:
    if c is None or not all(math.isfinite(c.get(k, math.nan)) for k in ("effective_lr_start", "effective_lr_end")):
        return "–"
    return f"{c['effective_lr_start']:.1e} → {c['effective_lr_end']:.1e}"


def paths_markdown(result: dict) -> str:
    """Both AdaOpt rows at their default on every workload, beside the best-tuned AdamW and Schedule-Free at its
    default: mean ± std over seeds (gap), and the step each row took first and last (mean over seeds)."""
    rows_run = _adaopt_rows(result)
    header = ["workload (metric)", "best-tuned AdamW"]
    for row in rows_run:
        header += [registry.label(row), "its step: first → last"]
    header.append("Schedule-Free AdamW (2.5e-3)")
    rows = []
    for name, w in result["workloads"].items():
        if "best_adamw" not in w:
            continue
        metric, best = w["metric"], w["best_adamw"]
        digits = 2 if metric == "accuracy" else 3
        line = [f"{name} ({'acc %' if metric == 'accuracy' else 'bpc'})",
                f"{best['mean']:.{digits}f} at {_best_adamw_cell(best)}"]
        for row in rows_run:
            c = default_cell_of(w, row)
            line += [_mean_std(c, metric), _steps(c)]
        line.append(_mean_std(default_cell_of(w, "schedulefree"), metric))
        rows.append(line)
    return _table(header, rows)


def _gaps_text(gaps: dict, metric_of: dict, tolerance: float) -> str:
    """"k of n" within tolerance, and the misses by how much."""
    misses = [f"{n} {_fmt_gap(g, metric_of[n])}" for n, g in gaps.items() if not g >= -tolerance]
    text = f"{len(gaps) - len(misses)} of {len(gaps)}"
    return text + (f"; misses: {', '.join(misses)}" if misses else "")


def targets_markdown(result: dict) -> str:
    """Issue 19's targets, one line each, per AdaOpt row (``suite_analysis.targets``)."""
    targets = result.get("targets", {})
    rows_run = [row for row in registry.ADAOPT_ROWS if row in targets]
    metric_of = {n: w["metric"] for n, w in result["workloads"].items()}
    tol = result.get("tolerance", TOLERANCE)

    def per_row(fn):
        return [fn(targets[row]) for row in rows_run]

    def signed(d: dict) -> str:
        return ", ".join(f"{n} {_fmt_gap(g, metric_of[n])}" for n, g in d.items()) or "–"

    lines = [
        [f"short workloads: within {tol:g} point / {tol:g}% of the best-tuned AdamW, on all",
         *per_row(lambda t: _gaps_text(t["short"], metric_of, tol))],
        [f"long run: within {tol:g}% of the best AdamW (lr x {{constant, warmup + cosine}})",
         *per_row(lambda t: _gaps_text(t["long"], metric_of, tol))],
        ["long run: ahead of Schedule-Free at its default (gap minus its gap)",
         *per_row(lambda t: signed(t["long_vs_schedulefree"]))],
        ["the same runs from lr 1e-6 and 1e-1 (workloads)",
         *per_row(lambda t: f"{t['same_from_every_lr'][0]} of {t['same_from_every_lr'][1]}")],
        ["clipping: first step without / with clipping (target 1.00x)",
         *per_row(lambda t: ", ".join(f"{v:.2f}x" for v in t["clipping"].values()) or "–")],
        ["discriminative lrs (body 0.01x; frozen at 0): gap", *per_row(lambda t: signed(t["groups"]))],
        ["never diverges: workloads with a non-finite run", *per_row(lambda t: ", ".join(t["diverged"]) or "none")],
    ]
    return _table(["target (issue 19)", *[registry.label(row) for row in rows_run]], lines)


def defaults_markdown(result: dict) -> str:
    """Every optimizer at its default across the workloads it ran: mean rank, mean and worst gap (the narrow form of
    `summary_markdown`, for the README)."""
    metric_of = {n: w["metric"] for n, w in result["workloads"].items()}
    rows = []
    for opt, lr in _defaults_by_rank(result):
        s = result["summary"][opt]
        worst = min(s["gaps"], key=lambda n: s["gaps"][n])
        rows.append([f"{registry.label(opt)} ({_lr(lr)})", str(len(s["gaps"])), f"{s['mean_rank']:.2f}",
                     f"{s['mean_gap']:+.2f}", f"{_fmt_gap(s['gaps'][worst], metric_of[worst])} ({worst})"])
    return _table(["optimizer (default lr)", "workloads", "mean rank", "mean gap", "worst gap"], rows)


def baseline_text(result: dict) -> str:
    """One sentence, after a space, on where a --baseline run's other cells come from ("" for a run of the grid)."""
    base = result.get("baseline")
    if not base:
        return ""
    return (f" Every cell but the AdaOpt rows' ({base['n_runs']} runs) is taken from the baseline `{base['path']}` "
            f"(revision `{base.get('revision') or 'unknown'}`, `{base.get('command')}`).")


def readme_section(result: dict) -> str:
    """The README's results block: rendered from a committed results.json, so a test can hold the two equal."""
    versions = result.get("environment", {}).get("versions", {})
    lines = [
        f"`{result.get('command')}` — {result['n_runs']} runs, seeds {result.get('seeds')}, revision "
        f"`{versions.get('hf-adaopt git', 'unknown')}`; files: `model_cards/results/suite/`. The runs took "
        f"{result['run_seconds'] / 3600:.1f} h of process time, {result['run_seconds'] / 7200:.1f} h on two cores "
        "(other jobs shared the machine part of the time)." + baseline_text(result), "",
    ]
    if "targets" not in result:  # a suite v1 result: one AdaOpt row from six lrs
        lines += [
            "**Every optimizer at its default** (gap to the best-tuned AdamW: accuracy points, or % of bits per "
            "character; negative is worse; `#` = rank among the defaults; mean gap = the mean of the six, points and "
            "% alike):", "",
            summary_markdown(result), "",
            "**AdaOpt from every initial lr** (mean ± std over seeds):", "",
            adaopt_sweep_markdown(result),
        ]
        return "\n".join(lines)
    lines += [
        "**Issue 19's targets**, each AdaOpt row at its default (gaps to the best-tuned AdamW: accuracy points, or % "
        "of bits per character; negative is worse):", "",
        targets_markdown(result), "",
        "**Both paths on every workload** (mean ± std over seeds, and the gap; the step: the effective lr at the first "
        "and the last step, mean over seeds):", "",
        paths_markdown(result), "",
        "**Every optimizer at its default** (mean rank among the optimizers each workload ran; mean gap over the "
        "workloads, points and % alike):", "",
        defaults_markdown(result),
    ]
    return "\n".join(lines)


def workload_markdown(w: dict, spec: dict) -> str:
    metric = w["metric"]
    unit = "eval accuracy %" if metric == "accuracy" else "eval bits per character"
    lines = [f"### {w['name']}", ""]
    if spec:
        lines += [f"{spec.get('about', '')}. Data: {spec.get('data', '')}. Model: {spec.get('model', '')}.", "",
                  "`hf-adaopt train --task " + spec.get("task", "?") + " " + " ".join(spec.get("args", [])) + "`", ""]
    thr = w.get("loss_threshold")
    header = ["optimizer", "initial lr", "n", f"{unit} (mean ± std [95% CI])", "gap to best AdamW",
              "rank at default", f"steps to train loss ≤ {thr:.3g}" if thr else "steps to threshold",
              "train s", "lr CV"]
    rows = []
    for c in w["cells"]:
        steps = c.get("steps_to_threshold")
        rows.append([registry.label(c["optimizer"]), _lr(c["lr"]), str(c["n"]), _fmt_value(c, metric),
                     _fmt_gap(c.get("gap"), metric), str(c.get("default_rank", "")),
                     ("–" if steps is None else f"{steps:.0f}") + f" ({c.get('reached_threshold', '')})",
                     f"{c['train_time_s']:.1f}", f"{c['lr_cv']:.3f}"])
    lines.append(_table(header, rows))
    for row in registry.ADAOPT_ROWS:  # tests without a "reference" are v1's, of "adaopt"
        tests = [t for t in w.get("tests", []) if t.get("reference", "adaopt") == row]
        if not tests:
            continue
        name = registry.label(row)
        lines += ["", f"{name} at its default against each optimizer at its default (difference = other − {name}):",
                  ""]
        rows = [[registry.label(t["optimizer"]), _lr(t["lr"]), f"{t['diff']:+.3f}",
                 render.pval(t.get("welch_p_holm")), render.pval(t.get("mwu_p_holm"))] for t in tests]
        lines.append(_table(["optimizer", "lr", "difference", "p Welch (Holm)", "p MWU (Holm)"], rows))
    return "\n".join(lines)


def render_markdown(result: dict, plots: Sequence[str]) -> str:
    env = result.get("environment", {})
    versions = env.get("versions", {})
    lines = [
        "# hf-adaopt suite", "",
        f"Command: `{result.get('command')}`", "",
        f"Runs: {result['n_runs']} of {result['n_planned']} planned; seeds {result.get('seeds')}; "
        f"{result['run_seconds'] / 60:.1f} min of training runs (summed over processes)."
        + baseline_text(result), "",
        f"Environment: {env.get('device', '?')}; " + ", ".join(f"{k} {v}" for k, v in versions.items()), "",
        "Gaps are to the best-tuned AdamW cell (the best of the AdamW rows' initial lrs: 1e-5 ... 1e-2 in half "
        "decades on the default grid, the workload's own lrs elsewhere, and on a workload that runs it AdamW on "
        "warmup + cosine too); negative is worse: accuracy points, or percent of bits per character. Ranks are among "
        "the optimizers at their defaults on that workload (1 = best; workloads with their own cell list run fewer "
        "optimizers); the mean gap is the mean of a row's gaps, points and percent alike.", "",
        "## Across workloads", "", summary_markdown(result), "", *verdict_lines(result), "",
    ]
    for p in plots:
        lines += [f"![{os.path.splitext(os.path.basename(p))[0]}]({os.path.basename(p)})", ""]
    lines += ["## Per workload", ""]
    for name, w in result["workloads"].items():
        lines += [workload_markdown(w, result["workload_specs"].get(name, {})), ""]
    return "\n".join(lines)


def bench_markdown(bench: dict) -> str:
    """The step-cost tables from `training_scripts/bench_optimizer_step.py --output_json`: the run, then any
    `other_runs` (e.g. bf16). Ratios are medians of per-step ratios; "x floor" is to a `copy_` of AdamW's bytes."""
    def one(run: dict) -> str:
        rows = [[r["optimizer"], f"{r['ms_per_step']:.1f}", f"{r['ratio_to_fused_adamw']:.2f}",
                 f"{r['ratio_to_foreach_adamw']:.2f}", f"{r['ratio_to_copy_floor']:.2f}", f"{r['gb_per_s']:.1f}",
                 "" if r["state_bytes_per_param"] is None else f"{r['state_bytes_per_param']:.2f}"]
                for r in run["rows"]]
        head = (f"{run['num_params'] / 1e6:.1f}M parameters, {run['dtype']}, {run['device']}, {run['threads']} "
                f"thread(s), {run['clock']} clock, median of {run['steps']} interleaved steps, torch {run['torch']}; "
                f"GB/s counts AdamW's {run['adamw_bytes_per_param']} B/param:")
        return head + "\n\n" + _table(["optimizer", "ms/step", "x fused AdamW", "x foreach AdamW", "x floor", "GB/s",
                                        "state B/param"], rows)

    text = "\n\n".join(one(run) for run in [bench, *bench.get("other_runs", [])])
    repeats = bench.get("repeats", [])
    if repeats:  # the same fp32 setting run again: how far one run's ratio moves on this machine
        ratios = sorted(r["ratio_to_fused_adamw"] for run in repeats for r in run["rows"]
                        if r["optimizer"] == "AdaOpt (fused)")
        text += (f"\n\nThe first table's setting run {len(ratios)} more times (`{repeats[0]['command']}`): AdaOpt (fused) "
                 f"at {', '.join(f'{x:.2f}x' for x in ratios)} torch's fused AdamW (median "
                 f"{statistics.median(ratios):.2f}x).")
    return text


def bench_summary_markdown(bench: dict) -> str:
    """The README's one paragraph on the step's cost: AdaOpt's rows of `bench_step.json`, each run named by its
    setting (the full tables are the experiment guide's `bench` block)."""
    def ratio(run: dict, optimizer: str, key: str) -> str:
        row = next(r for r in run["rows"] if r["optimizer"] == optimizer)
        return f"{row[key]:.2f}x"

    runs = [bench, *bench.get("other_runs", [])]
    fused = ", ".join(f"{ratio(run, 'AdaOpt (fused)', 'ratio_to_fused_adamw')} ({run['dtype']}, {run['threads']} "
                      f"thread{'s' if run['threads'] > 1 else ''})" for run in runs)
    state = next(r for r in bench["rows"] if r["optimizer"] == "AdaOpt (fused)")["state_bytes_per_param"]
    return (f"AdaOpt's fused step (`fused=True`) costs {fused} torch's fused AdamW on this CPU, and its foreach step "
            f"{ratio(bench, 'AdaOpt (foreach)', 'ratio_to_foreach_adamw')} foreach AdamW ({bench['dtype']}, "
            f"{bench['threads']} thread); its state is {state:.2f} bytes per parameter "
            f"({bench['num_params'] / 1e6:.1f}M transformer-shaped parameters, `model_cards/results/bench_step.json`).")


# The generated blocks: which live in which file (paths from the repository root). The README keeps the summary
# and the step cost in one paragraph; the experiment guide what each workload is and the step-cost tables; the
# ablation its table beside its results.
README_BLOCKS = {"README.md": ("suite-results", "bench-summary"),
                 os.path.join("training_scripts", "README.md"): ("suite-workloads", "bench"),
                 os.path.join("model_cards", "results", "ablation", "README.md"): ("ablation",)}


def readme_blocks(results_dir: str) -> dict[str, str]:
    """Each README block rendered from the committed results under `results_dir` (model_cards/results)."""
    suite = load_result(os.path.join(results_dir, "suite", RESULTS_JSON))
    with open(os.path.join(results_dir, "ablation", "variants.json"), encoding="utf-8") as f:
        variants = json.load(f)
    ablations = {}
    for v in variants["variants"]:
        path = os.path.join(results_dir, "ablation", v["name"], RESULTS_JSON)
        if os.path.isfile(path):
            ablations[v["name"]] = load_result(path)
    with open(os.path.join(results_dir, "bench_step.json"), encoding="utf-8") as f:
        bench = json.load(f)
    return {"suite-results": readme_section(suite), "ablation": ablation_markdown(variants, ablations, suite),
            "bench": bench_markdown(bench), "bench-summary": bench_summary_markdown(bench),
            "suite-workloads": workloads_markdown(suite)}


def replace_readme_blocks(readme: str, blocks: dict[str, str]) -> str:
    """README text with every `<!-- name:start -->...<!-- name:end -->` block replaced by blocks[name]."""
    for name, body in blocks.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start not in readme or end not in readme:
            raise ValueError(f"README lacks the markers {start} ... {end}")
        head, rest = readme.split(start, 1)
        readme = head + start + "\n" + body.strip() + "\n" + end + rest.split(end, 1)[1]
    return readme


# ---------------------------------------------------------------------------------------------------------
# plots


# The swept rows of the sensitivity plot and how they are drawn (the others are lines at their default's value).
SWEEP_STYLES = {
    "adaopt": dict(color="black", marker="o", lw=2),
    "adaopt-plain": dict(color="tab:gray", marker="D", lw=2, ls="--"),
    "adamw": dict(color="tab:blue", marker="s"),
    "adamw-cosine": dict(color="tab:cyan", marker="^"),
}


def plot_sensitivity(result: dict, path: str) -> bool:
    """Final metric vs initial lr, one panel per workload: AdaOpt and AdamW sweeps, the others at default."""
    from hf_adaopt.lab.plots import _new_figure

    ws = result["workloads"]
    if not ws:
        return False
    fig, axes = _new_figure(len(ws), width=5.0, height=3.6)
    for ax, (name, w) in zip(axes, ws.items()):
        for opt, style in SWEEP_STYLES.items():
            cs = [c for c in w["cells"] if c["optimizer"] == opt and c["lr"] is not None and math.isfinite(c["mean"])]
            if cs:
                ax.errorbar([c["lr"] for c in cs], [c["mean"] for c in cs],
                            yerr=[c["std"] if math.isfinite(c["std"]) else 0.0 for c in cs],
                            label=registry.label(opt), capsize=2, **style)
        others = [c for c in w["cells"] if c["optimizer"] not in SWEEP_STYLES and math.isfinite(c["mean"])
                  and c.get("default_rank") is not None]
        for i, c in enumerate(others):
            ax.axhline(c["mean"], ls=":", lw=1, color=f"C{(i + 2) % 10}", label=registry.label(c["optimizer"]))
        ax.set_xscale("log")
        ax.set_xlabel("initial learning rate")
        ax.set_ylabel("eval accuracy %" if w["metric"] == "accuracy" else "eval bits per char (lower is better)")
        ax.set_title(name)
        if w["metric"] == "accuracy" and "best_adamw" in w:
            ax.set_ylim(max(0.0, w["best_adamw"]["mean"] - 30.0), min(100.0, w["best_adamw"]["mean"] + 5.0))
        elif "best_adamw" in w:
            ax.set_ylim(w["best_adamw"]["mean"] * 0.95, w["best_adamw"]["mean"] * 1.5)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.savefig(path, dpi=110)
    return True


def plot_effective_lr(result: dict, records: Sequence[dict], path: str) -> bool:
    """Each AdaOpt row's effective lr over training from each initial lr (first seed), one panel per workload; the
    plain row dashed."""
    from hf_adaopt.lab.plots import _new_figure

    def adaopt_runs(name):
        return [r for r in records if r.get("workload") == name and r["optimizer"] in registry.ADAOPT_ROWS]

    names = [n for n in result["workloads"] if adaopt_runs(n)]
    if not names:
        return False
    fig, axes = _new_figure(len(names), width=5.0, height=3.6)
    for ax, name in zip(axes, names):
        runs = adaopt_runs(name)
        first_seed = min(r["seed"] for r in runs)
        runs = sorted((r for r in runs if r["seed"] == first_seed),
                      key=lambda r: (registry.ADAOPT_ROWS.index(r["optimizer"]), r["lr_grid"] or 0.0))
        for i, r in enumerate(runs):
            traj = r.get("lr_trajectory", {})
            steps, lrs = traj.get("step", []), traj.get("lr", [])
            pts = [(s, v) for s, v in zip(steps, lrs) if v is not None and v > 0 and math.isfinite(v)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{i % 10}",
                        ls="-" if r["optimizer"] == "adaopt" else "--",
                        label=f"{registry.label(r['optimizer'])} from {_lr(r['lr_grid'])}")
        best = result["workloads"][name].get("best_adamw")
        if best and best["lr"]:
            ax.axhline(best["lr"], color="black", ls=":", lw=1, label=f"best AdamW lr {_best_adamw_cell(best)}")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("AdaOpt effective lr")
        ax.set_title(f"{name} (seed {first_seed})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return True


# ---------------------------------------------------------------------------------------------------------
# entry points


def build_report(output_dir: str) -> dict:
    """Analyze, write results.json, report.md and the plots; return the analysis (with "plots")."""
    config, records, baseline = load(output_dir)
    result = analyze(config, records, baseline)
    plots = []
    for key, fn in (("sensitivity", lambda p: plot_sensitivity(result, p)),
                    ("effective_lr", lambda p: plot_effective_lr(result, records, p))):
        path = os.path.join(output_dir, PLOT_FILES[key])
        if fn(path):
            plots.append(path)
    result["plots"] = [os.path.basename(p) for p in plots]
    results.write_atomic(os.path.join(output_dir, RESULTS_JSON),
                         json.dumps(results.json_safe(result), indent=1, sort_keys=True))
    results.write_atomic(os.path.join(output_dir, REPORT_MD), render_markdown(result, plots))
    return result


def load_result(path: str) -> dict:
    """A suite's results.json (e.g. the committed one under model_cards/results/), as written by build_report."""
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    # results.json is written with sorted keys: put the workloads back in the suite's order
    order = result.get("workload_order") or list(result["workloads"])
    result["workloads"] = {name: result["workloads"][name] for name in order}
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--update_readme"]:  # developers: re-render the READMEs' blocks from model_cards/results/
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # hf_adaopt/lab/..
        blocks = readme_blocks(os.path.join(root, "model_cards", "results"))
        for name, names in README_BLOCKS.items():
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as f:
                text = replace_readme_blocks(f.read(), {b: blocks[b] for b in names})
            results.write_atomic(path, text)
        return 0
    if len(argv) != 1:
        print("usage: hf-adaopt report <suite output_dir>", file=sys.stderr)
        return 2
    try:
        result = build_report(argv[0])
    except ValueError as e:
        print(f"hf-adaopt report: error: {e}", file=sys.stderr)
        return 2
    print(summary_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
