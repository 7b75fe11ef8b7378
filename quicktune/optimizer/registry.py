"""Optimizers by name, so the benchmark, the controller and the CLI build them the same way.

``make_optimizer(name, candidates, max_epochs, seed=..., **options)`` where ``candidates`` is either
a ``SearchSpace`` (configs are sampled from it) or a sequence of ``(config_id, config)`` pairs (a
finite pool, e.g. the configs of a learning-curve table).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from quicktune.optimizer.base import Optimizer
from quicktune.space import SearchSpace

Candidates = SearchSpace | Sequence[tuple[str, Mapping[str, Any]]]

# name -> ("module:Class", fixed keyword options)
_REGISTRY: dict[str, tuple[str, dict[str, Any]]] = {
    "quicktune": ("quicktune.optimizer.quicktune:QuickTune", {"meta": True, "cost_aware": True}),
    "quicktune-nometa": ("quicktune.optimizer.quicktune:QuickTune", {"meta": False, "cost_aware": True}),
    "quicktune-nocost": ("quicktune.optimizer.quicktune:QuickTune", {"meta": True, "cost_aware": False}),
    "dyhpo": ("quicktune.optimizer.quicktune:QuickTune", {"meta": False, "cost_aware": False}),
    # ablations: Syne Tune's DyHPO successive-halving promotions (probability 0.25) before the acquisition
    "quicktune-sh": (
        "quicktune.optimizer.quicktune:QuickTune",
        {"meta": True, "cost_aware": True, "probability_sh": 0.25},
    ),
    "quicktune-nometa-sh": (
        "quicktune.optimizer.quicktune:QuickTune",
        {"meta": False, "cost_aware": True, "probability_sh": 0.25},
    ),
    "random": ("quicktune.optimizer.baselines:RandomSearch", {}),
    "sh": ("quicktune.optimizer.baselines:SuccessiveHalving", {}),
    "asha": ("quicktune.optimizer.baselines:ASHA", {}),
    "hyperband": ("quicktune.optimizer.baselines:Hyperband", {}),
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def uses_meta_artifact(name: str) -> bool:
    """Whether the optimizer starts from a meta-trained artifact (the ``meta=True`` variants)."""
    return bool(_REGISTRY.get(name, ("", {}))[1].get("meta"))


def uses_model_descriptors(name: str) -> bool:
    """Whether the optimizer takes ``model_descriptors`` (the Quick-Tune family encodes models by them)."""
    return _REGISTRY.get(name, ("", {}))[0] == "quicktune.optimizer.quicktune:QuickTune"


def register(name: str, target: str, **fixed: Any) -> None:
    """Add an optimizer: ``target`` is ``"module:Class"``; the class takes
    ``(candidates, max_epochs, seed=..., **options)``."""
    _REGISTRY[name] = (target, dict(fixed))


def make_optimizer(name: str, candidates: Candidates, max_epochs: int, seed: int = 0, **options: Any) -> Optimizer:
    if name not in _REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(available())}")
    target, fixed = _REGISTRY[name]
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    opt = cls(candidates, max_epochs, seed=seed, **{**options, **fixed})
    opt.name = name
    return opt
