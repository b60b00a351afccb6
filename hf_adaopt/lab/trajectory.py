"""The lr trajectory of any optimizer the lab runs, read through the registry (Prodigy's ``d``, DoG's ``eta``, ...)."""

from __future__ import annotations

from hf_adaopt.core.callback import TrajectoryCallback
from hf_adaopt.lab import registry

__all__ = ["LRTrajectoryCallback"]


class LRTrajectoryCallback(TrajectoryCallback):
    """Records the step size group 0 applies (`hf_adaopt.lab.registry.step_size`) at every optimizer step."""

    def _step_size(self, optimizer) -> float:
        return registry.step_size(optimizer, optimizer.param_groups[0])
