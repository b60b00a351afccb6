"""`hf-adaopt suite`: the grid, the workloads end to end on a few steps, the analysis, the committed results."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from hf_adaopt.lab import suite, suite_analysis, suite_report
from hf_adaopt.lab.registry import available_optimizers
from hf_adaopt.lab.tasks import offline_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPIC_WORDS = {
    "computers": "program compiler kernel bug byte server code disk",
    "politics": "vote senate law party election tax congress power",
    "science": "atom theory energy experiment physics cell gravity light",
    "songs-poems": "love song heart night moon dream sing rose",
}


@pytest.fixture
def fortunes_dir(tmp_path, monkeypatch):
    """Four fortune files in Debian's format (entries separated by '%' lines), 40 quotations each."""
    for topic, words in TOPIC_WORDS.items():
        words = words.split()
        entries = [" ".join(words[(i + j) % len(words)] for j in range(6 + i % 5)) + f" -- author {i}"
                   for i in range(40)]
        (tmp_path / topic).write_text("\n%\n".join(entries) + "\n%\n", encoding="utf-8")
    monkeypatch.setenv("HF_ADAOPT_FORTUNES_DIR", str(tmp_path))
    offline_data.clear_cache()
    yield tmp_path
    offline_data.clear_cache()


def run_cli(*args, env=None, timeout=600):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "hf_adaopt.lab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)


# ------------------------------------------------------------------------------------------------- grid


def test_default_cells_run_both_adaopt_rows_from_two_lrs_and_adamw_per_half_decade():
    cells = suite.default_cells(["adaopt", "adaopt-plain", "adamw", "adam", "sgd", "rmsprop", "prodigy",
                                 "schedulefree"])
    for row in ("adaopt", "adaopt-plain"):
        assert [lr for opt, lr in cells if opt == row] == [1e-6, 1e-1]
    adamw = [lr for opt, lr in cells if opt == "adamw"]
    assert len(adamw) == 7 and adamw[0] == 1e-5 and adamw[-1] == 1e-2
    assert all(math.isclose(b / a, 10**0.5, rel_tol=0.01) for a, b in zip(adamw, adamw[1:]))
    assert ("adam", 1e-3) in cells and ("sgd", 1e-3) in cells and ("rmsprop", 1e-3) in cells
    assert ("prodigy", None) in cells
    assert [lr for opt, lr in cells if opt == "schedulefree"] == [2.5e-3]


def test_every_workload_runs_both_adaopt_rows_and_each_row_has_a_default_cell():
    optimizers = available_optimizers()
    for name, workload in suite.WORKLOADS.items():
        cells = suite.default_cells(optimizers, workload=workload)
        for row in ("adaopt", "adaopt-plain"):
            lrs = [lr for opt, lr in cells if opt == row]
            assert lrs == ([1e-1] if name == "charlm-long" else [1e-6, 1e-1]), (name, row)
            assert suite.DEFAULT_CELL[row] in lrs
        assert any(opt == "adamw" for opt, _ in cells), name


def test_the_long_workload_runs_its_own_cells_on_two_seeds():
    long = suite.WORKLOADS["charlm-long"]
    steps = long.args[long.args.index("--max_steps") + 1]
    assert int(steps) >= 3000 and long.task == "charlm"
    assert list(long.args) == ["--max_steps", steps, *suite.CHARLM_ARGS, "--model", "d64"]
    grid = suite.build_suite_grid(["charlm-long", "charlm"], available_optimizers(), [0, 1, 2])
    cells = sorted({(s.optimizer, s.lr) for name, s in grid if name == "charlm-long"}, key=str)
    assert cells == sorted([("adaopt", 1e-1), ("adaopt-plain", 1e-1), ("adamw", 1e-3), ("adamw", 3.16e-3),
                            ("adamw", 1e-2), ("adamw-cosine", 1e-3), ("adamw-cosine", 3.16e-3), ("adamw-cosine", 1e-2),
                            ("adamw-cosine", 3.16e-2), ("schedulefree", 2.5e-3)], key=str)
    assert sorted({s.seed for name, s in grid if name == "charlm-long"}) == [0, 1]
    assert sorted({s.seed for name, s in grid if name == "charlm"}) == [0, 1, 2]
    # the schedule row runs only where a workload lists it: the short workloads keep a constant schedule
    assert not any(s.optimizer == "adamw-cosine" for name, s in grid if name == "charlm")


