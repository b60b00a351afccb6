"""Render model_cards/results/ablation/v11/README.md from the v11 probe runs committed beside it.

    python training_scripts/ablation_v11_table.py            # rewrite the README
    python training_scripts/ablation_v11_table.py --check    # exit 1 if it differs from a fresh render

v11 reads Polyak's start from the gradient before clipping, and earns the horizon's decay. Each directory holds a
probe's runs (results.jsonl, stripped to what this table reads) and its commands (suite_config.json): suite v2's
workloads at lr 1e-1, both AdaOpt rows, seeds 0-2 (charlm-long: 0-1), each given the horizon as its
``--optimizer_kwargs`` say.
"""

from __future__ import annotations

import json
import math
import os
import sys

from hf_adaopt.lab.render import write_or_check

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model_cards", "results")
HERE = os.path.join(ROOT, "ablation", "v11")
WORKLOADS = ("digits-mlp", "mnist-cnn", "charlm", "charlm-noclip", "charlm-long", "finetune", "lora",
             "finetune-discr", "finetune-frozen", "bilstm")
# (directory, what its runs were given): the first is what the others are read against
RUNS = (
    ("nohz", "no horizon (`total_steps` beyond the run)"),
    ("wsd", "the horizon, the planned decay (linear to 0 over the last 20%, as before v11)"),
    ("earned", "the horizon, the earned decay (v11's default)"),
)
PATHS = (("adaopt", "fed"), ("adaopt-plain", "plain"))


def _value(run: dict) -> float:
    """A run's metric: bits per character (charlm) or accuracy %."""
    e = run["eval"]
    return e["eval_loss"] / math.log(2.0) if run["task"] == "charlm" else 100 * e["eval_accuracy"]


