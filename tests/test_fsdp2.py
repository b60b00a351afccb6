"""Two CPU processes under FSDP2 (`fully_shard`, gloo): AdaOpt works on DTensor shards and every rank takes
the same step, because the per-shard sums are all-reduced before any scalar is set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures.net import free_port

WORKER = Path(__file__).with_name("fsdp2_worker.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    torchrun = Path(sys.executable).with_name("torchrun")
    # On this 2-core machine about 1 launch in 10 aborted (SIGABRT) in gloo before the first step; one
    # relaunch on a fresh port. A real failure fails twice, and both outputs are reported.
    failures = []
    for _ in range(2):
        cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), str(WORKER), str(out)]
        proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=240)
        if proc.returncode == 0:
            return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
        failures.append(proc.stdout[-2000:] + proc.stderr[-2000:])
    pytest.fail("torchrun failed twice:\n" + "\n----\n".join(failures))


@pytest.mark.slow
def test_state_lives_on_the_local_shard(ranks):
    for r in ranks:
        assert r["param_type"] == "DTensor"
        assert r["state_numel"] == r["local_numel"]
    # the shards really split the parameters
    assert [a + b for a, b in zip(ranks[0]["local_numel"], ranks[1]["local_numel"])] == [
        t.numel() for t in ranks[0]["full"]]


@pytest.mark.slow
def test_every_rank_sets_the_same_step_from_different_local_losses(ranks):
    r0, r1 = ranks
    assert r0["losses"] != r1["losses"]
    assert r0["diagnostics"] == r1["diagnostics"]
    assert len({d["effective_lr"] for d in r0["diagnostics"]}) > 2  # the controller moved
    for t0, t1 in zip(r0["full"], r1["full"]):
        assert torch.equal(t0, t1)


@pytest.mark.slow
def test_sharded_training_reduces_the_loss(ranks):
    for r in ranks:
        assert sum(r["losses"][-5:]) < 0.7 * sum(r["losses"][:5])
