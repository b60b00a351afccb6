"""SIGKILL a real `hf-adaopt compare` at random points, several times: every finished run survives exactly once,
and rerunning the same command completes the grid.

The kill points are random (the seed is in every assertion message; HF_ADAOPT_KILL_SEED=N replays one). The unit
tests in test_results_store.py cut results.jsonl at every byte; this one checks the whole process end to end.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

# 2 optimizers x 3 seeds of 64 digits for one epoch: 6 runs of ~0.3 s after ~8 s of imports per process
ARGS = ["--optimizers", "adaopt,sgd", "--seeds", "3", "--num_train_epochs", "1", "--max_train_samples", "64",
        "--max_eval_samples", "64"]
GRID_SIZE = 6
KILLS = 3


def whole_records(path) -> list[dict]:
    """The lines of results.jsonl that end in a newline, parsed (each must be valid JSON)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def start(out, log):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "hf_adaopt.lab.cli", "compare", *ARGS, "--output_dir", str(out)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def kill_at_a_random_point(proc, out, rng) -> str:
    """SIGKILL after the process has started its k-th run (k = 1 or 2) plus a random delay; what was waited for."""
    runs = out / "runs"
    before = set(os.listdir(runs)) if runs.exists() else set()
    k, delay = rng.randint(1, 2), rng.uniform(0.0, 0.8)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        now = set(os.listdir(runs)) if runs.exists() else set()
        if len(now - before) >= k:
            break
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return f"after run {k} started + {delay:.2f} s"


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_completes_the_grid(tmp_path):
    seed = int(os.environ.get("HF_ADAOPT_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    out = tmp_path / "cmp"
    results = out / "results.jsonl"
    survived: dict[str, dict] = {}  # run_id -> its record, for every run seen finished
    for i in range(KILLS):
        with open(tmp_path / f"log{i}.txt", "wb") as log:
            proc = start(out, log)
            when = kill_at_a_random_point(proc, out, rng)
        records = whole_records(results)
        ids = [r["run_id"] for r in records]
        context = f"seed {seed}, kill {i + 1} {when}"
        assert len(ids) == len(set(ids)), f"a run was recorded twice ({context})"
        by_id = {r["run_id"]: r for r in records}
        for rid, rec in survived.items():  # what had finished is still there, unchanged
            assert by_id.get(rid) == rec, f"{rid} lost or run again ({context})"
        survived.update(by_id)

    with open(tmp_path / "final.txt", "wb") as log:
        assert start(out, log).wait(timeout=300) == 0, (tmp_path / "final.txt").read_text()
    text = (tmp_path / "final.txt").read_text()
    assert "Traceback" not in text, text
    records = whole_records(results)
    assert results.read_bytes().endswith(b"\n")
    ids = [r["run_id"] for r in records]
    assert len(ids) == GRID_SIZE == len(set(ids)), f"seed {seed}: {ids}"
    assert {(r["optimizer"], r["seed"]) for r in records} == {(o, s) for o in ("adaopt", "sgd") for s in range(3)}
    by_id = {r["run_id"]: r for r in records}
    for rid, rec in survived.items():  # finished runs were never run again (elapsed_s would differ)
        assert by_id[rid] == rec, f"seed {seed}: {rid} ran twice"
    assert json.loads((out / "results.json").read_text())["n_runs"] == GRID_SIZE
