"""Normalized regret and incumbent trajectories.

The incumbent at time ``t`` is the best *validation* score observed up to ``t`` (any config, any
epoch). Its normalized regret on a dataset is ``(best - incumbent) / (best - worst)`` where best and
worst are the highest and lowest scores anywhere in that dataset's table, so 0 means the best
epoch of the whole table has been seen and 1 means nothing better than the worst one has. Before
the first observation the regret is 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def normalized_regret(incumbent: float | None, best: float, worst: float) -> float:
    """``(best - incumbent) / (best - worst)`` clipped to [0, 1]; 1 for no incumbent (None/NaN)."""
    if incumbent is None or not math.isfinite(incumbent):
        return 1.0
    span = best - worst
    if span <= 0:  # a flat table: every observation is optimal
        return 0.0
    return float(min(1.0, max(0.0, (best - incumbent) / span)))


def incumbent_trajectory(times: Sequence[float], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(times sorted ascending, best score so far at each of them); NaN scores never improve it
    and the incumbent is -inf until the first finite score."""
    t = np.asarray(times, dtype=float)
    s = np.asarray(scores, dtype=float)
    order = np.argsort(t, kind="stable")
    t, s = t[order], s[order]
    s = np.where(np.isfinite(s), s, -np.inf)
    return t, np.maximum.accumulate(s) if len(s) else s


def regret_trajectory(
    times: Sequence[float], scores: Sequence[float], best: float, worst: float
) -> tuple[np.ndarray, np.ndarray]:
    """(times, normalized regret of the incumbent right after each observation)."""
    t, inc = incumbent_trajectory(times, scores)
    return t, np.array([normalized_regret(x, best, worst) for x in inc], dtype=float)


def regret_at(times: np.ndarray, regrets: np.ndarray, query: Sequence[float]) -> np.ndarray:
    """The step function ``regret(t)`` evaluated at ``query`` times: the regret after the last
    observation at or before each query time, 1 before the first observation."""
    q = np.asarray(query, dtype=float)
    idx = np.searchsorted(np.asarray(times, dtype=float), q, side="right") - 1
    out = np.ones_like(q)
    mask = idx >= 0
    out[mask] = np.asarray(regrets, dtype=float)[idx[mask]]
    return out
