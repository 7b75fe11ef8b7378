"""The state of one controller session: what is recorded, what is in flight, how much budget is left.

The loop (:mod:`quicktune.search.loop`), the resume (:mod:`quicktune.search.resume`) and the report
(:mod:`quicktune.search.report`) all read and change this one object; it holds no protocol of its
own beyond the budget rules and the mapping from a configuration to its run and step request.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quicktune.backends.base import StepRequest, TrialBackend
from quicktune.backends.pool import StepPool
from quicktune.optimizer.base import Optimizer
from quicktune.search.inputs import checkpoint_dir_for
from quicktune.search.progress import Progress
from quicktune.search.spec import SearchSpec
from quicktune.space import SearchSpace
from quicktune.tracking.layout import ConfigRecord, SearchRun, SearchTracker

# QUICKTUNE_MAX_EPOCHS is still sent next to StepRequest.max_epochs: a backend or a step image of
# the version before issue 13 reads only the variable.
MAX_EPOCHS_ENV = "QUICKTUNE_MAX_EPOCHS"


@dataclass
class InFlight:
    config_id: str
    epoch: int
    request: StepRequest
    started: float
    attempts: int = 0
    retry_at: float | None = None  # waiting to be started again after a transient failure
    running_since: float | None = None  # first seen running (a prefetched step waits in a queue first)


def finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class SearchState:
    """One controller session's state (see :mod:`quicktune.search.loop` for the protocol)."""

    def __init__(
        self,
        spec: SearchSpec,
        backend: TrialBackend,
        tracker: SearchTracker,
        optimizer_name: str | None,
        progress: bool,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.tracker = tracker
        self.optimizer_name = optimizer_name or spec.optimizer
        spec.optimizer = self.optimizer_name
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()  # the controller's own CPU time (children excluded)
        self.sleep_seconds = 0.0
        self.step_seconds = 0.0
        self.step_walls: list[float] = []
        # each step's fixed cost (wall - train - eval) where the backend measured the wall time, over
        # the whole search (a resume reads back the parent run's METRIC_STEP_OVERHEAD history)
        self.step_overheads: list[float] = []
        self.records: dict[str, ConfigRecord] = {}
        self.inflight: dict[tuple[str, int], InFlight] = {}
        # the same keys as ``inflight``: the pool talks to the backend, ``inflight`` keeps the search's
        # own bookkeeping of each step (attempts, retry time, timings)
        self.pool: StepPool[tuple[str, int]] = StepPool(backend)
        self.next_seq = 1
        self.generation = 0
        self.elapsed_before = 0.0
        self.cost_total = 0.0
        self.steps_finished = 0
        self.steps_succeeded = 0
        self.consecutive_first_failures: list[str] = []
        self.progress = Progress(progress, spec.budget_seconds, spec.search_id)
        self.parent: SearchRun | None = None
        self.opt: Optimizer | None = None
        self.space: SearchSpace | None = None
        self.meta_features: dict[str, float] = {}
        self.resumes = 0
        self.last_incumbent: float | None = None
        self.optimizer_seconds = 0.0
        self.exhausted = False  # the optimizer had nothing left to ask
        self.snapshot_seq = -1

    # --- time and budget -------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.t0)

    def busy_seconds(self) -> float:
        return (time.monotonic() - self.t0) - self.sleep_seconds

    def epochs_done(self) -> int:
        return sum(len(r.epochs) for r in self.records.values())

    def budget_reason(self) -> str | None:
        s = self.spec
        if self.elapsed() >= s.budget_seconds:
            return f"wall-clock budget of {s.budget_seconds:g} s used"
        if s.budget_epochs is not None and self.epochs_done() >= s.budget_epochs:
            return f"epoch budget of {s.budget_epochs} used"
        if s.budget_gpu_seconds is not None and self.cost_total >= s.budget_gpu_seconds:
            return f"compute budget of {s.budget_gpu_seconds:g} step-seconds used"
        return None

    def worth_starting(self) -> bool:
        """Do not start a step that cannot finish before the wall-clock budget ends."""
        if self.spec.budget_epochs is not None and self.epochs_done() + len(self.inflight) >= self.spec.budget_epochs:
            return False
        if not self.step_walls:
            return True
        typical = statistics.median(self.step_walls[-20:])
        return self.elapsed() + 0.8 * typical < self.spec.budget_seconds

    # --- records, requests ---------------------------------------------------------------------
    def request(self, rec: ConfigRecord, epoch: int) -> StepRequest:
        return StepRequest(
            search_id=self.spec.search_id,
            config_id=rec.config_id,
            config=rec.config,
            data_uri=self.spec.data_uri,
            to_epoch=epoch,
            checkpoint_dir=rec.checkpoint_dir,
            seed=self.spec.seed,
            device=self.spec.device,
            image_size=self.spec.image_size,
            max_epochs=self.spec.max_epochs,
            precision=self.spec.precision,
            extra_env={MAX_EPOCHS_ENV: str(self.spec.max_epochs)},
        )

    def record_for(self, cid: str, config: Mapping[str, Any]) -> ConfigRecord:
        """The record of ``cid``, its MLflow run created first if it has none."""
        rec = self.records.get(cid)
        if rec is None:
            assert self.parent is not None
            rec = self.tracker.create_config_run(
                self.parent, self.spec.search_id, cid, config, checkpoint_dir_for(self.spec, self.parent, cid)
            )
            self.records[cid] = rec
        return rec

    def incumbent(self) -> tuple[float | None, ConfigRecord | None]:
        best: ConfigRecord | None = None
        for rec in self.records.values():
            if rec.epochs and (best is None or rec.best_score > best.best_score):
                best = rec
        if best is None or not math.isfinite(best.best_score):
            return None, None
        return best.best_score, best
