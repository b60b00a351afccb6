"""Issue 10, item 8: what the report, the run files and the model card say is true; the package follows
transformers' verbosity; declared dependencies are used; plots keep identical curves visible; README commands
survive the shell."""

import json
import os

import pytest
import torch

from hf_adaopt.lab import compare
from hf_adaopt.lab import run as run_mod

TINY = ["--num_train_epochs", "1", "--max_train_samples", "64", "--max_eval_samples", "64"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def two_threads(monkeypatch):
    """torch with 2 threads and no OMP_NUM_THREADS, as in a fresh shell (digits then sets 1 thread itself)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_report_states_the_torch_threads_the_runs_used(tmp_path, two_threads):
    out = tmp_path / "c"
    assert compare.main(["--optimizers", "sgd", "--seeds", "1", "--output_dir", str(out), *TINY]) == 0
    used = torch.get_num_threads()  # what digits set for its run
    assert used == 1
    device = json.loads((out / "results.json").read_text())["environment"]["device"]
    assert device.endswith("torch threads 1"), device
    assert "torch threads 1" in (out / "report.md").read_text()


def test_run_config_records_the_command_as_typed_and_counts_one_thread(tmp_path, two_threads):
    out = tmp_path / "run"
    argv = ["--task", "digits", "--max_steps", "2", "--max_train_samples", "64", "--output_dir", str(out)]
    assert run_mod.main(argv) == 0
    config = json.loads((out / "run_config.json").read_text())
    assert config["command"] == "hf-adaopt train " + " ".join(argv)
    assert "(" in config["device"] and ", 1 thread)" in config["device"], config["device"]


def test_an_hf_adaopt_model_loads_with_the_auto_classes(tmp_path):
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForSequenceClassification

    import hf_adaopt.lab.models as models

    mlp = models.MLPForImageClassification(models.MLPConfig(input_dim=64))
    mlp.save_pretrained(tmp_path / "mlp")
    lstm = models.BiLSTMAttentionForSequenceClassification(models.BiLSTMAttentionConfig(vocab_size=50))
    lstm.save_pretrained(tmp_path / "lstm")
    assert isinstance(AutoModel.from_pretrained(tmp_path / "mlp"), models.MLPForImageClassification)
    assert isinstance(AutoModelForImageClassification.from_pretrained(tmp_path / "mlp"), models.MLPForImageClassification)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lstm")
    assert isinstance(loaded, models.BiLSTMAttentionForSequenceClassification)
    assert torch.equal(loaded.state_dict()["classifier.weight"], lstm.state_dict()["classifier.weight"])


def test_the_model_card_usage_snippet_runs(tmp_path):
    """The card says library_name: transformers; its snippet loads the model (a local path stands in for the repo)."""
    import hf_adaopt.lab.models as models
    from hf_adaopt.lab.cards import _usage_snippet

    model = models.MLPForImageClassification(models.MLPConfig(input_dim=64))
    model.save_pretrained(tmp_path / "repo")
    snippet = _usage_snippet(str(tmp_path / "repo"), model.config.to_dict(), "image-classification")
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - the card's own code
    assert isinstance(scope["model"], models.MLPForImageClassification)


def package_loggers() -> list[str]:
    """Every hf_adaopt module that has a module-level `logger`."""
    import importlib
    import pkgutil

    import hf_adaopt

    names = [m.name for m in pkgutil.walk_packages(hf_adaopt.__path__, "hf_adaopt.")]
    return [n for n in names if hasattr(importlib.import_module(n), "logger")]


@pytest.mark.parametrize("module", package_loggers())
def test_transformers_verbosity_reaches_the_package_loggers(module, caplog):
    import importlib
    import logging

    import transformers

    logger = importlib.import_module(module).logger
    before = transformers.logging.get_verbosity()
    try:
        with caplog.at_level(logging.INFO, logger="hf_adaopt"):
            transformers.logging.set_verbosity_error()
            logger.warning("silenced by set_verbosity_error")
            transformers.logging.set_verbosity_warning()
            logger.info("below the warning verbosity")
            logger.warning("heard")
    finally:
        transformers.logging.set_verbosity(before)
    assert [r.getMessage() for r in caplog.records] == ["heard"], f"{module}: use hf_adaopt.core.logs.get_logger(__name__)"


# Declared for a use that is not an import statement in this package.
INDIRECT_DEPENDENCIES = {
    "tensorboard": "transformers' TensorBoardCallback writes the logs with it (--report_to tensorboard)",
    "pyyaml": "huggingface_hub's ModelCard reads and writes the card's YAML header with it",
    "accelerate": "transformers.Trainer needs it to train; its version is recorded with every run (by name)",
}


def _imported_modules() -> set[str]:
    import ast
    import pathlib

    files = [*pathlib.Path(REPO, "hf_adaopt").rglob("*.py"), *pathlib.Path(REPO, "training_scripts").glob("*.py")]
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("extra", ["train", "hub"])
def test_every_declared_dependency_is_used(extra):
    import re
    from importlib.metadata import packages_distributions

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    def norm(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        declared = tomllib.load(f)["project"]["optional-dependencies"][extra]
    dists = packages_distributions()
    used = {norm(d) for module in _imported_modules() for d in dists.get(module, [])}
    names = [norm(re.split(r"[<>=!~\[; ]", dep)[0]) for dep in declared]
    assert [n for n in names if n not in used and n not in INDIRECT_DEPENDENCIES] == []


def test_identical_curves_stay_visible_and_the_legend_says_so():
    """Adam and AdamW without weight decay take identical steps: AdamW's line must not hide Adam's."""
    import numpy as np
    from matplotlib.figure import Figure

    from hf_adaopt.lab import analysis, plots

    def run(optimizer, seed, accuracies):
        curve = [{"step": 10 * (i + 1), "epoch": i + 1, "eval_accuracy": a} for i, a in enumerate(accuracies)]
        return {"optimizer": optimizer, "seed": seed, "lr_grid": None, "eval_curve": curve}

    same = {0: [0.5, 0.8, 0.9], 1: [0.4, 0.7, 0.92]}
    runs = [run(o, s, same[s]) for o in ("adam", "adamw") for s in (0, 1)] + [run("adaopt", 0, [0.6, 0.85, 0.95])]
    names = ["adaopt", "adam", "adamw"]
    ax = Figure().subplots()
    plots._draw_curves(ax, analysis.group_runs(runs), names, None, "eval_accuracy", 100, 0, plots._styles(names))
    lines = {line.get_label().split(" ")[0]: line for line in ax.get_lines()}
    adam, adamw = lines["adam"], lines["adamw"]
    assert np.array_equal(adam.get_ydata(), adamw.get_ydata())
    assert (adam.get_linestyle(), adam.get_marker()) != (adamw.get_linestyle(), adamw.get_marker())
    assert adamw.get_zorder() > adam.get_zorder() and adamw.get_label().endswith("same curve as adam")
    assert "same curve" not in lines["adaopt"].get_label()


def readme_commands() -> list[str]:
    """Single `hf-adaopt ...` commands in the README and the experiment guide: inline code spans and code-block
    lines (comments cut off, `a & b` split)."""
    import re

    text = ""
    for name in ("README.md", os.path.join("training_scripts", "README.md")):
        with open(os.path.join(REPO, name), encoding="utf-8") as f:
            text += f.read() + "\n"
    found = re.findall(r"`(hf-adaopt [^`\n]+)`", text)
    for line in text.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line.strip())  # a trailing comment
        found += [part.strip() for part in line.split(" & ") if part.strip().startswith("hf-adaopt ")]
    from hf_adaopt.lab.cli import COMMANDS

    # not the quoted error messages; not a loop body, whose $variables are meant to expand
    return sorted({c for c in found if c.split()[1] in COMMANDS and "$" not in c})


@pytest.mark.parametrize("command", readme_commands())
def test_readme_commands_reach_the_program_as_written(command, tmp_path):
    """What bash passes on (after brace, variable and glob expansion) is the command as the README spells it:
    `--max_grad_norm {0,1.0}` became two values and crashed."""
    import shlex
    import subprocess

    words = subprocess.run(
        ["bash", "-c", "printf '%s\\0' " + command], cwd=tmp_path, capture_output=True, check=True
    ).stdout.decode().split("\0")[:-1]
    assert words == shlex.split(command)
