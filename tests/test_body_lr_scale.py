"""`hf-adaopt train --body_lr_scale`: discriminative lrs for a fine-tune, the pretrained body at lr x factor and the
new head at lr, as two param groups (each split into decay / no-decay); a body at 0 does not move."""

from __future__ import annotations

import math

import pytest
import torch

from hf_adaopt.lab import run as run_mod

HEAD = ("classifier",)


def tiny_bert():
    """A 1-layer BERT classifier from a config (no download), the textcls model's shape: body + `classifier`."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=3)
    return BertForSequenceClassification(config)


def test_the_head_groups_come_first_at_the_lr_and_the_body_groups_at_lr_times_the_factor():
    model = tiny_bert()
    opt = run_mod.OptimizerFactory("adamw", head=HEAD, body_lr_scale=0.01)(model, lr=1e-3, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [([names[id(p)] for p in g["params"]], g["lr"], g["weight_decay"]) for g in opt.param_groups]
    (head_decay, lr0, wd0), (head_bias, lr1, wd1), *body = groups
    assert head_decay == ["classifier.weight"] and head_bias == ["classifier.bias"]
    assert lr0 == lr1 == 1e-3 and (wd0, wd1) == (0.1, 0.0)
    assert len(body) == 2 and all(math.isclose(lr, 1e-5) for _, lr, _ in body)
    (decayed, _, wd2), (not_decayed, _, wd3) = body
    assert (wd2, wd3) == (0.1, 0.0)
    assert "bert.encoder.layer.0.attention.self.query.weight" in decayed
    assert "bert.embeddings.LayerNorm.weight" in not_decayed and "bert.pooler.dense.bias" in not_decayed
    every = [n for names_, _, _ in groups for n in names_]
    assert sorted(every) == sorted(n for n, _ in model.named_parameters())  # each parameter once


def test_without_the_option_every_weight_has_the_one_lr():
    model = tiny_bert()
    opt = run_mod.OptimizerFactory("adamw")(model, lr=1e-3, weight_decay=0.1)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]


@pytest.mark.parametrize("optimizer, feed_loss", [("adamw", False), ("adaopt", True), ("adaopt-plain", False)])
def test_a_body_at_lr_zero_does_not_move_while_the_head_trains(optimizer, feed_loss):
    model = tiny_bert()
    body = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("classifier.")}
    head = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("classifier.")}
    opt = run_mod.OptimizerFactory(optimizer, head=HEAD, body_lr_scale=0.0)(model, lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        out = model(input_ids=torch.randint(0, 40, (4, 8), generator=gen), labels=torch.randint(0, 3, (4,), generator=gen))
        out.loss.backward()
        if feed_loss:
            opt.set_loss(out.loss.detach())
        opt.step()
        opt.zero_grad()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n].detach(), p) for n, p in body.items())
    assert any(not torch.equal(after[n].detach(), p) for n, p in head.items())


@pytest.mark.parametrize("args, message", [
    (["--task", "digits", "--body_lr_scale", "0.1"], "--body_lr_scale needs a task with a new head"),
    (["--task", "textcls", "--body_lr_scale", "-1"], "--body_lr_scale must be a finite number >= 0"),
    (["--task", "textcls", "--body_lr_scale", "nan"], "--body_lr_scale must be a finite number >= 0"),
])
def test_bad_values_are_refused_before_any_work(args, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        run_mod.parse_args([*args, "--output_dir", str(tmp_path / "run")])


def test_a_model_without_the_head_module_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no trainable parameter in a module named classifier"):
        run_mod.OptimizerFactory("adamw", head=HEAD, body_lr_scale=0.5)(model, lr=1e-3)
