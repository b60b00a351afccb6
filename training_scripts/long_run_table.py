"""Render model_cards/results/long-run/README.md from the 3,000-step runs committed beside it.

    python training_scripts/long_run_table.py          # rewrite the README
"""

from __future__ import annotations

import json
import math
import statistics
import os
import sys

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
SUITE_RESULTS = os.path.join(HERE, "..", "suite", "results.json")


def horizon_section() -> list[str]:
    """AdaOpt with the horizon (total_steps=3000: the last 20% decay) on suite v2's charlm-long, 2 seeds, beside the
    suite's cells of the same workload (its defaults: no horizon) and its AdamW rows' best cells."""
    if not os.path.isdir(HORIZON_DIR):
        return []
    runs = [json.loads(line) for line in open(os.path.join(HORIZON_DIR, "results.jsonl"), encoding="utf-8")]
    suite = json.load(open(SUITE_RESULTS, encoding="utf-8"))["workloads"]["charlm-long"]
    best = suite["best_adamw"]["mean"]

    def row(what: str, values: list[float]) -> str:
        mean = sum(values) / len(values)
        return (f"| {what} | {mean:.3f} | " + ", ".join(f"{v:.3f}" for v in values)
                + f" | {100 * (best - mean) / best:+.1f}% |")

    lines = ["## The horizon on suite v2's long run (d_model 64)", "",
             "The same two AdaOpt rows as the suite's `charlm-long` cells, given `--optimizer_kwargs '{\"total_steps\": "
             "3000}'` (`d64-horizon/suite_config.json` has the command; `results.jsonl` the runs, seeds 0 and 1), against "
             "the suite's cells of that workload (`../suite/results.json`, no horizon: the defaults). Gaps to the best "
             "AdamW there, negative is worse.", "",
             "| run | mean bpc | per seed | vs the best AdamW |", "|---|---|---|---|"]
    def bpc(runs: list[dict], row_name: str) -> list[float]:
        return [r["eval"]["eval_loss"] / math.log(2) for r in sorted(runs, key=lambda r: r["seed"])
                if r["optimizer"] == row_name]

    for row_name, label in (("adaopt", "fed the loss"), ("adaopt-plain", "plain")):
        values = bpc(runs, row_name)
        cell = next(c for c in suite["cells"] if c["optimizer"] == row_name)
        lines += [row(f"AdaOpt {label}, total_steps=3000", values),
                  row(f"AdaOpt {label}, no horizon (suite)", cell["values"])]
    for opt, label in (("adamw", "AdamW constant, its best lr"), ("adamw-cosine", "AdamW warmup + cosine, its best lr"),
                       ("schedulefree", "Schedule-Free AdamW at its default")):
        cells = [c for c in suite["cells"] if c["optimizer"] == opt]
        cell = min(cells, key=lambda c: c["mean"])
        lines.append(row(f"{label} ({cell['lr']:g}, suite)", cell["values"]))
    earlier = os.path.join(HERE, "d64-horizon-v8f", "results.jsonl")
    if os.path.isfile(earlier):  # the same runs at the controller the suite ran before v9 (v8f)
        old = [json.loads(line) for line in open(earlier, encoding="utf-8")]
        means = {row_name: statistics.fmean(bpc(old, row_name)) for row_name in ("adaopt", "adaopt-plain")}
        lines += ["", f"The same runs at v8f, the controller before v9 (`d64-horizon-v8f/`): fed {means['adaopt']:.3f}, "
                  f"plain {means['adaopt-plain']:.3f} bpc."]
    return [*lines, ""]


def main(argv: list[str]) -> int:
    with open(os.path.join(HERE, "README.md"), "w", encoding="utf-8") as f:
        f.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
