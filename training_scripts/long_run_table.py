"""Render model_cards/results/long-run/README.md from the 3,000-step runs committed beside it.

    python training_scripts/long_run_table.py          # rewrite the README
"""

from __future__ import annotations

import json
import math
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
        "`charlm-long` is this workload with AdamW tuned over lr x {constant, cosine} and 2 seeds; it has not run yet.", "",
        "| run | what | eval bpc | vs the anchor | step at 1 | max | at 2,400 | at 3,000 |",
        "|---|---|---|---|---|---|---|---|", *rows, ""])


def main(argv: list[str]) -> int:
    with open(os.path.join(HERE, "README.md"), "w", encoding="utf-8") as f:
        f.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
