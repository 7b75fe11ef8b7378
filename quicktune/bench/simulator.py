"""Replay a learning-curve table in simulated time.

An optimizer asks for ``(config, epoch)``; instead of training, the simulator looks the epoch up
in the table and advances a simulated clock by the table's recorded cost. Two clocks are kept:

- ``time``: table costs **plus** the optimizer's own measured overhead (the wall-clock or CPU
  seconds its ``ask`` and ``tell`` calls took), the clock the benchmark judges on: a slow
  optimizer pays for its thinking;
- ``table_time``: table costs only (what a free optimizer would get).

With ``workers > 1`` an event queue runs several steps at once: each free worker asks in turn (the
controller is sequential, so ask/tell overhead delays everyone), a step completes at its start
plus its cost, and completions are told in time order. The table clock of a worker starts each
step when that worker became free on the table clock (or when the completion that unblocked it
happened), so both clocks share one schedule of decisions.

Lookups: asking epoch ``e`` of a config last trained to ``d`` charges epochs ``d+1..e``; a NaN score
in them means the run diverged at that epoch (its cost up to there is charged, status
``diverged``); an unknown config or an epoch the table does not have is answered with status
``invalid`` at no cost (and counted), so an optimizer that asks for it learns it cannot have it.
"""

from __future__ import annotations

import heapq
import math
import time as _time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from quicktune.optimizer.base import Optimizer


@dataclass
class DatasetCurves:
    """One dataset of an LCT, indexed for replay."""

    dataset: str
    configs: list[tuple[str, dict[str, Any]]]
    scores: dict[str, np.ndarray]  # config -> score per epoch (index epoch - 1)
    costs: dict[str, np.ndarray]
    meta_features: dict[str, float]
    max_epochs: int
    best: float
    worst: float

    @classmethod
    def from_table(cls, df: pd.DataFrame, dataset: str) -> DatasetCurves:
        from quicktune.lct import table_configs, table_meta_features

        configs = table_configs(df, dataset)
        sub = df[df["dataset"] == dataset].sort_values(["config_id", "epoch"], kind="stable")
        scores: dict[str, np.ndarray] = {}
        costs: dict[str, np.ndarray] = {}
        for cid, grp in sub.groupby("config_id", sort=False):
            scores[str(cid)] = grp["score"].to_numpy(dtype=float)
            costs[str(cid)] = grp["cost"].to_numpy(dtype=float)
        finite = sub["score"].to_numpy(dtype=float)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            raise ValueError(f"dataset {dataset!r}: every score is NaN; nothing to benchmark")
        return cls(
            dataset=dataset,
            configs=configs,
            scores=scores,
            costs=costs,
            meta_features=table_meta_features(df, dataset),
            max_epochs=int(sub["epoch"].max()),
            best=float(finite.max()),
            worst=float(finite.min()),
        )

    def median_curve_cost(self) -> float:
        """Median over configs of the cost of the whole recorded curve."""
        return float(np.median([c.sum() for c in self.costs.values()]))


@dataclass
class SimResult:
    """Everything observed in one simulated run, one entry per told step."""

    time: list[float] = field(default_factory=list)  # completion, table cost + overhead clock
    table_time: list[float] = field(default_factory=list)  # completion, table cost only
    config_id: list[str] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    overhead: list[float] = field(default_factory=list)  # ask + tell seconds of this step
    overhead_total: float = 0.0
    n_invalid: int = 0
    stop_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "time",
                "table_time",
                "config_id",
                "epoch",
                "score",
                "status",
                "cost",
                "overhead",
                "overhead_total",
                "n_invalid",
                "stop_reason",
            )
        }


_CLOCKS: dict[str, Callable[[], float]] = {"wall": _time.perf_counter, "cpu": _time.thread_time}


