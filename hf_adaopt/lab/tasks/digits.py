"""digits: scikit-learn's `load_digits` (1,797 8x8 grey images, 10 classes) — the offline default task.

The data ships with scikit-learn, so this task runs anywhere without a download. A fixed stratified split
(seed 0) keeps 1,437 images for training and 360 for validation. Model: the 128-128-64 ReLU MLP on the 64
pixels (default), or `--model cnn` for the simple CNN on the 8x8 image. A full run takes seconds on a CPU.

The models are so small that intra-op threads only add synchronization (on a busy 2-core machine a step took
~15x longer with 2 threads than with 1), so on CPU this task runs torch with one thread unless
`OMP_NUM_THREADS` says otherwise.
"""

from __future__ import annotations

from hf_adaopt.core.logs import get_logger
from hf_adaopt.lab.tasks.base import (
    TaskArguments,
    TaskSetup,
    limit_samples,
    load_raw_datasets,
    prepare_image_task,
)

logger = get_logger(__name__)

DEFAULT_DATASET: str | None = None  # built in: sklearn.datasets.load_digits
# what a model card says of this task (model-index task type, dataset name); its Hub id is DEFAULT_DATASET
HUB_TASK_TYPE = "image-classification"
DATASET_LABEL = "scikit-learn digits (load_digits, 8x8)"
DEFAULT_EPOCHS = 10
MODELS = ("mlp", "cnn")
NUM_LABELS = 10
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: every run and every optimizer sees the same split


def load_digits_dataset(validation_fraction: float = VALIDATION_FRACTION):
    """scikit-learn digits as a DatasetDict in the mnist Hub schema ("image": uint8 8x8, "label")."""
    import datasets
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # pixel values are 0..16; scale to the 0..255 range of every other image task
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    x_train, x_val, y_train, y_val = train_test_split(
        images, digits.target, test_size=validation_fraction, random_state=SPLIT_SEED, stratify=digits.target
    )
    features = datasets.Features(
        {
            "image": datasets.Array2D(shape=(8, 8), dtype="uint8"),
            "label": datasets.ClassLabel(names=[str(i) for i in range(NUM_LABELS)]),
        }
    )

    def split(x, y):
        return datasets.Dataset.from_dict({"image": list(x), "label": y.tolist()}, features=features)

    return datasets.DatasetDict({"train": split(x_train, y_train), "validation": split(x_val, y_val)})


def build_model(variant: str | None, shape):
    from hf_adaopt.lab.models import (  # transformers: imported when a model is built, not with the task
        MLPConfig,
        MLPForImageClassification,
        SimpleCNNConfig,
        SimpleCNNForImageClassification,
    )

    variant = variant or "mlp"
    id2label = {i: str(i) for i in range(NUM_LABELS)}
    if variant == "mlp":
        config = MLPConfig(input_dim=int(shape[0] * shape[1] * shape[2]), num_labels=NUM_LABELS, id2label=id2label)
        return MLPForImageClassification(config)
    if variant == "cnn":
        # two pools take 8x8 to 2x2; dropout off: the data set is small and clean
        config = SimpleCNNConfig(
            num_channels=shape[0], image_size=shape[1], channels=(32, 64), num_labels=NUM_LABELS, dropout=0.0,
            id2label=id2label,
        )
        return SimpleCNNForImageClassification(config)
    raise ValueError(f"Unknown --model {variant!r} for task digits; choose one of {MODELS}.")


def _single_thread_on_cpu(training_args) -> None:
    import os

    import torch

    if training_args.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > 1:
        logger.info("digits: torch.set_num_threads(1) (tiny model on CPU; set OMP_NUM_THREADS to override)")
        torch.set_num_threads(1)


def prepare(task_args: TaskArguments, training_args) -> TaskSetup:
    _single_thread_on_cpu(training_args)
    if task_args.dataset_name is not None:
        raise ValueError(
            f"--task digits uses scikit-learn's built-in digits and takes no --dataset_name (got "
            f"{task_args.dataset_name!r}); for other image data use --task mnist with --dataset_name or files."
        )
    if task_args.train_file or task_args.validation_file:
        raw = load_raw_datasets(task_args, DEFAULT_DATASET)
    else:
        raw = limit_samples(load_digits_dataset(), task_args)
    # digits names its labels 0-9 itself (build_model); the normalization is the training split's
    return prepare_image_task(raw, task_args, training_args, task="digits", dataset="digits", channels=1,
                              num_labels=NUM_LABELS, build_model=lambda variant, shape, _: build_model(variant, shape))
