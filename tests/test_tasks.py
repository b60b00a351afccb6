"""Tasks: data loading (files, limits, offline errors), image decoding, augmentation, task setups."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from fixtures.image_fixtures import write_image_dataset
from fixtures.net import free_port
from fixtures.torch_threads import one_thread  # noqa: F401 (autouse)
from transformers import TrainingArguments

from hf_adaopt.lab.tasks import TASK_NAMES, DataUnavailableError, TaskArguments, get_task, load_raw_datasets
from hf_adaopt.lab.tasks import cifar10 as cifar10_task
from hf_adaopt.lab.tasks.base import image_to_array

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def training_args(tmp_path):
    return TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, disable_tqdm=True)



# ----------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_module_exposes_the_contract(name):
    module = get_task(name)
    assert callable(module.prepare)
    assert isinstance(module.DEFAULT_EPOCHS, int) and module.DEFAULT_EPOCHS > 0
    assert module.DEFAULT_DATASET is None or isinstance(module.DEFAULT_DATASET, str)


def test_unknown_task_raises_value_error():
    with pytest.raises(ValueError, match="Unknown task 'svhn'.*digits, mnist"):
        get_task("svhn")


# ----------------------------------------------------------------------------------------------- loading


def test_local_files_load_as_train_and_validation_with_limits(tmp_path):
    train, val = write_image_dataset(tmp_path, "mnist", n_train=20, n_eval=10)
    args = TaskArguments(task="mnist", train_file=train, validation_file=val, max_train_samples=7,
                         max_eval_samples=3, cache_dir=str(tmp_path / "cache"))
    raw = load_raw_datasets(args, "ylecun/mnist")
    assert set(raw) == {"train", "validation"}
    assert (len(raw["train"]), len(raw["validation"])) == (7, 3)
    assert raw["train"].column_names == ["image", "label"]


def test_local_files_need_both_splits_and_a_known_format(tmp_path):
    train, _ = write_image_dataset(tmp_path, "mnist", n_train=4, n_eval=2)
    with pytest.raises(ValueError, match="both --train_file and --validation_file"):
        load_raw_datasets(TaskArguments(task="mnist", train_file=train), "ylecun/mnist")
    bad = tmp_path / "train.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="extension"):
        load_raw_datasets(TaskArguments(task="mnist", train_file=str(bad), validation_file=str(bad)), "x")
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        load_raw_datasets(
            TaskArguments(task="mnist", train_file=train, validation_file=str(tmp_path / "missing.parquet")), "x"
        )


def test_unreachable_hub_fails_fast_naming_the_offline_options(monkeypatch):
    port = free_port()  # nothing listens there: connection refused
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(DataUnavailableError) as info:
        load_raw_datasets(TaskArguments(task="mnist"), "ylecun/mnist")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "'ylecun/mnist' could not be reached" in message
    assert "--train_file/--validation_file" in message and "--task digits" in message


@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["HF_HUB_OFFLINE", "unreachable_endpoint"],
)
def test_train_script_offline_exits_with_the_message(tmp_path, env):
    """The whole script, in a fresh process (the Hub client reads these variables at import)."""
    full_env = {**os.environ, **env, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "training_scripts", "train.py"), "--task", "mnist",
         "--output_dir", str(tmp_path / "out")],
        env=full_env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert time.monotonic() - start < 90
    assert "could not be reached" in proc.stderr and "--task digits" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------- images


def test_image_to_array_accepts_the_hub_forms():
    from PIL import Image

    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    rgb = np.stack([grey, grey + 1, grey + 2], axis=-1)
    assert np.array_equal(image_to_array(Image.fromarray(grey), 1), grey[None])
    assert np.array_equal(image_to_array(Image.fromarray(rgb), 3), rgb.transpose(2, 0, 1))
    assert np.array_equal(image_to_array(rgb.tolist(), 3), rgb.transpose(2, 0, 1))  # HWC lists (json)
    assert np.array_equal(image_to_array(grey / 255.0, 1), grey[None])  # floats in [0, 1]
    assert image_to_array(Image.fromarray(rgb), 1).shape == (1, 8, 8)  # PIL converts to grey
    assert image_to_array(grey, 3).shape == (3, 8, 8)


@pytest.mark.parametrize("task, fmt", [("mnist", "parquet"), ("mnist", "json"), ("cifar10", "parquet")])
def test_image_tasks_give_normalized_float_batches(tmp_path, training_args, task, fmt):
    train, val = write_image_dataset(tmp_path, task, n_train=16, n_eval=8, fmt=fmt)
    args = TaskArguments(task=task, train_file=train, validation_file=val, cache_dir=str(tmp_path / "cache"),
                         model="vgg16_w2" if task == "cifar10" else None)
    setup = get_task(task).prepare(args, training_args)
    channels, size = (1, 28) if task == "mnist" else (3, 32)
    batch = setup.eval_dataset[:8]
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"].shape == (8, channels, size, size)
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (8,)
    # normalized: the fixture's 0..79 noise sits below the mean, its 255 squares far above
    assert batch["pixel_values"].max() > 1.5 and batch["pixel_values"].min() < 0
    out = setup.model(**batch)
    assert out.logits.shape == (8, 10)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits.float(), batch["labels"]))
    # the task's metric: the share of argmax(logits) == label (here 6 of 8 right)
    from transformers import EvalPrediction

    logits = torch.zeros(8, 10)
    logits[torch.arange(8), batch["labels"]] = 1.0
    logits[:2, (batch["labels"][:2] + 1) % 10] = 2.0
    metrics = setup.compute_metrics(EvalPrediction(predictions=logits.numpy(), label_ids=batch["labels"].numpy()))
    assert metrics == {"accuracy": 0.75}
    assert len(setup.train_dataset) == 16


def test_mnist_model_variants(tmp_path, training_args):
    train, val = write_image_dataset(tmp_path, "mnist", n_train=4, n_eval=2)
    common = dict(task="mnist", train_file=train, validation_file=val, cache_dir=str(tmp_path / "cache"))
    assert type(get_task("mnist").prepare(TaskArguments(**common), training_args).model).__name__ == (
        "SimpleCNNForImageClassification"
    )
    mlp = get_task("mnist").prepare(TaskArguments(**common, model="mlp"), training_args).model
    assert type(mlp).__name__ == "MLPForImageClassification" and mlp.config.input_dim == 784
    with pytest.raises(ValueError, match="Unknown --model 'resnet'"):
        get_task("mnist").prepare(TaskArguments(**common, model="resnet"), training_args)


def test_digits_split_is_fixed_stratified_and_offline(training_args):
    first = get_task("digits").prepare(TaskArguments(), training_args)
    second = get_task("digits").prepare(TaskArguments(), training_args)
    assert (len(first.train_dataset), len(first.eval_dataset)) == (1437, 360)
    labels = first.eval_dataset[:]["labels"]
    assert torch.equal(labels, second.eval_dataset[:]["labels"])
    assert torch.bincount(labels, minlength=10).min() >= 35  # every class about a tenth of 360
    assert first.train_dataset[:4]["pixel_values"].shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="takes no --dataset_name"):
        get_task("digits").prepare(TaskArguments(dataset_name="ylecun/mnist"), training_args)


# ----------------------------------------------------------------------------------------------- augmentation


def _checker(n=4, size=16):
    x = torch.zeros(n, 3, size, size)
    x[:, 0, ::2, 1::2] = 1.0
    x[:, 1, : size // 2] = 0.5
    x[:, 2, :, : size // 4] = 0.25
    return x


def test_random_affine_with_zero_ranges_is_the_identity(monkeypatch):
    for name in ("ROTATION_DEGREES", "SHIFT_FRACTION", "SHEAR_RADIANS", "ZOOM_RANGE", "FLIP_PROBABILITY"):
        monkeypatch.setattr(cifar10_task, name, 0.0)
    x = _checker()
    torch.testing.assert_close(cifar10_task.random_affine(x), x, atol=1e-5, rtol=0)


def test_random_affine_flip_only_mirrors_the_width(monkeypatch):
    for name in ("ROTATION_DEGREES", "SHIFT_FRACTION", "SHEAR_RADIANS", "ZOOM_RANGE"):
        monkeypatch.setattr(cifar10_task, name, 0.0)
    monkeypatch.setattr(cifar10_task, "FLIP_PROBABILITY", 1.0)
    x = _checker()
    torch.testing.assert_close(cifar10_task.random_affine(x), torch.flip(x, dims=[-1]), atol=1e-5, rtol=0)


def test_random_affine_shift_fills_with_the_nearest_edge(monkeypatch):
    for name in ("ROTATION_DEGREES", "SHEAR_RADIANS", "ZOOM_RANGE", "FLIP_PROBABILITY"):
        monkeypatch.setattr(cifar10_task, name, 0.0)
    x = torch.arange(16.0).repeat(16, 1).expand(2, 3, 16, 16).contiguous()  # value = column index
    out = cifar10_task.random_affine(x, generator=torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 15  # border padding: no zeros pulled in from outside
    assert not torch.allclose(out, x)


def test_random_affine_is_random_but_reproducible():
    x = _checker(n=8, size=32)
    a = cifar10_task.random_affine(x, generator=torch.Generator().manual_seed(3))
    b = cifar10_task.random_affine(x, generator=torch.Generator().manual_seed(3))
    c = cifar10_task.random_affine(x, generator=torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, c)
    assert 0.0 <= a.min() and a.max() <= 1.0  # bilinear + border: a convex combination of pixels


def test_cifar10_augments_the_training_split_only(tmp_path, training_args):
    train, val = write_image_dataset(tmp_path, "cifar10", n_train=8, n_eval=8)
    args = TaskArguments(task="cifar10", train_file=train, validation_file=val, augment=True, model="vgg16_w2",
                         cache_dir=str(tmp_path / "cache"))
    setup = get_task("cifar10").prepare(args, training_args)
    torch.manual_seed(0)
    assert not torch.equal(setup.train_dataset[:8]["pixel_values"], setup.train_dataset[:8]["pixel_values"])
    assert torch.equal(setup.eval_dataset[:8]["pixel_values"], setup.eval_dataset[:8]["pixel_values"])
    plain = get_task("cifar10").prepare(TaskArguments(**{**args.__dict__, "augment": False}), training_args)
    assert torch.equal(plain.train_dataset[:8]["pixel_values"], plain.train_dataset[:8]["pixel_values"])


def test_cifar10_model_names(tmp_path, training_args):
    train, val = write_image_dataset(tmp_path, "cifar10", n_train=4, n_eval=2)
    common = dict(task="cifar10", train_file=train, validation_file=val, cache_dir=str(tmp_path / "cache"))
    model = get_task("cifar10").prepare(TaskArguments(**common, model="vgg16_w4"), training_args).model
    assert model.config.base_width == 4 and model.config.id2label[0] == "0"
    with pytest.raises(ValueError, match="vgg16_w<N>"):
        get_task("cifar10").prepare(TaskArguments(**common, model="resnet18"), training_args)


def test_model_name_or_path_loads_a_saved_model_or_names_the_offline_options(tmp_path, training_args, monkeypatch):
    from hf_adaopt.lab.models import MLPConfig, MLPForImageClassification

    saved = MLPForImageClassification(MLPConfig(input_dim=64))
    saved.save_pretrained(tmp_path / "saved")
    setup = get_task("digits").prepare(TaskArguments(model_name_or_path=str(tmp_path / "saved")), training_args)
    torch.testing.assert_close(setup.model.classifier.weight, saved.classifier.weight, rtol=0, atol=0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(DataUnavailableError, match="model 'someone/mlp-digits' could not be reached"):
        get_task("digits").prepare(TaskArguments(model_name_or_path="someone/mlp-digits"), training_args)
