"""Every optimizer hf-adaopt runs, in one table (`SPECS`), built by name through one factory.

```python
from hf_adaopt.lab.registry import build_optimizer
opt = build_optimizer("sgd", model.parameters(), lr=1e-3)   # or param groups (hf_adaopt.core.trainer.param_groups)
```

| name           | class                               | what `lr` means                                       |
|----------------|-------------------------------------|-------------------------------------------------------|
| `adaopt`       | `hf_adaopt.AdaOpt`, fed the loss    | a multiplier of the step AdaOpt sets (and group ratios) |
| `adaopt-plain` | `hf_adaopt.AdaOpt`, no loss         | the same, as a plain `opt.step()` loop runs it          |
| `sgd`          | `torch.optim.SGD`, momentum 0.9     | the learning rate                                      |
| `adam`         | `torch.optim.Adam`                  | the learning rate (weight decay as L2, like torch)    |
| `adamw`        | `torch.optim.AdamW`                 | the learning rate (decoupled weight decay)             |
| `adamw-cosine` | `torch.optim.AdamW`, warmup + cosine | the peak lr of the practitioner's schedule: linear warmup over 5% of the steps, cosine decay to 0 |
| `rmsprop`      | `torch.optim.RMSprop`               | the learning rate (torch defaults: alpha 0.99)         |
| `prodigy`      | `prodigyopt.Prodigy`                | a multiplier of the estimated step size D; 1.0 is the package's recommended value |
| `dadapt`       | `dadaptation.DAdaptAdam`            | a multiplier of the estimated step size D; 1.0 recommended |
| `schedulefree` | `schedulefree.AdamWScheduleFree`    | the learning rate (needs `optimizer.train()/eval()`, which Trainer calls) |
| `dog`          | `dog.DoG`                           | a multiplier of DoG's step size; 1.0 recommended (the authors pair DoG with iterate averaging, not used here) |
| `ppsf`         | `prodigyplus.ProdigyPlusScheduleFree` | a multiplier of Prodigy's D, schedule-free averaging (needs `train()/eval()`); 1.0 recommended; its own default betas (0.9, 0.99) |

For the learning-rate-free peers (prodigy, dadapt, dog, ppsf) the initial step size is set by `d0` (prodigy,
dadapt) or `reps_rel` / `init_eta` (dog), which pass through `**kw`; a run's default `lr` is 1.0 for them, the
seed experiment's 1e-3 for the others. The table's order is the display order of reports and plots.

An entry may carry `hf-adaopt train` options of its own (`OptimizerSpec.train_args`, e.g. `adamw-cosine`'s schedule):
`hf-adaopt train` takes them as defaults and the compare / suite runner puts them after a workload's options, so
they win over its constant schedule. `ADAOPT_ROWS` and `ADAMW_ROWS` name the rows that reports treat as one family:
AdaOpt fed the loss or not, AdamW at a constant lr or on the schedule.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the table itself needs no torch: `hf-adaopt report` reads it without importing torch
    import torch

SEED_LR = 1e-3  # the seed experiment's lr, the default of every optimizer whose lr is a learning rate
LR_FREE_MULTIPLIER = 1.0  # the peers' recommended multiplier of the step size they estimate
SGD_MOMENTUM = 0.9
COSINE_WARMUP = 0.05  # adamw-cosine's warmup, a fraction of the run's steps


# How to read the step size a param group applies (for the lr trajectory; no math of our own).
def _lr(group: dict) -> float:
    return float(group["lr"])


def _lr_times_d(group: dict) -> float:
    """Prodigy / D-Adaptation: `lr` multiplies the estimate D kept in ``group["d"]``."""
    return float(group["lr"]) * float(group["d"]) if "d" in group else _lr(group)


def _lr_times_eta(group: dict) -> float:
    """DoG: one step size per parameter in ``group["eta"]``; the first is recorded (a host sync, which DoG's own
    step already pays)."""
    return float(group["lr"]) * float(group["eta"][0]) if group.get("eta") else _lr(group)


def _scheduled_lr(group: dict) -> float:
    """Schedule-Free: its warmed-up lr in ``group["scheduled_lr"]`` (absent before the first step)."""
    return float(group["scheduled_lr"]) if "scheduled_lr" in group else _lr(group)


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: its class, the TrainingArguments it takes, what its `lr` means and how to read its step."""

    name: str
    cls: str  # "module:Class"
    takes_betas: bool  # adam_beta1/adam_beta2 -> betas
    takes_eps: bool  # adam_epsilon -> eps
    lr_free: bool = False  # `lr` multiplies a step size the optimizer estimates itself
    set_defaults: Mapping = field(default_factory=lambda: MappingProxyType({}))  # our settings, **kw wins
    step_size: Callable[[dict], float] = _lr  # the step size a param group applies
    package: str | None = None  # the distribution of the `peers` extra it needs; None: torch / hf_adaopt
    label: str = ""  # the name tables and plots show; "" = `name`
    factory: str | None = None  # "module:function" that builds it, when not the class itself
    feeds_loss: bool = True  # AdaOpt: the Trainer's AdaOptCallback gives it the loss; False is the plain-loop user
    # `hf-adaopt train` options (TrainingArguments name -> value) that come with the entry, e.g. a schedule
    train_args: Mapping = field(default_factory=lambda: MappingProxyType({}))

    @property
    def display_name(self) -> str:
        return self.label or self.name

    @property
    def default_lr(self) -> float:
        return LR_FREE_MULTIPLIER if self.lr_free else SEED_LR

    @property
    def class_name(self) -> str:
        return self.cls.split(":")[1]

    def available(self) -> bool:
        return importlib.util.find_spec(self.cls.split(":")[0]) is not None

    def load_factory(self) -> Callable:
        """What builds it: ``factory`` (AdaOpt's takes the private ``variant`` and settings), else the class."""
        if self.factory is None:
            return self.load_class()
        module_name, function = self.factory.split(":")
        return getattr(importlib.import_module(module_name), function)

    def load_class(self) -> type:
        module_name, class_name = self.cls.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ImportError(
                f"Optimizer {self.name!r} needs the {module_name!r} package: pip install 'hf-adaopt[peers]'"
            ) from exc
        return getattr(module, class_name)

    def train_argv(self) -> list[str]:
        """`train_args` as command-line tokens (`--lr_scheduler_type cosine ...`), in the table's order."""
        return [token for name, value in self.train_args.items() for token in (f"--{name}", str(value))]

    def training_kwargs(self, training_args) -> dict:
        """The constructor arguments this optimizer takes from `TrainingArguments`, in a fixed order."""
        kwargs = {"lr": training_args.learning_rate, "weight_decay": training_args.weight_decay}
        if self.takes_betas:
            kwargs["betas"] = (training_args.adam_beta1, training_args.adam_beta2)
        if self.takes_eps:
            kwargs["eps"] = training_args.adam_epsilon
        return kwargs


