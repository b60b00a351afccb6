"""hf-adaopt compare end to end on digits (tiny: few samples, one epoch) and its runner logic (resume, shards)."""

import json
import os
import shutil

import pytest
from test_report import assert_report_sections

from hf_adaopt.lab import analysis, compare, plots, report, runner
from hf_adaopt.lab import run as run_mod

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--num_train_epochs", "1", "--max_train_samples", "64", "--max_eval_samples", "64"]
RECORD_KEYS = {
    "task",
    "optimizer",
    "seed",
    "learning_rate",
    "run_id",
    "eval",
    "train",
    "eval_curve",
    "train_loss_curve",
    "lr_trajectory",
    "metrics",
    "elapsed_s",
}


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory):
    """A real comparison: AdaOpt and SGD x 2 seeds on 64 digits for one epoch (2 optimizer steps per run)."""
    out = tmp_path_factory.mktemp("cmp") / "compare-digits"
    assert compare.main(["--optimizers", "adaopt,sgd", "--seeds", "2", "--output_dir", str(out), *TINY]) == 0
    return out


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_tiny_compare_writes_all_artefacts(tiny_compare):
    out = tiny_compare
    lines = read_jsonl(out / "results.jsonl")
    assert len(lines) == 4
    assert {(r["optimizer"], r["seed"]) for r in lines} == {
        ("adaopt", 0),
        ("adaopt", 1),
        ("sgd", 0),
        ("sgd", 1),
    }
    for r in lines:
        assert RECORD_KEYS <= set(r)
        assert r["task"] == "digits" and r["learning_rate"] == 1e-3 and r["lr_grid"] is None
        assert 0.0 <= r["eval"]["eval_accuracy"] <= 1.0 and r["eval"]["epoch"] == 1.0
        assert r["eval_curve"][-1]["eval_accuracy"] == r["eval"]["eval_accuracy"]
        assert r["lr_trajectory"]["step"] == [1, 2]  # 64 samples / batch 32, one epoch
        assert r["metrics"]["train_time_s"] > 0 and r["metrics"]["total_steps"] == 2
        assert r["config"]["max_train_samples"] == 64 and r["config"]["num_train_epochs"] == 1.0
        assert os.path.isfile(os.path.join(out, "runs", r["run_id"], "eval_results.json"))
        assert os.path.isfile(os.path.join(out, "runs", r["run_id"], "run.log"))
        assert r["train_command"].startswith("hf-adaopt train ") and "--seed" in r["train_command"]
    sgd = [r for r in lines if r["optimizer"] == "sgd"]
    assert all(r["metrics"]["lr_variance"] == 0.0 for r in sgd)  # constant lr by construction

    data = json.loads((out / "results.json").read_text())
    assert {"groups", "comparisons", "threshold", "environment", "command", "summary", "plots"} <= set(data)
    assert [g["optimizer"] for g in data["groups"]] == ["adaopt", "sgd"]
    assert {c["metric"] for c in data["comparisons"]} == {m for m, *_ in analysis.TESTED_METRICS}
    assert data["command"].startswith("hf-adaopt compare --optimizers adaopt,sgd")
    assert "torch" in data["environment"] and "device" in data["environment"]

    assert_report_sections((out / "report.md").read_text())
    from matplotlib import image

    assert len(data["plots"]) == 4
    for name in data["plots"]:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        assert image.imread(out / name).shape[2] in (3, 4)
    config = json.loads((out / "compare_config.json").read_text())
    assert config["grid"]["optimizers"] == ["adaopt", "sgd"] and config["grid"]["seeds"] == [0, 1]


def test_console_output_ends_with_the_summary_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_mod, "run_training", fake_run_training)
    out = tmp_path / "c"
    assert compare.main(["--optimizers", "adaopt", "--seeds", "1", "--output_dir", str(out), *TINY]) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert stdout[-3].startswith("| optimizer") and stdout[-1].startswith("| adaopt ")


def test_report_rebuilds_from_results_jsonl_alone(tiny_compare, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tiny_compare / "results.jsonl", alone / "results.jsonl")
    assert report.main([str(alone)]) == 0
    original = json.loads((tiny_compare / "results.json").read_text())
    rebuilt = json.loads((alone / "results.json").read_text())
    assert rebuilt["groups"] == original["groups"]
    assert rebuilt["comparisons"] == original["comparisons"]
    assert rebuilt["command"] == original["command"]  # recorded in every run line
    assert (alone / "report.md").is_file() and len(rebuilt["plots"]) == 4


class CountingRuns:
    """Stands in for run_training (`fake_run_training`): counts the runs it starts and can fail one to simulate an
    interruption."""

    def __init__(self, fail_at=None):
        self.started = []
        self.fail_at = fail_at

    def __call__(self, task_args, opt_args, training_args):
        self.started.append((opt_args.optimizer, training_args.seed))
        if self.fail_at is not None and len(self.started) == self.fail_at:
            raise RuntimeError("simulated crash in the middle of a comparison")
        return fake_run_training(task_args, opt_args, training_args)


