"""`hf-adaopt train` checks its output directory and its launch before any work (issue 10, items 2, 6 and 7)."""

import json
import os

import pytest

from hf_adaopt.lab import run

TINY = ["--task", "digits", "--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples", "64"]


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if training starts: every refusal below must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(run, "run_training", refuse)


def test_a_second_run_into_the_same_directory_needs_overwrite_output_dir(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run.main([*TINY, "--output_dir", out]) == 0
    first = json.loads(open(os.path.join(out, "eval_results.json")).read())
    assert run.main([*TINY, "--output_dir", out, "--seed", "1"]) == 2
    assert "pass --overwrite_output_dir" in capsys.readouterr().err
    assert json.loads(open(os.path.join(out, "eval_results.json")).read()) == first  # untouched
    assert run.main([*TINY, "--output_dir", out, "--seed", "1", "--overwrite_output_dir"]) == 0
    assert json.loads(open(os.path.join(out, "run_config.json")).read())["training_args"]["seed"] == 1


def test_a_directory_with_checkpoints_names_the_checkpoint_to_resume(tmp_path, capsys, no_training):
    (tmp_path / "run" / "checkpoint-40").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-40" / "trainer_state.json").write_text("{}")
    assert run.main([*TINY, "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"--resume_from_checkpoint {tmp_path / 'run' / 'checkpoint-40'}" in err and "--overwrite_output_dir" in err


def test_an_empty_existing_directory_is_used(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    seen = []
    monkeypatch.setattr(run, "run_training", lambda *a, **k: seen.append(a[2].output_dir) or {"eval": {}})
    assert run.main([*TINY, "--output_dir", str(tmp_path / "run")]) == 0
    assert seen == [str(tmp_path / "run")]


def test_processes_that_do_not_see_each_other_are_refused(tmp_path, monkeypatch, capsys, no_training):
    """What `accelerate launch` with a GPU config does on a machine without GPUs: WORLD_SIZE=2, each alone."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run.main([*TINY, "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "the launcher started 2 processes (WORLD_SIZE=2) but this one trains alone (world size 1)" in err
    assert not (tmp_path / "run").exists()  # refused before the output directory is made
