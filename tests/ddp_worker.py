"""One rank of the 2-process CPU DDP check in tests/test_ddp.py (not a test module itself).

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --main_process_port 29512 \
        tests/ddp_worker.py --output_dir /tmp/ddp --steps 25

Each rank trains the same tiny classifier on its own shard of the data: with a plain accelerate loop
(``accelerator.backward``, ``opt.set_loss(local_loss)``, ``opt.step()``; and the same with ``fused=True``), with
``transformers.Trainer`` +
`AdaOptCallback`, and with the Trainer, gradient accumulation and a model whose loss is normalized by
``num_items_in_batch`` of all ranks (the path transformers' language models take). It saves ``<output_dir>/<mode>_rank<r>.pt`` with its final parameters, AdaOpt's diagnostics
after every step and the local losses it fed; the test compares the ranks.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import TinyClassifier, TinyDataset  # noqa: E402

from hf_adaopt import AdaOpt, AdaOptCallback  # noqa: E402
from hf_adaopt.core.callback import unwrap_optimizer  # noqa: E402


class FeedRecorder(AdaOpt):
    """AdaOpt that keeps the losses given to `set_loss` (this rank's local values) and its diagnostics."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fed: list[float] = []
        self.diagnostics_per_step: list[dict] = []

    def set_loss(self, loss):
        self.fed.append(float(loss))
        super().set_loss(loss)

    def step(self, closure=None):
        loss = super().step(closure)
        self.diagnostics_per_step.append(self.diagnostics())
        return loss


def _group_scalars(optimizer) -> list[dict]:
    """Everything AdaOpt keeps per param group (its controller: running loss statistics, EMAs, scales)."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def run_accelerate(args, fused: bool = False) -> dict:
    accelerator = Accelerator(cpu=True)
    set_seed(0)  # same initial weights on every rank
    model = TinyClassifier()
    optimizer = FeedRecorder(model.parameters(), lr=args.lr, fused=fused)
    loader = torch.utils.data.DataLoader(TinyDataset(256, seed=0), batch_size=8, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)  # loader: one shard per rank
    inner = unwrap_optimizer(optimizer)
    step = 0
    while step < args.steps:
        for batch in loader:
            loss = model(**batch)["loss"]
            accelerator.backward(loss)
            inner.set_loss(loss.detach())  # the local loss; AdaOpt reduces its scalars across ranks
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == args.steps:
                break
    unwrapped = accelerator.unwrap_model(model)
    return {"params": {k: v.detach().clone() for k, v in unwrapped.state_dict().items()},
            "diagnostics": inner.diagnostics_per_step, "fed": inner.fed, "groups": _group_scalars(inner),
            "fused_ran": fused and getattr(inner, "_fused_failed", None) is None and hasattr(inner, "_fused_carry")}


class ItemsClassifier(TinyClassifier):
    """Takes `num_items_in_batch` like transformers' LMs: returns sum of losses / items in the whole window
    (of all ranks: average_tokens_across_devices). Keeps this rank's plain mean loss of every forward."""

    accepts_loss_kwargs = True  # what the Trainer checks before passing num_items_in_batch

    def __init__(self):
        super().__init__()
        self.local_means: list[float] = []

    def forward(self, x, labels=None, num_items_in_batch=None):
        logits = self.fc2(torch.relu(self.norm(self.fc1(x))))
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        if self.training:
            self.local_means.append(float(losses.mean()))
        return {"loss": losses.sum() / num_items_in_batch, "logits": logits}


def run_trainer(args, items: bool = False) -> dict:
    from transformers import Trainer, TrainingArguments

    training_args = TrainingArguments(
        output_dir=os.path.join(args.output_dir, "trainer"), use_cpu=True, report_to="none", disable_tqdm=True,
        save_strategy="no", per_device_train_batch_size=8, max_steps=args.steps, logging_steps=5,
        learning_rate=args.lr, lr_scheduler_type="constant", seed=0, gradient_accumulation_steps=2 if items else 1)
    set_seed(0)
    model = ItemsClassifier() if items else TinyClassifier()
    optimizer = FeedRecorder(model.parameters(), lr=args.lr)
    callback = AdaOptCallback()
    trainer = Trainer(model=model, args=training_args, train_dataset=TinyDataset(256, seed=0),
                      optimizers=(optimizer, None), callbacks=[callback])
    trainer.train()
    live = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, AdaOptCallback))
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "diagnostics": optimizer.diagnostics_per_step, "fed": optimizer.fed, "groups": _group_scalars(optimizer),
            "trajectory": live.trajectory, "local_means": getattr(model, "local_means", None),
            "logged": [{k: v for k, v in e.items() if k.startswith("adaopt/")} for e in trainer.state.log_history
                       if "loss" in e]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--modes", default="accelerate,accelerate_fused,trainer,trainer_items")
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    for mode in args.modes.split(","):
        runs = {"accelerate": run_accelerate, "accelerate_fused": lambda a: run_accelerate(a, fused=True),
                "trainer": run_trainer,
                "trainer_items": lambda a: run_trainer(a, items=True)}
        result = runs[mode](args)
        rank = int(os.environ.get("RANK", 0))
        result["world_size"] = int(os.environ.get("WORLD_SIZE", 1))
        torch.save(result, os.path.join(args.output_dir, f"{mode}_rank{rank}.pt"))
    # Tear gloo down before the interpreter does: left to exit, its threads can abort the process ("terminate called
    # without an active exception", SIGABRT) after every result is written, as a fresh-clone CI run once did.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
