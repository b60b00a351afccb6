"""The CI's small LM (tests/test_lr_robustness.py) over seeds: where AdaOpt's step settles, and how it ends.

    python training_scripts/probe_ci_lm.py      # writes model_cards/results/ablation/v11/ci_lm_seeds.json

The LM of the test (GPT-2, 2 layers, d_model 64, byte-level on CPython's prose, batch 16 x 32, 150 steps, clipping
1.0, AdaOpt fed the loss, no horizon), seeds 0-3: AdaOpt as it is (the start read before clipping, v11), AdaOpt with
the start read after clipping (as before v11), and AdamW at 1e-3, 3e-3 and 1e-2. Each run: the validation bits per
character and AdaOpt's effective lr at steps 1, 40 and 150.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model_cards", "results", "ablation", "v11",
                   "ci_lm_seeds.json")
BLOCK, BATCH, STEPS, SEEDS = 32, 16, 150, (0, 1, 2, 3)


def _data():
    from hf_adaopt.lab.tasks.offline_data import pydoc_text

    data = torch.tensor(np.frombuffer(pydoc_text().encode(), dtype=np.uint8).astype(np.int64))
    cut = int(len(data) * 0.9)
    return data[:cut], data[cut:]


def _batches(src, n, seed):
    idx = torch.randint(0, len(src) - BLOCK - 1, (n, BATCH), generator=torch.Generator().manual_seed(seed))
    return [torch.stack([src[i:i + BLOCK] for i in row]) for row in idx]


def run(job: tuple[str, float | None, int]) -> dict:
    """(optimizer, lr, seed): the test's loop."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_adaopt import AdaOpt

    name, lr, seed = job
    torch.set_num_threads(1)
    train, val = _data()
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=BLOCK, n_embd=64, n_layer=2, n_head=4,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                       eos_token_id=0))
    if name == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
    else:
        opt = AdaOpt(model.parameters())
        if name == "adaopt-after-clipping":  # the start read from the clipped gradient, as before v11
            opt._backward_reading.stop()
            opt._backward_reading = None
    lrs = []
    for xb in _batches(train, STEPS, seed):
        loss = model(input_ids=xb, labels=xb).loss
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if name != "adamw":
            opt.set_loss(loss.detach())
        opt.step()
        if name != "adamw":
            lrs.append(opt.param_groups[0]["effective_lr"])
    with torch.no_grad():
        losses = [model(input_ids=x, labels=x).loss.item() for x in _batches(val, 8, 123)]
    out = {"optimizer": name, "lr": lr, "seed": seed, "bpc": sum(losses) / len(losses) / math.log(2.0)}
    if lrs:
        out["effective_lr"] = {"1": lrs[0], "40": lrs[39], "150": lrs[-1]}
    return out


def main() -> None:
    jobs = [(name, None, s) for s in SEEDS for name in ("adaopt", "adaopt-after-clipping")]
    jobs += [("adamw", lr, s) for s in SEEDS for lr in (1e-3, 3e-3, 1e-2)]
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        runs = list(pool.map(run, jobs))
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"what": __doc__.strip().splitlines()[0], "steps": STEPS, "runs": runs}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