SPECS = (
    # built through the private variants table: --optimizer_kwargs '{"variant": "v4g"}' reruns an ablation row
    OptimizerSpec("adaopt", "hf_adaopt.core.optimizer:AdaOpt", takes_betas=True, takes_eps=True, label="AdaOpt",
                  factory="hf_adaopt.core._variants:build"),
    # the same optimizer as a plain PyTorch loop runs it: opt.step() and nothing else, no loss reaches it
    OptimizerSpec("adaopt-plain", "hf_adaopt.core.optimizer:AdaOpt", takes_betas=True, takes_eps=True,
                  label="AdaOpt (no loss)", factory="hf_adaopt.core._variants:build", feeds_loss=False),
    OptimizerSpec("sgd", "torch.optim:SGD", takes_betas=False, takes_eps=False,
                  set_defaults=MappingProxyType({"momentum": SGD_MOMENTUM}), label="SGD (m 0.9)"),
    OptimizerSpec("adam", "torch.optim:Adam", takes_betas=True, takes_eps=True, label="Adam"),
    OptimizerSpec("adamw", "torch.optim:AdamW", takes_betas=True, takes_eps=True, label="AdamW"),
    # what practitioners run on a long from-scratch run: linear warmup over 5% of the steps (transformers 5 reads a
    # --warmup_steps below 1 as a ratio), then cosine decay to 0
    OptimizerSpec("adamw-cosine", "torch.optim:AdamW", takes_betas=True, takes_eps=True, label="AdamW + cosine",
                  train_args=MappingProxyType({"lr_scheduler_type": "cosine", "warmup_steps": COSINE_WARMUP})),
    OptimizerSpec("rmsprop", "torch.optim:RMSprop", takes_betas=False, takes_eps=True, label="RMSprop"),
    OptimizerSpec("prodigy", "prodigyopt:Prodigy", takes_betas=True, takes_eps=True, lr_free=True,
                  step_size=_lr_times_d, package="prodigyopt", label="Prodigy"),
    OptimizerSpec("dadapt", "dadaptation:DAdaptAdam", takes_betas=True, takes_eps=True, lr_free=True,
                  set_defaults=MappingProxyType({"decouple": True}),  # AdamW-style decay, like prodigy's default
                  step_size=_lr_times_d, package="dadaptation", label="D-Adaptation"),
    OptimizerSpec("schedulefree", "schedulefree:AdamWScheduleFree", takes_betas=True, takes_eps=True,
                  step_size=_scheduled_lr, package="schedulefree", label="Schedule-Free AdamW"),
    OptimizerSpec("dog", "dog:DoG", takes_betas=False, takes_eps=True, lr_free=True, step_size=_lr_times_eta,
                  package="dog-optimizer", label="DoG"),
    # its documented defaults, betas (0.9, 0.99) included, unless given in **kw
    OptimizerSpec("ppsf", "prodigyplus:ProdigyPlusScheduleFree", takes_betas=False, takes_eps=True, lr_free=True,
                  step_size=_lr_times_d, package="prodigy-plus-schedule-free", label="Prodigy+ScheduleFree"),
)
OPTIMIZERS = tuple(spec.name for spec in SPECS)
_BY_NAME = {spec.name: spec for spec in SPECS}
_BY_CLASS = {}
for _spec in SPECS:  # a class listed twice (AdaOpt fed the loss or not) reads its step size the same way
    _BY_CLASS.setdefault(_spec.class_name, _spec)
