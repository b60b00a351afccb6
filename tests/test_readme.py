"""The README is a quickstart that works: its plain-loop example runs and trains, its two commands are what CI
runs, and it stays short (the detail lives in the experiment guide and beside the results)."""

from __future__ import annotations

import math
import os
import re

import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")


def _readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def _example(name: str) -> str:
    """The fenced python block right after `<!-- example:<name> -->`."""
    text = _readme()
    marker = f"<!-- example:{name} -->"
    assert marker in text
    match = re.match(r"\s*```python\n(.*?)\n```", text.split(marker, 1)[1], re.S)
    assert match, f"no ```python block after {marker}"
    return match.group(1)


def test_plain_loop_example_runs_and_trains(caplog):
    namespace: dict = {}
    with caplog.at_level("WARNING", logger="hf_adaopt"):
        exec(compile(_example("plain-loop"), "README.md:plain-loop", "exec"), namespace)
    model, x, y, opt = namespace["model"], namespace["x"], namespace["y"], namespace["opt"]
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(x), y).item()
    assert loss < 0.5 * math.log(4.0), loss  # chance is log(4)
    assert "no loss for the first step" not in caplog.text  # the closure fed the loss
    assert opt.diagnostics()["skipped_steps"] == 0 and opt.param_groups[0]["meta_step"] == 200


def test_the_two_commands_are_what_ci_runs():
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    text = _readme()
    install = re.search(r'pip install "torch==[^"]+" -e "\.\[[a-z,]+\]"', ci).group(0).replace("python3 -m ", "")
    test_cmd = re.search(r"python3 -m pytest -q", ci).group(0).replace("python3", "python")
    assert f"{install} && {test_cmd}" in text


def test_readme_is_at_most_200_lines():
    assert len(_readme().splitlines()) <= 200