def _lookup(curves: DatasetCurves, done: dict[str, int], cid: str, epoch: int) -> tuple[float, float, str]:
    """(score, cost, status) of training ``cid`` from its last charged epoch up to ``epoch``."""
    scores = curves.scores.get(cid)
    if scores is None or epoch < 1 or epoch > len(scores):
        return math.nan, 0.0, "invalid"
    first = done.get(cid, 0) + 1
    costs = curves.costs[cid]
    if epoch < first:  # re-asking an epoch already trained: only its evaluation, counted as free
        s = float(scores[epoch - 1])
        return (s, 0.0, "ok") if math.isfinite(s) else (math.nan, 0.0, "diverged")
    window = scores[first - 1 : epoch]
    bad = np.flatnonzero(~np.isfinite(window))
    if bad.size:
        stop = first + int(bad[0])  # the epoch that blew up is still paid for
        return math.nan, float(costs[first - 1 : stop].sum()), "diverged"
    return float(scores[epoch - 1]), float(costs[first - 1 : epoch].sum()), "ok"


def simulate(
    curves: DatasetCurves,
    optimizer: Optimizer,
    budget: float,
    workers: int = 1,
    max_steps: int | None = None,
    overhead_clock: str = "wall",
) -> SimResult:
    """Run ``optimizer`` on ``curves`` until the table clock of every worker reaches ``budget``
    (seconds), the optimizer has nothing left, or ``max_steps`` steps were told.

    Running to the budget on the table clock means the overhead-inclusive clock may end beyond
    the budget; evaluations cut both clocks at the budget.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not budget > 0:
        raise ValueError(f"budget must be > 0 seconds, got {budget}")
    if overhead_clock not in _CLOCKS:
        raise ValueError(f"overhead_clock must be one of {sorted(_CLOCKS)}, got {overhead_clock!r}")
    clock = _CLOCKS[overhead_clock]
    if max_steps is None:
        max_steps = 10 * sum(len(s) for s in curves.scores.values()) + 100
    res = SimResult()
    done: dict[str, int] = {}
    now = 0.0  # overhead-inclusive clock
    table_now = 0.0  # table clock of the latest completion handled
    table_free = [0.0] * workers
    idle = list(range(workers))
    heap: list[tuple[float, int, int, Any, float, float, str, float, float]] = []
    seq = 0
    launched = 0
    exhausted = False
    while True:
        while idle and not exhausted:
            w = min(idle, key=lambda i: (table_free[i], i))
            start_table = max(table_free[w], table_now)
            if start_table >= budget or launched >= max_steps:
                break
            t0 = clock()
            sug = optimizer.ask()
            dt = clock() - t0
            now += dt
            res.overhead_total += dt
            if sug is None:
                if not heap:
                    exhausted = True
                    res.stop_reason = "exhausted"
                break
            score, cost, status = _lookup(curves, done, sug.config_id, int(sug.epoch))
            if status == "invalid":
                res.n_invalid += 1
            elif status == "ok" or status == "diverged":
                done[sug.config_id] = max(done.get(sug.config_id, 0), int(sug.epoch))
            idle.remove(w)
            launched += 1
            heapq.heappush(heap, (now + cost, seq, w, sug, score, cost, status, start_table + cost, dt))
            seq += 1
        if not heap:
            if not res.stop_reason:
                res.stop_reason = "budget" if launched < max_steps else "max_steps"
            break
        finish, _, w, sug, score, cost, status, table_end, ask_dt = heapq.heappop(heap)
        now = max(now, finish)
        table_free[w] = table_end
        table_now = max(table_now, table_end)
        t0 = clock()
        optimizer.tell(sug.config_id, int(sug.epoch), score, cost, status)
        dt = clock() - t0
        res.time.append(now)
        res.table_time.append(table_end)
        now += dt
        res.overhead_total += dt
        res.config_id.append(sug.config_id)
        res.epoch.append(int(sug.epoch))
        res.score.append(score)
        res.status.append(status)
        res.cost.append(cost)
        res.overhead.append(ask_dt + dt)
        idle.append(w)
        idle.sort()
    return res


def make_candidates(curves: DatasetCurves) -> list[tuple[str, Mapping[str, Any]]]:
    """The finite candidate pool an optimizer gets on a table: its configs."""
    return list(curves.configs)
