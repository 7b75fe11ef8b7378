"""The weight of the meta-trained surrogate in Quick-Tune's mixture with a non-meta one.

A meta-trained prior is only as good as the new task is like the meta-training tasks, so a
meta-trained search predicts with a mixture of two surrogates: weight ``w`` on the meta-trained
one, ``1 - w`` on a non-meta one fitted beside it. This module holds what that takes and nothing
else: ``w`` itself, the evidence that moves it, and the mixed prediction.

``w`` starts from the domain score (:func:`quicktune.optimizer.domain.domain_report`) clipped to
[``W_MIN``, ``W_MAX``] and is updated like Bayesian model averaging: when the epoch a step was
asked for is observed, the log odds of ``w`` grow by ``log p_meta(y) - log p_base(y)`` under each
surrogate's predictive Gaussian at the time of the ask, clipped to +-``LOG_ODDS_CAP`` so that
evidence can always turn it back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

#: the weight starts from the domain score clipped to [W_MIN, W_MAX]
W_MIN, W_MAX = 0.05, 0.95
#: the log odds of the weight stay within +-LOG_ODDS_CAP (w in [0.01, 0.99])
LOG_ODDS_CAP = math.log(99.0)
#: the smallest predictive standard deviation a log-likelihood is computed with
MIN_SD = 1e-4


def _gauss_loglik(y: float, mean: float, sd: float) -> float:
    sd = max(float(sd), MIN_SD)
    return -0.5 * ((y - mean) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)


def mix(
    w: float, m_meta: np.ndarray, s_meta: np.ndarray, m_base: np.ndarray, s_base: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the two-component mixture ``w * meta + (1 - w) * base``."""
    mean = w * m_meta + (1 - w) * m_base
    var = w * s_meta**2 + (1 - w) * s_base**2 + w * (1 - w) * (m_meta - m_base) ** 2
    return mean, np.sqrt(np.maximum(var, 1e-12))


class PriorWeight:
    """``w``, the weight of the meta-trained surrogate, and the predictions that will move it.

    ``predict`` records what each surrogate said about a step when it was asked for; ``observe``
    turns the observed outcome into evidence; a failed step's prediction is ``forget``-ed."""

    def __init__(self, domain_score: float) -> None:
        self.w0 = float(np.clip(domain_score, W_MIN, W_MAX))
        self.log_odds = 0.0
        self.updates = 0
        self.preds: dict[str, list[float]] = {}  # cid -> [epoch, mean_meta, sd_meta, mean_base, sd_base]
        self.restart()

    @property
    def value(self) -> float:
        return float(1.0 / (1.0 + math.exp(-self.log_odds)))

    def predict(self, cid: str, epoch: int, m_meta: float, sd_meta: float, m_base: float, sd_base: float) -> None:
        """What each surrogate predicts for the observation of ``cid`` at ``epoch`` (predictive sd)."""
        self.preds[cid] = [float(epoch), float(m_meta), float(sd_meta), float(m_base), float(sd_base)]

    def forget(self, cid: str) -> None:
        self.preds.pop(cid, None)

    def observe(self, cid: str, epoch: int, score: float) -> None:
        """Bayesian model averaging on the observed epoch the two surrogates predicted."""
        pred = self.preds.pop(cid, None)
        if pred is None or int(pred[0]) != int(epoch) or not math.isfinite(score):
            return
        _, m1, s1, m2, s2 = pred
        delta = _gauss_loglik(score, m1, s1) - _gauss_loglik(score, m2, s2)
        self.log_odds = float(np.clip(self.log_odds + delta, -LOG_ODDS_CAP, LOG_ODDS_CAP))
        self.updates += 1

    def restart(self) -> None:
        """Back to the starting weight, no evidence (a new search, or a state written before the
        mixture existed)."""
        self.log_odds, self.updates, self.preds = math.log(self.w0 / (1.0 - self.w0)), 0, {}

    def state(self) -> dict[str, Any]:
        preds = {k: list(v) for k, v in self.preds.items()}
        return {"log_odds": self.log_odds, "updates": self.updates, "preds": preds}

    def load(self, state: Mapping[str, Any]) -> None:
        self.log_odds = float(state["log_odds"])
        self.updates = int(state["updates"])
        self.preds = {str(k): [float(x) for x in v] for k, v in state["preds"].items()}
