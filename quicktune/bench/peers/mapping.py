"""Map hyperparameter values sampled by another library onto the finite configs of a table.

Peers (Optuna, Syne Tune) sample in a continuous space; a table only has curves for its own rows.
:class:`PoolSpace` infers a box space from the pool (numeric hp: ``[min, max]`` of its active
values, log-scaled when positive and spanning >= 2 decades, integer when all values are
integers; everything else, bools included: categorical over the observed values) and maps a
sampled point to the *nearest unused* pool config:

    distance(x, c) = mean over the hps active in c of  |u(x) - u(c)|  (numeric, u = value scaled to
                     [0, 1] on the (log) range)   or   [x != c]  (categorical)

Hyperparameters sampled but inactive in ``c`` are ignored (they do not exist for that config), so
a config is not favoured for having fewer active hps: the mean, not the sum, is taken. Ties go to
the earlier config in pool order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


class PoolSpace:
    """A search space inferred from a finite pool of configs, with nearest-config mapping."""

    def __init__(self, pool: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        if not pool:
            raise ValueError("empty config pool")
        self.ids = [str(cid) for cid, _ in pool]
        self.configs = [dict(c) for _, c in pool]
        names: list[str] = []
        for c in self.configs:
            for k in c:
                if k not in names:
                    names.append(k)
        self.params: dict[str, dict[str, Any]] = {}
        for name in names:
            values = [c[name] for c in self.configs if name in c]
            if all(_is_num(v) for v in values):
                lo, hi = float(min(values)), float(max(values))
                is_int = all(float(v).is_integer() for v in values)
                log = lo > 0 and hi / lo >= 100
                if lo == hi:
                    self.params[name] = {"type": "categorical", "choices": [values[0]]}
                else:
                    self.params[name] = {"type": "int" if is_int else "float", "low": lo, "high": hi, "log": log}
            else:
                choices = sorted({v for v in values}, key=repr)
                self.params[name] = {"type": "categorical", "choices": choices}
        # encoded pool: numeric -> [0,1] (NaN inactive); categorical -> choice index (-1 inactive)
        self._enc = np.full((len(self.configs), len(self.params)), np.nan)
        for j, (name, _p) in enumerate(self.params.items()):
            for i, c in enumerate(self.configs):
                if name in c:
                    self._enc[i, j] = self._encode(name, c[name])

    def _encode(self, name: str, v: Any) -> float:
        p = self.params[name]
        if p["type"] == "categorical":
            for k, ch in enumerate(p["choices"]):
                if repr(ch) == repr(v):
                    return float(k)
            return -1.0  # a value the pool never has: mismatches everything
        x, lo, hi = float(v), p["low"], p["high"]
        if p["log"]:
            x, lo, hi = math.log(max(x, 1e-300)), math.log(lo), math.log(hi)
        return float(min(1.0, max(0.0, (x - lo) / (hi - lo))))

    def distances(self, sample: Mapping[str, Any]) -> np.ndarray:
        """Distance of ``sample`` (name -> value; missing names are ignored) to every pool config."""
        cols, vals, cat = [], [], []
        for j, name in enumerate(self.params):
            if name in sample and sample[name] is not None:
                cols.append(j)
                vals.append(self._encode(name, sample[name]))
                cat.append(self.params[name]["type"] == "categorical")
        if not cols:
            return np.zeros(len(self.configs))
        enc = self._enc[:, cols]
        v = np.asarray(vals)
        c = np.asarray(cat)
        d = np.where(c, (enc != v).astype(float), np.abs(enc - v))
        d = np.where(np.isnan(enc), np.nan, d)
        with np.errstate(invalid="ignore"):
            n = np.sum(~np.isnan(d), axis=1)
            tot = np.nansum(d, axis=1)
        return np.where(n > 0, tot / np.maximum(n, 1), 1.0)

    def nearest(self, sample: Mapping[str, Any], exclude: set[str] | frozenset[str] = frozenset()) -> str | None:
        """The id of the nearest pool config not in ``exclude`` (None if all are excluded)."""
        d = self.distances(sample)
        for i in np.argsort(d, kind="stable"):
            if self.ids[i] not in exclude:
                return self.ids[i]
        return None

    def config(self, cid: str) -> dict[str, Any]:
        return dict(self.configs[self.ids.index(cid)])
