"""`hf-adaopt suite --baseline`: only the AdaOpt rows run, every other cell is an earlier report's, and the analysis
over both is the analysis of the whole grid."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
from test_suite import _record, _synthetic, _targets_synthetic

from hf_adaopt.lab import results, runner, suite, suite_analysis, suite_report
from hf_adaopt.lab.registry import ADAOPT_ROWS

# What a run of fewer runs changes: how many there were and how long they took.
COUNTS = ("n_runs", "n_baseline_runs", "run_seconds", "n_planned", "command", "baseline")


def _comparable(result: dict) -> dict:
    """The analysis as results.json stores it, without the counts of runs and their seconds."""
    out = results.json_safe({k: v for k, v in result.items() if k not in COUNTS})
    out["workloads"] = {n: {k: v for k, v in w.items() if k not in COUNTS} for n, w in out["workloads"].items()}
    return out


def _measured(cells: list[dict]) -> list[dict]:
    """The cells but AdaOpt's, without the numbers that compare them with other cells."""
    return [{k: v for k, v in c.items() if k not in suite_analysis.DERIVED} for c in cells
            if c["optimizer"] not in ADAOPT_ROWS]


def _older(rec: dict) -> dict:
    """The run as an older AdaOpt made it: 5 points or 5% of bpc worse."""
    ev = dict(rec["eval"])
    if rec["metric"] == "accuracy":
        ev["eval_accuracy"] = None if ev["eval_accuracy"] is None else ev["eval_accuracy"] - 0.05
    else:
        ev["eval_loss"] *= 1.05
    return {**rec, "eval": ev}


