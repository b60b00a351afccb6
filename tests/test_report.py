"""hf_adaopt.lab.report on synthetic comparison results (no training): statistics, files, plots."""

import json
import math
import os

import numpy as np
import pytest

from hf_adaopt.lab import analysis, plots, report, results, stats

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS_PER_EPOCH = 45


def synthetic_run(optimizer, seed, final, lr=1e-3, lr_grid=None, epochs=6, rate=0.6, noise=0.004):
    """A results.jsonl record shaped like compare's, with an accuracy curve rising to about `final`."""
    rng = np.random.default_rng([seed, len(optimizer), int(final * 1000)])
    final = float(final + rng.normal(0, noise))
    curve = []
    for e in range(1, epochs + 1):
        acc = final - (final - 0.1) * math.exp(-rate * e * 2) if e < epochs else final
        curve.append(
            {
                "step": e * STEPS_PER_EPOCH,
                "epoch": float(e),
                "eval_loss": -math.log(acc),
                "eval_accuracy": acc,
            }
        )
    steps = list(range(1, epochs * STEPS_PER_EPOCH + 1))
    lrs = [lr * (1 + 0.5 * math.sin(s / 20)) for s in steps] if optimizer == "adaopt" else [lr] * len(steps)
    lr_stats = stats.lr_stability(lrs)  # as compare computes it
    ev = {
        "eval_loss": curve[-1]["eval_loss"],
        "eval_accuracy": final,
        "eval_runtime": 0.05,
        "epoch": float(epochs),
    }
    t = 3.0 + rng.normal(0, 0.1)
    return {
        "task": "digits",
        "optimizer": optimizer,
        "seed": seed,
        "learning_rate": lr,
        "lr_grid": lr_grid,
        "run_id": f"digits-{optimizer}-lr{lr_grid}-seed{seed}-0000",
        "eval": ev,
        "train": {"train_runtime": t, "train_loss": 0.3, "epoch": float(epochs)},
        "eval_curve": curve,
        "train_loss_curve": [{"step": s, "loss": 1.0 / s} for s in steps[::10]],
        "lr_trajectory": {"step": steps, "lr": lrs},
        "metrics": {
            "train_time_s": t,
            "lr_mean": lr_stats["mean"],
            "lr_variance": lr_stats["variance"],
            "lr_cv": lr_stats["cv"],
            "total_steps": steps[-1],
        },
        "elapsed_s": t + 1.0,
        "environment": {"python": "3.11.7", "torch": "2.13.0", "device": "cpu"},
        "command": "hf-adaopt compare --synthetic",
    }


def write_runs(path, runs):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "results.jsonl"), "w") as f:
        for r in runs:
            f.write(json.dumps(r) + "\n")
    return str(path)


def clear_difference_runs(n=5):
    """AdaOpt ~0.96, adam ~0.96 (no difference), sgd ~0.85 (clearly worse) and slower to converge."""
    runs = [synthetic_run("adaopt", s, 0.96) for s in range(n)]
    runs += [synthetic_run("sgd", s, 0.85, rate=0.15) for s in range(n)]
    runs += [synthetic_run("adam", s, 0.96) for s in range(n)]
    return runs


def strict_json(text):
    def reject(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=reject)


def test_groups_in_display_order_and_seed_order():
    runs = [synthetic_run(o, s, 0.9) for s in (2, 0, 1) for o in ("adam", "sgd", "adaopt")]
    groups = analysis.group_runs(runs)
    assert list(groups) == [("adaopt", None), ("sgd", None), ("adam", None)]
    assert [r["seed"] for r in groups[("adaopt", None)]] == [0, 1, 2]


def test_analyze_finds_the_real_difference_and_not_the_null_one():
    res = analysis.analyze(clear_difference_runs())
    acc = {c["baseline"]: c for c in res["comparisons"] if c["metric"] == "eval_accuracy"}
    assert acc["sgd"]["significant"] and acc["sgd"]["better"] == "adaopt"
    assert acc["sgd"]["mean_diff"] == pytest.approx(0.11, abs=0.01)
    assert not acc["adam"]["significant"] and acc["adam"]["better"] is None
    # Holm over the two baselines: the adjusted p is at least the raw p, and 2x the smaller one
    ps = sorted((c["welch_p"], c["welch_p_holm"]) for c in acc.values())
    assert ps[0][1] == pytest.approx(min(1.0, 2 * ps[0][0]))
    assert all(adj >= raw for raw, adj in ps)
    loss = {c["baseline"]: c for c in res["comparisons"] if c["metric"] == "eval_loss"}
    assert loss["sgd"]["better"] == "adaopt"  # lower loss is better
    assert {c["metric"] for c in res["comparisons"]} == {m for m, *_ in analysis.TESTED_METRICS}


