"""Private: the controller's settings that exist for ablations and to restore earlier versions, and the table of
every committed ablation row (``model_cards/results/ablation``) as those settings.

Not part of the public constructor: ``AdaOpt(...)`` always starts from ``SETTINGS``. The lab builds a variant
with ``build(params, variant="v4g", **kwargs)`` -- ``hf-adaopt suite --optimizers adaopt --optimizer_kwargs
'{"variant": "v4g"}'`` -- and any of these settings may be given by name on top of it (the ablation commands in
each row's ``suite_config.json`` do so). A row's settings reproduce the switches it ran; where the code around
them changed since (``CODE_CHANGES``), a rerun is that row's settings on today's code, not its exact numbers.
"""

from __future__ import annotations

import math
from typing import Any

# The private settings and today's values (chosen by the ablations; the docstring of hf_adaopt.core.optimizer
# says what each does).
SETTINGS: dict[str, Any] = {
    "variance_power": 0.0,  # exponent p of the per-tensor gate phi ~ (S/(S+N))^p; 0: every tensor the same step
    "initial_scale": 1e-2,  # the start as a fraction of the weight matrices' RMS (no loss, assumed_loss None); None: lr
    "initial_decrease": 0.03,  # Polyak's start: the first step's first-order decrease as a fraction of the loss
    "progress_power": 1.0,  # the progress ceiling d <= d0 (f0 / f)^k; None: off
    "secant_target": -1.0,  # the secant ratio steered to at full signal; 0: the greedy step
    "trust_bounds": False,  # the first version's caps relative to the weights' RMS
    "symmetric_damping": True,  # damp growing as well as shrinking by the signal share
    "trusted_growth": False,  # with symmetric damping, grow at full rate on a reading r >= 1/2
    "signal_scaled_target": True,  # scale the target by the signal share (0 at the noise floor)
    "momentum_noise": True,  # damp by the momentum's signal share rather than one gradient's
    "tracking": False,  # steer d to the greedy step the reading measured, against the steps it read (not d)
    "window_growth": 4.0,  # the most d grows over the readings' memory, 1 / (1 - beta1) steps (capped_growth, tracking)
    "ramp": False,  # tracking: during warmup, double d each step while the reading is clearly linear (r >= 1/2)
    "earned_decay": False,  # the horizon's decay goes to d * S/(S+N) at the end, not to 0
    "capped_growth": True,  # the secant grows d at most window_growth per 1 / (1 - beta1) steps (v8)
    "ceiling_yields": True,  # the progress ceiling lets the step grow while the secant reads linear, r >= 1/2 (v9d)
    "assumed_loss": 1.0,  # no loss given: Polyak's start and the ceiling read this one; None: 1% of the RMS (v10)
    "earned_cooldown": True,  # the horizon's decay begins at the first step past its start that the secant does not grow
    "noise_scaled_start": True,  # Polyak's start scaled by floor / signal share at its first reading, if below (v12)
    "noise_corrected_yield": False,  # the ceiling also yields to a reading linear once its noise is allowed for (v12b)
}
# What a checkpoint saved before a setting existed ran with (AdaOpt.__setstate__).
BEFORE_SETTING = {
    "variance_power": 0.0, "initial_scale": None, "initial_decrease": None, "progress_power": None,
    "secant_target": 0.0, "trust_bounds": True, "symmetric_damping": False, "trusted_growth": False,
    "signal_scaled_target": False, "momentum_noise": False, "tracking": False,
    "window_growth": 2.0, "ramp": False, "earned_decay": False, "capped_growth": False,
    "ceiling_yields": False, "assumed_loss": None, "earned_cooldown": False, "noise_corrected_yield": False,
    "noise_scaled_start": False,
}

_V1 = {"adapt_rate": 0.1, "initial_scale": None, "initial_decrease": None, "progress_power": None,
       "secant_target": 0.0, "signal_scaled_target": False, "symmetric_damping": False, "trust_bounds": True,
       "momentum_noise": False, "capped_growth": False, "ceiling_yields": False, "assumed_loss": None,
       "earned_cooldown": False, "noise_corrected_yield": False, "noise_scaled_start": False}


def _on(base: dict, **change: Any) -> dict:
    return {**base, **change}


