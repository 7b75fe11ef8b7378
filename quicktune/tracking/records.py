"""What MLflow records about a search, as plain data: an observation told to the optimizer, a
configuration's record (its epochs, failure, pending step) and the parent run.

Kept apart from :mod:`quicktune.tracking.layout` (which writes and reads them through MLflow) so
that code which only reasons about records -- plots, promotion's choice of a winner, test doubles
of the tracker -- needs no MLflow client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from quicktune.tracking.schema import METRIC_COST as COST, METRIC_SCORE as SCORE, METRIC_TELL_SEQ as TELL_SEQ


@dataclass
class Observation:
    """One result told to the optimizer, as recorded in MLflow."""

    seq: int
    config_id: str
    epoch: int
    score: float
    cost: float
    status: str = "ok"


@dataclass
class ConfigRecord:
    """What MLflow knows about one configuration of a search."""

    run_id: str
    config_id: str
    config: dict[str, Any]
    checkpoint_dir: str = ""
    status: str = "running"
    pending_epoch: int | None = None
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)  # epoch -> metrics (incl. tell_seq)
    failure: Observation | None = None
    message: str = ""

    @property
    def last_epoch(self) -> int:
        return max(self.epochs) if self.epochs else 0

    @property
    def best_score(self) -> float:
        scores = [m[SCORE] for m in self.epochs.values() if SCORE in m]
        return max(scores) if scores else -math.inf

    @property
    def best_epoch(self) -> int | None:
        best = self.best_score
        for e in sorted(self.epochs):
            if self.epochs[e].get(SCORE) == best:
                return e
        return None

    @property
    def dead(self) -> bool:
        return self.failure is not None

    def observations(self) -> list[Observation]:
        out = [
            Observation(int(m[TELL_SEQ]), self.config_id, e, m.get(SCORE, math.nan), m.get(COST, math.nan))
            for e, m in sorted(self.epochs.items())
            if TELL_SEQ in m
        ]
        if self.failure is not None:
            out.append(self.failure)
        return out


@dataclass
class SearchRun:
    run_id: str
    experiment_id: str
    artifact_uri: str
    resumed: bool
    tags: dict[str, str]
    metrics: dict[str, float]
    params: dict[str, str]
