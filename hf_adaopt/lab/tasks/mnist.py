"""mnist: handwritten digits (Hub `ylecun/mnist`: image, label; 60,000 train / 10,000 test 28x28 grey).

Model: a simple CNN (conv32-pool-conv64-pool-dense128-dropout, the seed experiment's) or `--model mlp`, the
128-128-64 ReLU MLP on the 784 pixels. The Hub's "test" split serves as validation. Local files in the same
schema (`--train_file`/`--validation_file`, images as PIL-encoded parquet or arrays) work offline.
"""

from __future__ import annotations

from hf_adaopt.lab.tasks.base import TaskArguments, TaskSetup, load_raw_datasets, prepare_image_task

DEFAULT_DATASET: str | None = "ylecun/mnist"
# what a model card says of this task (model-index task type, dataset name); its Hub id is DEFAULT_DATASET
HUB_TASK_TYPE = "image-classification"
DATASET_LABEL = "MNIST"
DEFAULT_EPOCHS = 10
MODELS = ("cnn", "mlp")
NUM_LABELS = 10
# the usual MNIST normalization (mean and std of the training pixels in [0, 1])
MEAN, STD = (0.1307,), (0.3081,)


def build_model(variant: str | None, shape, id2label: dict[int, str]):
    from hf_adaopt.lab.models import (  # transformers: imported when a model is built, not with the task
        MLPConfig,
        MLPForImageClassification,
        SimpleCNNConfig,
        SimpleCNNForImageClassification,
    )

    variant = variant or "cnn"
    if variant == "cnn":
        config = SimpleCNNConfig(
            num_channels=shape[0], image_size=shape[1], channels=(32, 64), hidden_size=128, dropout=0.5,
            num_labels=NUM_LABELS, id2label=id2label,
        )
        return SimpleCNNForImageClassification(config)
    if variant == "mlp":
        config = MLPConfig(input_dim=int(shape[0] * shape[1] * shape[2]), num_labels=NUM_LABELS, id2label=id2label)
        return MLPForImageClassification(config)
    raise ValueError(f"Unknown --model {variant!r} for task mnist; choose one of {MODELS}.")


def prepare(task_args: TaskArguments, training_args) -> TaskSetup:
    if task_args.model not in (None, *MODELS):
        raise ValueError(f"Unknown --model {task_args.model!r} for task mnist; choose one of {MODELS}.")
    raw = load_raw_datasets(task_args, DEFAULT_DATASET)
    return prepare_image_task(raw, task_args, training_args, task="mnist",
                              dataset=task_args.train_file or task_args.dataset_name or DEFAULT_DATASET, channels=1,
                              num_labels=NUM_LABELS, build_model=build_model, mean=MEAN, std=STD)