def test_summary_sentences_name_significant_and_non_significant_baselines():
    res = analysis.analyze(clear_difference_runs())
    text = "\n".join(res["summary"])
    assert "**Final eval accuracy**: AdaOpt is significantly better than sgd" in text
    assert "not significantly different from adam" in text
    # 5 vs 5 seeds, 2 baselines: smallest MWU p = 2/252, x2 after Holm = 0.016 < 0.05 -> no floor warning
    assert "cannot reach" not in text
    res3 = analysis.analyze([r for r in clear_difference_runs(3)])
    assert "cannot reach" in "\n".join(res3["summary"])


def test_threshold_default_is_a_fraction_of_the_best_mean():
    res = analysis.analyze(clear_difference_runs(), threshold_fraction=0.95)
    best = max(g["metrics"]["eval_accuracy"]["mean"] for g in res["groups"])
    assert res["threshold"]["mode"] == "fraction"
    assert res["threshold"]["value"] == pytest.approx(0.95 * best)
    sgd = next(g for g in res["groups"] if g["optimizer"] == "sgd")
    assert sgd["reached_threshold"] == 0  # sgd ends near 0.85 < 0.91
    steps = next(
        c for c in res["comparisons"] if c["metric"] == "steps_to_threshold" and c["baseline"] == "sgd"
    )
    assert steps["censored"] and math.isnan(steps["welch_p"]) and steps["cliffs_delta"] == -1.0


def test_absolute_threshold_and_steps_to_threshold():
    res = analysis.analyze(clear_difference_runs(), threshold=0.5)
    assert res["threshold"] == {"value": 0.5, "mode": "absolute", "fraction": None, "reference": None}
    for g in res["groups"]:
        assert g["reached_threshold"] == g["n"]
        steps = g["metrics"]["steps_to_threshold"]["values"]
        assert all(s % STEPS_PER_EPOCH == 0 for s in steps)  # at the evaluation resolution
    slow = next(g for g in res["groups"] if g["optimizer"] == "sgd")["metrics"]["steps_to_threshold"]["mean"]
    fast = next(g for g in res["groups"] if g["optimizer"] == "adaopt")["metrics"]["steps_to_threshold"][
        "mean"
    ]
    assert slow > fast


def test_lr_stability_is_zero_for_constant_lr_baselines():
    res = analysis.analyze(clear_difference_runs())
    by_opt = {g["optimizer"]: g["metrics"] for g in res["groups"]}
    assert by_opt["sgd"]["lr_variance"]["mean"] == 0.0 and by_opt["sgd"]["lr_cv"]["mean"] == 0.0
    assert by_opt["adaopt"]["lr_cv"]["mean"] > 0.1


def test_default_lr_groups_compare_across_different_actual_lrs():
    # prodigy's default lr is 1.0 (a multiplier), AdaOpt's 1e-3: both are the "default" grid cell
    runs = [synthetic_run("adaopt", s, 0.96) for s in range(3)]
    runs += [synthetic_run("prodigy", s, 0.95, lr=1.0) for s in range(3)]
    res = analysis.analyze(runs)
    assert {c["baseline"] for c in res["comparisons"]} == {"prodigy"}
    assert res["lr_sweep"] is None


def test_lr_sweep_robustness_and_same_lr_comparisons():
    lrs = [1e-4, 1e-3, 1e-2]
    runs = []
    for lr in lrs:
        runs += [synthetic_run("adaopt", s, 0.96, lr=lr, lr_grid=lr) for s in range(3)]
        runs += [synthetic_run("adam", s, 0.96 if lr == 1e-3 else 0.80, lr=lr, lr_grid=lr) for s in range(3)]
    res = analysis.analyze(runs)
    sweep = res["lr_sweep"]["optimizers"]
    assert sweep["adaopt"]["vs_overall_best"]["n_within"] == 3
    assert sweep["adaopt"]["vs_overall_best"]["span_decades"] == pytest.approx(2.0)
    assert sweep["adam"]["vs_overall_best"]["n_within"] == 1
    assert sweep["adam"]["vs_overall_best"]["span_decades"] == 0.0
    acc = [c for c in res["comparisons"] if c["metric"] == "eval_accuracy"]
    assert sorted(c["lr_grid"] for c in acc) == lrs  # AdaOpt vs adam at each lr, Holm over all three