def test_the_clipping_and_param_group_workloads_change_one_setting_of_theirs():
    w = suite.WORKLOADS
    assert w["charlm-noclip"].args == (*w["charlm"].args, "--max_grad_norm", "0")
    assert w["finetune-discr"].args == (*w["finetune"].args, "--body_lr_scale", "0.01")
    assert w["finetune-frozen"].args == (*w["finetune"].args, "--body_lr_scale", "0")


def test_the_cosine_rows_schedule_reaches_its_runs_after_the_workloads_constant_one(tmp_path):
    from hf_adaopt.lab import run as run_mod

    grid = [(n, s) for n, s in suite.build_suite_grid(["charlm-long"], ["adamw", "adamw-cosine"], [0])]
    jobs = {(j.spec.optimizer, j.spec.lr): j for j in suite.plan_jobs(grid, str(tmp_path), ["--max_steps", "5"])}
    argv = jobs[("adamw-cosine", 1e-3)].argv
    scheds = [argv[i + 1] for i, a in enumerate(argv) if a == "--lr_scheduler_type"]
    assert scheds == ["constant", "cosine"]
    _, _, training_args = run_mod.parse_args(argv)
    assert training_args.lr_scheduler_type == "cosine" and training_args.warmup_steps == 0.05
    assert training_args.max_steps == 5
    _, _, constant = run_mod.parse_args(jobs[("adamw", 1e-3)].argv)
    assert constant.lr_scheduler_type == "constant" and constant.warmup_steps == 0
    assert jobs[("adamw-cosine", 1e-3)].chash != jobs[("adamw", 1e-3)].chash


def test_lrs_option_replaces_both_sweeps_only():
    cells = suite.default_cells(["adaopt", "adamw", "adam"], lrs=[1e-4, 1e-2])
    assert cells == [("adaopt", 1e-4), ("adaopt", 1e-2), ("adamw", 1e-4), ("adamw", 1e-2), ("adam", 1e-3)]


def test_grid_has_one_run_per_workload_cell_and_seed_with_unique_ids(tmp_path):
    grid = suite.build_suite_grid(["digits-mlp", "charlm"], ["adaopt", "adaopt-plain", "adamw"], [0, 1])
    assert len(grid) == 2 * 2 * (2 + 2 + 7)
    jobs = suite.plan_jobs(grid, str(tmp_path), [])
    assert len({j.rid for j in jobs}) == len(jobs)
    assert all(j.rid.startswith(f"{j.extra['workload']}-{j.spec.optimizer}-") for j in jobs)
    charlm = next(j for j in jobs if j.extra["workload"] == "charlm")
    assert "--max_steps" in charlm.argv and charlm.extra["metric"] == "bpc"


CORE_FILES = sorted(os.path.relpath(os.path.join(root, f), suite.CORE_DIR) for root, _, files in os.walk(suite.CORE_DIR)
                    for f in files if f.endswith((".py", ".cpp")))