def _load(directory: str) -> list[dict]:
    with open(os.path.join(HERE, directory, "results.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _mean(runs: list[dict], workload: str, row: str) -> tuple[float, list[dict]] | None:
    mine = [r for r in runs if r["workload"] == workload and r["optimizer"] == row]
    return (sum(_value(r) for r in mine) / len(mine), mine) if mine else None


def _best_adamw() -> dict[str, dict]:
    with open(os.path.join(ROOT, "suite", "results.json"), encoding="utf-8") as f:
        return {name: w["best_adamw"] for name, w in json.load(f)["workloads"].items()}


def decay_table() -> list[str]:
    runs = {d: _load(d) for d, _ in RUNS}
    best = _best_adamw()
    head = " | ".join(f"{path}: {d}" for _, path in PATHS for d, _ in RUNS)
    lines = [f"| workload | best-tuned AdamW | {head} | earned decay's step at 80% → end (fed; plain) |",
             "|---|---|" + "---|" * (len(PATHS) * len(RUNS)) + "---|"]
    for w in WORKLOADS:
        bpc = w.startswith("charlm")
        digits = 3 if bpc else 2
        cells = []
        for row, _ in PATHS:
            base = _mean(runs["nohz"], w, row)
            for d, _ in RUNS:
                got = _mean(runs[d], w, row)
                if got is None:
                    cells.append("–")
                elif d == "nohz":
                    cells.append(f"{got[0]:.{digits}f}")
                else:
                    change = (base[0] - got[0]) / base[0] * 100 if bpc else got[0] - base[0]
                    cells.append(f"{got[0]:.{digits}f} ({change:+.2f}{'%' if bpc else ''})")
        steps = []
        for row, _ in PATHS:
            mine = _mean(runs["earned"], w, row)[1]
            steps.append(", ".join(f"{r['effective_lr']['at_80']:.1e} → {r['effective_lr']['end']:.1e}" for r in mine))
        ref = best[w]
        lines.append(f"| {w} ({'bpc' if bpc else 'acc %'}) | {ref['mean']:.{digits}f} at {ref['lr']:g} | "
                     + " | ".join(cells) + f" | {'; '.join(steps)} |")
    return lines


def clipping_table() -> list[str]:
    with open(os.path.join(HERE, "first_gradient_l1.json"), encoding="utf-8") as f:
        readings = json.load(f)["workloads"]
    lines = ["| workload | sum abs(g), before clipping | after | ratio |", "|---|---|---|---|"]
    for w in WORKLOADS:
        if w not in readings:
            continue
        before, after = readings[w]["before_clipping"], readings[w]["after_clipping"]
        before, after = (before, after) if isinstance(before, list) else ([before], [after])
        lines.append(f"| {w} | {', '.join(f'{b:.1f}' for b in before)} | {', '.join(f'{a:.1f}' for a in after)} | "
                     + ", ".join(f"{b / a:.2f}x" for b, a in zip(before, after)) + " |")
    return lines


def secant_table() -> list[str]:
    with open(os.path.join(HERE, "secant_noise.json"), encoding="utf-8") as f:
        readings = json.load(f)["readings"]
    lines = ["| fine-tune / path | r (median) | signal share | r of a linear loss at that noise | r over it |",
             "|---|---|---|---|---|"]
    for name, r in readings.items():
        lines.append(f"| {name} | {r['r_median']:.2f} | {r['signal_share_median']:.2f} | {r['linear_r_median']:.2f} | "
                     f"{r['corrected_median']:.2f} |")
    return lines


def flat_ceiling_row() -> list[str]:
    """v12a, not adopted: the fed path's progress ceiling held at its start (as the plain path's is), against v11's
    seed-0 runs (`earned/`)."""
    probe, base = _load("flat-ceiling"), _load("earned")
    lines = ["| run | " + " | ".join(WORKLOADS[i] for i in range(len(WORKLOADS)) if WORKLOADS[i] != "charlm-long")
             + " |", "|---|" + "---|" * (len(WORKLOADS) - 1)]
    for name, runs in (("v12a (fed)", probe), ("v11 (fed)", base)):
        by = {r["workload"]: r for r in runs if r["optimizer"] == "adaopt" and r["seed"] == 0}
        lines.append(f"| {name} | " + " | ".join(
            (f"{_value(by[w]):.3f}" if w.startswith("charlm") else f"{_value(by[w]):.2f}")
            + f" ({by[w]['effective_lr']['start']:.1e} → {by[w]['effective_lr']['max']:.1e})"
            for w in WORKLOADS if w != "charlm-long") + " |")
    return lines


def environment_note() -> str:
    """The suite's v10 cells of the CNN came from another session's environment: v10's code, rerun here on seed 0
    (`env-mnist/`), gives what v11 gives here (`nohz/`, where the CNN's first gradient is not clipped)."""
    v10, v11 = _load("env-mnist"), _load("nohz")
    with open(os.path.join(HERE, "suite_v10.json"), encoding="utf-8") as f:
        suite = {c["optimizer"]: c for c in json.load(f)["workloads"]["mnist-cnn"]["cells"] if c["lr"] == 0.1}

    def seed0(runs: list[dict], row: str) -> str:
        return f"{next(_value(r) for r in runs if r['workload'] == 'mnist-cnn' and r['optimizer'] == row and r['seed'] == 0):.2f}"

    def cell(row: str) -> str:
        c = suite[row]
        return f"{c['values'][c['seeds'].index(0)]:.2f} (mean {c['mean']:.2f})"

    return ("The CNN and the BiLSTM do not reproduce the suite's v10 cells (`suite_v10.json`) in this environment "
            f"(the BiLSTM: `../v8/v9/env-bilstm`). The CNN, seed 0: the suite's v10 cells fed {cell('adaopt')}, plain "
            f"{cell('adaopt-plain')}; v10's code (977a8fe) rerun here (`env-mnist/`) fed {seed0(v10, 'adaopt')}, plain "
            f"{seed0(v10, 'adaopt-plain')}; v11 without a horizon fed {seed0(v11, 'adaopt')}, plain "
            f"{seed0(v11, 'adaopt-plain')}. So the CNN's move from the suite's v10 cells to v11's is the environment's, "
            "not the code's: its first gradient is not clipped, and there v11's start is v10's bit for bit.")


def ci_lm_table() -> list[str]:
    """The CI's small LM over seeds (ci_lm_seeds.json, training_scripts/probe_ci_lm.py)."""
    with open(os.path.join(HERE, "ci_lm_seeds.json"), encoding="utf-8") as f:
        runs = json.load(f)["runs"]
    seeds = sorted({r["seed"] for r in runs})
    rows = [("adaopt", None, "AdaOpt (v11: the start read before clipping)"),
            ("adaopt-after-clipping", None, "AdaOpt, the start read after clipping (as before v11)"),
            *(("adamw", lr, f"AdamW {lr:g}") for lr in (1e-3, 3e-3, 1e-2))]
    lines = ["| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |", "|---|" + "---|" * (len(seeds) + 1)]
    for name, lr, label in rows:
        mine = sorted((r for r in runs if r["optimizer"] == name and r["lr"] == lr), key=lambda r: r["seed"])
        cells = [f"{r['bpc']:.3f}" + (f" ({r['effective_lr']['1']:.1e} → {r['effective_lr']['40']:.1e} → "
                                      f"{r['effective_lr']['150']:.1e})" if "effective_lr" in r else "") for r in mine]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {sum(r['bpc'] for r in mine) / len(mine):.3f} |")
    return lines


def render() -> str:
    what = "; ".join(f"`{d}/`: {text}" for d, text in RUNS)
    lines = [
        "# Ablation v11: the start read before clipping, and the horizon's decay earned (issue 19)", "",
        "Rendered by `training_scripts/ablation_v11_table.py` from the runs here (each directory's `results.jsonl`; "
        "its commands, commit and environment in `suite_config.json`).", "",
        "## Polyak's start, before and after clipping", "",
        "Which of suite v2's workloads the Trainer's clipping (max_grad_norm 1.0 where the workload keeps it) rescales "
        "at the first step (`first_gradient_l1.json`, a probe's hook, seed 0): where it does, a start read after "
        "clipping is that ratio larger. v11 reads the gradient before clipping "
        "(`hf_adaopt/core/backward_reading.py`), so the ratio no longer moves it.", "",
        *clipping_table(), "",
        "## The decay at the end", "",
        f"Suite v2's workloads at lr 1e-1, both paths, mean over seeds 0-2 (charlm-long: 0-1). {what}. In brackets "
        "the change from no horizon (points; for bpc, % with positive better). The last column: the step (effective "
        "lr) at 80% of the run and at its end under the earned decay, per seed: where they are the same, the step was "
        "still growing and no decay began.", "",
        *decay_table(), "", environment_note(), "",
        "## The secant's readings on the 40-step fine-tunes (not pursued)", "",
        "Could a reading corrected for minibatch noise tell a short step from a curved landscape? Noise pulls r = b/a "
        "towards 0 even on a linear loss; at the measured signal share a linear loss would read about 0.5-0.6 "
        "(`secant_noise.json`, seed 0, steps 13-40, v10). Over that, the full fine-tune (whose step must not grow: v9a) "
        "reads 0.66-0.69 and the frozen head (whose step is 6x short) 0.62-0.63: the correction does not tell them "
        "apart, so no threshold on it was tried.", "",
        *secant_table(), "",
        "## The fed path's ceiling held at its start (v12a, not adopted)", "",
        "One controller on both paths could also mean the fed path's progress ceiling staying at its start, as the "
        "plain path's does, so that its step grows past Polyak's start only on linear readings "
        "(`flat-ceiling/`: `progress_power` 1e-6, seed 0, fed, with the earned decay; beside it v11's seed 0). Each "
        "cell: the value, then the step at the start and its maximum. LoRA gained 2.3 points and the BiLSTM 2.7, but "
        "the CNN's step stayed 6x smaller (-1.7 points), the full fine-tune lost 1.25 and the discriminative one 1.0: "
        "the fall of the loss is what earns those steps.", "",
        *flat_ceiling_row(), "",
        "## The CI's small LM (a cost of the start read before clipping)", "",
        "`tests/test_lr_robustness.py`'s LM (GPT-2, 2 layers, d_model 64, 150 steps, clipping 1.0, fed, no horizon) "
        "over seeds 0-3 (`ci_lm_seeds.json`, `training_scripts/probe_ci_lm.py`): bpc, and AdaOpt's step at steps 1, 40 "
        "and 150. The LM has two outcomes: a step that settles at about 7e-3 ends near 3.8 bpc (AdamW at 3e-3 and "
        "1e-2 end there too on some seeds). From the smaller, clipping-invariant start AdaOpt's growth runs longer "
        "and overshoots to that step on 2 seeds of 4; from the start read after clipping, on 1. The test's 2% claim "
        "(seed 0) is a strict xfail since v11; the suite's LMs, longer and wider, lost nothing (the clipped charlm "
        "2.951 -> 2.949 without a horizon).", "",
        *ci_lm_table(),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    return write_or_check(os.path.join(HERE, "README.md"), render(), argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
