"""The experiment's tasks: one module per task with `DEFAULT_DATASET`, `DEFAULT_EPOCHS` and `prepare()`.

Modules are imported lazily (`get_task`) so that `import hf_adaopt.lab.tasks` stays cheap.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hf_adaopt.lab.tasks.base import DataUnavailableError, TaskArguments, TaskSetup, load_raw_datasets

TASK_NAMES = ("digits", "mnist", "cifar10", "imdb", "squad", "charlm", "textcls")

__all__ = ["TASK_NAMES", "DataUnavailableError", "TaskArguments", "TaskSetup", "get_task", "load_raw_datasets"]


def get_task(name: str) -> ModuleType:
    """The task module for `name` (one of `TASK_NAMES`)."""
    if name not in TASK_NAMES:
        raise ValueError(f"Unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}.")
    return importlib.import_module(f"hf_adaopt.lab.tasks.{name}")
