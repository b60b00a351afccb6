"""Render model_cards/results/ablation/v8/README.md from the v8 probe runs committed beside it.

    python training_scripts/ablation_v8_table.py            # rewrite the README
    python training_scripts/ablation_v8_table.py --check    # exit 1 if it differs from a fresh render

Each probe ran `hf-adaopt suite --optimizers adaopt,adaopt-plain --lrs 1e-3 --seeds 1` (seed 0) with the variant's
`--optimizer_kwargs` (its suite_config.json has the command), on the commit named in VARIANTS.
"""

from __future__ import annotations

import json
import math
import os
import sys

from hf_adaopt.lab.render import write_or_check

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model_cards", "results", "ablation", "v8")
WORKLOADS = ("digits-mlp", "mnist-cnn", "charlm", "finetune", "lora", "bilstm")
# the suite's best-tuned AdamW (model_cards/results/suite/results.json, 3 seeds)
ADAMW = {"digits-mlp": "97.31", "mnist-cnn": "96.27", "charlm": "2.976", "finetune": "79.03", "lora": "76.18",
         "bilstm": "62.15"}
VARIANTS = (
    ("base", "v7b", "the second generation (the default until v8)"),
    ("track", "v8a", "tracking: d steered to the greedy step the secant measured, against the steps it read; "
                     "growth capped at 2x per 1/(1-beta1) steps"),
    ("track4", "v8b", "v8a capped at 4x, and the Trainer's max_steps handed over (decay over the last 20%)"),
    ("ramp4", "v8c", "v8b with a doubling ramp during warmup while the reading is linear (plain path only)"),
    ("ed", "v8d", "v7b with the horizon's decay to d * S/(S+N) (earned decay), fed path only"),
    ("cap2", "v8e", "v7b with its growth capped at 2x per 1/(1-beta1) steps, horizon handed over (plain path)"),
    ("cap4", "v8f-h", "v7b capped at 4x, horizon handed over (plain path)"),
    ("cap4nh", "v8f", "v7b capped at 4x, no horizon: the new default"),
    ("ceilref", "v9a", "not adopted: v8f with the progress ceiling counted from max(d0, the plain start: 1% of the "
                       "weights' RMS), fed path only (`ceilref/variant.patch` on 938ae68)"),
)


def _value(run: dict) -> float:
    """A run's metric: bits per character (charlm) or accuracy %."""
    e = run["eval"]
    return e["eval_loss"] / math.log(2.0) if run["task"] == "charlm" else 100 * e["eval_accuracy"]


def _lrs(run: dict) -> str:
    lr = run["effective_lr"]
    return f"{lr['start']:.1e} → {lr['max']:.1e} → {lr['end']:.1e}"


def _cell(run: dict) -> str:
    value = f"{_value(run):.3f}" if run["task"] == "charlm" else f"{_value(run):.2f}"
    return f"{value} ({_lrs(run)})"


def _rows(root: str, variants, workloads, cell) -> list[str]:
    """A table row per variant and path it ran: `cell(workload, row, run)` for each workload's seed-0 run."""
    lines = []
    for directory, name, change in variants:
        runs = [json.loads(line) for line in open(os.path.join(root, directory, "results.jsonl"), encoding="utf-8")]
        for opt, path in (("adaopt", "fed"), ("adaopt-plain", "plain")):
            by = {r["workload"]: r for r in runs if r["optimizer"] == opt and r["seed"] == 0}
            if by:
                lines.append(f"| {name} | {change} | {path} | " + " | ".join(
                    cell(w, opt, by[w]) if w in by else "–" for w in workloads) + " |")
    return lines


