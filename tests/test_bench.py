"""training_scripts/bench_optimizer_step.py: every reference row runs, ratios are to the rows they name, and the
JSON renders as the README's table."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from hf_adaopt.lab.suite_report import bench_markdown

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "training_scripts", "bench_optimizer_step.py")


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_optimizer_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_writes_every_reference_row_and_the_ratios(tmp_path, capsys):
    bench = _bench_module()
    out = tmp_path / "bench.json"
    assert bench.main(["--num_params", "3e5", "--d_model", "64", "--vocab", "256", "--steps", "3", "--warmup", "1",
                       "--threads", "1", "--only", "adaopt", "--output_json", str(out)]) == 0
    run = json.loads(out.read_text())
    rows = {r["optimizer"]: r for r in run["rows"]}
    assert set(rows) == {"AdamW (torch, fused)", "AdamW (torch, foreach)", "AdaOpt (default)", "AdaOpt (fused)",
                         "AdaOpt (foreach)", bench.COPY_FLOOR, bench.GRAD_READ}
    assert rows["AdamW (torch, fused)"]["ratio_to_fused_adamw"] == pytest.approx(1.0)
    assert rows["AdamW (torch, foreach)"]["ratio_to_foreach_adamw"] == pytest.approx(1.0)
    assert rows[bench.COPY_FLOOR]["ratio_to_copy_floor"] == pytest.approx(1.0)
    for row in rows.values():
        assert row["ms_per_step"] > 0 and row["gb_per_s"] > 0
    assert rows["AdaOpt (fused)"]["state_bytes_per_param"] == pytest.approx(
        rows["AdaOpt (foreach)"]["state_bytes_per_param"])
    assert rows[bench.GRAD_READ]["state_bytes_per_param"] is None
    assert rows["AdaOpt (fused)"]["compile_s"] > 0
    assert rows["AdaOpt (default)"]["compile_s"] > 0  # on CPU the default is the fused step
    assert "compile_s" not in rows["AdaOpt (foreach)"]
    table = bench_markdown(run)
    assert "| AdaOpt (fused)" in table and bench.GRAD_READ in table
    assert "AdaOpt (fused)" in capsys.readouterr().out
