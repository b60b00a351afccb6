"""PNG plots of a comparison: eval curves with CI bands, the lr each optimizer applied, final accuracies, and the
lr-sensitivity curve, drawn from `hf_adaopt.lab.analysis.analyze`'s result for `hf_adaopt.lab.report.build_report`.
matplotlib (Agg) is imported lazily: reading `PLOT_FILES` or the analysis needs no matplotlib.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from hf_adaopt.lab import registry, stats
from hf_adaopt.lab.analysis import REFERENCE, eval_curve, finite, grid_order, group_label, group_runs

PLOT_FILES = {
    "accuracy": "eval_accuracy_vs_step.png",
    "loss": "eval_loss_vs_step.png",
    "lr": "effective_lr.png",
    "final": "final_accuracy.png",
    "sensitivity": "lr_sensitivity.png",
}


def _colors(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    out, i = {}, 0
    for n in names:
        if n == REFERENCE:
            out[n] = "black"
        else:
            out[n] = cmap(i % 10)
            i += 1
    return out


# One line style and marker per optimizer besides its colour: two optimizers with the same curve (Adam and AdamW
# without weight decay take identical steps) stay distinguishable where their lines overlap.
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<")


def _styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    colors = _colors(names)
    return {
        n: {"color": colors[n], "linestyle": _LINESTYLES[i % len(_LINESTYLES)], "marker": _MARKERS[i % len(_MARKERS)]}
        for i, n in enumerate(names)
    }


def _new_figure(n_panels: int, width: float = 6.4, height: float = 4.2, max_cols: int = 3):
    """A figure with n_panels axes in a grid of at most `max_cols` columns; returns (fig, flat list of axes)."""
    from matplotlib.figure import Figure

    ncols = min(n_panels, max_cols)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).reshape(-1))
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _aligned_curves(runs: Sequence[dict], key: str) -> tuple[list[float], list[list[float]]]:
    """Steps common to every run of the group and the runs' values there (finite values only)."""
    curves = []
    for r in runs:
        steps, _, vals = eval_curve(r, key)
        curves.append({s: v for s, v in zip(steps, vals, strict=False) if v is not None and math.isfinite(v)})
    common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return common, [[c[s] for s in common] for c in curves]


def _draw_curves(ax, groups, names, lr, key, scale, seed, styles) -> bool:
    drawn = False
    means: dict[str, tuple[list, np.ndarray]] = {}
    for name in names:
        runs = groups.get((name, lr))
        if not runs:
            continue
        steps, mat = _aligned_curves(runs, key)
        if not steps:
            continue
        arr = np.asarray(mat) * scale
        mean = arr.mean(axis=0)
        same = [o for o, (s, m) in means.items() if s == steps and np.array_equal(m, mean)]
        means[name] = (steps, mean)
        ax.plot(
            steps,
            mean,
            **styles[name],
            lw=2.4 if name == REFERENCE else 1.4,
            ms=2.5,
            label=f"{name} (n={len(runs)})" + (f", same curve as {same[0]}" if same else ""),
            zorder=(3 if name == REFERENCE else 2) + len(means) / 100,  # later ones on top: both styles show
        )
        if arr.shape[0] > 1:
            low, high = stats.bootstrap_ci_curve(arr, seed=seed)
            ax.fill_between(steps, low, high, color=styles[name]["color"], alpha=0.18, lw=0)
        drawn = True
    ax.set_xlabel("optimizer step")
    ax.grid(alpha=0.3)
    return drawn


# The zoomed accuracy panel shows this many points below the best mean accuracy.
ZOOM_POINTS = 6.0