def render() -> str:
    lines = ["# Ablation v8: the third generation's probes (issue 19)", "",
             "Seed 0, lr 1e-3, both paths (fed: AdaOptCallback gives AdaOpt the loss; plain: no loss reaches it). "
             "Each cell: accuracy % (bpc for charlm), then the effective lr at the start, its maximum and at the end. "
             "The last row is the suite's best-tuned AdamW. Rendered by `training_scripts/ablation_v8_table.py` from the "
             "`results.jsonl` of each directory here. Torch's goes-right-direction problem and the small MLP of "
             "`tests/test_plain_path.py`: v7b climbs in 28 of 32 variants and the MLP ends at chance (1.10); v8a-v8f "
             "climb in none, the MLP ends at 0.09/0.14 (v8a), 0.26/0.29 (v8f), against AdamW(1e-3)'s 0.34.", "",
             "| variant | what changed | path | " + " | ".join(WORKLOADS) + " |",
             "|---|---|---|" + "---|" * len(WORKLOADS)]
    lines += _rows(HERE, VARIANTS, WORKLOADS, lambda w, opt, run: _cell(run))
    lines.append("| AdamW | best-tuned (suite) | – | " + " | ".join(ADAMW[w] for w in WORKLOADS) + " |")
    lines += ["", secant_bias_paragraph(), *horizon_table(), *v9_table()]
    return "\n".join(lines) + "\n"


# The v9 probes (this directory's v9/<dir>/results.jsonl): suite v2's short workloads, seed 0, lr 1e-1, each run's
# suite_config.json command with its --optimizer_kwargs. The paths a probe ran are the rows it has.
V9_WORKLOADS = ("digits-mlp", "mnist-cnn", "charlm", "charlm-noclip", "finetune", "lora", "finetune-discr",
                "finetune-frozen", "bilstm")
V9_VARIANTS = (
    ("tg", "v9b", "v8f with trusted growth (grow at the full rate on a reading r >= 1/2, whatever the signal share)"),
    ("grp", "v9c", "v8f with each tensor's signal share and gradient norm counted in proportion to its group's lr "
                   "ratio (a frozen body counts for nothing)"),
    ("cy", "v9d", "v9c with the progress ceiling yielding to a linear reading (r >= 1/2), fed path only"),
    ("cy2", "v9e", "v9d growing past the ceiling at most 2x per 1/(1-beta1) steps (`v9/variants.patch`)"),
    ("pb", "v9f", "v9c, plain path: the step grows only on a linear reading, as there is no loss to earn growth "
                  "with (`v9/variants.patch`)"),
    ("t0", "v9g", "v9d with the secant's target 0 (the greedy step) instead of -1 at full signal"),
    ("hz-40", "v9d-h", "v9d given the horizon (total_steps 40: the last 8 steps decay), fine-tunes only"),
    ("env-bilstm", "v8f-env", "v8f (the code of the suite's cells) rerun in this session's environment: the BiLSTM "
                              "does not reproduce (its vocabulary is trained by `tokenizers`)"),
    ("pp", "v10", "v9d, plain path: Polyak's start for an assumed loss of 1 and the progress ceiling at that start, "
                  "yielding to a linear reading: the fed path's controller without a fall of the loss (the default)"),
)


def v9_table() -> list[str]:
    """The v9 probes, each cell the seed-0 value, its change from the suite's seed-0 run of the same row, and the
    effective lr at the start, its maximum and at the end; the suite's seed 0 and best-tuned AdamW below."""
    root = os.path.join(HERE, "v9")
    if not os.path.isdir(root):
        return []
    result = _suite_v8f()
    suite = result["workloads"]

    def seed0(name: str, row: str) -> float:
        cell = next(c for c in suite[name]["cells"] if c["optimizer"] == row and c["lr"] == 0.1)
        return cell["values"][cell["seeds"].index(0)]

    def fmt(name: str, value: float) -> str:
        return f"{value:.3f}" if suite[name]["metric"] == "bpc" else f"{value:.2f}"

    lines = ["", "**The v9 probes** (suite v2's short workloads, seed 0, lr 1e-1, fed and plain as above; `v9/<dir>/"
             "results.jsonl`, the command in each `suite_config.json`): the value, its change from the suite's seed-0 "
             "run of the same row at v8f (`suite_v8f.json`; bpc: lower is better), and the effective lr at the start, "
             "its maximum and at the end.", "",
             "| variant | what changed | path | " + " | ".join(V9_WORKLOADS) + " |",
             "|---|---|---|" + "---|" * len(V9_WORKLOADS)]
    def cell(w: str, opt: str, run: dict) -> str:
        value, digits = _value(run), 3 if suite[w]["metric"] == "bpc" else 2
        return f"{fmt(w, value)} ({value - seed0(w, opt):+.{digits}f}; {_lrs(run)})"

    lines += _rows(root, V9_VARIANTS, V9_WORKLOADS, cell)
    for opt, path in (("adaopt", "fed"), ("adaopt-plain", "plain")):
        lines.append(f"| v8f | the suite's seed 0 (the default until v9) | {path} | "
                     + " | ".join(fmt(w, seed0(w, opt)) for w in V9_WORKLOADS) + " |")
    lines.append("| AdamW | best-tuned (suite, 3 seeds) | – | "
                 + " | ".join(fmt(w, suite[w]["best_adamw"]["mean"]) for w in V9_WORKLOADS) + " |")
    return lines