def _report(directory, config: dict, recs: list[dict]) -> str:
    """An earlier suite's directory with these records, its report built; the path of its results.json."""
    os.makedirs(directory, exist_ok=True)
    config = {**config, "suite_version": suite.SUITE_VERSION, "command": "hf-adaopt suite --seeds 2",
              "environment": {"versions": {"hf-adaopt git": "abc1234"}}, "run_ids": [r["run_id"] for r in recs]}
    with open(os.path.join(directory, "suite_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    with open(os.path.join(directory, "results.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    suite_report.build_report(str(directory))
    return os.path.join(directory, suite_analysis.RESULTS_JSON)


def _with_a_diverged_peer():
    """`_synthetic` with one Prodigy run of the LM ended non-finite (its bpc is inf, null in results.json)."""
    config, recs = _synthetic()
    bad = next(r for r in recs if r["workload"] == "lm" and r["optimizer"] == "prodigy" and r["seed"] == 1)
    bad["eval"]["eval_loss"] = float("nan")
    return config, recs


@pytest.mark.parametrize("make", [_synthetic, _with_a_diverged_peer, _targets_synthetic])
def test_adaopt_records_over_a_baseline_give_the_analysis_of_the_whole_grid(tmp_path, make):
    config, recs = make()
    whole = suite_analysis.analyze(config, recs)
    # the baseline: the same grid run earlier, its AdaOpt cells from older code; a --baseline run drops those
    path = _report(tmp_path / "earlier", config, [_older(r) if r["optimizer"] in ADAOPT_ROWS else r for r in recs])
    baseline = suite.read_baseline(path)
    assert all(c["optimizer"] not in ADAOPT_ROWS for w in baseline["workloads"].values() for c in w["cells"])
    ada = [r for r in recs if r["optimizer"] in ADAOPT_ROWS]
    merged = suite_analysis.analyze({**config, "run_ids": [r["run_id"] for r in ada]}, ada, baseline)
    # gaps, best AdamW, threshold, AdaOpt's steps to it, ranks, Welch/MWU, targets, the summary: as from every record
    assert _comparable(merged) == _comparable(whole)
    # the other cells are the baseline's as it stored them, but for what compares them with AdaOpt's (ranks, ...)
    with open(path, encoding="utf-8") as f:
        stored = json.load(f)
    for name, w in merged["workloads"].items():
        assert _measured(results.json_safe(w["cells"])) == _measured(stored["workloads"][name]["cells"])
        assert w["n_runs"] == sum(r["workload"] == name for r in ada)
        assert w["n_baseline_runs"] == sum(r["workload"] == name and r["optimizer"] not in ADAOPT_ROWS for r in recs)
    assert merged["baseline"] == {"path": path, "revision": "abc1234", "command": "hf-adaopt suite --seeds 2",
                                  "n_runs": len(recs) - len(ada)}
    assert merged["n_runs"] == len(ada)


def test_a_record_wins_over_the_baseline_and_a_new_best_adamw_moves_the_threshold(tmp_path):
    config, recs = _synthetic()
    baseline = suite.read_baseline(_report(tmp_path / "earlier", config, recs))
    ada = [r for r in recs if r["optimizer"] in ADAOPT_ROWS]
    # a rerun AdamW 1e-2 on img that is now the best (95 points, a lower final training loss)
    better = [_record("img", "accuracy", "adamw", 1e-2, seed, 95.0) for seed in (0, 1)]
    for r in better:
        r["train_loss_curve"] = [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 0.5}]
    new = ada + better
    merged = suite_analysis.analyze({**config, "run_ids": [r["run_id"] for r in new]}, new, baseline)
    img = merged["workloads"]["img"]
    cells = {(c["optimizer"], c["lr"]): c for c in img["cells"]}
    assert cells[("adamw", 1e-2)]["values"] == [95.0, 95.0] and img["best_adamw"]["lr"] == 1e-2
    assert math.isclose(img["loss_threshold"], 0.55)
    assert math.isclose(cells[("adamw", 1e-3)]["gap"], -5.0) and math.isclose(cells[("adam", 1e-3)]["gap"], -5.0)
    # the baseline's cells counted their steps to the old threshold: dropped; AdaOpt's count to the new one
    assert "steps_to_threshold" not in cells[("adam", 1e-3)]
    whole = suite_analysis.analyze(config, [r for r in recs if (r["workload"], r["optimizer"], r["lr_grid"])
                                            != ("img", "adamw", 1e-2)] + better)
    for row in ADAOPT_ROWS:
        assert [c for c in img["cells"] if c["optimizer"] == row] == \
            [c for c in whole["workloads"]["img"]["cells"] if c["optimizer"] == row]
    assert _comparable(merged)["targets"] == _comparable(whole)["targets"]


# ------------------------------------------------------------------------------ the command, its runs faked


def _value(optimizer: str, lr: float | None, seed: int) -> float:
    return 80.0 + (len(optimizer) * 7 + round(-3 * math.log10(lr or 1.0)) + seed) % 15


def _fake_runs(calls: list, new: bool):
    """runner.run_jobs without training: a record per job (AdaOpt's 5 points better when `new`), 2 s each."""
    def run_jobs(jobs, output_dir, env, command, **kwargs):
        calls.append([j.rid for j in jobs])
        for j in jobs:
            value = _value(j.spec.optimizer, j.spec.lr, j.spec.seed)
            if j.spec.optimizer in ADAOPT_ROWS:
                value += 5.0 if new else 0.0
            rec = _record(j.extra["workload"], j.extra["metric"], j.spec.optimizer, j.spec.lr, j.spec.seed, value)
            rec.update(run_id=j.rid, elapsed_s=2.0, lr_trajectory={"step": [10, 20], "lr": [1e-3, 2e-3]}, **j.extra)
            results.append_record(os.path.join(output_dir, results.RESULTS_FILE), rec)
        return 0
    return run_jobs


SMALL = ["--workloads", "digits-mlp", "--seeds", "2", "--num_proc", "1"]


@pytest.fixture
def earlier(tmp_path, monkeypatch):
    """An earlier suite of digits-mlp (both AdaOpt rows, AdamW, Adam; 2 seeds), its runs faked: its directory."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the suite would otherwise set this process's torch threads
    calls = []
    monkeypatch.setattr(runner, "run_jobs", _fake_runs(calls, new=False))
    base = tmp_path / "earlier"
    assert suite.main([*SMALL, "--optimizers", "adaopt,adaopt-plain,adamw,adam", "--output_dir", str(base)]) == 0
    assert len(calls[0]) == 24
    return base


def test_the_command_runs_only_adaopt_and_its_report_stands_without_the_baseline_file(earlier, tmp_path,
                                                                                       monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run_jobs", _fake_runs(calls, new=True))
    out, base_json = tmp_path / "out", str(earlier / "results.json")
    assert suite.main([*SMALL, "--baseline", base_json, "--output_dir", str(out)]) == 0
    planned = calls[0]
    assert len(planned) == 8
    assert {rid.split("-lr")[0] for rid in planned} == {"digits-mlp-adaopt", "digits-mlp-adaopt-plain"}
    config = json.loads((out / "suite_config.json").read_text())
    assert config["run_ids"] == planned and config["optimizers"] == list(ADAOPT_ROWS)
    result = json.loads((out / "results.json").read_text())
    earlier_result = json.loads((earlier / "results.json").read_text())
    w, old = result["workloads"]["digits-mlp"], earlier_result["workloads"]["digits-mlp"]
    assert [c for c in w["cells"] if c["optimizer"] not in ADAOPT_ROWS] == \
        [c for c in old["cells"] if c["optimizer"] not in ADAOPT_ROWS]
    ada = {(c["optimizer"], c["lr"]): c["mean"] for c in w["cells"] if c["optimizer"] in ADAOPT_ROWS}
    assert all(math.isclose(ada[k], c["mean"] + 5.0) for c in old["cells"]
               for k in [(c["optimizer"], c["lr"])] if k in ada)
    assert result["baseline"] == {"path": base_json, "revision": earlier_result["environment"]["versions"].get(
        "hf-adaopt git"), "command": earlier_result["command"], "n_runs": 16}
    assert result["n_runs"] == 8 and result["run_seconds"] == 16.0 and w["run_seconds"] == 2.0
    assert result["plots"] == ["lr_sensitivity.png", "effective_lr.png"]
    line = f"Every cell but the AdaOpt rows' (16 runs) is taken from the baseline `{base_json}`"
    assert line in (out / "report.md").read_text() and line in suite_report.readme_section(result)
    assert suite_report.readme_section(result).count("\n") == \
        suite_report.readme_section(earlier_result).count("\n")  # the README block keeps its length
    # the output copied over the baseline: the report rebuilds from what the run stored, and the copy is a baseline
    shutil.copy(out / "results.json", base_json)
    assert suite.main(["--report_only", "--output_dir", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["workloads"] == result["workloads"]
    again = suite.read_baseline(base_json)
    assert (again["revision"], again["command"]) == (result["baseline"]["revision"], result["baseline"]["command"])
    assert suite.main([*SMALL, "--baseline", base_json, "--output_dir", str(out)]) == 0
    assert calls[-1] == []  # every AdaOpt run finished already


@pytest.mark.parametrize("args, message", [
    (["--seeds", "3"], "workload digits-mlp's adam cell at lr 0.001 ran seeds [0, 1], not [2]"),
    (["--max_steps", "5"], "ran workload digits-mlp with args"),
    (["--workloads", "charlm"], "has no cells but AdaOpt's of workload charlm"),
    (["--optimizers", "adamw"], "--baseline runs only the AdaOpt rows"),
])
def test_a_baseline_that_does_not_fit_stops_before_any_run(earlier, tmp_path, monkeypatch, capsys, args, message):
    calls = []
    monkeypatch.setattr(runner, "run_jobs", _fake_runs(calls, new=True))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        suite.main([*SMALL, *args, "--baseline", str(earlier / "results.json"), "--output_dir", str(out)])
    assert exit_info.value.code == 2 and not calls and not out.exists()
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and ("without --baseline" in err or "--optimizers" in args)


def test_the_grid_version_is_read_from_the_config_beside_an_older_results_json(earlier):
    result = json.loads((earlier / "results.json").read_text())
    del result["suite_version"]  # results.json of the committed v2 suite lacks it
    (earlier / "results.json").write_text(json.dumps(result))
    specs = json.loads((earlier / "suite_config.json").read_text())["workloads"]
    assert suite.read_baseline(str(earlier / "results.json"))["suite_version"] == suite.SUITE_VERSION
    config = json.loads((earlier / "suite_config.json").read_text())
    del config["suite_version"]  # a suite v1 config
    (earlier / "suite_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"is of suite grid version 1, this suite's is 2: run without --baseline"):
        suite.check_baseline(suite.read_baseline(str(earlier / "results.json")), specs)
    (earlier / "suite_config.json").unlink()
    with pytest.raises(ValueError, match="its grid version is unknown"):
        suite.check_baseline(suite.read_baseline(str(earlier / "results.json")), specs)
    with pytest.raises(ValueError, match="is not the results.json of a suite report"):
        suite.read_baseline(str(earlier / "results.jsonl"))


def test_the_committed_results_can_be_a_baseline_of_the_current_grid():
    from test_suite import COMMITTED

    config = json.loads(open(os.path.join(COMMITTED, "suite_config.json"), encoding="utf-8").read())
    baseline = suite.read_baseline(os.path.join(COMMITTED, "results.json"))
    suite.check_baseline(baseline, suite.workload_specs(list(suite.WORKLOADS), config["seeds"], []))
    # the revision the non-AdaOpt cells ran at: the committed run's own, or its baseline's where it took them from one
    origin = config.get("baseline") or {"revision": config["environment"]["versions"]["hf-adaopt git"]}
    assert baseline["revision"] == origin["revision"]
