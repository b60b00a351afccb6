"""Two CPU processes under DDP (accelerate launch, gloo): both ranks take exactly the same AdaOpt steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures.net import free_port

WORKER = Path(__file__).with_name("ddp_worker.py")
STEPS = 25  # beyond AdaOpt's default warmup (10 steps), so the adapted scalars move
MODES = ("accelerate", "accelerate_fused", "trainer", "trainer_items")



@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(WORKER), "--output_dir", str(out), "--steps", str(STEPS)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    # (the fused mode may build the CPU kernel first: about a minute, once per machine)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {(mode, rank): torch.load(out / f"{mode}_rank{rank}.pt", weights_only=False)
            for mode in MODES for rank in (0, 1)}


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_ranks_end_with_bitwise_identical_parameters(ddp_results, mode):
    r0, r1 = ddp_results[(mode, 0)], ddp_results[(mode, 1)]
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["params"].keys() == r1["params"].keys()
    for name, p0 in r0["params"].items():
        assert torch.equal(p0, r1["params"][name]), name


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_adaopt_scalars_agree_although_each_rank_feeds_its_own_loss(ddp_results, mode):
    r0, r1 = ddp_results[(mode, 0)], ddp_results[(mode, 1)]
    assert len(r0["fed"]) == len(r1["fed"]) == STEPS
    assert r0["fed"] != r1["fed"]  # different shards -> different local losses
    assert len(r0["diagnostics"]) == STEPS
    assert r0["diagnostics"] == r1["diagnostics"]
    assert r0["groups"] == r1["groups"]  # incl. the running loss statistics fed by different local losses
    # the comparison is not vacuous: the adapted step size moved after the warmup
    assert len({d["effective_lr"] for d in r0["diagnostics"]}) > 2


@pytest.mark.slow
def test_trainer_callback_under_ddp_records_on_every_rank_and_logs_on_the_main_one(ddp_results):
    r0, r1 = ddp_results[("trainer", 0)], ddp_results[("trainer", 1)]
    assert r0["trajectory"] == r1["trajectory"]
    assert r0["trajectory"]["step"] == list(range(1, STEPS + 1))
    assert len(r0["logged"]) == STEPS // 5 and all("adaopt/effective_lr" in e for e in r0["logged"])
    assert all(e == {} for e in r1["logged"])


@pytest.mark.slow
def test_loss_normalized_by_global_item_count_is_fed_as_this_ranks_mean(ddp_results):
    """num_items_in_batch counts the items of both ranks and both micro-batches: the fed loss is scaled back."""
    for rank in (0, 1):
        r = ddp_results[("trainer_items", rank)]
        window_means = torch.tensor(r["local_means"]).reshape(STEPS, 2).mean(1)
        torch.testing.assert_close(torch.tensor(r["fed"]), window_means, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fused_step_under_ddp_ran_and_equals_the_foreach_run(ddp_results):
    """The fused step took the steps (no fallback) on both ranks, and its trajectory is the foreach one's up to the
    fp32 rounding of its folded bias corrections."""
    for rank in (0, 1):
        fused, foreach = ddp_results[("accelerate_fused", rank)], ddp_results[("accelerate", rank)]
        assert fused["fused_ran"]
        for name, p in fused["params"].items():
            torch.testing.assert_close(p, foreach["params"][name], rtol=1e-4, atol=1e-5, msg=name)