def plot_curves(groups, key: str, ylabel: str, path: str, seed: int, scale: float = 1.0) -> bool:
    """Mean curve over seeds with a 95% bootstrap band, one panel per initial lr.

    Accuracy gets a second panel per lr zoomed on the top ZOOM_POINTS points, where the optimizers that
    converge differ by fractions of a point.
    """
    lrs = sorted({lr for _, lr in groups}, key=grid_order)
    names = sorted({n for n, _ in groups}, key=registry.order_key)
    styles = _styles(names)
    zoom = key == "eval_accuracy"
    panels = 2 * len(lrs) if zoom else len(lrs)
    fig, axes = _new_figure(panels, max_cols=2 if zoom else 3)
    drawn = False
    for i, lr in enumerate(lrs):
        title = "" if len(lrs) == 1 else ("default lr" if lr is None else f"initial lr {lr:g}")
        ax = axes[2 * i] if zoom else axes[i]
        drawn |= _draw_curves(ax, groups, names, lr, key, scale, seed, styles)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if key == "eval_loss":
            ax.set_yscale("log")
        if zoom:
            zax = axes[2 * i + 1]
            _draw_curves(zax, groups, names, lr, key, scale, seed, styles)
            top = max((float(np.max(line.get_ydata())) for line in zax.get_lines()), default=scale)
            zax.set_ylim(top - ZOOM_POINTS * scale / 100, top + 0.15 * ZOOM_POINTS * scale / 100)
            zax.set_ylabel(ylabel)
            zax.set_title((title + ": " if title else "") + f"zoom on the top {ZOOM_POINTS:g} points")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="outside right center")
    fig.suptitle(f"{ylabel} vs step — mean over seeds, 95% bootstrap CI band")
    if drawn:
        fig.savefig(path, dpi=110)
    return drawn


def _constant_lr(runs: Sequence[dict]) -> float | None:
    """The lr when every run of the group recorded one and the same constant lr, else None."""
    values = set()
    for r in runs:
        lr = [v for v in (r.get("lr_trajectory") or {}).get("lr", []) if v is not None]
        if not lr:
            return None
        values.update(lr)
    return values.pop() if len(values) == 1 else None


def plot_lr(groups, path: str) -> bool:
    """Per-run lr trajectories (log scale); optimizers with one constant lr are drawn as one labelled dashed line."""
    lrs = sorted({lr for _, lr in groups}, key=grid_order)
    names = sorted({n for n, _ in groups}, key=registry.order_key)
    colors = _colors(names)
    fig, axes = _new_figure(len(lrs))
    drawn = False
    for ax, lr in zip(axes, lrs, strict=False):
        constant: dict[float, list[str]] = defaultdict(list)
        plotted: list[float] = []
        for name in names:
            runs = groups.get((name, lr), [])
            value = _constant_lr(runs)
            if value is not None and name != REFERENCE:
                constant[value].append(name)
                continue
            for i, r in enumerate(runs):
                traj = r.get("lr_trajectory") or {}
                pts = [
                    (s, v)
                    for s, v in zip(traj.get("step", []), traj.get("lr", []), strict=False)
                    if v is not None and math.isfinite(v) and v > 0
                ]
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                plotted.extend(ys)
                ax.plot(
                    xs,
                    ys,
                    color=colors[name],
                    lw=2.0 if name == REFERENCE else 1.2,
                    alpha=0.75,
                    label=(name if name != REFERENCE else "adaopt (effective lr)") if i == 0 else None,
                )
                drawn = True
        for value, members in sorted(constant.items()):
            if value <= 0:
                continue
            peers = [m for m in members if m in registry.LR_FREE]
            note = " (lr multiplier; their own step-size estimate is not recorded)" if peers else ""
            ax.axhline(value, color="grey", ls="--", lw=1.2)
            ax.annotate(
                f"constant {value:g}: {', '.join(members)}{note}",
                (0.99, value),
                xycoords=("axes fraction", "data"),
                textcoords="offset points",
                xytext=(0, -10),
                ha="right",
                fontsize=7.5,
                color="dimgrey",
            )
            drawn = True
            plotted.append(value)
        ax.set_yscale("log")
        if plotted:  # room for the labels of the constant lines
            ax.set_ylim(min(plotted) / 1.8, max(plotted) * 1.6)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("learning rate (AdaOpt: effective)")
        ax.grid(alpha=0.3, which="both")
        if len(lrs) > 1:
            ax.set_title("default lr" if lr is None else f"initial lr {lr:g}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle("Learning rate over training, one line per run (dashed: constant lr)")
    if drawn:
        fig.savefig(path, dpi=110)
    return drawn


def plot_final(result: dict, groups, path: str) -> bool:
    multi_lr = len(result["lr_grid"]) > 1
    colors = _colors(result["optimizers"])
    fig, axes = _new_figure(1, width=max(6.4, 0.9 * len(result["groups"]) + 2))
    ax = axes[0]
    rng = np.random.default_rng(0)
    labels = []
    for i, g in enumerate(result["groups"]):
        vals = np.asarray(finite(g["metrics"]["eval_accuracy"]["values"])) * 100
        labels.append(group_label(g["optimizer"], g["lr_grid"], multi_lr))
        if not vals.size:
            continue
        ax.scatter(
            i + rng.uniform(-0.12, 0.12, vals.size), vals, s=18, color=colors[g["optimizer"]], alpha=0.7
        )
        s = g["metrics"]["eval_accuracy"]
        ax.plot([i - 0.25, i + 0.25], [s["mean"] * 100] * 2, color="black", lw=2)
        if not math.isnan(s["ci_low"]):
            ax.errorbar(
                i + 0.3,
                s["mean"] * 100,
                yerr=[[100 * (s["mean"] - s["ci_low"])], [100 * (s["ci_high"] - s["mean"])]],
                color="black",
                capsize=3,
                lw=1,
            )
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=30 if len(labels) > 5 else 0,
        ha="right" if len(labels) > 5 else "center",
    )
    ax.set_ylabel("final eval accuracy (%)")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("Final eval accuracy per run (bar: mean, whisker: 95% CI)")
    fig.savefig(path, dpi=110)
    return True