def test_resume_after_an_interruption_reruns_nothing_that_finished(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "r")
    args = ["--optimizers", "adaopt,sgd", "--output_dir", out, *TINY]
    crash = CountingRuns(fail_at=3)
    monkeypatch.setattr(run_mod, "run_training", crash)
    assert compare.main([*args, "--seeds", "2"]) == 1  # interrupted in the third of four runs
    assert "simulated crash" in capsys.readouterr().err
    assert [(r["optimizer"], r["seed"]) for r in read_jsonl(os.path.join(out, "results.jsonl"))] == [
        ("adaopt", 0),
        ("sgd", 0),
    ]
    # resume with a larger grid: only the runs that are not in results.jsonl execute
    counter = CountingRuns()
    monkeypatch.setattr(run_mod, "run_training", counter)
    assert compare.main([*args, "--seeds", "3"]) == 0
    assert sorted(counter.started) == [("adaopt", 1), ("adaopt", 2), ("sgd", 1), ("sgd", 2)]
    lines = read_jsonl(os.path.join(out, "results.jsonl"))
    assert len(lines) == 6 and len({r["run_id"] for r in lines}) == 6
    # and a third time: nothing left to run
    again = CountingRuns()
    monkeypatch.setattr(run_mod, "run_training", again)
    assert compare.main([*args, "--seeds", "3"]) == 0
    assert again.started == []


def fake_run_training(task_args, opt_args, training_args):
    """A deterministic stand-in for run_training (shape of its return value), for the runner-logic tests."""
    acc = 0.5 + 0.01 * training_args.seed + (0.2 if opt_args.optimizer == "adaopt" else 0.0)
    history = [
        {"loss": 1.0, "step": 1, "epoch": 0.5},
        {"eval_loss": 1.0 - acc, "eval_accuracy": acc - 0.1, "step": 2, "epoch": 1.0},
        {"eval_loss": 0.9 - acc, "eval_accuracy": acc, "step": 4, "epoch": 2.0},
    ]
    lr = training_args.learning_rate
    traj = {
        "step": [1, 2, 3, 4],
        "lr": [lr, lr * 1.5, lr, lr] if opt_args.optimizer == "adaopt" else [lr] * 4,
    }
    return {
        "eval": {"eval_loss": 0.9 - acc, "eval_accuracy": acc, "eval_runtime": 0.01, "epoch": 2.0},
        "train": {"train_runtime": 0.5, "train_loss": 1.0, "epoch": 2.0},
        "log_history": history,
        "lr_trajectory": traj,
        "output_dir": training_args.output_dir,
    }


def test_config_mismatch_is_refused_unless_overwrite_output_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_mod, "run_training", fake_run_training)
    out = str(tmp_path / "m")
    base = ["--optimizers", "adaopt,sgd", "--seeds", "2", "--output_dir", out]
    assert compare.main([*base, "--num_train_epochs", "1"]) == 0
    with pytest.raises(SystemExit) as exc:
        compare.main([*base, "--num_train_epochs", "2"])
    assert exc.value.code == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert compare.main([*base, "--num_train_epochs", "2", "--overwrite_output_dir"]) == 0
    lines = read_jsonl(os.path.join(out, "results.jsonl"))
    assert len(lines) == 4 and {r["config"]["num_train_epochs"] for r in lines} == {2.0}
    # options that do not change results (here the reporting integration) keep the finished runs valid
    assert compare.main([*base, "--num_train_epochs", "2", "--report_to", "none"]) == 0
    assert len(read_jsonl(os.path.join(out, "results.jsonl"))) == 4


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_partition_the_grid(count):
    grid = runner.build_grid("digits", ["adaopt", "sgd", "adam"], [0, 1, 2, 3, 4], [1e-4, 1e-3])
    shards = [runner.shard_grid(grid, i, count) for i in range(count)]
    flat = [spec for shard in shards for spec in shard]
    key = runner.RunSpec.sort_key
    assert sorted(flat, key=key) == sorted(grid, key=key) and len(set(flat)) == len(grid) == 30
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_two_shards_fill_one_results_file(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "run_training", fake_run_training)
    out = str(tmp_path / "s")
    base = ["--optimizers", "adaopt,sgd,adam", "--seeds", "3", "--output_dir", out]
    assert compare.main([*base, "--shard", "0/2"]) == 0
    first = read_jsonl(os.path.join(out, "results.jsonl"))
    assert compare.main([*base, "--shard", "1/2"]) == 0
    lines = read_jsonl(os.path.join(out, "results.jsonl"))
    assert len(first) == 5 and len(lines) == 9
    assert {(r["optimizer"], r["seed"]) for r in lines} == {
        (o, s) for o in ("adaopt", "sgd", "adam") for s in range(3)
    }
    assert json.loads(open(os.path.join(out, "results.json")).read())["n_runs"] == 9


