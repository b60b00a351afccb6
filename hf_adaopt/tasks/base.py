"""Shared pieces of the experiment tasks: their arguments, what a task hands the Trainer, data loading.

Every task module (`hf_adaopt/tasks/<name>.py`) exposes `DEFAULT_DATASET`, `DEFAULT_EPOCHS` and
`prepare(task_args, training_args) -> TaskSetup`. Data comes from the Hub by default or from local files in
the Hub dataset's schema (`--train_file` / `--validation_file`), like the transformers example scripts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

# Extension of a local data file -> the `datasets` builder that reads it.
_FILE_BUILDERS = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}


@dataclass
class TaskArguments:
    """Which task to train and where its data comes from (parsed together with `TrainingArguments`)."""

    task: str = field(default="digits", metadata={"help": "digits | mnist | cifar10 | imdb | squad"})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id; default per task (ylecun/mnist, uoft-cs/cifar10, stanfordnlp/imdb, "
                  "rajpurkar/squad). digits is built in (scikit-learn) and needs no download."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local csv/json/jsonl/parquet training file in the Hub dataset's schema."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Local csv/json/jsonl/parquet validation file in the Hub dataset's schema."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation examples."})
    model: str | None = field(
        default=None, metadata={"help": "Architecture variant: mnist 'cnn' (default) | 'mlp'; digits 'mlp' | 'cnn'."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "squad: Hub id or local dir (default bert-base-uncased); or a saved model."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "imdb/squad: tokenizer dir or Hub id; imdb trains one when unset."}
    )
    augment: bool = field(default=False, metadata={"help": "cifar10: random affine + flip augmentation."})
    max_seq_length: int | None = field(default=None, metadata={"help": "imdb default 256, squad 384."})
    doc_stride: int = field(default=128, metadata={"help": "squad: overlap between context windows."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub datasets and models."})


@dataclass
class TaskSetup:
    """Everything a task gives `run_training` to build its Trainer."""

    model: PreTrainedModel
    train_dataset: datasets.Dataset
    eval_dataset: datasets.Dataset
    data_collator: Callable | None = None
    compute_metrics: Callable | None = None  # must produce "accuracy" (-> eval_accuracy)
    processing_class: Any = None  # tokenizer saved with the model
    trainer_cls: type | None = None  # None -> transformers.Trainer
    trainer_kwargs: dict = field(default_factory=dict)


class DataUnavailableError(RuntimeError):
    """A Hub dataset (or model) could not be reached; the message lists the offline options."""


def offline_options(task: str | None = None) -> str:
    """The ways to run without the Hub, for error messages."""
    return (
        "Offline options: pass local files in the Hub dataset's schema with --train_file/--validation_file "
        "(csv, json, jsonl or parquet), point --dataset_name at a local dataset directory, pre-download into "
        "the cache (--cache_dir / HF_HOME) on a machine with access, or run the built-in task that needs no "
        "download: --task digits."
    )


def unreachable_error(what: str, exc: BaseException, task: str | None = None) -> DataUnavailableError:
    """A `DataUnavailableError` for `what` ('dataset X', 'model Y') that failed with `exc`."""
    mode = " (HF_HUB_OFFLINE is set)" if _hub_offline() else ""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return DataUnavailableError(
        f"The {what} could not be reached from the Hugging Face Hub at {endpoint}{mode}: "
        f"{type(exc).__name__}: {exc}\n{offline_options(task)}"
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE") or os.environ.get(
        "HF_DATASETS_OFFLINE", ""
    ).strip().upper() in ("1", "ON", "YES", "TRUE")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the Hub could not be reached" (or the id does not exist there)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, OSError]
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    try:
        import requests

        errors.append(requests.exceptions.RequestException)
    except ImportError:
        pass
    try:
        from huggingface_hub import errors as hub_errors

        errors.append(hub_errors.HfHubHTTPError)
        errors.append(hub_errors.OfflineModeIsEnabled)
        errors.append(hub_errors.LocalEntryNotFoundError)
    except ImportError:
        pass
    try:
        from datasets.exceptions import DatasetNotFoundError

        errors.append(DatasetNotFoundError)
    except ImportError:
        pass
    return tuple(errors)


def _builder_for(path: str) -> str:
    ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    if ext not in _FILE_BUILDERS:
        raise ValueError(
            f"Unsupported data file {path!r}: the extension must be one of {sorted(_FILE_BUILDERS)} "
            "(csv, json/jsonl or parquet in the Hub dataset's schema)."
        )
    return _FILE_BUILDERS[ext]


def load_raw_datasets(task_args: TaskArguments, default_dataset: str, **load_kwargs) -> datasets.DatasetDict:
    """Load the task's data as a `DatasetDict` with "train" and "validation" splits.

    Local files (`--train_file`, `--validation_file`) win; otherwise `load_dataset(--dataset_name or default)`.
    A Hub dataset without a "validation" split uses its "test" split. A dataset that cannot be reached raises
    `DataUnavailableError` naming the offline options; the Hub client's own timeouts and `HF_HUB_OFFLINE` keep
    this from hanging. `max_train_samples` / `max_eval_samples` are applied here.
    """
    import datasets

    if task_args.train_file or task_args.validation_file:
        if not (task_args.train_file and task_args.validation_file):
            raise ValueError(
                "Pass both --train_file and --validation_file (got "
                f"train_file={task_args.train_file!r}, validation_file={task_args.validation_file!r})."
            )
        for path in (task_args.train_file, task_args.validation_file):
            if not os.path.exists(path):
                raise FileNotFoundError(f"Data file {path!r} does not exist.")
        builders = {_builder_for(task_args.train_file), _builder_for(task_args.validation_file)}
        if len(builders) != 1:
            raise ValueError(
                f"--train_file {task_args.train_file!r} and --validation_file {task_args.validation_file!r} must "
                "have the same format."
            )
        raw = datasets.load_dataset(
            builders.pop(),
            data_files={"train": task_args.train_file, "validation": task_args.validation_file},
            cache_dir=task_args.cache_dir,
            **load_kwargs,
        )
    else:
        name = task_args.dataset_name or default_dataset
        if name is None:
            raise ValueError(f"Task {task_args.task!r} needs --dataset_name or --train_file/--validation_file.")
        try:
            raw = datasets.load_dataset(
                name, task_args.dataset_config_name, cache_dir=task_args.cache_dir, **load_kwargs
            )
        except _network_errors() as exc:
            if isinstance(exc, FileNotFoundError) and os.path.exists(name):
                raise
            raise unreachable_error(f"dataset {name!r}", exc, task_args.task) from exc
        if "validation" not in raw:
            if "test" not in raw:
                raise ValueError(f"Dataset {name!r} has no 'validation' or 'test' split (splits: {list(raw)}).")
            raw["validation"] = raw.pop("test")
        raw = datasets.DatasetDict({"train": raw["train"], "validation": raw["validation"]})
    if task_args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(task_args.max_train_samples, len(raw["train"]))))
    if task_args.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(range(min(task_args.max_eval_samples, len(raw["validation"]))))
    return raw
