"""hf-adaopt: a learning-rate-free optimizer for `transformers.Trainer` and `accelerate`.

Two parts:

* ``hf_adaopt.core`` -- the library: `AdaOpt` (reference, foreach and fused steps), `AdaOptCallback` and the
  Trainer glue. It needs torch; the Trainer pieces import transformers when first used. It imports nothing
  of the lab.
* ``hf_adaopt.lab`` -- the experiment harness behind the ``hf-adaopt`` command: tasks, models, the runner,
  ``compare``, ``suite``, statistics, reports, cards and the Hub (the ``train``, ``hub`` and ``bench`` extras).

`import hf_adaopt` needs torch only.
"""

from hf_adaopt.core.optimizer import AdaOpt

__version__ = "0.1.0"

_LAZY = {
    "AdaOptCallback": "hf_adaopt.core.callback",
    "create_optimizer_and_scheduler": "hf_adaopt.core.trainer",
    "adaopt_cls_and_kwargs": "hf_adaopt.core.trainer",
}

__all__ = ["AdaOpt", "__version__", *_LAZY]


def __getattr__(name):
    # Lazy so that the optimizer stays usable without transformers installed.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_adaopt' has no attribute {name!r}")
