"""The product claim on two kinds of small real work: AdaOpt's initial lr does not matter, Adam's does.

1. scikit-learn's digits (1,797 8x8 images, shipped with the package), the 128-128-64 ReLU MLP, batch 32,
   10 epochs. AdaOpt from initial lr 1e-5 (where Adam is far off) must end within 2 points of Adam at its best lr
   of a 3-point grid, averaged over 2 seeds.
2. A tiny byte-level transformer LM (GPT-2 architecture, 2 layers, d_model 64) on CPython's reference prose
   (pydoc_data, ships with Python), 150 steps with gradient clipping: AdaOpt's initial lr must not change the
   result at all, and it should end within 2% of the bits per character of AdamW at its best of 1e-3 / 3e-3 /
   1e-2 (a strict xfail since v11, whose start is clipping-invariant: 3.79 against AdamW's 3.36 at 3e-3; read
   after clipping, 3.27); it must end below AdamW's worst of the three (before Polyak's start and the progress
   ceiling the step ran away after warmup and ended at 4.75).
The full measurement is `hf-adaopt suite` (README); these are its CI-sized guards.
"""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from hf_adaopt import AdaOpt

EPOCHS = 10
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1437]], y[perm[:1437]], x[perm[1437:]], y[perm[1437:]]


SEEDS = (0, 1)


def _final_accuracy(make_optimizer, digits):
    """Mean over SEEDS: one seed's accuracy on 360 eval images moves by about a point."""
    return sum(_one_run(make_optimizer, digits, seed) for seed in SEEDS) / len(SEEDS)


def _one_run(make_optimizer, digits, seed):
    x_train, y_train, x_eval, y_eval = digits
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = make_optimizer(model.parameters())
    for _ in range(EPOCHS):
        order = torch.randperm(len(x_train))
        for i in range(0, len(order), 32):
            idx = order[i:i + 32]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            if isinstance(opt, AdaOpt):
                opt.set_loss(loss.detach())
            opt.step()
    with torch.no_grad():
        return (model(x_eval).argmax(1) == y_eval).float().mean().item()


@pytest.fixture(scope="module")
def best_adam(digits):
    return max(_final_accuracy(lambda p, lr=lr: torch.optim.Adam(p, lr=lr), digits) for lr in (1e-4, 1e-3, 1e-2))


def test_adam_is_sensitive_to_its_lr_here(digits, best_adam):
    """The task discriminates: Adam at 1e-5 is far from its best (so the AdaOpt test below has teeth)."""
    assert _final_accuracy(lambda p: torch.optim.Adam(p, lr=1e-5), digits) < best_adam - 0.3


def test_adaopt_matches_tuned_adam_from_an_initial_lr_where_adam_fails(digits, best_adam):
    """From lr 1e-5, where Adam is far from its best (above). One lr: AdaOpt's runs from any lr are bit-identical
    (held on the language model below), so more lrs would rerun this one."""
    acc = _final_accuracy(lambda p: AdaOpt(p, lr=1e-5), digits)
    assert acc >= best_adam - TOLERANCE, (acc, best_adam)


# ---------------------------------------------------------------------------------------------- tiny LM

LM_BLOCK, LM_BATCH, LM_STEPS = 32, 16, 150
LM_TOLERANCE = 0.02  # relative bits per character


def prose_split():
    """CPython's prose as bytes: the first 90% to train on, the rest to evaluate (training_scripts/probe_ci_lm.py
    runs the same LM over seeds)."""
    import numpy as np

    from hf_adaopt.lab.tasks.offline_data import pydoc_text

    data = torch.tensor(np.frombuffer(pydoc_text().encode(), dtype=np.uint8).astype(np.int64))
    cut = int(len(data) * 0.9)
    return data[:cut], data[cut:]


@pytest.fixture(scope="module")
def prose():
    return prose_split()


def _lm_batches(src, n, seed):
    idx = torch.randint(0, len(src) - LM_BLOCK - 1, (n, LM_BATCH), generator=torch.Generator().manual_seed(seed))
    return [torch.stack([src[i:i + LM_BLOCK] for i in row]) for row in idx]


def _lm_bits_per_char(make_optimizer, prose, seed=0):
    import math

    from transformers import GPT2Config, GPT2LMHeadModel

    train, val = prose
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=256, n_positions=LM_BLOCK, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    opt = make_optimizer(model.parameters())
    for xb in _lm_batches(train, LM_STEPS, seed):
        loss = model(input_ids=xb, labels=xb).loss
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the Trainer's default max_grad_norm
        if isinstance(opt, AdaOpt):
            opt.set_loss(loss.detach())
        opt.step()
    with torch.no_grad():
        losses = [model(input_ids=x, labels=x).loss.item() for x in _lm_batches(val, 8, 123)]
    return sum(losses) / len(losses) / math.log(2.0)


@pytest.fixture(scope="module")
def adamw_lm(prose):
    return {lr: _lm_bits_per_char(lambda p, lr=lr: torch.optim.AdamW(p, lr=lr), prose) for lr in (1e-3, 3e-3, 1e-2)}


def test_adamw_is_sensitive_to_its_lr_on_the_language_model(adamw_lm):
    assert max(adamw_lm.values()) > 1.05 * min(adamw_lm.values()), adamw_lm


@pytest.fixture(scope="module")
def adaopt_lm(prose):
    return {lr: _lm_bits_per_char(lambda p, lr=lr: AdaOpt(p, lr=lr), prose) for lr in (1e-5, 1e-1)}


def test_adaopt_ends_identically_from_any_initial_lr_on_the_language_model(adaopt_lm):
    # the lr sets ratios and a multiplier only: the step starts at Polyak's step from the first loss
    assert adaopt_lm[1e-5] == adaopt_lm[1e-1]


@pytest.mark.xfail(strict=True, reason=(
    "known gap (v11): on this LM AdaOpt's step grows to ~7e-3, 2x AdamW's best, and settles there in 2 of 4 seeds "
    "(seed 0: 3.79 bpc against AdamW's 3.36); read after clipping, its start was 3.5x larger, its growth shorter, and "
    "1 of 4 seeds settled there (model_cards/results/ablation/v11/ci_lm_seeds.json, training_scripts/probe_ci_lm.py)"))
def test_adaopt_matches_tuned_adamw_on_the_language_model(adaopt_lm, adamw_lm):
    assert adaopt_lm[1e-5] <= (1.0 + LM_TOLERANCE) * min(adamw_lm.values()), (adaopt_lm, adamw_lm)


def test_adaopt_does_not_run_away_on_the_language_model(adaopt_lm, adamw_lm):
    # what the known gap above may not become: the step running away after warmup (4.75 bpc before Polyak's start)
    assert adaopt_lm[1e-5] < max(adamw_lm.values()), (adaopt_lm, adamw_lm)