def test_lr_sweep_runs_every_optimizer_at_every_lr(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "run_training", fake_run_training)
    out = tmp_path / "lr"
    args = ["--optimizers", "adaopt,sgd", "--seeds", "2", "--lr_sweep", "1e-2,1e-3", "--output_dir", str(out)]
    assert compare.main(args) == 0
    lines = read_jsonl(out / "results.jsonl")
    assert sorted({(r["optimizer"], r["lr_grid"], r["learning_rate"]) for r in lines}) == [
        ("adaopt", 1e-3, 1e-3),
        ("adaopt", 1e-2, 1e-2),
        ("sgd", 1e-3, 1e-3),
        ("sgd", 1e-2, 1e-2),
    ]
    data = json.loads((out / "results.json").read_text())
    assert plots.PLOT_FILES["sensitivity"] in data["plots"]
    assert data["lr_sweep"]["optimizers"]["adaopt"]["vs_overall_best"]["n_total"] == 2


def test_push_to_hub_runs_after_every_local_file(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "run_training", fake_run_training)
    import hf_adaopt.lab.hub

    seen = {}

    def fake_push(output_dir, repo_id, **kwargs):
        seen.update(repo_id=repo_id, files=sorted(os.listdir(output_dir)))

    monkeypatch.setattr(hf_adaopt.lab.hub, "push_comparison", fake_push)
    monkeypatch.setenv("HF_TOKEN", "hf_test")  # the push target is checked before the first run
    out = tmp_path / "p"
    args = [
        "--optimizers",
        "adaopt",
        "--seeds",
        "1",
        "--output_dir",
        str(out),
        "--push_to_hub",
        "--hub_model_id",
        "me/adaopt-results",
    ]
    assert compare.main(args) == 0
    assert seen["repo_id"] == "me/adaopt-results"
    assert {"results.jsonl", "results.json", "report.md", "compare_config.json"} <= set(seen["files"])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--push_to_hub"], "--hub_model_id"),
        (["--seed", "3"], "--seeds"),
        (["--optimizers", "adaopt,nadam"], "unknown optimizer"),
        (["--shard", "2/2"], "--shard"),
        (["--lr_sweep", "1e-3,-1"], "--lr_sweep"),
        (["--seeds", "0"], "--seeds"),
    ],
)
def test_bad_arguments_name_the_option(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        compare.main([*argv, "--output_dir", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_several_tasks_get_one_comparison_each(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "run_training", fake_run_training)
    out = tmp_path / "multi"
    assert (
        compare.main(
            ["--task", "digits,mnist", "--optimizers", "adaopt,sgd", "--seeds", "1", "--output_dir", str(out)]
        )
        == 0
    )
    for task in ("digits", "mnist"):
        lines = read_jsonl(out / task / "results.jsonl")
        assert {r["task"] for r in lines} == {task} and len(lines) == 2
        assert (out / task / "report.md").is_file()


def test_several_tasks_overwrite_directories_made_with_another_configuration(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "run_training", fake_run_training)
    base = ["--task", "digits,mnist", "--optimizers", "sgd", "--seeds", "1", "--output_dir", str(tmp_path / "m")]
    assert compare.main([*base, "--num_train_epochs", "1"]) == 0
    # every task is checked before the first run; with --overwrite_output_dir a changed configuration is no error
    assert compare.main([*base, "--num_train_epochs", "2", "--overwrite_output_dir"]) == 0
    for task in ("digits", "mnist"):
        lines = read_jsonl(tmp_path / "m" / task / "results.jsonl")
        assert [r["config"]["num_train_epochs"] for r in lines] == [2.0]


def test_run_order_interleaves_seeds_and_rotates_optimizers():
    grid = runner.build_grid("digits", ["sgd", "adaopt", "adam"], [1, 0], [None])
    assert [(s.seed, s.optimizer) for s in grid] == [
        (0, "adaopt"),
        (0, "sgd"),
        (0, "adam"),
        (1, "sgd"),
        (1, "adam"),
        (1, "adaopt"),
    ]


def test_training_time_excludes_the_evaluations_during_training():
    history = [
        {"loss": 1.0, "step": 1},
        {"eval_runtime": 0.25, "eval_accuracy": 0.5, "step": 2},
        {"eval_runtime": 0.5, "eval_accuracy": 0.6, "step": 4},
        {"train_runtime": 3.0, "step": 4},
        {"eval_runtime": 0.5, "eval_accuracy": 0.6, "step": 4},  # the final evaluate(), after train()
    ]
    assert runner.training_time(history, 3.0) == 2.25
    assert runner.training_time(history, None) is None
