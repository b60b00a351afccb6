"""IMDB sentiment (25k train / 25k test movie reviews) with a bidirectional LSTM and attention pooling.

Text goes through a WordPiece tokenizer trained on the training split with `tokenizers` (lower case, HTML tags
such as `<br />` removed by the tokenizer's own normalizer, so the saved tokenizer does the same at inference),
or through `--tokenizer_name` (a local directory or a Hub id). The tokenizer is the Trainer's
`processing_class`, so it is saved next to the model. Reviews are truncated to `--max_seq_length` (256) tokens
and padded per batch.

    accelerate launch training_scripts/train.py --task imdb --optimizer adaopt --output_dir out/imdb
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from hf_adaopt.core.logs import get_logger
from hf_adaopt.lab.results import write_atomic
from hf_adaopt.lab.tasks.base import (
    DataUnavailableError,
    TaskArguments,
    TaskSetup,
    hub_endpoint,
    hub_errors,
    load_raw_datasets,
)

logger = get_logger(__name__)

DEFAULT_DATASET = "stanfordnlp/imdb"
# what a model card says of this task (model-index task type, dataset name); its Hub id is DEFAULT_DATASET
HUB_TASK_TYPE = "text-classification"
DATASET_LABEL = "IMDB"
DEFAULT_EPOCHS = 20
DEFAULT_MAX_SEQ_LENGTH = 256
VOCAB_SIZE = 20000  # WordPiece vocabulary trained on the training split (IMDB has ~75k distinct words)
MIN_FREQUENCY = 2  # a word piece must occur at least this often in the training split
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # [PAD] gets id 0, the model's padding_idx
# The Hub's imdb splits are sorted by label: --max_train_samples/--max_eval_samples take a random subset drawn
# with this fixed seed (the same subset for every run, whatever --seed), not the first N reviews.
SUBSET_SEED = 0
# An HTML tag: "<br />", "<i>", "</i>"; "<" followed by a space or a digit ("5 < 6 > 2") is text.
HTML_TAG_PATTERN = r"</?[A-Za-z][^<>]*>"


# --------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------


def train_tokenizer(texts, vocab_size: int = VOCAB_SIZE, max_length: int = DEFAULT_MAX_SEQ_LENGTH):
    """A lower-casing, HTML-stripping WordPiece tokenizer trained on `texts` (an iterable of strings or batches).

    Returns a `PreTrainedTokenizerFast` with [PAD]/[UNK]/[CLS]/[SEP] that encodes a review as
    `[CLS] pieces [SEP]`; it saves and reloads with `save_pretrained` / `AutoTokenizer.from_pretrained`.
    Note: `tokenizers`' WordPiece training is not deterministic (huggingface/tokenizers#1794: hash-map order
    breaks ties between equally frequent merges), so two trainings on the same text may differ slightly;
    `prepare` trains once per training split and reuses the result.
    """
    return _wrap(_train_backend(texts, vocab_size), max_length)


def _train_backend(texts, vocab_size: int = VOCAB_SIZE):
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    pad, unk, cls, sep = SPECIAL_TOKENS
    tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(HTML_TAG_PATTERN), " "),
            normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=MIN_FREQUENCY, special_tokens=list(SPECIAL_TOKENS)
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    return tokenizer


def _wrap(backend, max_length: int):
    from transformers import PreTrainedTokenizerFast

    pad, unk, cls, sep = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad,
        unk_token=unk,
        cls_token=cls,
        sep_token=sep,
        model_max_length=max_length,
        padding_side="right",
    )


def _text_batches(dataset, batch_size: int = 1000):
    for batch in dataset.iter(batch_size=batch_size):
        yield batch["text"]


def _tokenizer_cache_path(train_dataset) -> str | None:
    """Where the tokenizer trained on this exact training split is kept: next to the split's Arrow cache, named by
    its fingerprint and the tokenizer settings; for an in-memory dataset (the offline sources), in the datasets
    cache, named by a hash of the texts (small data: hashing costs milliseconds)."""
    import hashlib

    import datasets
    import tokenizers

    settings = repr((HTML_TAG_PATTERN, VOCAB_SIZE, MIN_FREQUENCY, SPECIAL_TOKENS, tokenizers.__version__))
    if not train_dataset.cache_files:
        digest = hashlib.sha256(settings.encode())
        for batch in _text_batches(train_dataset):
            digest.update("\x00".join(batch).encode("utf-8", errors="replace"))
        return os.path.join(str(datasets.config.HF_DATASETS_CACHE), f"hf_adaopt_wordpiece_{digest.hexdigest()[:16]}.json")
    key = hashlib.sha256(f"{train_dataset._fingerprint}|{settings}".encode()).hexdigest()[:16]
    return os.path.join(os.path.dirname(train_dataset.cache_files[0]["filename"]), f"hf_adaopt_wordpiece_{key}.json")


def _cached_or_trained(train_dataset) -> str:
    """The serialized tokenizer for this training split: from the cache, or trained now and cached.

    Every run on the same data (all optimizers and seeds of a comparison) then uses the same vocabulary, which
    `tokenizers`' non-deterministic training would not guarantee, and IMDB's tokenizer is trained only once.
    """
    path = _tokenizer_cache_path(train_dataset)
    if path is not None and os.path.isfile(path):
        logger.info("imdb: using the tokenizer trained earlier on this training split: %s", path)
        with open(path, encoding="utf-8") as f:
            return f.read()
    serialized = _train_backend(_text_batches(train_dataset)).to_str()
    logger.info("imdb: trained a WordPiece tokenizer on %d reviews", len(train_dataset))
    if path is not None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, serialized)  # a concurrent run reads a whole file or none
        except OSError as exc:  # a read-only cache only costs the reuse
            logger.warning("imdb: could not cache the tokenizer at %s: %s", path, exc)
    return serialized


def _trained_tokenizer(train_dataset, max_length: int, training_args):
    """Train (or reuse) on the main process and hand the result to the others: every rank has one vocabulary."""
    import torch.distributed as dist
    from tokenizers import Tokenizer

    distributed = training_args.world_size > 1 and dist.is_available() and dist.is_initialized()
    serialized = _cached_or_trained(train_dataset) if training_args.process_index == 0 or not distributed else None
    if distributed:
        payload = [serialized]
        dist.broadcast_object_list(payload, src=0)  # one collective per run, before training starts
        serialized = payload[0]
    return _wrap(Tokenizer.from_str(serialized), max_length)


def _pretrained_tokenizer(task_args: TaskArguments):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(task_args.tokenizer_name, cache_dir=task_args.cache_dir)
    except hub_errors() as exc:
        if os.path.isdir(task_args.tokenizer_name):
            raise  # a broken local directory: the original error says what is wrong
        raise DataUnavailableError(
            f"The tokenizer {task_args.tokenizer_name!r} could not be loaded from the Hugging Face Hub at "
            f"{hub_endpoint()}: {type(exc).__name__}: {exc}\nOffline: leave --tokenizer_name unset (a tokenizer is "
            "trained on the training split) or pass a local tokenizer directory."
        ) from exc
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError(
                f"Tokenizer {task_args.tokenizer_name!r} has no pad, eos or unk token to pad batches with; "
                "use another --tokenizer_name or leave it unset to train one."
            )
        logger.info("imdb: tokenizer %r has no pad token; padding with %r", task_args.tokenizer_name, fallback)
        tokenizer.pad_token = fallback
    return tokenizer


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------


def _subset(dataset, n: int | None):
    if n is None or n >= len(dataset):
        return dataset
    return dataset.shuffle(seed=SUBSET_SEED).select(range(n))


def _label_names(raw) -> list[str] | None:
    """Class names from a ClassLabel feature (the Hub's neg/pos), or None for plain integer labels."""
    feature = raw["train"].features.get("label")
    return list(feature.names) if hasattr(feature, "names") else None


def _check_rows(dataset, split: str, num_labels: int) -> None:
    """Every row has a text and a label in [0, num_labels): a label outside it would silently add classes (or
    crash the loss), a missing value (a truncated csv row) would fail inside the tokenizer."""
    columns = {"text": list(dataset["text"]), "label": list(dataset["label"])}
    for name, values in columns.items():
        if None in values:
            raise ValueError(
                f"The {split} data, row {values.index(None) + 1}: missing {name} (a truncated or incomplete file?); "
                "every row needs text and label."
            )
    for i, label in enumerate(columns["label"]):
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or not 0 <= label < num_labels:
            raise ValueError(
                f"The {split} data, row {i + 1}: label {label!r} is not one of 0..{num_labels - 1} "
                "(imdb: 0 = negative, 1 = positive)."
            )


def compute_metrics(eval_prediction) -> dict[str, float]:
    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    labels = np.asarray(eval_prediction.label_ids)
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def prepare(task_args: TaskArguments, training_args) -> TaskSetup:
    """Tokenized reviews, a BiLSTM-attention classifier, a padding collator and accuracy."""
    from transformers import DataCollatorWithPadding, set_seed

    # transformers: imported when a model is built, not with the task
    from hf_adaopt.lab.models import BiLSTMAttentionConfig, BiLSTMAttentionForSequenceClassification

    max_seq_length = task_args.max_seq_length or DEFAULT_MAX_SEQ_LENGTH
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be >= 3 ([CLS] text [SEP]), got {max_seq_length}.")
    # Subsets are drawn here (random, fixed seed) rather than as the first N rows: the Hub splits are sorted.
    raw = load_raw_datasets(dataclasses.replace(task_args, max_train_samples=None, max_eval_samples=None), DEFAULT_DATASET)
    for split in ("train", "validation"):
        missing = {"text", "label"} - set(raw[split].column_names)
        if missing:
            raise ValueError(
                f"The {split} data lacks the imdb columns {sorted(missing)} (has {raw[split].column_names}); "
                "expected text (str) and label (int, 0 = negative, 1 = positive)."
            )
    names = _label_names(raw) or ["0", "1"]  # plain integer labels: 0 = negative, 1 = positive
    if len(names) < 2:
        raise ValueError(f"imdb needs at least 2 classes in the labels, got {names}.")
    for split in ("train", "validation"):
        _check_rows(raw[split], split, len(names))
    raw["train"] = _subset(raw["train"], task_args.max_train_samples)
    raw["validation"] = _subset(raw["validation"], task_args.max_eval_samples)

    if task_args.tokenizer_name:
        tokenizer = _pretrained_tokenizer(task_args)
    else:
        tokenizer = _trained_tokenizer(raw["train"], max_seq_length, training_args)
    if tokenizer.model_max_length and tokenizer.model_max_length < max_seq_length:
        max_seq_length = tokenizer.model_max_length

    def tokenize(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_seq_length)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": batch["label"]}

    tokenized = {}
    for split in ("train", "validation"):
        with training_args.main_process_first(desc=f"imdb tokenize {split}"):
            tokenized[split] = raw[split].map(
                tokenize, batched=True, remove_columns=raw[split].column_names, desc=f"Tokenizing the {split} split"
            )

    set_seed(training_args.seed)  # the model's initial weights follow --seed
    config = BiLSTMAttentionConfig(
        vocab_size=len(tokenizer),
        num_labels=len(names),
        pad_token_id=tokenizer.pad_token_id,
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )
    model = BiLSTMAttentionForSequenceClassification(config)
    return TaskSetup(
        model=model,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
    )
