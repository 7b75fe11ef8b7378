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

Parameter order. Configs are sampled parameter by parameter in the space's order, so the order
is part of what makes a search reproducible (a resumed search samples new candidates from its
restored random generator). The order is the file's order, except that a conditional parameter
listed before one of its parents is moved right after it (conditions are resolved by dependency,
not by position). ``to_dict`` writes the order explicitly as ``param_order`` and ``from_dict``
honours it, so a space survives a JSON round trip with sorted keys (``spec.json``) unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PARAM_TYPES = ("categorical", "float", "int", "bool")
MAX_SPACE_FILE_BYTES = 1 << 20  # a space file is a few kB; refuse to read a large file whole


class SpaceError(ValueError):
    """A search-space file or config is malformed; the message names the file and parameter."""


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: errors name the offending value, never more."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scalar(value: Any, where: str) -> Any:
    """A choice or condition value as a plain JSON scalar (str, bool, int, finite float).

    numpy scalars become Python scalars, so a space built from numpy values compares equal to
    itself after a JSON round trip and its configs get the same ids. Lists, mappings, ``None``
    and non-finite floats are refused: they do not survive JSON as the same value (or, for
    ``None``, would read as an absent parameter in a config)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpaceError(f"{where}: {_short(value)} is not a finite number")
        return value
    raise SpaceError(f"{where}: values must be strings, numbers or booleans, got {type(value).__name__}")


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and tuples replaced by JSON types (for ``to_dict``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


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

    def _bounds(self) -> tuple[float, float]:
        """``(low, high)`` of a numeric parameter (the parser always sets both)."""
        if self.low is None or self.high is None:
            raise SpaceError(f"parameter {self.name!r}: a numeric parameter needs 'low' and 'high'")
        return float(self.low), float(self.high)

    def sample(self, rng: np.random.Generator) -> Any:
        if self.type == "categorical":
            v = self.choices[int(rng.integers(len(self.choices)))]
            return v.item() if isinstance(v, np.generic) else v
        if self.type == "bool":
            return bool(rng.integers(2))
        lo, hi = self._bounds()
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
            lo, hi = self._bounds()
            if not (lo - 1e-12 <= float(value) <= hi + 1e-12):
                raise SpaceError(f"parameter {self.name!r}: {value!r} outside [{self.low}, {self.high}]")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (lists, str, numbers, bools), whatever the values were built from."""
        d: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            d["choices"] = _plain(list(self.choices))
        if self.type in ("float", "int"):
            d.update(low=_plain(self.low), high=_plain(self.high), log=bool(self.log))
        if self.only_active_with:
            d["only_active_with"] = {k: _plain(list(v)) for k, v in self.only_active_with.items()}
        if self.default is not None:
            d["default"] = _plain(self.default)
        return d


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of parameters with conditions. Parameters are sampled in this order; every
    parent of a condition comes before the parameters it conditions (see the module docstring).
    Two spaces are equal when they have the same name, model parameter and parameters in the same
    order, which is when they sample the same configs from the same random generator."""

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
    def from_dict(cls, doc: Mapping[str, Any], source: str = "<dict>") -> SearchSpace:
        """A space from its document (a parsed YAML file or ``to_dict()`` output).

        The result does not depend on the key order of any mapping when the document has a
        ``param_order`` list (``to_dict`` always writes one): it must name every parameter once,
        each after the parents of its conditions. Without it (a hand-written file, or a
        ``spec.json`` stored before ``param_order`` existed) the order is the mapping's, with
        each conditional parameter moved after its parents. A search stored by an older version
        (``spec.json`` with sorted keys, no ``param_order``) therefore loads and resumes, but the
        candidates it samples after the resume may differ from those an uninterrupted search
        would have sampled: its parameter order was lost when the keys were sorted."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("params"), Mapping) or not doc["params"]:
            raise SpaceError(f"{source}: a space needs a non-empty mapping 'params'")
        parsed: dict[str, Param] = {}
        for name, spec in doc["params"].items():
            if not isinstance(name, str) or not name:
                raise SpaceError(f"{source}: parameter names must be non-empty strings, got {_short(name)}")
            parsed[name] = _parse_param(name, spec, f"{source}: parameter {name!r}")
        for p in parsed.values():
            _check_conditions(p, parsed, f"{source}: parameter {p.name!r}")
        if doc.get("param_order") is not None:
            order = _explicit_order(doc["param_order"], parsed, source)
        else:
            order = _dependency_order(list(parsed), parsed, source)
        model_param = doc.get("model_param", "model" if "model" in parsed else None)
        if model_param is not None and (not isinstance(model_param, str) or model_param not in parsed):
            raise SpaceError(f"{source}: model_param {_short(model_param)} is not a parameter")
        name = doc.get("name", Path(source).stem)
        return cls(name=str(name), params=tuple(parsed[n] for n in order), model_param=model_param)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """A space from a YAML file. Errors name the file and where in it, never its content
        (a wrong path may point at a file that holds secrets)."""
        path = Path(path)
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_SPACE_FILE_BYTES + 1)
        except FileNotFoundError:
            raise SpaceError(f"{path}: no such search-space file") from None
        except IsADirectoryError:
            raise SpaceError(f"{path}: is a folder, not a search-space file") from None
        except OSError as exc:
            raise SpaceError(
                f"{path}: cannot read the search-space file ({exc.strerror or type(exc).__name__})"
            ) from None
        if len(raw) > MAX_SPACE_FILE_BYTES:
            raise SpaceError(f"{path}: larger than {MAX_SPACE_FILE_BYTES} bytes; not a search-space file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SpaceError(f"{path}: not a UTF-8 text file") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise SpaceError(f"{path}: not valid YAML (syntax error{where})") from None
        except yaml.YAMLError:
            raise SpaceError(f"{path}: not valid YAML") from None
        return cls.from_dict(doc, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The space as plain JSON types; ``from_dict`` of it (also after ``json.dumps`` with
        ``sort_keys=True``) gives an equal space."""
        return {
            "name": self.name,
            "model_param": self.model_param,
            "param_order": self.names,
            "params": {p.name: p.to_dict() for p in self.params},
        }

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


# --- parsing helpers ------------------------------------------------------------------------------
_PARAM_KEYS = {"type", "choices", "low", "high", "log", "only_active_with", "default"}


def _parse_param(name: str, spec: Any, where: str) -> Param:
    """One parameter; conditions are read but their parents checked later (any key order)."""
    if not isinstance(spec, Mapping):
        raise SpaceError(f"{where}: expected a mapping, got {type(spec).__name__}")
    unknown = set(spec) - _PARAM_KEYS
    if unknown:
        raise SpaceError(f"{where}: unknown keys {sorted(_short(k) for k in unknown)}")
    ptype = spec.get("type", "categorical" if "choices" in spec else None)
    if ptype not in PARAM_TYPES:
        raise SpaceError(f"{where}: 'type' must be one of {PARAM_TYPES}, got {_short(ptype)}")
    log = spec.get("log", False)
    if not isinstance(log, (bool, np.bool_)):
        raise SpaceError(f"{where}: 'log' must be true or false, got {_short(log)}")
    log = bool(log) and ptype in ("float", "int")
    choices: tuple[Any, ...] = ()
    low = high = None
    if ptype == "categorical":
        ch = spec.get("choices")
        if not isinstance(ch, (list, tuple)) or len(ch) == 0:
            raise SpaceError(f"{where}: 'choices' must be a non-empty list")
        choices = tuple(_scalar(c, f"{where}: choice {i + 1}") for i, c in enumerate(ch))
        if len(set(map(repr, choices))) != len(choices):
            raise SpaceError(f"{where}: duplicate choices")
    elif ptype in ("float", "int"):
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except (KeyError, TypeError, ValueError):
            raise SpaceError(f"{where}: numeric parameters need numeric 'low' and 'high'") from None
        if not (math.isfinite(low) and math.isfinite(high)):
            raise SpaceError(f"{where}: 'low' and 'high' must be finite")
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
        if not isinstance(parent, str):
            raise SpaceError(f"{where}: condition on {_short(parent)}, which is not a parameter name")
        values = values if isinstance(values, (list, tuple)) else (values,)
        if not values:
            raise SpaceError(f"{where}: condition on {parent!r} lists no values (never active)")
        cond[parent] = tuple(_scalar(v, f"{where}: condition on {parent!r}") for v in values)
    default = spec.get("default")
    return Param(
        name=name,
        type=ptype,
        choices=choices,
        low=low,
        high=high,
        log=log,
        only_active_with=cond,
        default=_plain(default),
    )


def _check_conditions(p: Param, params: Mapping[str, Param], where: str) -> None:
    for parent, values in p.only_active_with.items():
        if parent not in params:
            raise SpaceError(f"{where}: condition on {parent!r}, which is not defined in the space")
        if parent == p.name:
            raise SpaceError(f"{where}: a parameter cannot be conditional on itself")
        pp = params[parent]
        allowed = pp.choices if pp.type == "categorical" else (False, True) if pp.type == "bool" else None
        if allowed is not None:
            bad = [v for v in values if v not in allowed]  # the test ``is_active`` makes
            if bad:
                raise SpaceError(f"{where}: condition on {parent!r}: {_short(bad[0])} is not one of its values")


def _dependency_order(declared: Sequence[str], params: Mapping[str, Param], source: str) -> list[str]:
    """A stable topological order: repeatedly take the first declared parameter whose parents
    are all placed. Declared order is kept wherever it is valid; a child declared before its
    parent lands right after it. A cycle is an error naming its parameters."""
    placed: list[str] = []
    done: set[str] = set()
    left = list(declared)
    while left:
        for i, name in enumerate(left):
            if all(parent in done for parent in params[name].only_active_with):
                placed.append(name)
                done.add(name)
                del left[i]
                break
        else:
            raise SpaceError(
                f"{source}: the conditions of parameters {sorted(left)} form a cycle "
                f"(each waits for another to be active)"
            )
    return placed


def _explicit_order(order: Any, params: Mapping[str, Param], source: str) -> list[str]:
    """``param_order`` checked: every parameter exactly once, each after its parents."""
    if not isinstance(order, (list, tuple)) or not all(isinstance(n, str) for n in order):
        raise SpaceError(f"{source}: 'param_order' must be a list of parameter names")
    if len(set(order)) != len(order):
        raise SpaceError(f"{source}: 'param_order' lists a parameter twice")
    missing, extra = set(params) - set(order), set(order) - set(params)
    if missing or extra:
        what = []
        if missing:
            what.append(f"misses {sorted(missing)}")
        if extra:
            what.append(f"names unknown parameters {sorted(_short(n) for n in extra)}")
        raise SpaceError(f"{source}: 'param_order' {' and '.join(what)}")
    seen: set[str] = set()
    for name in order:
        for parent in params[name].only_active_with:
            if parent not in seen:
                raise SpaceError(
                    f"{source}: 'param_order' puts {name!r} before {parent!r}, the parameter its condition depends on"
                )
        seen.add(name)
    return list(order)


def _canonical(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        # 9 significant digits: a value written with up to 8 (every grid value, every number in
        # a space file) is at least 5e-10 (relative) away from a rounding boundary, so noise below
        # 1e-10 cannot change its id; with 10 digits 9.0 * (1 + 1e-10) got another id than 9.0.
        # ``+ 0.0`` folds -0.0 into 0.0.
        return float(f"{value:.9g}") + 0.0
    return value


def config_id(config: Mapping[str, Any]) -> str:
    """A stable id: the first 12 hex digits of the SHA-1 of the active values (sorted JSON).

    The same for any key order, for numpy and Python scalars of the same value, and for floats
    that differ by less than 1e-10 (relative) from a value with at most 8 significant digits.
    ``None`` values are left out (an absent parameter). Ints and floats stay distinct (32 and
    32.0 get different ids), as they do in JSON."""
    canon = {k: _canonical(v) for k, v in sorted(config.items()) if v is not None}
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def builtin_space(name: str) -> SearchSpace:
    """A space shipped with the package: ``paper`` (the 24-model production default) or ``cpu``."""
    if not re.fullmatch(r"[a-z0-9_-]{1,64}", str(name)):  # a name, never a path into (or out of) the package
        raise SpaceError(f"no built-in space {str(name)[:64]!r} (built-in names are like 'cpu' or 'paper')")
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
