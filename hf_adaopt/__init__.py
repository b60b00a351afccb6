"""hf-adaopt: a learning-rate-free optimizer for `transformers.Trainer` and `accelerate`.

`import hf_adaopt` needs torch only; the Trainer pieces (`AdaOptCallback`, ...) import transformers lazily.
"""

from hf_adaopt.optimizer import AdaOpt

__version__ = "0.1.0"

_LAZY = {
    "AdaOptCallback": "hf_adaopt.callback",
    "LRTrajectoryCallback": "hf_adaopt.callback",
    "create_optimizer_and_scheduler": "hf_adaopt.trainer",
    "adaopt_cls_and_kwargs": "hf_adaopt.trainer",
}

__all__ = ["AdaOpt", "__version__", *_LAZY]


def __getattr__(name):
    # Lazy so that the optimizer stays usable without transformers installed.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_adaopt' has no attribute {name!r}")
