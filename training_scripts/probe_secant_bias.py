"""Probe: what AdaOpt's secant ratio r = b / a reads when the loss is linear along the step, with and without
minibatch noise (the v8 record, model_cards/results/ablation/v8/secant_bias.json).

    python training_scripts/probe_secant_bias.py     # about 1 min on one CPU thread; rewrites the JSON

A 64-128-10 MLP on scikit-learn's digits, AdaOpt with its step held (adapt_rate 0, no Polyak start, no ceiling) at
tiny fixed sizes, where the loss is linear along the step and a noise-free reading is r = 1. The median of r over
steps 21-60 (the secant EMAs' ratio, as the controller reads it) per batch size and step size: how far minibatch
noise alone pulls the reading below 1, which a ramp or tracking rule that grows "while r >= 1/2" has to clear.
"""

from __future__ import annotations

import json
import os
import statistics

import torch

from hf_adaopt.core._variants import build

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model_cards", "results", "ablation", "v8",
                   "secant_bias.json")
BATCHES = (None, 256, 32)  # None: the full batch (1,797 images)
SCALES = (1e-5, 1e-4, 1e-3)  # the start as a fraction of the weights' RMS (effective lr ~6e-7 ... 6e-5)
STEPS, SKIP = 60, 20


def probe(batch: int | None, scale: float, x: torch.Tensor, y: torch.Tensor) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = build(model.parameters(), lr=1e-3, adapt_rate=0.0, initial_scale=scale, initial_decrease=None,
                progress_power=None, warmup_steps=0)
    generator = torch.Generator().manual_seed(1)
    ratios = []
    for step in range(STEPS):
        idx = torch.arange(len(x)) if batch is None else torch.randint(0, len(x), (batch,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        group = opt.param_groups[0]
        if step >= SKIP and group["secant_before"] > 0.0:
            ratios.append(group["secant_after"] / group["secant_before"])
    return {"batch": batch or len(x), "effective_lr": group["effective_lr"], "r_median": statistics.median(ratios),
            "r_min": min(ratios), "r_max": max(ratios)}


def main() -> None:
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    images, labels = load_digits(return_X_y=True)
    x, y = torch.tensor(images / 16.0, dtype=torch.float32), torch.tensor(labels)
    rows = [probe(b, s, x, y) for b in BATCHES for s in SCALES]
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"command": "python training_scripts/probe_secant_bias.py", "rows": rows}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