@pytest.fixture
def core_copy(tmp_path):
    """A copy of hf_adaopt/core to edit; its key equals the installed core's."""
    import shutil

    copy = tmp_path / "core"
    shutil.copytree(suite.CORE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert suite.adaopt_source_key(str(copy)) == suite.adaopt_source_key()
    return copy


def test_the_key_covers_the_step_the_kernel_the_callback_and_the_trainer_glue():
    assert {"optimizer.py", "controller.py", "functional.py", "fused.py", "fused_cpu.py", "callback.py",
            "trainer.py", os.path.join("csrc", "fused_cpu.cpp")} <= set(CORE_FILES)


@pytest.mark.parametrize("name", CORE_FILES)
def test_a_code_edit_in_any_core_file_changes_the_key(core_copy, name):
    path = core_copy / name
    edit = "\n_KEY_PROBE = 1\n" if name.endswith(".py") else "\nstatic const int key_probe = 1;\n"
    path.write_text(path.read_text(encoding="utf-8") + edit, encoding="utf-8")
    assert suite.adaopt_source_key(str(core_copy)) != suite.adaopt_source_key()


def test_a_new_core_file_changes_the_key(core_copy):
    (core_copy / "schedule.py").write_text("def scale(step):\n    return 1.0\n", encoding="utf-8")
    assert suite.adaopt_source_key(str(core_copy)) != suite.adaopt_source_key()


def test_docstring_comment_and_layout_edits_keep_the_key(core_copy):
    opt = core_copy / "optimizer.py"
    text = opt.read_text(encoding="utf-8")
    text = text.replace('"""', '"""Reworded. ', 1)  # the module docstring
    text = text.replace("def step(self, closure", "def step(  # a comment\n        self, closure", 1)
    assert text.count('"""Perform one optimization step.') == 1
    text = text.replace('"""Perform one optimization step.', '"""Take one step.', 1)  # a method's docstring
    opt.write_text("# a new first line\n" + text, encoding="utf-8")
    cpp = core_copy / "csrc" / "fused_cpu.cpp"
    code = cpp.read_text(encoding="utf-8")
    cpp.write_text("// a new comment\n/* and a block\n comment */\n" + code.replace("\n", "\n\n"), encoding="utf-8")
    assert suite.adaopt_source_key(str(core_copy)) == suite.adaopt_source_key()


def test_the_key_is_the_code_not_the_file():
    assert suite._python_code('"""doc"""\nx = 1  # one\n') == suite._python_code("x = 1\n")
    assert suite._python_code("def f():\n    'doc'\n") == suite._python_code("def f():\n    pass\n")
    assert suite._python_code("x = 1\n") != suite._python_code("x = 2\n")
    assert suite._python_code("s = 'a # b'\n") != suite._python_code("s = 'a'\n")  # a string is code
    assert suite._cpp_code('int a = 1; // one\n/* two */ const char* s = "a // b";') == \
        suite._cpp_code('int a=1;\nconst char* s = "a // b";')
    assert suite._cpp_code('const char* s = "a  b";') != suite._cpp_code('const char* s = "a b";')


def test_a_change_to_the_core_reruns_adaopt_cells_only_and_a_lab_edit_reruns_nothing(tmp_path, core_copy,
                                                                                       monkeypatch):
    grid = suite.build_suite_grid(["digits-mlp"], ["adaopt", "adaopt-plain", "adamw"], [0], lrs=[1e-3])
    before = {j.spec.optimizer: j.rid for j in suite.plan_jobs(grid, str(tmp_path), [])}
    # the key reads the core directory only: the same core elsewhere, away from the lab, gives the same ids
    monkeypatch.setattr(suite, "CORE_DIR", str(core_copy))
    assert {j.spec.optimizer: j.rid for j in suite.plan_jobs(grid, str(tmp_path), [])} == before
    fused = core_copy / "fused.py"
    fused.write_text(fused.read_text(encoding="utf-8") + "\n_KEY_PROBE = 1\n", encoding="utf-8")
    after = {j.spec.optimizer: j.rid for j in suite.plan_jobs(grid, str(tmp_path), [])}
    assert before["adamw"] == after["adamw"]
    assert before["adaopt"] != after["adaopt"] and before["adaopt-plain"] != after["adaopt-plain"]


@pytest.mark.parametrize("args, message", [
    (["--workloads", "nosuch"], "--workloads"),
    (["--lrs", "1e-3,inf"], "--lrs"),
    (["--seeds", "0"], "--seeds"),
    (["--optimizers", "adaopt,foo"], "foo"),
    (["--learning_rate", "1e-3"], "--learning_rate"),
    (["--num_proc", "0"], "--num_proc"),
    (["--workloads", "charlm-long", "--optimizers", "adam"], "none of --optimizers"),
])
def test_bad_arguments_exit_2_with_the_option_named(args, message, tmp_path):
    proc = run_cli("suite", "--output_dir", str(tmp_path / "s"), *args, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "s" / "results.jsonl")


# ------------------------------------------------------------------------------------------------- data


def test_fortunes_are_balanced_topics_with_a_fixed_split(fortunes_dir):
    data = offline_data.load("debian-fortunes")
    assert data["train"].features["label"].names == list(offline_data.FORTUNE_TOPICS)
    assert len(data["train"]) == 4 * 32 and len(data["validation"]) == 4 * 8
    labels = data["validation"]["label"]
    assert sorted(set(labels)) == [0, 1, 2, 3] and all(labels.count(k) == 8 for k in range(4))
    assert data["train"]["text"] == offline_data.load("debian-fortunes")["train"]["text"]


def test_missing_fortunes_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ADAOPT_FORTUNES_DIR", str(tmp_path / "none"))
    offline_data.clear_cache()
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        offline_data.load("debian-fortunes")
    offline_data.clear_cache()


def test_pydoc_prose_splits_between_topics():
    data = offline_data.load("pydoc-topics")
    train, val = data["train"][0]["text"], data["validation"][0]["text"]
    assert len(train) > 300_000 and 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert train.isascii() and "statement" in train


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_every_workload_runs_end_to_end_and_the_report_holds_its_metric(tmp_path, fortunes_dir):
    out = tmp_path / "suite"
    proc = run_cli("suite", "--optimizers", "adamw", "--lrs", "1e-3", "--seeds", "1", "--max_steps", "2",
                   "--max_eval_samples", "32", "--num_proc", "1", "--output_dir", str(out),
                   env={"HF_ADAOPT_FORTUNES_DIR": str(fortunes_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["workload"] for r in records) == sorted(suite.WORKLOADS)
    for r in records:
        value = suite_analysis.final_value(r)
        if r["metric"] == "accuracy":
            assert 0.0 <= value <= 100.0
        else:
            assert 0.0 < value < 9.0  # bits per byte: a uniform guess over 256 bytes is 8
        assert r["metrics"]["total_steps"] == 2
    result = json.loads((out / "results.json").read_text())
    assert set(result["workloads"]) == set(suite.WORKLOADS)
    report = (out / "report.md").read_text()
    assert all(f"### {name}" in report for name in suite.WORKLOADS)
    assert (out / "lr_sensitivity.png").stat().st_size > 10_000


@pytest.mark.slow
def test_two_workload_smoke_suite_in_two_processes_resumes_and_rebuilds(tmp_path):
    out = tmp_path / "smoke"
    args = ["suite", "--workloads", "digits-mlp,charlm", "--optimizers", "adaopt,adamw", "--lrs", "1e-3,1e-1",
            "--seeds", "1", "--max_steps", "5", "--max_eval_samples", "64", "--num_proc", "2",
            "--output_dir", str(out)]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len((out / "results.jsonl").read_text().splitlines()) == 8
    assert "| AdaOpt (0.1)" in first.stdout
    again = run_cli(*args)
    assert again.returncode == 0 and "8 already finished" in again.stderr and "0 to run" in again.stderr
    before = (out / "results.json").read_text()
    rebuilt = run_cli("report", str(out))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads((out / "results.json").read_text())["workloads"] == json.loads(before)["workloads"]


# ---------------------------------------------------------------------------------------------- analysis


def _record(workload, metric, optimizer, lr, seed, value):
    ev = {"eval_accuracy": value / 100.0, "eval_loss": 1.0} if metric == "accuracy" else {
        "eval_loss": value * math.log(2.0)}
    return {"run_id": f"{workload}-{optimizer}-{lr}-{seed}", "workload": workload, "metric": metric,
            "optimizer": optimizer, "lr_grid": lr, "seed": seed, "eval": ev,
            "metrics": {"train_time_s": 1.0, "lr_cv": 0.0},
            "train_loss_curve": [{"step": 10, "loss": 2.0}, {"step": 20, "loss": value / 100.0}]}


def _synthetic():
    """Two workloads in the suite's v2 shape: both AdaOpt rows from 1e-6 and 1e-1 (the plain one on img only), AdamW,
    and on the LM AdamW on warmup + cosine, whose cell is the best-tuned AdamW there."""
    recs = []
    for seed, noise in ((0, -0.1), (1, 0.1)):
        acc = {("adamw", 1e-4): 80.0, ("adamw", 1e-3): 90.0, ("adamw", 1e-2): 85.0,
               ("adaopt", 1e-6): 89.5, ("adaopt", 1e-1): 86.0, ("adaopt-plain", 1e-6): 88.0,
               ("adaopt-plain", 1e-1): 88.0, ("adam", 1e-3): 90.0, ("prodigy", None): 91.0}
        recs += [_record("img", "accuracy", o, lr, seed, v + noise) for (o, lr), v in acc.items()]
        bpc = {("adamw", 1e-4): 3.0, ("adamw", 1e-3): 2.1, ("adamw-cosine", 1e-3): 2.0, ("adaopt", 1e-6): 2.01,
               ("adaopt", 1e-1): 2.05, ("adam", 1e-3): 2.0, ("prodigy", None): 2.5}
        recs += [_record("lm", "bpc", o, lr, seed, v + noise / 100) for (o, lr), v in bpc.items()]
    config = {"workloads": {"img": {"metric": "accuracy"}, "lm": {"metric": "bpc"}},
              "default_cell": suite.DEFAULT_CELL, "run_ids": [r["run_id"] for r in recs], "seeds": [0, 1]}
    return config, recs


def test_analysis_finds_the_best_adamw_cell_and_each_adaopt_rows_worst_case():
    config, recs = _synthetic()
    result = suite_analysis.analyze(config, recs)
    img, lm = result["workloads"]["img"], result["workloads"]["lm"]
    assert img["best_adamw"]["lr"] == 1e-3 and math.isclose(img["best_adamw"]["mean"], 90.0)
    assert img["adaopt"]["worst_lr"] == 1e-1 and math.isclose(img["adaopt"]["worst_gap"], -4.0)
    assert img["adaopt"]["decades_within"] == 1 and img["adaopt"]["n_lrs"] == 2
    assert math.isclose(img["adaopt-plain"]["worst_gap"], -2.0) and img["adaopt-plain"]["decades_within"] == 0
    assert "adaopt-plain" not in lm
    # bits per character: lower is better and the gap is in percent of the best
    assert math.isclose(lm["adaopt"]["worst_gap"], -2.5, rel_tol=1e-6)
    assert lm["adaopt"]["decades_within"] == 1


def test_the_best_tuned_adamw_is_the_best_cell_of_either_adamw_row():
    config, recs = _synthetic()
    lm = suite_analysis.analyze(config, recs)["workloads"]["lm"]
    assert lm["best_adamw"]["optimizer"] == "adamw-cosine" and lm["best_adamw"]["lr"] == 1e-3
    assert math.isclose(lm["best_adamw"]["mean"], 2.0)
    cells = {(c["optimizer"], c["lr"]): c for c in lm["cells"]}
    assert math.isclose(cells[("adamw", 1e-3)]["gap"], -5.0, rel_tol=1e-6)  # the constant row measured against it
    # without the cosine row the constant row's best is the reference again
    recs = [r for r in recs if r["optimizer"] != "adamw-cosine"]
    lm = suite_analysis.analyze(config, recs)["workloads"]["lm"]
    assert lm["best_adamw"]["optimizer"] == "adamw" and math.isclose(lm["best_adamw"]["mean"], 2.1)


def test_ranks_at_defaults_and_the_summary_across_workloads():
    config, recs = _synthetic()
    result = suite_analysis.analyze(config, recs)
    ranks = {d["optimizer"]: d["rank"] for d in result["workloads"]["img"]["defaults"]}
    assert ranks == {"prodigy": 1, "adam": 2, "adamw": 2, "adaopt-plain": 4, "adaopt": 5}
    lm_ranks = {d["optimizer"]: d["rank"] for d in result["workloads"]["lm"]["defaults"]}
    assert lm_ranks == {"adam": 1, "adamw-cosine": 1, "adaopt": 3, "adamw": 4, "prodigy": 5}
    assert math.isclose(result["summary"]["prodigy"]["mean_rank"], 3.0)
    assert math.isclose(result["summary"]["prodigy"]["worst_gap"], -25.0, rel_tol=1e-6)
    # the mean gap: (+1 point on img, -25% of bpc on lm) / 2; AdaOpt's worst lrs: (-4 - 2.5) / 2
    assert math.isclose(result["summary"]["prodigy"]["mean_gap"], -12.0, rel_tol=1e-6)
    assert math.isclose(result["adaopt_worst_mean_gap"], -3.25, rel_tol=1e-6)
    assert math.isclose(result["adaopt-plain_worst_mean_gap"], -2.0, rel_tol=1e-6)
    tests = {(t["reference"], t["optimizer"]) for t in result["workloads"]["img"]["tests"]}
    assert tests == {("adaopt", o) for o in ("adamw", "adam", "prodigy", "adaopt-plain")} | {
        ("adaopt-plain", o) for o in ("adamw", "adam", "prodigy")}
    assert all(0.0 <= t["welch_p_holm"] <= 1.0 for t in result["workloads"]["img"]["tests"])


def test_the_report_renders_both_adaopt_rows_and_the_cosine_reference(tmp_path):
    config, recs = _synthetic()
    for r in recs:  # lr trajectories for the effective-lr plot
        if r["optimizer"] in ("adaopt", "adaopt-plain"):
            r["lr_trajectory"] = {"step": [1, 2, 3], "lr": [1e-4, 5e-4, 2e-3]}
    config["workloads"] = {n: {**w, "task": "digits", "args": []} for n, w in config["workloads"].items()}
    (tmp_path / "suite_config.json").write_text(json.dumps(config))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    result = suite_report.build_report(str(tmp_path))
    table = " ".join(suite_report.summary_markdown(result).split())  # without the column padding
    assert "AdaOpt, worst of its initial lrs | -4.00 (lr 0.1)" in table
    assert "AdaOpt (no loss), worst of its initial lrs | -2.00 (lr 1e-06) | –" in table
    assert "| AdaOpt (no loss) (0.1) |" in table and "2.000 bpc at 0.001 (AdamW + cosine)" in table
    sweep = " ".join(suite_report.adaopt_sweep_markdown(result).split())
    assert all(f"| {h} " in sweep for h in ("AdaOpt from 1e-06", "AdaOpt from 0.1", "AdaOpt (no loss) from 1e-06",
                                            "AdaOpt (no loss) from 0.1", "AdaOpt: lrs within",
                                            "AdaOpt (no loss): lrs within"))
    report = " ".join((tmp_path / "report.md").read_text().split())
    assert "**img**: AdaOpt is within" in report and "**img**: AdaOpt (no loss) is within" in report
    assert "AdaOpt (no loss) at its default against each optimizer" in report
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["workloads"]["img"]) >= {"adaopt", "adaopt-plain"} and "adaopt-plain_worst_gap" in saved
    assert result["plots"] == ["lr_sensitivity.png", "effective_lr.png"]


def test_a_v1_grid_result_still_renders_with_one_adaopt_row():
    # suite v1's shape (the ablation rows ran it): AdaOpt fed the loss only, from several lrs
    config, recs = _synthetic()
    recs = [r for r in recs if r["optimizer"] != "adaopt-plain"]
    recs += [{**r, "lr_grid": 1e-5, "run_id": r["run_id"] + "-1e-5"} for r in recs
             if r["optimizer"] == "adaopt" and r["lr_grid"] == 1e-6]
    config["run_ids"] = [r["run_id"] for r in recs]
    result = suite_analysis.analyze(config, recs)
    assert "adaopt-plain_worst_gap" not in result
    sweep = suite_report.adaopt_sweep_markdown(result)
    assert "AdaOpt from 1e-05" in sweep and "decades within" in sweep and "no loss" not in sweep
    assert "AdaOpt (no loss)" not in suite_report.summary_markdown(result)


def test_cells_carry_the_first_and_last_adapted_step_from_the_lr_trajectory():
    config, recs = _synthetic()
    for r in recs:
        if r["optimizer"] == "adaopt" and r["workload"] == "img" and r["lr_grid"] == 1e-6:
            r["lr_trajectory"] = {"step": [1, 2, 3], "lr": [1e-4 * (1 + r["seed"]), 5e-4, 2e-3 * (1 + r["seed"])]}
    cells = {(c["optimizer"], c["lr"]): c for c in suite_analysis.analyze(config, recs)["workloads"]["img"]["cells"]}
    assert math.isclose(cells[("adaopt", 1e-6)]["effective_lr_start"], 1.5e-4)  # the mean over the two seeds
    assert math.isclose(cells[("adaopt", 1e-6)]["effective_lr_end"], 3e-3)
    assert math.isnan(cells[("adamw", 1e-3)]["effective_lr_start"])  # no trajectory recorded


def test_a_diverged_language_model_counts_as_the_worst_result():
    config, recs = _synthetic()
    bad = _record("lm", "bpc", "adaopt", 1e-2, 0, 2.0)
    bad["eval"]["eval_loss"] = float("nan")
    recs.append(bad)
    config["run_ids"].append(bad["run_id"])
    lm = suite_analysis.analyze(config, recs)["workloads"]["lm"]
    assert lm["adaopt"]["worst_lr"] == 1e-2 and lm["adaopt"]["worst_gap"] == -math.inf


def _targets_synthetic():
    """Suite v2's axes in miniature: a clipped LM and the same without clipping, a long LM with AdamW on cosine and
    Schedule-Free, and a fine-tune with discriminative lrs; both AdaOpt rows everywhere (fed: first step 1e-4 clipped,
    7e-4 unclipped; plain: 2e-4 on both; plain diverges on one seed of the fine-tune)."""
    recs, specs = [], {}
    base = ["--max_steps", "250"]
    plan = {
        "lm": ("bpc", base, {("adamw", 1e-3): 2.0, ("adaopt", 1e-6): 2.01, ("adaopt", 1e-1): 2.01,
                             ("adaopt-plain", 1e-6): 2.1, ("adaopt-plain", 1e-1): 2.1}),
        "lm-noclip": ("bpc", [*base, "--max_grad_norm", "0"],
                      {("adamw", 1e-3): 2.0, ("adaopt", 1e-6): 2.2, ("adaopt", 1e-1): 2.2,
                       ("adaopt-plain", 1e-6): 2.0, ("adaopt-plain", 1e-1): 2.0}),
        "long": ("bpc", ["--max_steps", "3000"],
                 {("adamw", 1e-3): 1.9, ("adamw-cosine", 3.16e-3): 1.8, ("schedulefree", 2.5e-3): 1.85,
                  ("adaopt", 1e-1): 1.98, ("adaopt-plain", 1e-1): 1.81}),
        "discr": ("accuracy", ["--body_lr_scale", "0.01"],
                  {("adamw", 1e-3): 80.0, ("adaopt", 1e-6): 79.5, ("adaopt", 1e-1): 79.5,
                   ("adaopt-plain", 1e-6): 70.0, ("adaopt-plain", 1e-1): 70.0}),
    }
    for name, (metric, args, cells) in plan.items():
        specs[name] = {"metric": metric, "task": "charlm", "args": ["--lr_scheduler_type", "constant", *args]}
        for seed in (0, 1):
            for (opt, lr), value in cells.items():
                r = _record(name, metric, opt, lr, seed, value)
                if opt.startswith("adaopt"):
                    first = 2e-4 if opt == "adaopt-plain" else (7e-4 if name == "lm-noclip" else 1e-4)
                    r["lr_trajectory"] = {"step": [1, 2], "lr": [first, first / 2]}
                if name == "discr" and opt == "adaopt-plain" and lr == 1e-6 and seed == 1:
                    r["eval"]["eval_accuracy"] = None  # a run that ended non-finite
                recs.append(r)
    config = {"workloads": specs, "default_cell": suite.DEFAULT_CELL, "run_ids": [r["run_id"] for r in recs],
              "seeds": [0, 1]}
    return config, recs


def test_the_targets_are_measured_per_adaopt_row_from_its_default_cells():
    config, recs = _targets_synthetic()
    t = suite_analysis.analyze(config, recs)["targets"]
    fed, plain = t["adaopt"], t["adaopt-plain"]
    assert set(fed["short"]) == {"lm", "lm-noclip", "discr"} and set(fed["long"]) == {"long"}
    assert math.isclose(fed["short"]["lm"], -0.5, rel_tol=1e-6) and math.isclose(fed["long"]["long"], -10.0)
    # the long run against Schedule-Free: the row's gap minus Schedule-Free's (-2.78%)
    assert math.isclose(plain["long_vs_schedulefree"]["long"], -0.5556 + 2.7778, rel_tol=1e-3)
    assert fed["clipping"] == {"lm-noclip / lm": pytest.approx(7.0)}
    assert plain["clipping"] == {"lm-noclip / lm": pytest.approx(1.0)}
    assert fed["groups"] == {"discr": pytest.approx(-0.5)} and plain["diverged"] == ["discr"]
    assert fed["diverged"] == [] and fed["same_from_every_lr"] == [3, 3]
    assert plain["same_from_every_lr"] == [2, 3]  # the diverged seed makes its two lrs differ on discr


def test_the_readme_block_of_a_v2_result_states_each_target_for_both_rows(tmp_path):
    config, recs = _targets_synthetic()
    (tmp_path / "suite_config.json").write_text(json.dumps(config))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    result = suite_report.build_report(str(tmp_path))
    block = " ".join(suite_report.readme_section(result).split())
    assert "| target (issue 19) | AdaOpt | AdaOpt (no loss) |" in block
    assert ("| short workloads: within 1 point / 1% of the best-tuned AdamW, on all | 2 of 3; misses: lm-noclip "
            "-10.00% | 1 of 3; misses: lm -5.00%, discr -10.00 |") in block
    assert "| long run: within 1% of the best AdamW (lr x {constant, warmup + cosine}) | 0 of 1; misses: long -10.00%" \
        in block
    assert "| clipping: first step without / with clipping (target 1.00x) | 7.00x | 1.00x |" in block
    assert "| never diverges: workloads with a non-finite run | none | discr |" in block
    # both paths per workload, with the first and last step, and Schedule-Free at its default
    assert "| long (bpc) | 1.800 at 0.00316 (AdamW + cosine) | 1.980 ± 0.000 (-10.00%) | 1.0e-04 → 5.0e-05 |" in block
    assert "1.810 ± 0.000 (-0.56%) | 2.0e-04 → 1.0e-04 | 1.850 ± 0.000 (-2.78%) |" in block
    assert "| AdaOpt (0.1) | 4 |" in block  # every optimizer at its default: the workloads it ran


# ------------------------------------------------------------------------------------ committed results

COMMITTED = os.path.join(REPO, "model_cards", "results", "suite")


@pytest.mark.parametrize("path,block", [(p, b) for p, names in suite_report.README_BLOCKS.items() for b in names])
def test_readme_blocks_are_the_committed_results(path, block):
    """Every number in the READMEs' results, ablation, step-cost and workload blocks is re-rendered from the
    committed files under model_cards/results/ (`python -m hf_adaopt.lab.suite_report --update_readme` rewrites them)."""
    rendered = suite_report.readme_blocks(os.path.join(REPO, "model_cards", "results"))[block]
    readme = open(os.path.join(REPO, path), encoding="utf-8").read()
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    assert start in readme and end in readme
    assert readme.split(start, 1)[1].split(end, 1)[0].strip() == rendered.strip()


def test_committed_suite_results_cover_the_full_grid():
    config = json.load(open(os.path.join(COMMITTED, "suite_config.json"), encoding="utf-8"))
    assert config["suite_version"] == suite.SUITE_VERSION
    result = suite_report.load_result(os.path.join(COMMITTED, "results.json"))
    assert set(result["workloads"]) == set(suite.WORKLOADS)
    assert result["n_runs"] == result["n_planned"]
    for name, w in result["workloads"].items():
        for row in ("adaopt", "adaopt-plain"):
            assert w[row]["n_lrs"] == (1 if name == "charlm-long" else 2)
        assert min(c["n"] for c in w["cells"]) >= 2
    assert set(available_optimizers()) <= set(result["summary"])


def _committed_plan():
    config = json.load(open(os.path.join(COMMITTED, "suite_config.json"), encoding="utf-8"))
    grid = suite.build_suite_grid(list(config["workloads"]), config["optimizers"], config["seeds"], config["lrs"])
    return config, [j.rid for j in suite.plan_jobs(grid, "out/suite", config["passthrough"])]


def _without_key(rid: str) -> str:
    return rid.rsplit("-", 1)[0]


def test_committed_suite_results_are_from_the_current_workloads():
    """The committed run ids hash every workload's settings: editing one without rerunning `hf-adaopt suite` (and
    committing its results) fails here. The peers' ids are the plan's exactly; AdaOpt's up to the code key."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the committed suite ran on CPU (bf16 there needs --use_cpu, part of the run ids)")
    config, planned = _committed_plan()
    assert [r for r in planned if "-adaopt-" not in r] == [r for r in config["run_ids"] if "-adaopt-" not in r]
    assert [_without_key(r) for r in planned] == [_without_key(r) for r in config["run_ids"]]


def test_committed_adaopt_cells_are_from_the_current_core():
    """AdaOpt's committed cells carry the code key of hf_adaopt/core they ran at: a code change there without a
    rerun fails here, so the README cannot quote a stale AdaOpt (docstring and comment edits keep the key)."""
    config, planned = _committed_plan()
    assert config.get("adaopt_source") == suite.adaopt_source_key()
    assert planned == config["run_ids"]


def test_the_committed_best_tuned_adamw_is_bracketed_by_worse_cells():
    """The best-tuned AdamW, the reference of every gap, is a tuned lr only if its row ran a worse lr on either
    side of it: a best at the end of the lrs run would be a reference the grid cut short."""
    result = suite_report.load_result(os.path.join(COMMITTED, "results.json"))
    for name, w in result["workloads"].items():
        best = w["best_adamw"]
        lrs = sorted(c["lr"] for c in w["cells"] if c["optimizer"] == best["optimizer"])
        assert lrs[0] < best["lr"] < lrs[-1], (name, best, lrs)
