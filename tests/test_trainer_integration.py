"""AdaOpt + AdaOptCallback inside a real `transformers.Trainer` (CPU, tiny model)."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch
from conftest import TinyClassifier, TinyDataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import Trainer, TrainingArguments

from hf_adaopt import AdaOpt, AdaOptCallback
from hf_adaopt.core.callback import DIAGNOSTIC_KEYS, unwrap_optimizer
from hf_adaopt.core.trainer import adaopt_cls_and_kwargs, create_optimizer_and_scheduler, param_groups

ADAOPT_KEYS = {f"adaopt/{k}" for k in DIAGNOSTIC_KEYS}


def _args(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True,
                    save_strategy="no", per_device_train_batch_size=8, logging_steps=2, max_steps=16,
                    learning_rate=1e-2, lr_scheduler_type="constant", seed=0)
    defaults.update(kw)
    return TrainingArguments(**defaults)


def _trainer(args, callback=True, route="optimizers", model=None, train=None):
    torch.manual_seed(0)
    model = model if model is not None else TinyClassifier()
    kwargs = {}
    if route == "optimizers":
        kwargs["optimizers"] = create_optimizer_and_scheduler(model, args)
    else:
        kwargs["optimizer_cls_and_kwargs"] = adaopt_cls_and_kwargs(args)
    callbacks = [AdaOptCallback()] if callback else []
    return Trainer(model=model, args=args, train_dataset=train or TinyDataset(64, seed=0),
                   eval_dataset=TinyDataset(32, seed=1), callbacks=callbacks, **kwargs)


def _train_logs(trainer):
    return [e for e in trainer.state.log_history if "loss" in e]


# ------------------------------------------------------------------------------------------ both routes
@pytest.mark.parametrize("route", ["optimizers", "optimizer_cls_and_kwargs"])
def test_trainer_trains_with_adaopt_and_logs_diagnostics(tmp_path, route):
    trainer = _trainer(_args(tmp_path, max_steps=60, logging_steps=10), route=route)
    trainer.train()
    assert type(unwrap_optimizer(trainer.optimizer)) is AdaOpt
    logs = _train_logs(trainer)
    assert len(logs) == 6
    assert logs[-1]["loss"] < 0.85 * logs[0]["loss"]
    cb = next(c for c in trainer.callback_handler.callbacks if isinstance(c, AdaOptCallback))
    assert cb.trajectory["step"] == list(range(1, 61))
    opt = unwrap_optimizer(trainer.optimizer)
    for entry in logs:
        assert ADAOPT_KEYS <= set(entry)
        # learning_rate is the multiplier group["lr"] (constant here); the step taken is adaopt/effective_lr
        assert entry["learning_rate"] == opt.param_groups[0]["lr"] == 1e-2
        i = entry["step"] - 1  # the values after that step, as the trajectory recorded them
        assert entry["adaopt/effective_lr"] == cb.trajectory["lr"][i]
        for key in ("variance_factor", "landscape_factor", "base_scale"):
            assert entry[f"adaopt/{key}"] == cb.trajectory[key][i], key
    # the last log is read from the optimizer after the last step: exactly its diagnostics
    assert {k: logs[-1][f"adaopt/{k}"] for k in DIAGNOSTIC_KEYS} == opt.diagnostics()
    assert len({e["adaopt/effective_lr"] for e in logs}) > 1  # the step moved during training


def test_optimizers_route_uses_the_trainers_decay_groups(tmp_path):
    """create_optimizer_and_scheduler groups == the groups Trainer.create_optimizer builds."""
    args = _args(tmp_path, weight_decay=0.1)
    ours = _trainer(args, route="optimizers")
    theirs = _trainer(args, route="optimizer_cls_and_kwargs")
    theirs.create_optimizer()
    ours_groups, their_groups = ours.optimizer.param_groups, theirs.optimizer.param_groups
    names = {id(p): n for n, p in ours.model.named_parameters()}
    their_names = {id(p): n for n, p in theirs.model.named_parameters()}
    assert [sorted(names[id(p)] for p in g["params"]) for g in ours_groups] == [
        sorted(their_names[id(p)] for p in g["params"]) for g in their_groups]
    assert [g["weight_decay"] for g in ours_groups] == [g["weight_decay"] for g in their_groups] == [0.1, 0.0]
    assert sorted(names[id(p)] for p in ours_groups[1]["params"]) == ["fc1.bias", "fc2.bias", "norm.bias",
                                                                       "norm.weight"]
    for g1, g2 in zip(ours_groups, their_groups, strict=True):
        assert {k: g1[k] for k in ("lr", "betas", "eps")} == {k: g2[k] for k in ("lr", "betas", "eps")}


def test_create_optimizer_and_scheduler_keeps_lr_constant_and_passes_options(tmp_path):
    model = TinyClassifier()
    opt, sched = create_optimizer_and_scheduler(model, _args(tmp_path, lr_scheduler_type="linear"),
                                                adapt_rate=0.2, weight_decay=0.05)
    for _ in range(5):
        opt.step()  # no gradients: nothing moves, but the scheduler sees the usual order
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-2]
    assert [g["adapt_rate"] for g in opt.param_groups] == [0.2, 0.2]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_param_groups_skip_frozen_parameters_and_empty_groups():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 2, bias=False))
    model[0].weight.requires_grad_(False)
    groups = param_groups(model, 0.1)
    assert len(groups) == 1 and groups[0]["params"] == [model[1].weight]


def test_adaopt_cls_and_kwargs_rejects_weight_decay_and_warns_on_decaying_schedule(tmp_path, caplog):
    with pytest.raises(TypeError, match="args.weight_decay"):
        adaopt_cls_and_kwargs(_args(tmp_path), weight_decay=0.1)
    with caplog.at_level("WARNING", logger="hf_adaopt.core.trainer"):
        cls, kwargs = adaopt_cls_and_kwargs(_args(tmp_path, lr_scheduler_type="cosine"), adapt_rate=0.2)
    assert cls is AdaOpt and kwargs["adapt_rate"] == 0.2 and kwargs["lr"] == 1e-2
    assert "constant" in caplog.text


# ------------------------------------------------------------------------------- evaluate(), TensorBoard
def test_evaluate_dict_keys_are_unchanged_by_the_callback(tmp_path):
    with_cb = _trainer(_args(tmp_path / "a", max_steps=6, eval_strategy="steps", eval_steps=3))
    without_cb = _trainer(_args(tmp_path / "b", max_steps=6, eval_strategy="steps", eval_steps=3), callback=False)
    with_cb.train()
    without_cb.train()
    assert set(with_cb.evaluate()) == set(without_cb.evaluate())
    assert not any(k.startswith("adaopt/") for e in with_cb.state.log_history if "eval_loss" in e for k in e)


def test_tensorboard_event_file_holds_adaopt_scalars(tmp_path):
    trainer = _trainer(_args(tmp_path, max_steps=6, report_to=["tensorboard"]))
    trainer.train()
    events = glob.glob(str(tmp_path / "runs" / "*" / "events.out.tfevents.*"))
    scalars = {}
    for path in events:
        acc = EventAccumulator(path)
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    assert {f"train/{k}" for k in ADAOPT_KEYS} <= set(scalars)
    logged = [(e["step"], e["adaopt/effective_lr"]) for e in _train_logs(trainer)]
    assert [s for s, _ in scalars["train/adaopt/effective_lr"]] == [s for s, _ in logged] == [2, 4, 6]
    assert [v for _, v in scalars["train/adaopt/effective_lr"]] == pytest.approx([v for _, v in logged])


# ------------------------------------------------------------------------------------------------ resume
def test_resume_from_checkpoint_continues_exactly_like_an_uninterrupted_run(tmp_path):
    steps = 24
    full = _trainer(_args(tmp_path / "full", max_steps=steps, save_strategy="steps", save_steps=10))
    full.train()
    full_cb = next(c for c in full.callback_handler.callbacks if isinstance(c, AdaOptCallback))
    checkpoint = tmp_path / "full" / "checkpoint-10"
    saved = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["AdaOptCallback"]
    assert saved["attributes"]["trajectory"]["step"] == list(range(1, 11))

    resumed = _trainer(_args(tmp_path / "resumed", max_steps=steps))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, p_full), p_resumed in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p_full, p_resumed), name
    cb = next(c for c in resumed.callback_handler.callbacks if isinstance(c, AdaOptCallback))
    assert cb.trajectory == full_cb.trajectory
    assert cb.trajectory["step"] == list(range(1, steps + 1))
    written = json.loads((tmp_path / "resumed" / "lr_trajectory.json").read_text())
    assert written["step"] == list(range(1, steps + 1)) and written["optimizer"] == "AdaOpt"
    # the optimizer's own adapted state came back too
    assert resumed.optimizer.optimizer.diagnostics() == full.optimizer.optimizer.diagnostics()


def test_resume_with_restore_callback_states_keeps_trajectory_and_order(tmp_path):
    """With restore_callback_states_from_checkpoint the Trainer swaps in a new callback instance."""
    _trainer(_args(tmp_path / "a", max_steps=8, save_strategy="steps", save_steps=4,
                   report_to=["tensorboard"])).train()
    resumed = _trainer(_args(tmp_path / "b", max_steps=8, report_to=["tensorboard"],
                             restore_callback_states_from_checkpoint=True))
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    callbacks = resumed.callback_handler.callbacks
    assert type(callbacks[1]) is AdaOptCallback
    assert callbacks[1].trajectory["step"] == list(range(1, 9))


# ------------------------------------------------------------------------------- gradient accumulation
def test_gradient_accumulation_feeds_window_mean_and_converges(tmp_path):
    fed, micro = [], []

    class Recorder(AdaOpt):
        def set_loss(self, loss):
            fed.append(loss.clone())
            super().set_loss(loss)

    args = _args(tmp_path, max_steps=80, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                 logging_steps=10)
    torch.manual_seed(0)
    model = TinyClassifier()
    model.register_forward_hook(lambda m, a, out: micro.append(out["loss"].detach().clone()) if m.training else None)
    trainer = Trainer(model=model, args=args, train_dataset=TinyDataset(64, seed=0),
                      optimizers=(Recorder(param_groups(model, 0.0), lr=1e-2), None), callbacks=[AdaOptCallback()])
    trainer.train()
    assert len(fed) == 80 and len(micro) == 160
    expected = torch.stack(micro).reshape(80, 2).mean(1)
    torch.testing.assert_close(torch.stack(fed), expected, rtol=0, atol=1e-7)
    logs = _train_logs(trainer)
    assert logs[-1]["loss"] < 0.75 * logs[0]["loss"]
    assert os.path.exists(tmp_path / "lr_trajectory.json")


# ------------------------------------------------------------------------------- schedule overrides: one warning
RECOMMENDATION = ("AdaOpt reads group['lr'] as a multiplier of the step it adapts, so a schedule scales that step: "
                  "lr_scheduler_type='constant' without warmup is the recommended setting ("
                  "AdaOptCallback hands AdaOpt the Trainer's max_steps for a decay at the end).")


def _schedule_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "hf_adaopt.core.trainer" and r.levelname == "WARNING"]


def test_create_optimizer_and_scheduler_says_once_that_it_replaces_the_schedule(tmp_path, caplog):
    args = _args(tmp_path, lr_scheduler_type="cosine", warmup_steps=10)
    with caplog.at_level("WARNING", logger="hf_adaopt.core.trainer"):
        opt, sched = create_optimizer_and_scheduler(TinyClassifier(), args)
    assert _schedule_warnings(caplog) == [
        "lr_scheduler_type='cosine', warmup_steps=10: not applied, create_optimizer_and_scheduler returns a constant "
        "schedule (to keep a schedule, pass your own scheduler in Trainer(optimizers=(optimizer, scheduler))). "
        + RECOMMENDATION
    ]
    for _ in range(3):
        opt.step()
        sched.step()
    assert sched.get_last_lr() == [1e-2, 1e-2]  # what the warning says: constant


def test_adaopt_cls_and_kwargs_says_once_that_the_trainer_applies_the_schedule(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="hf_adaopt.core.trainer"):
        adaopt_cls_and_kwargs(_args(tmp_path, lr_scheduler_type="cosine", warmup_steps=10))
        adaopt_cls_and_kwargs(_args(tmp_path, lr_scheduler_type="constant", warmup_steps=5))
    assert _schedule_warnings(caplog) == [
        "lr_scheduler_type='cosine', warmup_steps=10: the Trainer builds this schedule and multiplies AdaOpt's "
        "adapted step by it. " + RECOMMENDATION,
        "warmup_steps=5: not applied, the Trainer's 'constant' schedule has no warmup and takes no arguments. "
        + RECOMMENDATION,
    ]


@pytest.mark.parametrize("helper", [create_optimizer_and_scheduler, adaopt_cls_and_kwargs])
def test_a_constant_schedule_gets_no_warning(helper, tmp_path, caplog):
    args = _args(tmp_path, lr_scheduler_type="constant")
    with caplog.at_level("WARNING", logger="hf_adaopt"):
        helper(TinyClassifier(), args) if helper is create_optimizer_and_scheduler else helper(args)
    assert _schedule_warnings(caplog) == []


# --------------------------------------------------------------------------------- per-group effective lr
class _GroupSteps:
    """Records each param group's effective_lr after every optimizer step (what the logs must show)."""

    def __init__(self):
        self.by_step = {}

    def __call__(self, trainer):
        from transformers import TrainerCallback

        recorder = self

        class Record(TrainerCallback):
            def on_step_end(self, args, state, control, optimizer=None, **kwargs):
                groups = unwrap_optimizer(optimizer).param_groups
                recorder.by_step[state.global_step] = [g["effective_lr"] for g in groups]

        trainer.add_callback(Record())
        return trainer


