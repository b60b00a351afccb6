"""The experiment guide's (training_scripts/README.md) "Bad input" table is true: each row's command, run here,
exits with the row's status and prints each quoted excerpt, with no traceback of ours.

A row is `| `command` (what it stands for) | exit | `excerpt` `excerpt` ... |`. The names its commands use
(valid.csv, read-only, cut-line, ...) are made by FIXTURES below; "then Ctrl-C" in the first cell sends SIGINT once
the first run has started. `hf-adaopt` rows run in this process; the others (accelerate launch) as subprocesses.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADING = "## Bad input"


def table_rows() -> list[tuple[str, str, int, list[str]]]:
    """(command, rest of the first cell, exit status, excerpts) of every row of the guide's bad-input table."""
    with open(os.path.join(REPO, "training_scripts", "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(HEADING) :]
    section = section[: section.index("\n## ", len(HEADING))]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 3, line
        command = re.match(r"`([^`]+)`", cells[0]).group(1)
        rows.append((command, cells[0], int(cells[1]), re.findall(r"`([^`]+)`", cells[2])))
    assert len(rows) >= 20
    return rows


# ------------------------------------------------------------------------------------------------ fixtures


def write_reviews(path, rows, header=("text", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


REVIEWS = [(f"{'a great film' if i % 2 else 'a dull film'} number {i}", i % 2) for i in range(40)]


def make_data_files(tmp):
    import datasets

    write_reviews(tmp / "valid.csv", REVIEWS)
    (tmp / "empty.csv").write_text("")
    text = (tmp / "valid.csv").read_text()
    (tmp / "truncated.csv").write_text(text[: len(text) // 2] + "\na cut-off review,")
    write_reviews(tmp / "columns.csv", REVIEWS, header=("review", "sentiment"))
    write_reviews(tmp / "label7.csv", REVIEWS[:-1] + [("a seventh kind of film", 7)])
    rows = {"text": [t for t, _ in REVIEWS], "label": [y for _, y in REVIEWS]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp / "valid.parquet"))
    (tmp / "corrupt.parquet").write_bytes(b"PAR1 not a parquet file")


def make_read_only(tmp):
    path = tmp / "read-only"
    if os.geteuid() != 0:
        path.mkdir()
        path.chmod(0o555)
        return
    # root writes through permission bits: use a directory the kernel refuses writes to
    import tempfile

    for candidate in ("/sys/kernel/software_nodes", "/sys/kernel/iommu_groups"):
        try:
            os.close(tempfile.mkstemp(dir=candidate)[0])  # writable after all: try the next
        except OSError:
            if os.path.isdir(candidate):
                path.symlink_to(candidate)
                return
    pytest.skip("no directory this (root) user cannot write to")


def make_earlier_run(tmp):
    (tmp / "earlier-run").mkdir()
    (tmp / "earlier-run" / "eval_results.json").write_text('{"eval_accuracy": 0.97}')


def make_no_run_id(tmp):
    (tmp / "no-run-id").mkdir()
    (tmp / "no-run-id" / "results.jsonl").write_text(json.dumps({"task": "digits", "optimizer": "sgd"}) + "\n")


def make_bad_config(tmp):
    (tmp / "bad-config").mkdir()
    (tmp / "bad-config" / "compare_config.json").write_text('{"command": "hf-adaopt compare')


def make_cut_line(tmp, argv):
    """The comparison of `argv`, finished, then its last results line cut in half (a kill during the write)."""
    from hf_adaopt.lab import compare

    assert argv[0] == "compare" and compare.main(argv[1:]) == 0
    path = tmp / "cut-line" / "results.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])


def data_files(tmp, argv):
    make_data_files(tmp)


FIXTURES = {
    **{name: data_files for name in ("valid.csv", "valid.parquet", "columns.csv")},
    "a-file": lambda tmp, argv: (tmp / "a-file").write_text("not a directory\n"),
    "read-only": lambda tmp, argv: make_read_only(tmp),
    "earlier-run": lambda tmp, argv: make_earlier_run(tmp),
    "no-run-id": lambda tmp, argv: make_no_run_id(tmp),
    "bad-config": lambda tmp, argv: make_bad_config(tmp),
    "cut-line": make_cut_line,
    "training_scripts/train.py": lambda tmp, argv: (tmp / "training_scripts").symlink_to(
        os.path.join(REPO, "training_scripts")
    ),
}


# ------------------------------------------------------------------------------------------------ running


def point_library_handlers_at_this_stderr():
    """Libraries keep the stderr their handlers saw first (an earlier test's capture, closed since)."""
    import logging

    for name in (None, "transformers", "datasets", "hf_adaopt", "accelerate"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr  # not setStream: it flushes the closed one
                if "flush" in vars(handler):  # transformers binds its handler's flush to the stderr of the time
                    handler.flush = sys.stderr.flush


def run_in_process(argv, capsys, caplog) -> tuple[int, str]:
    from hf_adaopt.lab import cli

    try:
        status = cli.main(argv)
    except SystemExit as exc:  # argparse's parser.error
        status = exc.code
    captured = capsys.readouterr()
    return status, captured.out + captured.err + caplog.text


def run_with_ctrl_c(argv, tmp) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hf_adaopt.lab.cli", *argv], cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    runs = tmp / "out" / "compare-digits" / "runs"
    deadline = time.monotonic() + 120
    while proc.poll() is None and not (runs.is_dir() and os.listdir(runs)) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0].decode()
    return proc.returncode, out


def run_subprocess(words, tmp) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(words, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def normalized(text: str) -> str:
    """Whitespace collapsed and backticks dropped (a markdown code span cannot hold the messages' own backticks)."""
    return " ".join(text.replace("`", "").split())


@pytest.mark.parametrize("command,cell,status,excerpts", table_rows(), ids=[r[0] for r in table_rows()])
def test_bad_input_table_row(command, cell, status, excerpts, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    point_library_handlers_at_this_stderr()
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no `hf auth login` cache either
    words = shlex.split(command)
    made = set()
    for name, make in FIXTURES.items():
        if (name in words or any(w.endswith("=" + name) for w in words)) and make not in made:
            made.add(make)
            make(tmp_path, words[1:])
    if words[0] == "accelerate":
        import torch

        if torch.cuda.is_available():
            pytest.skip("the row is about a machine without CUDA")
        got, out = run_subprocess(words, tmp_path)
    elif "then Ctrl-C" in cell:
        got, out = run_with_ctrl_c(words[1:], tmp_path)
    else:
        assert words[0] == "hf-adaopt", command
        got, out = run_in_process(words[1:], capsys, caplog)
    assert got == status, out[-3000:]
    for excerpt in excerpts:
        assert normalized(excerpt) in normalized(out), f"{excerpt!r} not in:\n{out[-3000:]}"
    if words[0] == "hf-adaopt":
        assert "Traceback" not in out, out[-3000:]