def _suite_v8f() -> dict:
    """Suite v2's AdaOpt cells and best-tuned AdamW at v8f (suite_v8f.json, kept from the suite's results.json as
    committed at 2282aa5): what the probes here are read against, after the suite moved on to later versions."""
    with open(os.path.join(HERE, "suite_v8f.json"), encoding="utf-8") as f:
        return json.load(f)


def horizon_table() -> list[str]:
    """Both AdaOpt rows given the horizon (total_steps = the workload's steps) on suite v2's short workloads, 3 seeds,
    beside the same rows without it (the suite's cells at v8f, `_suite_v8f`)."""
    path = os.path.join(HERE, "horizon", "results.jsonl")
    if not os.path.isfile(path):
        return []
    runs = [json.loads(line) for line in open(path, encoding="utf-8")]
    result = _suite_v8f()
    suite = {name: result["workloads"][name] for name in result["workload_order"]}
    lines = ["", "**The horizon on the short workloads** (suite v2's, seeds 0-2, lr 1e-1; `horizon/results.jsonl`, each "
             "group's command in `horizon/commands.txt`): each AdaOpt row given `total_steps` = the workload's steps "
             "(the last 20% decay), against the same row without it (the suite's cells at v8f, `suite_v8f.json`). Mean over seeds, the change in "
             "brackets; accuracy %, and bpc for the char-LMs (lower is better).", "",
             "| workload | fed, no horizon | fed, total_steps | plain, no horizon | plain, total_steps |",
             "|---|---|---|---|---|"]
    for name, w in suite.items():
        mine = [r for r in runs if r["workload"] == name]
        if not mine:
            continue
        bpc = w["metric"] == "bpc"
        cells = []
        for row in ("adaopt", "adaopt-plain"):
            base = next(c for c in w["cells"] if c["optimizer"] == row and c["lr"] == 0.1)
            values = [_value(r) for r in mine if r["optimizer"] == row]
            mean = sum(values) / len(values)
            digits = 3 if bpc else 2
            cells += [f"{base['mean']:.{digits}f}", f"{mean:.{digits}f} ({mean - base['mean']:+.{digits}f})"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def secant_bias_paragraph() -> str:
    """The secant-bias probe (`training_scripts/probe_secant_bias.py`, secant_bias.json) in one paragraph."""
    with open(os.path.join(HERE, "secant_bias.json"), encoding="utf-8") as f:
        rows = json.load(f)["rows"]
    by_batch: dict[int, list[dict]] = {}
    for r in rows:
        by_batch.setdefault(r["batch"], []).append(r)
    full = max(by_batch)
    parts = [f"{min(x['r_median'] for x in rs):.3f}-{max(x['r_median'] for x in rs):.3f} "
             + (f"with the full batch ({b:,})" if b == full else f"at batch {b}") for b, rs in by_batch.items()]
    lrs = [r["effective_lr"] for r in rows]
    return ("**What the secant reads where the loss is linear** (`training_scripts/probe_secant_bias.py`, "
            "`secant_bias.json`: a digits MLP, AdaOpt with its step held at effective lrs "
            f"{min(lrs):.0e} to {max(lrs):.0e}, the median over steps 21-60): r = " + ", ".join(parts) +
            ". Minibatch noise alone pulls the reading below 1, by the same amount at every step "
            "size, and still leaves it above the 1/2 that v8c's ramp grows on: the ramp's not triggering had another "
            "cause.")


def main(argv: list[str]) -> int:
    return write_or_check(os.path.join(HERE, "README.md"), render(), argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
