"""results.jsonl survives a kill at any byte: whole lines only, a partial last line cut off (and its run rerun)."""

import json
import logging
import os

import pytest

from hf_adaopt.lab import compare, report, results
from hf_adaopt.lab import run as run_mod


def record(i: int) -> dict:
    """A results line shaped like compare's (run_id early, a long tail of numbers)."""
    return {"task": "digits", "optimizer": "sgd", "seed": i, "run_id": f"digits-sgd-seed{i}-abc", "curve": [0.5] * 40}


def lines_of(path) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().splitlines(keepends=True)


def write_cut_file(path, n_whole: int, cut: int) -> None:
    """n_whole whole lines, then the first `cut` bytes of the next one: a kill during its write."""
    for i in range(n_whole + 1):
        results.append_record(str(path), record(i))
    data = path.read_bytes()
    last_start = len(b"".join(lines_of(path)[:n_whole]))
    path.write_bytes(data[: last_start + cut])


def test_a_cut_at_any_byte_loses_only_the_cut_run(tmp_path, caplog):
    line = json.dumps(record(2)).encode()
    run_id_written = line.index(b'"run_id": "digits-sgd-seed2-abc"') + len(b'"run_id": "digits-sgd-seed2-abc"')
    for cut in range(1, len(line) + 1):  # every byte of the last line, up to (not including) its newline
        path = tmp_path / f"cut{cut}.jsonl"
        write_cut_file(path, 2, cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_adaopt"):
            dropped = results.repair_results(str(path))
        assert dropped is not None and f"{cut} bytes" in dropped, cut
        assert ("digits-sgd-seed2-abc" in caplog.text) == (cut >= run_id_written), cut  # names the run to rerun
        results.append_record(str(path), record(2))
        assert [json.loads(x)["seed"] for x in lines_of(path)] == [0, 1, 2], cut


def test_an_append_after_a_partial_line_starts_on_a_new_line(tmp_path):
    """A shard that appends while another shard's line was cut (that writer died holding no lock)."""
    path = tmp_path / "results.jsonl"
    write_cut_file(path, 1, 30)
    results.append_record(str(path), record(5))
    assert [json.loads(line)["seed"] for line in lines_of(path)] == [0, 5]


def test_a_whole_file_is_left_as_it_is(tmp_path):
    path = tmp_path / "results.jsonl"
    for i in range(3):
        results.append_record(str(path), record(i))
    before = path.read_bytes()
    assert results.repair_results(str(path)) is None and path.read_bytes() == before


def fake_run_training(task_args, opt_args, training_args, **kwargs):
    acc = 0.5 + 0.01 * training_args.seed
    return {
        "eval": {"eval_loss": 1 - acc, "eval_accuracy": acc, "epoch": 1.0},
        "train": {"train_runtime": 0.1, "train_loss": 1.0, "epoch": 1.0},
        "log_history": [{"eval_accuracy": acc, "eval_loss": 1 - acc, "step": 2, "epoch": 1.0}],
        "lr_trajectory": {"step": [1, 2], "lr": [1e-3, 1e-3]},
        "output_dir": training_args.output_dir,
    }


def test_rerun_after_a_kill_mid_write_runs_the_cut_run_again(tmp_path, monkeypatch, caplog):
    started = []

    def counting(task_args, opt_args, training_args, **kwargs):
        started.append((opt_args.optimizer, training_args.seed))
        return fake_run_training(task_args, opt_args, training_args)

    monkeypatch.setattr(run_mod, "run_training", counting)
    out = tmp_path / "c"
    argv = ["--optimizers", "adaopt,sgd", "--seeds", "2", "--output_dir", str(out)]
    assert compare.main(argv) == 0
    path = out / "results.jsonl"
    lines = lines_of(path)
    cut = json.loads(lines[-1])
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    started.clear()
    with caplog.at_level(logging.WARNING, logger="hf_adaopt"):
        assert compare.main(argv) == 0
    assert started == [(cut["optimizer"], cut["seed"])]  # only the cut run, once
    assert cut["run_id"] in caplog.text and "partial line" in caplog.text
    runs = [json.loads(line) for line in lines_of(path)]
    assert sorted(r["run_id"] for r in runs) == sorted({r["run_id"] for r in runs}) and len(runs) == 4
    assert json.loads((out / "results.json").read_text())["n_runs"] == 4


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"task": "digits"}\n', 'line 1: not a run record of hf-adaopt compare (no "run_id")'),
        ("[1, 2]\n", 'line 1: not a run record of hf-adaopt compare (no "run_id")'),
        ('{"run_id": "a"}\n{"run_id": \n{"run_id": "b"}\n', "line 2: not valid JSON"),
    ],
)
def test_report_names_the_line_that_is_not_a_record(tmp_path, content, message, capsys):
    (tmp_path / "results.jsonl").write_text(content)
    with pytest.raises(SystemExit) as exc:
        report.main([str(tmp_path), "--no_plots"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "results.jsonl" in err and "Traceback" not in err


def test_a_corrupt_compare_config_is_named(tmp_path, capsys):
    (tmp_path / "compare_config.json").write_text('{"command": ')
    with pytest.raises(SystemExit) as exc:
        compare.main(["--optimizers", "sgd", "--seeds", "1", "--output_dir", str(tmp_path)])
    assert exc.value.code == 2
    assert f"{os.path.join(str(tmp_path), 'compare_config.json')} is not valid JSON" in capsys.readouterr().err


def test_the_git_revision_is_the_checkouts_and_says_when_it_is_dirty(tmp_path):
    """Results record the commit they ran at: the repository root above hf_adaopt/lab is the checkout read, and a
    changed tracked file marks the revision dirty (a directory that is no checkout has none)."""
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert os.path.samefile(results.SOURCE_ROOT, repo)
    assert results.environment()["versions"].get("hf-adaopt git") == results._git_revision()

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    assert results._git_revision(str(tmp_path)) is None
    git("init", "-q")
    (tmp_path / "f.txt").write_text("a\n")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git("rev-parse", "--short", "HEAD")
    assert results._git_revision(str(tmp_path)) == head
    (tmp_path / "f.txt").write_text("b\n")
    assert results._git_revision(str(tmp_path)) == head + "+dirty"