def test_build_report_writes_json_markdown_and_plots(tmp_path):
    out = write_runs(tmp_path / "cmp", clear_difference_runs(3))
    res = report.build_report(out)
    data = strict_json((tmp_path / "cmp" / "results.json").read_text())
    for key in (
        "task",
        "n_runs",
        "environment",
        "command",
        "threshold",
        "groups",
        "comparisons",
        "summary",
        "plots",
        "methods",
        "lr_sweep",
    ):
        assert key in data
    assert data["n_runs"] == 9 and data["task"] == "digits"
    assert data["groups"][0]["metrics"]["eval_accuracy"]["n"] == 3
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert_report_sections(md)
    assert "hf-adaopt compare --synthetic" in md and "| torch | 2.13.0 |" in md
    assert "{'eval_loss': " in md  # the Trainer's dict format
    assert "0 by construction" in md
    assert set(res["plots"]) == {plots.PLOT_FILES[k] for k in ("accuracy", "loss", "lr", "final")}
    check_pngs(tmp_path / "cmp", res["plots"])


def test_lr_sensitivity_plot_only_with_a_sweep(tmp_path):
    runs = []
    for lr in (1e-4, 1e-3, 1e-2):
        runs += [synthetic_run(o, s, 0.9, lr=lr, lr_grid=lr) for o in ("adaopt", "sgd") for s in range(2)]
    res = report.build_report(write_runs(tmp_path / "sweep", runs))
    assert plots.PLOT_FILES["sensitivity"] in res["plots"]
    check_pngs(tmp_path / "sweep", res["plots"])
    assert "## Learning-rate sensitivity" in (tmp_path / "sweep" / "report.md").read_text()


REPORT_SECTIONS = (
    "## Summary",
    "## Setup",
    "## Results per optimizer",
    "## AdaOpt vs baselines",
    "## Plots",
    "## Final eval dicts (Trainer format)",
)


def assert_report_sections(md: str) -> None:
    """report.md has every section, in order."""
    positions = [md.find(section) for section in REPORT_SECTIONS]
    assert -1 not in positions and positions == sorted(positions), dict(zip(REPORT_SECTIONS, positions, strict=True))


def check_pngs(directory, names):
    from matplotlib import image

    for name in names:
        path = directory / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        pixels = image.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300
        assert pixels.std() > 0.01  # not a blank canvas


def test_truncated_last_line_is_skipped_and_duplicates_keep_the_last(tmp_path):
    runs = clear_difference_runs(2)
    out = write_runs(
        tmp_path / "trunc", runs + [dict(runs[0], eval={**runs[0]["eval"], "eval_accuracy": 0.5})]
    )
    with open(os.path.join(out, "results.jsonl"), "a") as f:
        f.write('{"task": "digits", "optimizer": "ada')
    loaded = results.load_results(out)
    assert len(loaded) == len(runs)
    assert loaded[0]["eval"]["eval_accuracy"] == 0.5


def test_nan_losses_are_counted_not_crashing(tmp_path):
    runs = clear_difference_runs(3)
    runs[3]["eval"]["eval_loss"] = float("nan")  # a diverged sgd run
    res = analysis.analyze(runs)
    sgd = next(g for g in res["groups"] if g["optimizer"] == "sgd")
    assert sgd["metrics"]["eval_loss"]["n"] == 2 and sgd["metrics"]["eval_loss"]["n_missing"] == 1


def test_report_main_rebuilds_and_prints_the_table_last(tmp_path, capsys):
    out = write_runs(tmp_path / "cli", clear_difference_runs(2))
    assert report.main([out, "--no_plots"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-5].startswith("| optimizer") and lines[-1].startswith("| adam ")
    assert not any(name.endswith(".png") for name in os.listdir(out))


def test_report_main_on_a_directory_without_results(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        report.main([str(tmp_path)])
    assert exc.value.code == 2
    assert "results.jsonl does not exist" in capsys.readouterr().err


def test_identical_groups_are_pointed_out():
    runs = [synthetic_run("adaopt", s, 0.96) for s in range(3)]
    runs += [synthetic_run("adam", s, 0.95) for s in range(3)]
    runs += [dict(r, optimizer="adamw", run_id=r["run_id"] + "w") for r in runs[3:]]
    text = "\n".join(analysis.analyze(runs)["summary"])
    assert "adam and adamw gave identical final evaluations on every seed" in text
