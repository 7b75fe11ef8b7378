"""Validate a finetuning config and fill in the defaults of absent (or inactive) knobs.

The knob names, value types and defaults are the contract of ``docs/search-space.md``: a config
sampled from ``builtin:paper`` or ``builtin:cpu`` holds only its *active* knobs, and the step
must accept any of them. Anything else -- an unknown knob, a value of the wrong type, a value out
of range -- is rejected here with :class:`InvalidConfigError`, which the step reports as status
``invalid`` (the optimizer then never proposes that config again). No torch/timm import here, so
validation is instant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["InvalidConfigError", "KNOBS", "DEFAULTS", "resolve_config", "parse_betas"]


class InvalidConfigError(ValueError):
    """The config cannot be trained as given; the message names the knob and the bad value."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str, Any], float]:
    def check(name: str, v: Any) -> float:
        if not _is_number(v):
            raise InvalidConfigError(f"knob {name!r}: {v!r} is not a finite number")
        x = float(v)
        if lo is not None and (x < lo or (lo_open and x <= lo)):
            raise InvalidConfigError(f"knob {name!r}: {v!r} must be {'>' if lo_open else '>='} {lo}")
        if hi is not None and x > hi:
            raise InvalidConfigError(f"knob {name!r}: {v!r} must be <= {hi}")
        return x

    return check


def _int(lo: int, hi: int | None = None) -> Callable[[str, Any], int]:
    def check(name: str, v: Any) -> int:
        if not _is_number(v) or float(v) != int(v):
            raise InvalidConfigError(f"knob {name!r}: {v!r} is not an integer")
        x = int(v)
        if x < lo or (hi is not None and x > hi):
            raise InvalidConfigError(f"knob {name!r}: {v!r} must be in [{lo}, {hi if hi is not None else 'inf'}]")
        return x

    return check


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise InvalidConfigError(f"knob {name!r}: {v!r} is not a bool (true/false)")
    return v


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, v: Any) -> str:
        if v not in choices:
            raise InvalidConfigError(f"knob {name!r}: {v!r} is not one of {list(choices)}")
        return str(v)

    return check


def _model(name: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise InvalidConfigError(f"knob {name!r}: {v!r} is not a model name")
    return v


def parse_betas(text: str) -> tuple[float, float]:
    """``"0.9 0.999"`` -> ``(0.9, 0.999)`` (the paper stores the Adam betas as one string)."""
    try:
        b1, b2 = (float(x) for x in str(text).split())
    except ValueError:
        raise InvalidConfigError(f"knob 'opt_betas': {text!r} is not two numbers like '0.9 0.999'") from None
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise InvalidConfigError(f"knob 'opt_betas': {text!r}: each beta must be in [0, 1)")
    return b1, b2


def _betas(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise InvalidConfigError(f"knob {name!r}: {v!r} is not a string like '0.9 0.999'")
    parse_betas(v)
    return v


# knob -> (validator, default). Defaults: docs/search-space.md, last column.
KNOBS: dict[str, tuple[Callable[[str, Any], Any], Any]] = {
    "model": (_model, None),
    "pct_to_freeze": (_float(0.0, 1.0), 0.0),
    "linear_probing": (_bool, False),
    "layer_decay": (_float(0.0, 1.0), 0.0),
    "sp_reg": (_float(0.0), 0.0),
    "delta_reg": (_float(0.0), 0.0),
    "bss_reg": (_float(0.0), 0.0),
    "cotuning_reg": (_float(0.0), 0.0),
    "stoch_norm": (_bool, False),
    "mixup": (_float(0.0), 0.0),
    "cutmix": (_float(0.0), 0.0),
    "mixup_prob": (_float(0.0, 1.0), 1.0),
    "smoothing": (_float(0.0, 0.999), 0.0),
    "drop": (_float(0.0, 0.999), 0.0),
    "data_augmentation": (_choice("none", "trivial_augment", "random_augment", "auto_augment"), "none"),
    "ra_num_ops": (_int(1, 16), 2),
    "ra_magnitude": (_int(0, 30), 9),
    "auto_augment": (_choice("v0", "original"), "v0"),
    "opt": (_choice("sgd", "momentum", "adam", "adamw", "adamp"), "adamw"),
    "opt_betas": (_betas, "0.9 0.999"),
    "momentum": (_float(0.0, 0.999), 0.9),
    "lr": (_float(0.0, lo_open=True), 1e-3),
    "weight_decay": (_float(0.0), 0.0),
    "clip_grad": (_float(0.0), 0.0),
    "sched": (_choice("cosine", "step", "multistep", "plateau"), "cosine"),
    "warmup_epochs": (_int(0), 0),
    "warmup_lr": (_float(0.0), 0.0),
    "decay_rate": (_float(0.0, 1.0, lo_open=True), 0.1),
    "decay_epochs": (_int(1), 10),
    "patience_epochs": (_int(0), 2),
    "batch_size": (_int(1), 32),
}
DEFAULTS: dict[str, Any] = {k: d for k, (_, d) in KNOBS.items() if k != "model"}


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every knob with a validated value: the given ones, defaults for the absent ones.

    Inactive knobs that are present anyway (e.g. ``momentum`` with ``opt: adamw``) are accepted
    and simply have no effect, like in timm's ``train.py``.
    """
    if not isinstance(config, Mapping):
        raise InvalidConfigError(f"a config must be a JSON object, got {type(config).__name__}")
    unknown = sorted(set(config) - set(KNOBS))
    if unknown:
        raise InvalidConfigError(f"unknown knob(s) {unknown}; known knobs: {sorted(KNOBS)}")
    if "model" not in config:
        raise InvalidConfigError("knob 'model' is required (a timm model name)")
    out: dict[str, Any] = {}
    for name, (check, default) in KNOBS.items():
        out[name] = check(name, config[name]) if name in config else default
    return out
