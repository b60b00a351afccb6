"""End to end: train.py / run.py on every task with each core optimizer, DDP, bf16, defaults, push hand-off."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys

import pytest
from fixtures.image_fixtures import write_image_dataset
from fixtures.net import free_port
from fixtures.torch_threads import one_thread  # noqa: F401 (autouse)

from hf_adaopt.lab import registry, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCRIPT = os.path.join(REPO, "training_scripts", "train.py")
REPORT_KEYS = {"eval_loss", "eval_accuracy", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
               "epoch"}
RUN_FILES = {"eval_results.json", "train_results.json", "all_results.json", "trainer_state.json",
             "lr_trajectory.json", "run_config.json", "config.json", "model.safetensors"}
QUIET = ["--disable_tqdm", "true", "--use_cpu", "true", "--logging_steps", "1"]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    return {task: write_image_dataset(directory, task) for task in ("mnist", "cifar10")}


def _task_argv(task, image_files, tmp_path):
    if task == "digits":
        return ["--task", "digits", "--max_train_samples", "128"]
    train, val = image_files[task]
    argv = ["--task", task, "--train_file", train, "--validation_file", val, "--cache_dir", str(tmp_path / "cache")]
    return argv + (["--model", "vgg16_w2", "--augment"] if task == "cifar10" else [])


def _printed_report(out: str) -> dict:
    """The last printed eval dict (the Trainer's own log lines come before it, with formatted strings)."""
    line = [line for line in out.strip().splitlines() if line.startswith("{'eval_loss': ")][-1]
    report = ast.literal_eval(line)
    assert all(isinstance(value, float) for value in report.values()), report
    return report


def _check_run_dir(output_dir, optimizer, steps):
    assert RUN_FILES <= set(os.listdir(output_dir))
    with open(os.path.join(output_dir, "eval_results.json")) as f:
        assert REPORT_KEYS <= set(json.load(f))
    with open(os.path.join(output_dir, "train_results.json")) as f:
        assert {"train_loss", "train_runtime", "train_samples"} <= set(json.load(f))
    with open(os.path.join(output_dir, "lr_trajectory.json")) as f:
        trajectory = json.load(f)
    assert trajectory["step"] == list(range(1, steps + 1)) and len(trajectory["lr"]) == steps
    with open(os.path.join(output_dir, "run_config.json")) as f:
        config = json.load(f)
    assert config["optimizer"] == optimizer
    assert {"learning_rate", "num_train_epochs", "per_device_train_batch_size", "seed", "bf16",
            "gradient_accumulation_steps", "weight_decay", "max_grad_norm", "lr_scheduler_type"} <= set(
        config["training_args"])
    assert {"torch", "transformers", "accelerate"} <= set(config["versions"]) and config["device"]
    return config


# Task and optimizer meet only through the Trainer: each task trains with AdaOpt (its callback and trajectory), each
# optimizer trains on digits (below), rather than every pair.
@pytest.mark.parametrize(("task", "optimizer"), [("digits", "adaopt"), ("mnist", "adaopt"), ("cifar10", "adaopt"),
                                                 ("mnist", "sgd")])
def test_each_task_trains_through_the_trainer_path(task, optimizer, image_files, tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = _task_argv(task, image_files, tmp_path) + [
        "--optimizer", optimizer, "--output_dir", str(out_dir), "--max_steps", "3", *QUIET]
    assert run.main(argv) == 0
    report = _printed_report(capsys.readouterr().out)
    assert set(report) == REPORT_KEYS
    config = _check_run_dir(out_dir, optimizer, steps=3)
    assert config["training_args"]["learning_rate"] == 1e-3
    assert config["training_args"]["lr_scheduler_type"] == "constant"
    with open(out_dir / "trainer_state.json") as f:
        history = json.load(f)["log_history"]
    assert any("loss" in entry for entry in history) and any("eval_accuracy" in entry for entry in history)
    if optimizer == "adaopt":
        assert any("adaopt/effective_lr" in entry for entry in history)
        assert {"variance_factor", "landscape_factor", "base_scale"} <= set(
            json.loads((out_dir / "lr_trajectory.json").read_text()))


@pytest.mark.parametrize("optimizer", [n for n in registry.available_optimizers() if n != "adaopt"])
def test_every_optimizer_runs_through_the_same_path_at_its_default_lr(optimizer, tmp_path, capsys):
    assert run.main(["--optimizer", optimizer, "--max_steps", "3", "--max_train_samples", "96",
                     "--output_dir", str(tmp_path), *QUIET]) == 0
    report = _printed_report(capsys.readouterr().out)
    assert math.isfinite(report["eval_loss"])
    config = _check_run_dir(tmp_path, optimizer, steps=3)
    assert config["training_args"]["learning_rate"] == registry.get(optimizer).default_lr


@pytest.mark.parametrize("optimizer", ["adaopt", "adam"])
def test_digits_reaches_90_percent_with_defaults(optimizer, tmp_path):
    task_args, opt_args, training_args = run.parse_args(
        ["--optimizer", optimizer, "--output_dir", str(tmp_path), "--disable_tqdm", "true", "--use_cpu", "true"])
    result = run.run_training(task_args, opt_args, training_args)
    assert result["eval"]["eval_accuracy"] >= 0.9, result["eval"]
    assert result["eval"]["epoch"] == 10
    assert result["output_dir"] == str(tmp_path)
    assert len(result["lr_trajectory"]["lr"]) == 10 * 45  # 1437 examples / batch 32 = 45 steps per epoch
    assert [e["epoch"] for e in result["log_history"] if "eval_accuracy" in e][:2] == [1.0, 2.0]


def test_seed_defaults_apply_only_when_not_given(tmp_path):
    _, _, args = run.parse_args(["--task", "mnist", "--output_dir", str(tmp_path)])
    assert (args.learning_rate, args.per_device_train_batch_size, args.num_train_epochs) == (1e-3, 32, 10)
    assert (args.weight_decay, args.lr_scheduler_type.value, args.eval_strategy.value) == (0.0, "constant", "epoch")
    assert (args.save_strategy.value, args.report_to) == ("no", [])
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (0.9, 0.999, 1e-8)
    _, _, args = run.parse_args(["--task", "cifar10", "--learning_rate", "0.05", "--lr_scheduler_type", "linear",
                                 "--per_device_train_batch_size=8", "--num_train_epochs", "2"])
    assert (args.learning_rate, args.lr_scheduler_type.value) == (0.05, "linear")
    assert (args.per_device_train_batch_size, args.num_train_epochs) == (8, 2)
    assert args.output_dir == os.path.join("out", "cifar10-adaopt")
    _, opt_args, args = run.parse_args(["--optimizer", "prodigy", "--optimizer_kwargs", '{"d0": 1e-5}'])
    assert args.learning_rate == 1.0 and opt_args.optimizer_kwargs == {"d0": 1e-5}
    assert get_epochs("cifar10") == 20


def get_epochs(task):
    _, _, args = run.parse_args(["--task", task])
    return args.num_train_epochs


def test_bad_names_are_rejected_before_training():
    with pytest.raises(ValueError, match="Unknown --optimizer 'lion'"):
        run.parse_args(["--optimizer", "lion"])
    with pytest.raises(ValueError, match="Unknown --task 'svhn'"):
        run.parse_args(["--task", "svhn"])


def test_optimizer_kwargs_reach_the_optimizer(tmp_path):
    result_dir = tmp_path / "sgd"
    assert run.main(["--optimizer", "sgd", "--optimizer_kwargs", '{"momentum": 0.5}', "--max_steps", "2",
                     "--max_train_samples", "64", "--output_dir", str(result_dir), *QUIET]) == 0
    config = json.loads((result_dir / "run_config.json").read_text())
    assert config["optimizer_defaults"]["momentum"] == 0.5 and config["optimizer_class"] == "SGD"


def test_bf16_run_on_cpu(tmp_path, capsys):
    assert run.main(["--task", "digits", "--bf16", "--max_steps", "5", "--max_train_samples", "160",
                     "--output_dir", str(tmp_path), *QUIET]) == 0
    report = _printed_report(capsys.readouterr().out)
    assert report["eval_loss"] == report["eval_loss"]  # finite, not NaN
    assert _check_run_dir(tmp_path, "adaopt", steps=5)["training_args"]["bf16"] is True


def test_push_to_hub_hands_the_finished_run_to_hub_push_run(tmp_path, monkeypatch):
    import hf_adaopt.lab.hub

    calls = []

    def fake_push_run(output_dir, repo_id, **kwargs):
        calls.append((repo_id, kwargs, sorted(os.listdir(output_dir))))

    monkeypatch.setattr(hf_adaopt.lab.hub, "push_run", fake_push_run)
    monkeypatch.setenv("HF_TOKEN", "hf_test")  # the push target is checked before training
    out_dir = tmp_path / "digits-run"
    assert run.main(["--push_to_hub", "--max_steps", "2", "--max_train_samples", "64",
                     "--output_dir", str(out_dir), *QUIET]) == 0
    (repo_id, kwargs, files), = calls
    assert repo_id == "digits-run" and kwargs["private"] is False
    assert RUN_FILES <= set(files)  # every local file exists before the push starts
    calls.clear()
    assert run.main(["--push_to_hub", "--hub_model_id", "me/adaopt-digits", "--max_steps", "1",
                     "--max_train_samples", "32", "--output_dir", str(out_dir), "--overwrite_output_dir", *QUIET]) == 0
    assert calls[0][0] == "me/adaopt-digits"



def test_two_process_cpu_ddp_run_of_train_script(tmp_path):
    out_dir = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    proc = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
         TRAIN_SCRIPT, "--task", "digits", "--optimizer", "adaopt", "--max_steps", "6", "--max_train_samples", "256",
         "--output_dir", str(out_dir), *QUIET],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = _check_run_dir(out_dir, "adaopt", steps=6)
    assert config["training_args"]["world_size"] == 2
    # the report is printed once, by the main process (the Trainer's own log lines hold formatted strings)
    reports = [ast.literal_eval(line) for line in proc.stdout.splitlines() if line.startswith("{'eval_loss': ")]
    assert sum(isinstance(r["eval_loss"], float) for r in reports) == 1


def test_hf_adaopt_train_command(tmp_path, capsys):
    from hf_adaopt.lab.cli import main as cli_main

    assert cli_main(["train", "--max_steps", "1", "--max_train_samples", "32", "--output_dir", str(tmp_path),
                     *QUIET]) == 0
    assert set(_printed_report(capsys.readouterr().out)) == REPORT_KEYS


@pytest.mark.parametrize(
    "name, distributed_type, mixed_precision",
    [("cpu_2proc", "MULTI_GPU", "no"), ("single_gpu_bf16", "NO", "bf16"), ("multi_gpu_ddp", "MULTI_GPU", "bf16"),
     ("fsdp2", "FSDP", "bf16")],
)
def test_accelerate_configs_load(name, distributed_type, mixed_precision):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(REPO, "training_scripts", "accelerate_configs", f"{name}.yaml"))
    assert config.distributed_type.value == distributed_type
    assert str(getattr(config.mixed_precision, "value", config.mixed_precision)) == mixed_precision
    if name == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2
    if name == "cpu_2proc":  # multi-process launcher; ACCELERATE_USE_CPU=1 keeps it on the CPU
        assert config.num_processes == 2 and not config.use_cpu


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "foo"], "Unknown --task 'foo'; choose one of digits, mnist, cifar10, imdb, squad, charlm, textcls."),
        (["--task", "digits", "--optimizer", "foo"], "Unknown --optimizer 'foo'; choose one of adaopt"),
    ],
)
def test_bad_command_line_exits_2_with_the_message_not_a_traceback(argv, message, capsys):
    from hf_adaopt.lab.run import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-adaopt train: error: ") and message in err
    assert "Traceback" not in err


def test_invalid_hub_model_id_is_refused_before_training(tmp_path, capsys):
    from hf_adaopt.lab.run import main

    argv = ["--task", "digits", "--output_dir", str(tmp_path / "run"), "--push_to_hub", "--hub_model_id", "user/bad--name"]
    assert main(argv) == 2
    assert "invalid repo id 'user/bad--name'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "eval_results.json").exists()  # nothing trained, nothing to lose