_V2A = _on(_V1, initial_scale=1e-3, trust_bounds=False, adapt_rate=0.2)
_V3A = _on(_V2A, symmetric_damping=True)
_V3E = _on(_V3A, initial_scale=1e-2)
_V3G = _on(_V3E, secant_target=-1.0, signal_scaled_target=True)
_V3I = _on(_V3G, momentum_noise=True)
_V4D = _on(_V3I, adapt_rate=0.4)
_V5A = _on(_V4D, initial_decrease=0.03)
_V5E = _on(_V5A, progress_power=1.0)

# Every committed ablation row: the settings it ran (public ones included: adapt_rate, loss_spike_threshold).
# None: the row ran code that is gone (GONE says where it is).
VARIANTS: dict[str, dict | None] = {
    "v1": _V1,
    "v2a": _V2A,
    "v2b": _on(_V2A, secant_target=-0.5),
    "v3a": _V3A,
    "v3b": _on(_V3A, trust_bounds=True),
    "v3c": _on(_V3A, secant_target=-0.5),
    "v3d": _on(_V3A, trusted_growth=True),
    "v3e": _V3E,
    "v3f": _on(_V3E, secant_target=-0.5, signal_scaled_target=True),
    "v3g": _V3G,
    "v3g-suite": _V3G,
    "v3h": _on(_V3G, initial_scale=1e-3),
    "v3i": _V3I,
    "v3j": _on(_V3I, initial_scale=1e-3),
    "v4a": None,
    "v4b": None,
    "v4c": None,
    "v4d": _V4D,
    "v4e": _on(_V4D, initial_scale=3e-3),
    "v4f": _on(_V3I, adapt_rate=0.6),
    "v4g": _V4D,
    "v5a": _V5A,
    "v5b": _on(_V5A, initial_decrease=0.01),
    "v5c": _on(_V5A, adapt_rate=0.2),
    "v5e": _V5E,
    "v5f": _on(_V5E, progress_power=2.0),
    "v5g": _on(_V5E, adapt_rate=0.0),
    "v5h": _on(_V5E, loss_spike_threshold=None),
    "v5i": _on(_V5E, progress_power=1.5),
    "v6a": _on(_V5E, initial_decrease=0.015, progress_power=1.5),
    "v6b": _on(_V5E, initial_decrease=0.02, progress_power=1.5),
    "v6c": _on(_V5E, signal_scaled_target=False),
    "v7a": _V5E,
    "v7b": _V5E,
    # third generation (issue 19), each on both paths, seed 0, lr 1e-3 (model_cards/results/ablation/README.md)
    "v8a": _on(_V5E, tracking=True, window_growth=2.0),
    "v8b": _on(_V5E, tracking=True, window_growth=4.0),
    "v8c": _on(_V5E, tracking=True, window_growth=4.0, ramp=True),
    "v8d": _on(_V5E, earned_decay=True),
    "v8e": _on(_V5E, capped_growth=True, window_growth=2.0),
    "v8f": _on(_V5E, capped_growth=True, window_growth=4.0),
    # v9 and v10 (issue 19), suite v2's short workloads, seed 0, lr 1e-1 (model_cards/results/ablation/v8/README.md);
    # from v9c on, each tensor's signal share counts in proportion to its group's lr ratio (CODE_CHANGES)
    "v9b": _on(_V5E, capped_growth=True, window_growth=4.0, trusted_growth=True),
    "v9c": _on(_V5E, capped_growth=True, window_growth=4.0),
    "v9d": _on(_V5E, capped_growth=True, window_growth=4.0, ceiling_yields=True),
    "v9e": None,
    "v9f": None,
    "v9g": _on(_V5E, capped_growth=True, window_growth=4.0, ceiling_yields=True, secant_target=0.0),
    "v10": _on(_V5E, capped_growth=True, window_growth=4.0, ceiling_yields=True, assumed_loss=1.0),
    # v11: the start read before clipping (CODE_CHANGES), and the horizon's decay earned (model_cards/results/ablation/v11)
    "v11": _on(_V5E, capped_growth=True, window_growth=4.0, ceiling_yields=True, assumed_loss=1.0, earned_cooldown=True),
    # v12: the yield also reads the secant allowed for noise (model_cards/results/ablation/v12)
    "v12": _on(_V5E, capped_growth=True, window_growth=4.0, ceiling_yields=True, assumed_loss=1.0, earned_cooldown=True,
               noise_scaled_start=True),
    "v12b": _on(_V5E, capped_growth=True, window_growth=4.0, ceiling_yields=True, assumed_loss=1.0, earned_cooldown=True,
                noise_corrected_yield=True),
}
GONE = {
    **{v: "the independent secant, commit cf8e368" for v in ("v4a", "v4b", "v4c")},
    **{v: "a probe patch, model_cards/results/ablation/v8/v9/variants.patch on 15de330" for v in ("v9e", "v9f")},
}
# Code that changed under the switches since a row ran (its rerun differs from the committed numbers).
CODE_CHANGES = (
    ("v4g", "the loss guard's ceiling: rows before v4g ran without it"),
    ("v7a", "the secant's gradient norm on the subsample: rows before v7a took it over the whole gradient"),
    ("v7b", "the lagged reading (summed in the last update): rows before v7b read this step's gradient"),
    ("v9c", "each tensor's signal share and the secant's gradient norm counted in proportion to its group's lr "
            "ratio: rows before v9c counted every tensor by its size alone (one group: the same numbers)"),
    ("v11", "Polyak's start reads the first gradient before clipping: rows before v11 read it after clipping (a run "
            "whose first gradient was not clipped: the same numbers)"),
)


