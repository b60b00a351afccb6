"""AdaOptCallback / LRTrajectoryCallback: loss feed, ordering, logging rules, trajectory state."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from conftest import TinyClassifier
from transformers import Trainer, TrainerState, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import DefaultFlowCallback

from hf_adaopt import AdaOpt, AdaOptCallback
from hf_adaopt.core.callback import DIAGNOSTIC_KEYS, unwrap_optimizer
from hf_adaopt.lab.trajectory import LRTrajectoryCallback


def _args(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True,
                    save_strategy="no", per_device_train_batch_size=8, logging_steps=1)
    defaults.update(kw)
    return TrainingArguments(**defaults)


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 8, generator=g), "labels": torch.randint(0, 3, (n,), generator=g)}


class _FeedRecorder(AdaOpt):
    """AdaOpt that records what `set_loss` received."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fed = []

    def set_loss(self, loss):
        self.fed.append(loss)
        super().set_loss(loss)


def _started_callback(tmp_path, model, optimizer, **args_kw):
    cb = AdaOptCallback()
    args, state = _args(tmp_path, **args_kw), TrainerState()
    cb.on_train_begin(args, state, None, model=model, optimizer=optimizer)
    return cb, args, state


# --------------------------------------------------------------------------------------------- unwrap
def test_unwrap_optimizer_returns_adaopt_inside_accelerated_optimizer(tiny_model):
    opt = AdaOpt(tiny_model.parameters())
    wrapped = Accelerator(cpu=True).prepare_optimizer(opt)
    assert isinstance(wrapped, AcceleratedOptimizer)
    assert unwrap_optimizer(wrapped) is opt
    assert unwrap_optimizer(opt) is opt


# ------------------------------------------------------------------------------------------ loss feed
def test_feeds_mean_of_micro_batch_losses_as_detached_tensor(tmp_path, tiny_model):
    opt = _FeedRecorder(tiny_model.parameters())
    wrapped = Accelerator(cpu=True).prepare_optimizer(opt)
    cb, args, state = _started_callback(tmp_path, tiny_model, wrapped)
    tiny_model.train()
    losses = [tiny_model(**_batch(seed=s))["loss"] for s in range(3)]
    cb.on_pre_optimizer_step(args, state, None, optimizer=wrapped)
    assert len(opt.fed) == 1
    fed = opt.fed[0]
    assert isinstance(fed, torch.Tensor) and fed.dim() == 0 and not fed.requires_grad
    torch.testing.assert_close(fed, torch.stack(losses).mean().detach(), rtol=0, atol=1e-7)


def test_window_restarts_after_each_optimizer_step(tmp_path, tiny_model):
    opt = _FeedRecorder(tiny_model.parameters())
    cb, args, state = _started_callback(tmp_path, tiny_model, opt)
    tiny_model.train()
    tiny_model(**_batch(seed=0))
    cb.on_pre_optimizer_step(args, state, None, optimizer=opt)
    second = tiny_model(**_batch(seed=1))["loss"]
    cb.on_pre_optimizer_step(args, state, None, optimizer=opt)
    torch.testing.assert_close(opt.fed[1], second.detach(), rtol=0, atol=0)


def test_eval_mode_and_no_grad_forwards_are_not_fed(tmp_path, tiny_model):
    opt = _FeedRecorder(tiny_model.parameters())
    cb, args, state = _started_callback(tmp_path, tiny_model, opt)
    tiny_model.eval()
    tiny_model(**_batch())
    tiny_model.train()
    with torch.no_grad():
        tiny_model(**_batch())
    cb.on_pre_optimizer_step(args, state, None, optimizer=opt)
    assert opt.fed == []


