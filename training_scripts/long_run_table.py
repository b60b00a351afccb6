"""Render model_cards/results/long-run/README.md from the 3,000-step runs committed beside it.

    python training_scripts/long_run_table.py          # rewrite the README
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys

from hf_adaopt.lab.render import write_or_check

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model_cards", "results", "long-run")
RUNS = (  # directory, what it is
    ("adamw-cos", "AdamW, lr 3.16e-3, 150 warmup steps, cosine to 0 (the practitioner's anchor)"),
    ("adamw-const", "AdamW, lr 1e-3, constant"),
    ("sf", "Schedule-Free AdamW at its default lr 2.5e-3"),
    ("fed-hz", "AdaOpt v8 fed the loss, total_steps=3000 (the last 20% decay)"),
    ("plain-hz", "AdaOpt v8 plain (no loss), total_steps=3000"),
    ("plain-nohz", "AdaOpt v8 plain, no horizon (no decay)"),
)


def render() -> str:
    rows, anchor = [], None
    for name, what in RUNS:
        path = os.path.join(HERE, name)
        if not os.path.isdir(path):
            continue
        e = json.load(open(os.path.join(path, "eval_results.json"), encoding="utf-8"))
        lr = json.load(open(os.path.join(path, "lr_trajectory.json"), encoding="utf-8"))["lr"]
        bpc = e["eval_loss"] / math.log(2)
        anchor = bpc if anchor is None else anchor
        rows.append(f"| `{name}` | {what} | {bpc:.3f} | {100 * (bpc / anchor - 1):+.1f}% | {lr[0]:.1e} | {max(lr):.1e} | "
                    f"{lr[2399]:.1e} | {lr[-1]:.1e} |")
    return "\n".join([
        "# The char-LM over 3,000 steps (issue 19's long run)", "",
        "The suite's `charlm` model and data (4-layer pre-LN decoder, d_model 128, CPython's prose, batch 16 x 64 bytes), "
        "3,000 steps of `hf-adaopt train`, clipping 1.0 (the Trainer's default), seed 42, one run each on a shared CPU. "
        "Each directory holds `eval_results.json`, `run_config.json` (the command) and `lr_trajectory.json` (the step "
        "taken at every step); this table is rendered from them by `training_scripts/long_run_table.py`. Suite v2's "
        "`charlm-long` runs the same at half the width (`--model d64`) with AdamW tuned over lr x {constant, cosine} "
        "and 2 seeds (`../suite/`); the horizon on it is the second table.", "",
        "| run | what | eval bpc | vs the anchor | step at 1 | max | at 2,400 | at 3,000 |",
        "|---|---|---|---|---|---|---|---|", *rows, "", *horizon_section()])


HORIZON_DIR = os.path.join(HERE, "d64-horizon")
NO_HORIZON = os.path.join(HERE, "..", "ablation", "v11", "nohz", "results.jsonl")
SUITE_RESULTS = os.path.join(HERE, "..", "suite", "results.json")


def _bpc(runs: list[dict], row_name: str) -> list[float]:
    return [r["eval"]["eval_loss"] / math.log(2) for r in sorted(runs, key=lambda r: r["seed"])
            if r["optimizer"] == row_name and r.get("workload", "charlm-long") == "charlm-long"]


def _runs(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def horizon_section() -> list[str]:
    """Suite v2's charlm-long, 2 seeds: the suite's AdaOpt cells (since v11 the run's length reaches AdaOpt and it
    earns its decay), the same without a horizon (ablation v11's no-horizon runs), and the suite's AdamW rows' best
    cells and Schedule-Free; then the same with the horizon at earlier versions."""
    if not os.path.isfile(NO_HORIZON):
        return []
    suite = json.load(open(SUITE_RESULTS, encoding="utf-8"))["workloads"]["charlm-long"]
    best = suite["best_adamw"]["mean"]

    def row(what: str, values: list[float]) -> str:
        mean = sum(values) / len(values)
        return (f"| {what} | {mean:.3f} | " + ", ".join(f"{v:.3f}" for v in values)
                + f" | {100 * (best - mean) / best:+.1f}% |")

    lines = ["## The horizon on suite v2's long run (d_model 64)", "",
             "The suite's `charlm-long` cells (`../suite/results.json`, seeds 0 and 1): since v11 the run's length "
             "reaches both AdaOpt rows (the callback hands over the Trainer's `max_steps`; a plain loop passes "
             "`total_steps`) and AdaOpt decays its step over the last 20%, from the first step there that its secant "
             "no longer grows. Beside them the same rows without a horizon (`../ablation/v11/nohz/`, `total_steps` "
             "beyond the run). Gaps to the best AdamW there, negative is worse.", "",
             "| run | mean bpc | per seed | vs the best AdamW |", "|---|---|---|---|"]
    no_horizon = _runs(NO_HORIZON)
    for row_name, label in (("adaopt", "fed the loss"), ("adaopt-plain", "plain")):
        cell = next(c for c in suite["cells"] if c["optimizer"] == row_name)
        lines += [row(f"AdaOpt {label}, the default: the earned decay (suite)", cell["values"]),
                  row(f"AdaOpt {label}, no horizon", _bpc(no_horizon, row_name))]
    for opt, label in (("adamw", "AdamW constant, its best lr"), ("adamw-cosine", "AdamW warmup + cosine, its best lr"),
                       ("schedulefree", "Schedule-Free AdamW at its default")):
        cells = [c for c in suite["cells"] if c["optimizer"] == opt]
        cell = min(cells, key=lambda c: c["mean"])
        lines.append(row(f"{label} ({cell['lr']:g}, suite)", cell["values"]))
    earlier = [(name, os.path.join(HERE, directory, "results.jsonl")) for name, directory in
               (("v10", "d64-horizon"), ("v8f", "d64-horizon-v8f"))]
    parts = [f"{name} fed {statistics.fmean(_bpc(_runs(path), 'adaopt')):.3f}, plain "
             f"{statistics.fmean(_bpc(_runs(path), 'adaopt-plain')):.3f}" for name, path in earlier if os.path.isfile(path)]
    if parts:
        lines += ["", "With `total_steps=3000` and the planned decay (the last 20%, from wherever the step was) at earlier "
                  "versions, whose start read the gradient after clipping (`d64-horizon/`, `d64-horizon-v8f/`): "
                  + "; ".join(parts) + " bpc."]
    return [*lines, ""]


def main(argv: list[str]) -> int:
    return write_or_check(os.path.join(HERE, "README.md"), render(), argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
