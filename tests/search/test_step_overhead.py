"""Each step's fixed cost (``wall_seconds`` - train - eval: pod start, data sync, weights,
checkpoint) on the search's parent run: one ``step_overhead_seconds`` point per finished step, at
the tell_seq of its first epoch, and the median in the summary -- over the whole search, a resumed
session included (in-memory tracker and scripted backend, see search_doubles.py)."""

from __future__ import annotations

import json
import statistics

import pytest
from search_doubles import Crash, MemoryTracker, ScriptedBackend, fast_spec

from quicktune.search import run_search
from quicktune.tracking.schema import (
    METRIC_STEP_OVERHEAD,
    SUMMARY_METRIC_PREFIX,
    SUMMARY_STEP_OVERHEAD_MEDIAN,
    SUMMARY_STEP_OVERHEAD_STEPS,
)

pytestmark = pytest.mark.usefixtures("fast_inputs", "no_plots")


def overhead_of(config_id: str, to_epoch: int) -> float:
    """A different fixed cost for every step (so the median and the order are checked, not a constant)."""
    return round(1.0 + (int(config_id[:4], 16) % 7) + 0.25 * to_epoch, 3)


def measured_wall(done: dict[str, int], expected: dict[int, float]):
    """A script whose steps report ``wall_seconds`` = their epochs' cost + ``overhead_of``; it notes
    the overhead of each step by the epoch it reached, as the search will number it."""

    def script(request, attempt):
        first = done.get(request.config_id, 0) + 1
        epochs = [
            {"epoch": e, "score": 0.1 * e, "cost": 2.0, "train_seconds": 1.5, "eval_seconds": 0.5}
            for e in range(first, request.to_epoch + 1)
        ]
        done[request.config_id] = request.to_epoch
        extra = overhead_of(request.config_id, request.to_epoch)
        expected[len(expected)] = extra
        return {"status": "ok", "epochs": epochs, "wall_seconds": 2.0 * len(epochs) + extra}

    return script


def summary_of(tracker: MemoryTracker, search_id: str) -> dict:
    return json.loads(tracker.parent(search_id).artifacts["summary.json"])


def test_each_steps_fixed_cost_is_a_parent_run_metric_with_its_median_in_the_summary():
    expected: dict[int, float] = {}
    tracker = MemoryTracker()
    result = run_search(
        fast_spec("ovh", budget_epochs=6), ScriptedBackend(measured_wall({}, expected)), tracker, progress=False
    )
    assert result.status == "succeeded", result.message
    points = tracker.parent("ovh").metrics[METRIC_STEP_OVERHEAD]
    assert [v for _, v in points] == pytest.approx(list(expected.values()))
    # step = the tell_seq of the step's first epoch: one step per epoch here, so 1..6
    assert [s for s, _ in points] == list(range(1, 7)) == tracker.tell_seqs("ovh")
    summary = summary_of(tracker, "ovh")
    assert summary[SUMMARY_STEP_OVERHEAD_STEPS] == 6
    assert summary[SUMMARY_STEP_OVERHEAD_MEDIAN] == pytest.approx(statistics.median(expected.values()))
    assert result.summary[SUMMARY_STEP_OVERHEAD_MEDIAN] == summary[SUMMARY_STEP_OVERHEAD_MEDIAN]


def test_step_overhead_is_wall_less_the_epochs_cost_and_what_with_step_overhead_spreads():
    from quicktune.search.loop import step_overhead, with_step_overhead

    epochs = [{"epoch": 2, "cost": 1.0}, {"epoch": 3, "cost": 3.0}]
    assert step_overhead(epochs, {"wall_seconds": 10.0}) == 6.0  # one number for a step of two epochs
    spread = with_step_overhead(epochs, {"wall_seconds": 10.0})
    assert sum(e["cost"] for e in spread) - sum(e["cost"] for e in epochs) == pytest.approx(6.0)
    assert step_overhead(epochs, {"wall_seconds": 3.5}) == 0.0  # second-precision clocks: never negative
    assert step_overhead(epochs, {}) is None and step_overhead(epochs, {"wall_seconds": float("nan")}) is None
    assert step_overhead([], {"wall_seconds": 5.0}) is None  # nothing came back: nothing to measure


def test_no_wall_time_measured_no_metric_and_no_median():
    tracker = MemoryTracker()
    assert run_search(fast_spec("plain", budget_epochs=3), ScriptedBackend(), tracker, progress=False).status == (
        "succeeded"
    )
    assert METRIC_STEP_OVERHEAD not in tracker.parent("plain").metrics
    summary = summary_of(tracker, "plain")
    assert summary[SUMMARY_STEP_OVERHEAD_MEDIAN] is None and summary[SUMMARY_STEP_OVERHEAD_STEPS] == 0


def test_the_median_of_a_resumed_search_covers_the_steps_of_every_session():
    expected: dict[int, float] = {}
    done: dict[str, int] = {}
    crash = Crash()
    tracker = MemoryTracker(crash)
    backend = ScriptedBackend(measured_wall(done, expected), crash=crash)
    run_search(fast_spec("ovh3", budget_epochs=3), backend, tracker, progress=False)  # a first session: 3 steps
    first = dict(expected)
    assert len(first) == 3
    result = run_search(fast_spec("ovh3", budget_epochs=6), backend, tracker, progress=False)
    assert result.status == "succeeded" and result.resumed
    points = tracker.parent("ovh3").metrics[METRIC_STEP_OVERHEAD]
    assert [v for _, v in points] == pytest.approx(list(expected.values())) and len(points) == 6
    assert [s for s, _ in points] == list(range(1, 7))  # search-wide numbering across the sessions
    summary = summary_of(tracker, "ovh3")
    assert summary[SUMMARY_STEP_OVERHEAD_STEPS] == 6
    assert summary[SUMMARY_STEP_OVERHEAD_MEDIAN] == pytest.approx(statistics.median(expected.values()))
    assert summary[SUMMARY_STEP_OVERHEAD_MEDIAN] != pytest.approx(statistics.median(list(expected.values())[3:]))


def test_the_summary_median_is_logged_as_a_summary_metric(monkeypatch):
    """The real SearchTracker logs the summary's numbers as ``summary.<key>`` metrics: the median is one."""
    from quicktune.tracking import layout

    logged: dict[str, float] = {}

    class Fake(layout.SearchTracker):
        def __init__(self) -> None:  # no MLflow: only finish_search's metric call is under test
            pass

        def log_metrics(self, run_id, metrics, step, tags=None, timestamp_ms=None):
            logged.update(metrics)

        def set_tags(self, run_id, tags):
            pass

        def terminate(self, run_id, status):
            pass

        def log_json(self, run_id, obj, path):
            pass

    parent = type("P", (), {"run_id": "r"})()
    Fake().finish_search(parent, "succeeded", "ok", {SUMMARY_STEP_OVERHEAD_MEDIAN: 4.5, "epochs_done": 3}, {})
    assert logged[SUMMARY_METRIC_PREFIX + SUMMARY_STEP_OVERHEAD_MEDIAN] == 4.5
