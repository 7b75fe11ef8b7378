"""Acquisition: expected improvement at each candidate's next epoch, optionally per second.

For a candidate to be trained up to epoch ``e`` the incumbent is the best score any config has
reached *at epoch e* (the overall best when none has reached it yet), as in DyHPO. Quick-Tune
divides EI by the predicted cost of that epoch. All candidates — paused configs at their next
epoch and unseen configs at epoch 1 — compete in one argmax.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: np.ndarray) -> np.ndarray:
    """EI of maximization: E[max(f - best, 0)] for f ~ N(mean, std^2)."""
    mean, std, best = (np.asarray(a, dtype=np.float64) for a in (mean, std, best))
    std = np.maximum(std, 1e-9)
    z = (mean - best) / std
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / _SQRT2)) if z.size else z
    pdf = np.exp(-0.5 * z * z) / _SQRT2PI
    return np.maximum((mean - best) * cdf + std * pdf, 0.0)


def incumbents_at(epochs: np.ndarray, best_at_epoch: Mapping[int, float], overall_best: float) -> np.ndarray:
    """The incumbent for each candidate epoch: best score observed at that epoch, else overall."""
    return np.array([best_at_epoch.get(int(e), overall_best) for e in epochs], dtype=np.float64)


def acquisition(
    mean: np.ndarray,
    std: np.ndarray,
    epochs: np.ndarray,
    best_at_epoch: Mapping[int, float],
    overall_best: float,
    cost: np.ndarray | None = None,
) -> np.ndarray:
    """EI over the per-epoch incumbent, divided by predicted cost when ``cost`` is given."""
    ei = expected_improvement(mean, std, incumbents_at(epochs, best_at_epoch, overall_best))
    if cost is not None:
        ei = ei / np.maximum(np.asarray(cost, dtype=np.float64), 1e-6)
    return ei