def test_loss_normalized_by_num_items_in_batch_is_summed_over_the_window(tmp_path):
    """Models that take `num_items_in_batch` return sum/(items in the window): the window loss is their sum."""

    class ItemsModel(TinyClassifier):
        def forward(self, x, labels=None, num_items_in_batch=None):
            logits = self.fc2(torch.relu(self.norm(self.fc1(x))))
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum") / num_items_in_batch
            return {"loss": loss, "logits": logits}

    torch.manual_seed(0)
    model = ItemsModel()
    opt = _FeedRecorder(model.parameters())
    cb, args, state = _started_callback(tmp_path, model, opt)
    batches = [_batch(seed=s) for s in range(2)]
    for b in batches:
        model(**b, num_items_in_batch=16)
    cb.on_pre_optimizer_step(args, state, None, optimizer=opt)
    x = torch.cat([b["x"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    expected = torch.nn.functional.cross_entropy(model(x, labels, num_items_in_batch=1)["logits"], labels)
    torch.testing.assert_close(opt.fed[0], expected.detach(), rtol=1e-6, atol=1e-6)


def test_hook_is_removed_at_train_end(tmp_path, tiny_model):
    opt = _FeedRecorder(tiny_model.parameters())
    cb, args, state = _started_callback(tmp_path, tiny_model, opt)
    cb.on_train_end(args, state, None, optimizer=opt)
    tiny_model.train()
    tiny_model(**_batch())
    cb.on_pre_optimizer_step(args, state, None, optimizer=opt)
    assert opt.fed == []
    assert not tiny_model._forward_hooks


def test_adaopt_callback_rejects_other_optimizers_with_a_pointer_to_lr_trajectory(tmp_path, tiny_model):
    with pytest.raises(TypeError, match="TrajectoryCallback"):
        _started_callback(tmp_path, tiny_model, torch.optim.AdamW(tiny_model.parameters()))


# --------------------------------------------------------------------------------------------- logging
def test_on_log_adds_diagnostics_to_training_logs_and_history(tmp_path, tiny_model):
    opt = AdaOpt(tiny_model.parameters())
    cb, args, state = _started_callback(tmp_path, tiny_model, opt)
    logs = {"loss": 1.5, "learning_rate": 1e-3}
    state.log_history.append({**logs, "step": state.global_step})
    cb.on_log(args, state, None, logs=logs, optimizer=opt)
    expected = {f"adaopt/{k}" for k in DIAGNOSTIC_KEYS}
    assert expected <= set(logs)
    assert expected <= set(state.log_history[-1])


def test_on_log_leaves_eval_and_summary_logs_unchanged(tmp_path, tiny_model):
    opt = AdaOpt(tiny_model.parameters())
    cb, args, state = _started_callback(tmp_path, tiny_model, opt)
    for logs in ({"eval_loss": 1.0, "eval_runtime": 0.1, "epoch": 1.0}, {"train_loss": 1.0, "train_runtime": 2.0}):
        before = dict(logs)
        cb.on_log(args, state, None, logs=logs, optimizer=opt)
        assert logs == before


def test_on_log_only_on_the_main_process(tmp_path, tiny_model):
    opt = AdaOpt(tiny_model.parameters())
    cb, args, state = _started_callback(tmp_path, tiny_model, opt)
    state.is_world_process_zero = False
    logs = {"loss": 1.5}
    cb.on_log(args, state, None, logs=logs, optimizer=opt)
    assert logs == {"loss": 1.5}


def test_callback_moves_itself_before_report_to_integrations(tmp_path, tiny_model, tiny_data):
    args = _args(tmp_path, report_to=["tensorboard"])
    trainer = Trainer(model=tiny_model, args=args, train_dataset=tiny_data[0],
                      optimizers=(AdaOpt(tiny_model.parameters()), None), callbacks=[AdaOptCallback()])
    kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert kinds[:3] == [DefaultFlowCallback, AdaOptCallback, TensorBoardCallback]


def test_callback_added_after_init_is_moved_at_train_begin(tmp_path, tiny_model, tiny_data):
    args = _args(tmp_path, report_to=["tensorboard"], max_steps=1)
    trainer = Trainer(model=tiny_model, args=args, train_dataset=tiny_data[0],
                      optimizers=(AdaOpt(tiny_model.parameters()), None))
    trainer.add_callback(AdaOptCallback())
    assert type(trainer.callback_handler.callbacks[-1]) is AdaOptCallback
    trainer.train()
    assert type(trainer.callback_handler.callbacks[1]) is AdaOptCallback


# ------------------------------------------------------------------------------------------ trajectory
def test_trajectory_records_effective_lr_and_factors_per_optimizer_step(tmp_path, tiny_model):
    opt = AdaOpt(tiny_model.parameters(), lr=1e-2)
    cb, args, state = _started_callback(tmp_path, tiny_model, opt)
    tiny_model.train()
    for step in range(3):
        tiny_model(**_batch(seed=step))["loss"].backward()
        cb.on_pre_optimizer_step(args, state, None, optimizer=opt)
        opt.step()
        cb.on_optimizer_step(args, state, None, optimizer=opt)
        opt.zero_grad()
        state.global_step += 1
    assert cb.trajectory["step"] == [1, 2, 3]
    assert set(cb.trajectory) == {"step", "lr", "variance_factor", "landscape_factor", "base_scale"}
    assert cb.trajectory["lr"][-1] == opt.diagnostics()["effective_lr"]


def test_trajectory_state_restores_up_to_the_checkpoint_step(tmp_path):
    saved = AdaOptCallback()
    saved.trajectory = {"step": [1, 2, 3, 4], "lr": [0.1, 0.2, 0.3, 0.4], "variance_factor": [1.0] * 4,
                        "landscape_factor": [1.0] * 4, "base_scale": [0.1] * 4}
    TrainerState(global_step=3, stateful_callbacks=[saved]).save_to_json(str(tmp_path / "trainer_state.json"))
    state = TrainerState.load_from_json(str(tmp_path / "trainer_state.json"))  # keys come back sorted
    fresh = AdaOptCallback()
    fresh._restore(state)
    assert fresh.trajectory["step"] == [1, 2, 3]
    assert fresh.trajectory["lr"] == [0.1, 0.2, 0.3]


def test_fresh_training_starts_an_empty_trajectory(tmp_path):
    cb = LRTrajectoryCallback()
    cb.trajectory = {"step": [1], "lr": [0.1]}
    cb._restore(TrainerState(global_step=0))
    assert cb.trajectory == {"step": [], "lr": []}


def test_lr_trajectory_callback_writes_json_for_any_optimizer(tmp_path, tiny_model, tiny_data):
    args = _args(tmp_path, max_steps=4, learning_rate=0.01, lr_scheduler_type="linear")
    cb = LRTrajectoryCallback()
    trainer = Trainer(model=tiny_model, args=args, train_dataset=tiny_data[0], callbacks=[cb])
    trainer.train()
    written = json.loads((tmp_path / "lr_trajectory.json").read_text())
    assert written["optimizer"] == "AdamW"
    assert written["step"] == [1, 2, 3, 4]
    assert written["lr"] == pytest.approx([0.01, 0.0075, 0.005, 0.0025])