def _two_lr_trainer(tmp_path, **kw):
    """A body at 1e-5 (group 0) and a head at 1e-3 (group 1), as for a fine-tune with a new head."""
    from transformers import get_constant_schedule

    torch.manual_seed(0)
    model = TinyClassifier()
    head = list(model.fc2.parameters())
    body = [p for n, p in model.named_parameters() if not n.startswith("fc2.")]
    opt = AdaOpt([{"params": body, "lr": 1e-5}, {"params": head, "lr": 1e-3}])
    args = _args(tmp_path, max_steps=5, logging_steps=1, **kw)
    trainer = Trainer(model=model, args=args, train_dataset=TinyDataset(64, seed=0), callbacks=[AdaOptCallback()],
                      optimizers=(opt, get_constant_schedule(opt)))
    return trainer


def test_every_group_whose_lr_differs_logs_its_own_step(tmp_path):
    recorder = _GroupSteps()
    trainer = recorder(_two_lr_trainer(tmp_path))
    trainer.train()
    logs = _train_logs(trainer)
    assert [e["step"] for e in logs] == [1, 2, 3, 4, 5]
    for entry in logs:
        body, head = recorder.by_step[entry["step"]]
        assert entry["adaopt/effective_lr"] == body  # group 0 keeps today's name
        assert entry["adaopt/effective_lr/1"] == head
        assert head == pytest.approx(100 * body, rel=1e-12)  # the lrs' ratio, 1e-3 / 1e-5
        assert entry["learning_rate"] == 1e-5  # the Trainer's column: group 0's lr, the multiplier
        assert sorted(k for k in entry if k.startswith("adaopt/")) == sorted(ADAOPT_KEYS | {"adaopt/effective_lr/1"})


def test_groups_at_group_0s_lr_log_no_extra_key(tmp_path):
    trainer = _trainer(_args(tmp_path, max_steps=4, weight_decay=0.1))  # decay / no-decay groups, one lr
    trainer.train()
    assert len(unwrap_optimizer(trainer.optimizer).param_groups) == 2
    for entry in _train_logs(trainer):
        assert {k for k in entry if k.startswith("adaopt/")} == ADAOPT_KEYS


def test_tensorboard_event_file_holds_each_groups_effective_lr(tmp_path):
    trainer = _two_lr_trainer(tmp_path, report_to=["tensorboard"])
    trainer.train()
    scalars = {}
    for path in glob.glob(str(tmp_path / "runs" / "*" / "events.out.tfevents.*")):
        acc = EventAccumulator(path)
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    logs = _train_logs(trainer)
    for key in ("adaopt/effective_lr", "adaopt/effective_lr/1"):
        assert [s for s, _ in scalars[f"train/{key}"]] == [1, 2, 3, 4, 5]
        assert [v for _, v in scalars[f"train/{key}"]] == pytest.approx([e[key] for e in logs], rel=1e-6)
    assert "train/adaopt/effective_lr/0" not in scalars