def plot_sensitivity(result: dict, path: str) -> bool:
    sweep = result["lr_sweep"]
    if not sweep:
        return False
    styles = _styles(list(sweep["optimizers"]))
    fig, axes = _new_figure(1)
    ax = axes[0]
    for name, o in sweep["optimizers"].items():
        rows = o["by_lr"]
        xs = [r["learning_rate"] for r in rows]
        ys = np.array([r["mean"] for r in rows]) * 100
        lo = np.array([r["ci_low"] if r["ci_low"] is not None else np.nan for r in rows], dtype=float) * 100
        hi = np.array([r["ci_high"] if r["ci_high"] is not None else np.nan for r in rows], dtype=float) * 100
        ax.plot(xs, ys, **styles[name], lw=2.4 if name == REFERENCE else 1.4, label=name)
        ok = ~np.isnan(lo)
        if ok.any():
            ax.fill_between(np.asarray(xs)[ok], lo[ok], hi[ok], color=styles[name]["color"], alpha=0.15, lw=0)
    best = sweep["overall_best"] * 100
    ax.axhline(best - 100 * sweep["tolerance"], color="grey", ls="--", lw=1, label="best − 1 pt")
    ax.set_xscale("log")
    ax.set_xlabel("initial learning rate")
    ax.set_ylabel("final eval accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    ax.set_title("LR sensitivity: final accuracy vs initial lr (mean, 95% CI)")
    fig.savefig(path, dpi=110)
    return True


def make_plots(result: dict, runs: Sequence[dict], output_dir: str, seed: int = 0) -> list[str]:
    groups = group_runs(runs)
    made = []
    if plot_curves(
        groups,
        "eval_accuracy",
        "eval accuracy (%)",
        os.path.join(output_dir, PLOT_FILES["accuracy"]),
        seed,
        100,
    ):
        made.append(PLOT_FILES["accuracy"])
    if plot_curves(groups, "eval_loss", "eval loss", os.path.join(output_dir, PLOT_FILES["loss"]), seed):
        made.append(PLOT_FILES["loss"])
    if plot_lr(groups, os.path.join(output_dir, PLOT_FILES["lr"])):
        made.append(PLOT_FILES["lr"])
    if plot_final(result, groups, os.path.join(output_dir, PLOT_FILES["final"])):
        made.append(PLOT_FILES["final"])
    if plot_sensitivity(result, os.path.join(output_dir, PLOT_FILES["sensitivity"])):
        made.append(PLOT_FILES["sensitivity"])
    return made
