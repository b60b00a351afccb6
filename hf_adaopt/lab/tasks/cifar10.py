"""cifar10: 32x32 colour images in 10 classes (Hub `uoft-cs/cifar10`: img, label; 50,000 train / 10,000 test).

Model: VGG16-style CNN with BatchNorm (`--model vgg16`; `--model vgg16_w<N>` sets the first stage's width,
64 in VGG16, e.g. `vgg16_w8` for a quick test). `--augment` applies, per training image and on the fly,
the seed experiment's Keras `ImageDataGenerator` settings, in torch (no torchvision): random rotation within
+-20 degrees, width/height shift up to 20%, shear, zoom in [0.8, 1.2], horizontal flip, nearest fill.
The Hub's "test" split serves as validation.
"""

from __future__ import annotations

import math
import re

import torch

from hf_adaopt.lab.tasks.base import TaskArguments, TaskSetup, load_raw_datasets, prepare_image_task

DEFAULT_DATASET: str | None = "uoft-cs/cifar10"
# what a model card says of this task (model-index task type, dataset name); its Hub id is DEFAULT_DATASET
HUB_TASK_TYPE = "image-classification"
DATASET_LABEL = "CIFAR-10"
DEFAULT_EPOCHS = 20
NUM_LABELS = 10
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# per-channel mean and std of the CIFAR-10 training images in [0, 1]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# Augmentation ranges (Keras ImageDataGenerator arguments of the seed experiment).
ROTATION_DEGREES = 20.0
SHIFT_FRACTION = 0.2  # of the width / height
# Keras 2 reads shear_range in degrees, where 0.2 would be invisible; we read it in radians (~11.5 degrees),
# the visible shear the setting is meant to give.
SHEAR_RADIANS = 0.2
ZOOM_RANGE = 0.2  # scale factors in [1 - 0.2, 1 + 0.2], drawn independently for x and y
FLIP_PROBABILITY = 0.5

_VARIANT = re.compile(r"^vgg16(?:_w(\d+))?$")


def random_affine(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a batch (N, C, H, W) with one random affine map + horizontal flip per image.

    The map takes output coordinates to input coordinates (what `affine_grid` wants), in the normalized
    [-1, 1] frame: A = R(rotation) . Shear . diag(zoom_x, zoom_y), optionally mirrored in x, plus a shift.
    `grid_sample(padding_mode="border")` repeats edge pixels: Keras's fill_mode="nearest".
    """
    n, dtype, device = pixels.shape[0], torch.float32, pixels.device

    def uniform(low, high):
        return torch.rand(n, generator=generator, dtype=dtype, device=device) * (high - low) + low

    angle = uniform(-math.radians(ROTATION_DEGREES), math.radians(ROTATION_DEGREES))
    shear = uniform(-SHEAR_RADIANS, SHEAR_RADIANS)
    zoom_x, zoom_y = uniform(1 - ZOOM_RANGE, 1 + ZOOM_RANGE), uniform(1 - ZOOM_RANGE, 1 + ZOOM_RANGE)
    # a shift by a fraction f of the side is 2f in the [-1, 1] frame
    shift_x, shift_y = 2 * uniform(-SHIFT_FRACTION, SHIFT_FRACTION), 2 * uniform(-SHIFT_FRACTION, SHIFT_FRACTION)
    flip = torch.where(torch.rand(n, generator=generator, device=device) < FLIP_PROBABILITY, -1.0, 1.0).to(dtype)

    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear_m = torch.stack(
        [torch.stack([torch.ones_like(shear), -torch.sin(shear)], -1),
         torch.stack([torch.zeros_like(shear), torch.cos(shear)], -1)], -2
    )
    scale = torch.diag_embed(torch.stack([zoom_x * flip, zoom_y], -1))
    linear = rotation @ shear_m @ scale
    theta = torch.cat([linear, torch.stack([shift_x, shift_y], -1).unsqueeze(-1)], -1)  # (N, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, list(pixels.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(
        pixels.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.to(pixels.dtype)


def build_model(variant: str | None, shape, id2label: dict[int, str]):
    from hf_adaopt.lab.models import (  # transformers: when a model is built
        VGGConfig,
        VGGForImageClassification,
    )

    match = _VARIANT.match(variant or "vgg16")
    if match is None:
        raise ValueError(f"Unknown --model {variant!r} for task cifar10; use 'vgg16' or 'vgg16_w<N>' (e.g. vgg16_w8).")
    base_width = int(match.group(1) or 64)
    if base_width <= 0:
        raise ValueError(f"--model {variant!r}: the width must be positive.")
    # the classifier scales with the width: 512 at VGG16's 64
    config = VGGConfig(
        num_channels=shape[0], image_size=shape[1], base_width=base_width, classifier_hidden=8 * base_width,
        num_labels=NUM_LABELS, id2label=id2label,
    )
    return VGGForImageClassification(config)


def prepare(task_args: TaskArguments, training_args) -> TaskSetup:
    raw = load_raw_datasets(task_args, DEFAULT_DATASET)
    return prepare_image_task(raw, task_args, training_args, task="cifar10",
                              dataset=task_args.train_file or task_args.dataset_name or DEFAULT_DATASET, channels=3,
                              num_labels=NUM_LABELS, build_model=build_model, mean=MEAN, std=STD,
                              label_names=LABEL_NAMES, augment=random_affine if task_args.augment else None)