# The rows that reports read as one optimizer's family: AdaOpt fed the loss and plain; AdamW constant and scheduled
# (the best-tuned AdamW of a workload is the best cell of either AdamW row).
ADAOPT_ROWS = ("adaopt", "adaopt-plain")
ADAMW_ROWS = ("adamw", "adamw-cosine")
# Optimizers that need no extra package (torch's and AdaOpt).
BUILTIN = tuple(spec.name for spec in SPECS if spec.package is None)
# Learning-rate-free peers in the `peers` extra: their `lr` is a multiplier.
LR_FREE = tuple(spec.name for spec in SPECS if spec.lr_free)


def label(name: str) -> str:
    """The display name of optimizer `name` (the name itself if it is not in the table)."""
    spec = _BY_NAME.get(name)
    return spec.display_name if spec else name


def get(name: str) -> OptimizerSpec:
    """The spec of optimizer `name`; ValueError listing the names otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.") from None


def spec_of(optimizer: torch.optim.Optimizer) -> OptimizerSpec | None:
    """The spec of an optimizer instance, by its class; None for a class not in the table."""
    return _BY_CLASS.get(type(optimizer).__name__)


def step_size(optimizer: torch.optim.Optimizer, group: dict) -> float:
    """The step size `group` of `optimizer` applies: its `lr`, or for an lr-free optimizer `lr` times its estimate."""
    spec = spec_of(optimizer)
    return spec.step_size(group) if spec is not None else _lr(group)


def order_key(name: str) -> tuple[int, str]:
    """Display order: the table's, then unknown names alphabetically."""
    return (OPTIMIZERS.index(name) if name in _BY_NAME else len(OPTIMIZERS), name)


def available_optimizers() -> list[str]:
    """The names in `OPTIMIZERS` whose package is installed."""
    return [spec.name for spec in SPECS if spec.package is None or spec.available()]


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

    `betas` and `eps` reach only the optimizers that take them (`OptimizerSpec.takes_betas` / `takes_eps`). Param
    groups may carry their own `weight_decay` (see `hf_adaopt.core.trainer.param_groups`), which wins over the argument,
    as usual in torch.
    """
    spec = get(name)
    if not lr > 0:
        raise ValueError(f"Invalid learning rate for {name}: {lr} (must be > 0)")
    kwargs = {"lr": lr, "weight_decay": weight_decay}
    if spec.takes_betas:
        kwargs["betas"] = tuple(betas)
    if spec.takes_eps:
        kwargs["eps"] = eps
    return spec.load_factory()(params_or_groups, **{**kwargs, **spec.set_defaults, **kw})
