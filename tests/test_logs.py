"""hf_adaopt's log lines name their source like transformers' ("[transformers] ..."), print once, follow its verbosity.

Run in fresh interpreters: pytest's own capture handler sits on the root logger, and that handler is exactly what
makes ours stand aside.
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WARN = (
    "from transformers import TrainingArguments\n"
    "from hf_adaopt.core.trainer import adaopt_cls_and_kwargs\n"
    "args = TrainingArguments(output_dir='unused', lr_scheduler_type='cosine', report_to='none')\n"
)
MESSAGE = (
    "lr_scheduler_type='cosine': the Trainer builds this schedule and multiplies AdaOpt's adapted step by it. "
    "AdaOpt reads group['lr'] as a multiplier of the step it adapts, so a schedule scales that step: "
    "lr_scheduler_type='constant' without warmup is the recommended setting ("
    "AdaOptCallback hands AdaOpt the Trainer's max_steps for a decay at the end)."
)


def _stderr_lines(code: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    return [line for line in done.stderr.splitlines() if "hf_adaopt" in line or "AdaOpt" in line]


def test_a_warning_names_its_source_like_transformers():
    code = WARN + (
        "from transformers.utils import logging as tf_logging\n"
        "tf_logging.get_logger('transformers.trainer').warning('theirs')\n"
        "adaopt_cls_and_kwargs(args)\n"
    )
    assert _stderr_lines(code) == [f"[hf_adaopt] {MESSAGE}"]


def test_configured_logging_prints_each_line_once_in_the_users_format():
    code = "import logging\nlogging.basicConfig(format='%(name)s|%(levelname)s|%(message)s')\n" + WARN
    code += "adaopt_cls_and_kwargs(args)\n"
    assert _stderr_lines(code) == [f"hf_adaopt.core.trainer|WARNING|{MESSAGE}"]


def test_a_handler_on_the_hf_adaopt_logger_replaces_the_default_one():
    code = (
        "import logging, sys\n"
        "h = logging.StreamHandler(sys.stderr); h.setFormatter(logging.Formatter('mine: %(message)s'))\n"
        "logging.getLogger('hf_adaopt').addHandler(h)\n" + WARN + "adaopt_cls_and_kwargs(args)\n"
    )
    assert _stderr_lines(code) == [f"mine: {MESSAGE}"]


def test_transformers_verbosity_error_quiets_hf_adaopt():
    code = WARN + "from transformers.utils import logging as tf_logging\ntf_logging.set_verbosity_error()\n"
    code += "adaopt_cls_and_kwargs(args)\n"
    assert _stderr_lines(code) == []