def check(settings: dict[str, Any]) -> None:
    """Raise ValueError on a private setting's bad value, naming it."""
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise TypeError(f"unknown AdaOpt settings {sorted(unknown)}; the private settings are {sorted(SETTINGS)}")
    assumed = settings.get("assumed_loss", SETTINGS["assumed_loss"])
    if assumed is not None and not 0.0 < assumed < math.inf:
        raise ValueError(f"Invalid assumed_loss value: {assumed} (expected a finite loss > 0 or None)")
    for key in ("initial_scale", "initial_decrease"):
        value = settings.get(key, SETTINGS[key])
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError(f"Invalid {key} value: {value} (expected 0 < {key} < 1 or None)")
    power = settings.get("progress_power", SETTINGS["progress_power"])
    if power is not None and not 0.0 < power < math.inf:
        raise ValueError(f"Invalid progress_power value: {power} (expected a finite power > 0 or None)")
    target = settings.get("secant_target", SETTINGS["secant_target"])
    from hf_adaopt.core.controller import SECANT_R_MAX, SECANT_R_MIN

    if not SECANT_R_MIN < target < SECANT_R_MAX:
        raise ValueError(f"Invalid secant_target value: {target} (expected {SECANT_R_MIN} < r* < {SECANT_R_MAX})")
    p = settings.get("variance_power", SETTINGS["variance_power"])
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"Invalid variance_power value: {p} (expected 0 <= p <= 1)")


def configure(optimizer, **settings: Any) -> None:
    """Set private settings on an AdaOpt before its first step: in its defaults and every param group."""
    check(settings)
    if any(optimizer.state.values()):
        raise RuntimeError("configure() an AdaOpt before its first step: the controller has already started")
    cleaned = {k: bool(v) if isinstance(SETTINGS[k], bool) else v for k, v in settings.items()}
    optimizer.defaults.update(cleaned)
    for group in optimizer.param_groups:
        group.update(cleaned)


def build(params, variant: str | None = None, **kwargs: Any):
    """An AdaOpt with ``variant``'s settings (``VARIANTS``), then ``kwargs`` (public or private) on top."""
    from hf_adaopt.core.optimizer import AdaOpt

    settings: dict[str, Any] = {}
    if variant is not None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown AdaOpt variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if VARIANTS[variant] is None:
            raise ValueError(f"AdaOpt variant {variant!r} ran code that is gone ({GONE[variant]}): apply or check "
                             "out that code to rerun it")
        settings.update(VARIANTS[variant])
    settings.update(kwargs)
    private = {k: settings.pop(k) for k in list(settings) if k in SETTINGS}
    check(private)  # before the optimizer is built: a bad value names itself
    optimizer = AdaOpt(params, **settings)
    configure(optimizer, **private)
    return optimizer
