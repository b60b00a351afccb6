"""charlm: a small decoder-only transformer trained from scratch as a byte-level language model.

The regime where Adam is the default and where its learning rate matters most. Data: a "text" column (the
Hub schema of e.g. `karpathy/tiny_shakespeare`), by default `pydoc-topics` -- the English reference prose that
ships with CPython (`hf_adaopt.lab.tasks.offline_data`), so the task runs offline anywhere. Each split's text is
read as UTF-8 bytes (vocabulary 256, no tokenizer to train) and cut into non-overlapping blocks of
`--max_seq_length` (default 128) bytes. Model: GPT-2's architecture (pre-LayerNorm blocks, learned positions,
tied embeddings) from a config -- 4 layers, d_model 128, 4 heads, no dropout: 0.8M parameters (`--model d128`, the
default), or the same at d_model 64 (`--model d64`, 0.22M parameters, 2.5x cheaper a step: the suite's long run).

Metrics: `eval_loss` is the mean next-byte cross-entropy in nats, so bits per character = eval_loss / ln 2
(`bits_per_char`; the suite reports it); `eval_accuracy` is next-byte accuracy.

    hf-adaopt train --task charlm --optimizer adamw --learning_rate 1e-3 --max_steps 300 --output_dir out/charlm
"""

from __future__ import annotations

import math

import numpy as np

from hf_adaopt.lab.tasks.base import TaskArguments, TaskSetup, load_raw_datasets, load_saved_model

DEFAULT_DATASET = "pydoc-topics"
DEFAULT_EPOCHS = 3
DEFAULT_BLOCK = 128
VOCAB_SIZE = 256  # bytes
# --model: (layers, d_model, heads)
MODELS = {"d128": (4, 128, 4), "d64": (4, 64, 4)}
DEFAULT_MODEL = "d128"


def bits_per_char(eval_loss: float) -> float:
    """Bits per byte (= per character for ASCII text) from the mean cross-entropy in nats."""
    return eval_loss / math.log(2.0)


def encode_blocks(texts: list[str], block: int):
    """Concatenated UTF-8 bytes of `texts`, cut into whole blocks of `block` bytes: {"input_ids", "labels"}."""
    data = np.frombuffer("\n\n".join(texts).encode("utf-8"), dtype=np.uint8).astype(np.int64)
    n = len(data) // block
    if n == 0:
        raise ValueError(
            f"charlm needs at least --max_seq_length={block} bytes of text per split, got {len(data)}; pass more "
            "text or a smaller --max_seq_length."
        )
    blocks = data[: n * block].reshape(n, block)
    # GPT-2's head shifts the labels itself: labels = input_ids
    return {"input_ids": blocks.tolist(), "labels": blocks.tolist()}


def check_model(variant: str | None) -> str:
    """The `--model` variant (None: the default); ValueError names an unknown one and the choices."""
    variant = variant or DEFAULT_MODEL
    if variant not in MODELS:
        raise ValueError(f"Unknown --model {variant!r} for task charlm; choose one of {tuple(MODELS)}.")
    return variant


def build_model(block: int, variant: str | None = None):
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_embd, n_head = MODELS[check_model(variant)]
    config = GPT2Config(
        vocab_size=VOCAB_SIZE, n_positions=block, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def argmax_logits(logits, labels):
    """`preprocess_logits_for_metrics`: keep the predicted byte only (256x less to gather)."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits.argmax(dim=-1)


def compute_metrics(eval_prediction) -> dict[str, float]:
    predictions = np.asarray(eval_prediction.predictions)[:, :-1]
    labels = np.asarray(eval_prediction.label_ids)[:, 1:]
    return {"accuracy": float((predictions == labels).mean())}


def prepare(task_args: TaskArguments, training_args) -> TaskSetup:
    import datasets
    from transformers import default_data_collator, set_seed

    check_model(task_args.model)  # before the data is read
    block = task_args.max_seq_length or DEFAULT_BLOCK
    if block < 2:
        raise ValueError(f"charlm needs --max_seq_length >= 2, got {block}.")
    raw = load_raw_datasets(task_args, DEFAULT_DATASET)
    for split in ("train", "validation"):
        if "text" not in raw[split].column_names:
            raise ValueError(
                f"The charlm {split} data needs a 'text' column (has {raw[split].column_names})."
            )
    encoded = {split: datasets.Dataset.from_dict(encode_blocks(raw[split]["text"], block)).with_format("torch")
               for split in ("train", "validation")}
    set_seed(training_args.seed)  # the model's initial weights follow --seed
    model = load_saved_model(task_args.model_name_or_path) if task_args.model_name_or_path else build_model(block, task_args.model)
    return TaskSetup(
        model=model,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        data_collator=default_data_collator,
        compute_metrics=compute_metrics,
        trainer_kwargs={"preprocess_logits_for_metrics": argmax_logits},
    )
