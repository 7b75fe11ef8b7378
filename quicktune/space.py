"""Search spaces: a small YAML format, condition-aware sampling, and stable config ids.

The format mirrors the paper's search-space files: every parameter is a categorical list of
choices or a numeric range, and may be conditional (``only_active_with``) on other parameters'
values. A *config* is a plain ``dict`` holding the *active* parameters only; an inactive
parameter is simply absent, which is how learning-curve tables mark it too (a missing value).

Example::

    name: cpu
    model_param: model          # the column that picks the pretrained model
    params:
      model: {type: categorical, choices: [tf_efficientnet_lite0, resnet10t]}
      lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
      batch_size: {type: int, low: 16, high: 128, log: true}
      opt: {type: categorical, choices: [sgd, momentum, adamw]}
      momentum: {type: float, low: 0.0, high: 0.99, only_active_with: {opt: [momentum]}}
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

PARAM_TYPES = ("categorical", "float", "int", "bool")


class SpaceError(ValueError):
    """A search-space file or config is malformed; the message names the file and parameter."""


@dataclass(frozen=True)
class Param:
    """One hyperparameter of a space."""

    name: str
    type: str  # one of PARAM_TYPES
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    only_active_with: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    default: Any = None

    def sample(self, rng: np.random.Generator) -> Any:
        if self.type == "categorical":
            v = self.choices[int(rng.integers(len(self.choices)))]
            return v.item() if isinstance(v, np.generic) else v
        if self.type == "bool":
            return bool(rng.integers(2))
        lo, hi = float(self.low), float(self.high)
        if self.log:
            x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        else:
            x = rng.uniform(lo, hi)
        if self.type == "int":
            return int(min(max(round(x), math.ceil(lo)), math.floor(hi)))
        return float(x)

    def validate(self, value: Any) -> None:
        if self.type == "categorical":
            if value not in self.choices:
                raise SpaceError(f"parameter {self.name!r}: {value!r} is not one of {list(self.choices)}")
        elif self.type == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise SpaceError(f"parameter {self.name!r}: {value!r} is not a bool")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise SpaceError(f"parameter {self.name!r}: {value!r} is not a number")
            if self.type == "int" and float(value) != int(value):
                raise SpaceError(f"parameter {self.name!r}: {value!r} is not an integer")
            if not (float(self.low) - 1e-12 <= float(value) <= float(self.high) + 1e-12):
                raise SpaceError(f"parameter {self.name!r}: {value!r} outside [{self.low}, {self.high}]")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            d["choices"] = list(self.choices)
        if self.type in ("float", "int"):
            d.update(low=self.low, high=self.high, log=self.log)
        if self.only_active_with:
            d["only_active_with"] = {k: list(v) for k, v in self.only_active_with.items()}
        if self.default is not None:
            d["default"] = self.default
        return d


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of parameters with conditions. Parameters are sampled in file order, so a
    condition may only refer to a parameter listed before it."""

    name: str
    params: tuple[Param, ...]
    model_param: str | None = "model"

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "<dict>") -> "SearchSpace":
        if not isinstance(doc, Mapping) or not isinstance(doc.get("params"), Mapping) or not doc["params"]:
            raise SpaceError(f"{source}: a space needs a non-empty mapping 'params'")
        params: list[Param] = []
        seen: set[str] = set()
        for name, spec in doc["params"].items():
            where = f"{source}: parameter {name!r}"
            if not isinstance(spec, Mapping):
                raise SpaceError(f"{where}: expected a mapping, got {type(spec).__name__}")
            unknown = set(spec) - {"type", "choices", "low", "high", "log", "only_active_with", "default"}
            if unknown:
                raise SpaceError(f"{where}: unknown keys {sorted(unknown)}")
            ptype = spec.get("type", "categorical" if "choices" in spec else None)
            if ptype not in PARAM_TYPES:
                raise SpaceError(f"{where}: 'type' must be one of {PARAM_TYPES}, got {ptype!r}")
            choices: tuple[Any, ...] = ()
            low = high = None
            log = bool(spec.get("log", False))
            if ptype == "categorical":
                ch = spec.get("choices")
                if not isinstance(ch, (list, tuple)) or len(ch) == 0:
                    raise SpaceError(f"{where}: 'choices' must be a non-empty list")
                if len(set(map(repr, ch))) != len(ch):
                    raise SpaceError(f"{where}: duplicate choices")
                choices = tuple(ch)
            elif ptype in ("float", "int"):
                try:
                    low, high = float(spec["low"]), float(spec["high"])
                except (KeyError, TypeError, ValueError):
                    raise SpaceError(f"{where}: numeric parameters need numeric 'low' and 'high'") from None
                if not low < high:
                    raise SpaceError(f"{where}: need low < high, got {low} >= {high}")
                if log and low <= 0:
                    raise SpaceError(f"{where}: a log-scaled range needs low > 0")
                if ptype == "int":
                    low, high = int(low), int(high)
            cond_raw = spec.get("only_active_with") or {}
            if not isinstance(cond_raw, Mapping):
                raise SpaceError(f"{where}: 'only_active_with' must map parameter -> list of values")
            cond: dict[str, tuple[Any, ...]] = {}
            for parent, values in cond_raw.items():
                if parent not in seen:
                    raise SpaceError(f"{where}: condition on {parent!r}, which is not defined before it")
                cond[parent] = tuple(values) if isinstance(values, (list, tuple)) else (values,)
            params.append(Param(name=str(name), type=ptype, choices=choices, low=low, high=high, log=log,
                                only_active_with=cond, default=spec.get("default")))
            seen.add(str(name))
        model_param = doc.get("model_param", "model" if "model" in seen else None)
        if model_param is not None and model_param not in seen:
            raise SpaceError(f"{source}: model_param {model_param!r} is not a parameter")
        return cls(name=str(doc.get("name", Path(source).stem)), params=tuple(params), model_param=model_param)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SearchSpace":
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise SpaceError(f"{path}: no such search-space file") from None
        except yaml.YAMLError as exc:
            raise SpaceError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(doc, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model_param": self.model_param,
                "params": {p.name: p.to_dict() for p in self.params}}

    # --- configs ------------------------------------------------------------------------------
    def is_active(self, param: Param, config: Mapping[str, Any]) -> bool:
        return all(config.get(parent) in values for parent, values in param.only_active_with.items())

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for p in self.params:
            if self.is_active(p, config):
                config[p.name] = p.sample(rng)
        return config

    def sample_many(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``n`` distinct configs (fewer if the space is smaller)."""
        out: dict[str, dict[str, Any]] = {}
        tries = 0
        while len(out) < n and tries < 20 * n + 100:
            c = self.sample(rng)
            out.setdefault(config_id(c), c)
            tries += 1
        return list(out.values())

    def validate(self, config: Mapping[str, Any]) -> None:
        """Raise SpaceError unless ``config`` holds exactly the active parameters, each valid."""
        unknown = set(config) - set(self.names)
        if unknown:
            raise SpaceError(f"config has parameters not in space {self.name!r}: {sorted(unknown)}")
        for p in self.params:
            active = self.is_active(p, config)
            if active and p.name not in config:
                raise SpaceError(f"config misses active parameter {p.name!r}")
            if not active and p.name in config:
                raise SpaceError(f"parameter {p.name!r} is inactive (needs {dict(p.only_active_with)})")
            if active:
                p.validate(config[p.name])


def _canonical(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.10g}")
    return value


def config_id(config: Mapping[str, Any]) -> str:
    """A stable id: the first 12 hex digits of the SHA-1 of the active values (sorted JSON)."""
    canon = {k: _canonical(v) for k, v in sorted(config.items()) if v is not None}
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def builtin_space(name: str) -> SearchSpace:
    """A space shipped with the package: ``paper`` (the 24-model production default) or ``cpu``."""
    try:
        text = resources.files("quicktune.spaces").joinpath(f"{name}.yaml").read_text()
    except FileNotFoundError:
        raise SpaceError(f"no built-in space {name!r}") from None
    return SearchSpace.from_dict(yaml.safe_load(text), source=f"builtin:{name}")


def load_space(ref: str | Path | None) -> SearchSpace:
    """A space from a YAML path, or ``builtin:NAME`` / a bare built-in name; default ``cpu``."""
    if ref is None:
        return builtin_space("cpu")
    ref = str(ref)
    if ref.startswith("builtin:"):
        return builtin_space(ref.split(":", 1)[1])
    if not ref.endswith((".yaml", ".yml")) and not Path(ref).exists():
        return builtin_space(ref)
    return SearchSpace.from_yaml(ref)
