"""Every optimizer the comparison runs, built by name through one factory.

```python
from hf_adaopt.baselines import build_optimizer
opt = build_optimizer("sgd", model.parameters(), lr=1e-3)   # or param groups (hf_adaopt.trainer.param_groups)
```

| name           | class                               | what `lr` means                                       |
|----------------|-------------------------------------|-------------------------------------------------------|
| `adaopt`       | `hf_adaopt.AdaOpt`                  | initial step size (AdaOpt adapts it) and multiplier    |
| `sgd`          | `torch.optim.SGD`, momentum 0.9     | the learning rate                                      |
| `adam`         | `torch.optim.Adam`                  | the learning rate (weight decay as L2, like torch)    |
| `adamw`        | `torch.optim.AdamW`                 | the learning rate (decoupled weight decay)             |
| `rmsprop`      | `torch.optim.RMSprop`               | the learning rate (torch defaults: alpha 0.99)         |
| `prodigy`      | `prodigyopt.Prodigy`                | a multiplier of the estimated step size D; 1.0 is the package's recommended value |
| `dadapt`       | `dadaptation.DAdaptAdam`            | a multiplier of the estimated step size D; 1.0 recommended |
| `schedulefree` | `schedulefree.AdamWScheduleFree`    | the learning rate (needs `optimizer.train()/eval()`, which Trainer calls) |
| `dog`          | `dog.DoG`                           | a multiplier of DoG's step size; 1.0 recommended (the authors pair DoG with iterate averaging, not used here) |
| `ppsf`         | `prodigyplus.ProdigyPlusScheduleFree` | a multiplier of Prodigy's D, schedule-free averaging (needs `train()/eval()`); 1.0 recommended; its own default betas (0.9, 0.99) |

For the learning-rate-free peers (prodigy, dadapt, dog) the initial step size is set by `d0` (prodigy,
dadapt) or `reps_rel` / `init_eta` (dog), which pass through `**kw`; `DEFAULT_LR` holds the `lr` a run uses
when none is given (1.0 for them, the seed experiment's 1e-3 for the others).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable

import torch

OPTIMIZERS = ("adaopt", "sgd", "adam", "adamw", "rmsprop", "prodigy", "dadapt", "schedulefree", "dog", "ppsf")
CORE_OPTIMIZERS = ("adaopt", "sgd", "adam", "rmsprop")
SGD_MOMENTUM = 0.9

# name -> (module, class) for the peers in the `peers` extra
_PEERS = {
    "prodigy": ("prodigyopt", "Prodigy"),
    "dadapt": ("dadaptation", "DAdaptAdam"),
    "schedulefree": ("schedulefree", "AdamWScheduleFree"),
    "dog": ("dog", "DoG"),
    "ppsf": ("prodigyplus", "ProdigyPlusScheduleFree"),
}
# peers whose `lr` multiplies a step size they estimate themselves
LR_FREE = ("prodigy", "dadapt", "dog", "ppsf")
DEFAULT_LR = {name: (1.0 if name in LR_FREE else 1e-3) for name in OPTIMIZERS}


def available_optimizers() -> list[str]:
    """The names in `OPTIMIZERS` whose package is installed."""
    return [name for name in OPTIMIZERS if name not in _PEERS or importlib.util.find_spec(_PEERS[name][0])]


def _peer_class(name: str):
    module_name, class_name = _PEERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"Optimizer {name!r} needs the {module_name!r} package: pip install 'hf-adaopt[peers]'"
        ) from exc
    return getattr(module, class_name)


def build_optimizer(
    name: str,
    params_or_groups: Iterable,
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    **kw,
) -> torch.optim.Optimizer:
    """Construct optimizer `name` (see `OPTIMIZERS`) with the shared settings; `**kw` go to its constructor.

    Param groups may carry their own `weight_decay` (see `hf_adaopt.trainer.param_groups`), which wins over
    the argument, as usual in torch.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")
    if not lr > 0:
        raise ValueError(f"Invalid learning rate for {name}: {lr} (must be > 0)")
    betas = tuple(betas)
    if name == "adaopt":
        from hf_adaopt.optimizer import AdaOpt

        return AdaOpt(params_or_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kw)
    if name == "sgd":
        kw.setdefault("momentum", SGD_MOMENTUM)
        return torch.optim.SGD(params_or_groups, lr=lr, weight_decay=weight_decay, **kw)
    if name == "adam":
        return torch.optim.Adam(params_or_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kw)
    if name == "adamw":
        return torch.optim.AdamW(params_or_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kw)
    if name == "rmsprop":
        return torch.optim.RMSprop(params_or_groups, lr=lr, eps=eps, weight_decay=weight_decay, **kw)
    cls = _peer_class(name)
    if name == "prodigy":
        return cls(params_or_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kw)
    if name == "dadapt":
        kw.setdefault("decouple", True)  # AdamW-style decay, like prodigy's default
        return cls(params_or_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kw)
    if name == "schedulefree":
        return cls(params_or_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kw)
    if name == "ppsf":  # its documented defaults, betas (0.9, 0.99) included, unless given in **kw
        return cls(params_or_groups, lr=lr, eps=eps, weight_decay=weight_decay, **kw)
    # dog: SGD-like, no betas
    return cls(params_or_groups, lr=lr, eps=eps, weight_decay=weight_decay, **kw)

