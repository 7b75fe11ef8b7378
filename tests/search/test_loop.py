"""The search loop in milliseconds: retry, prefetch, fail-fast, invalid steps (see conftest.py for
the in-memory tracker and the scripted backend)."""

from __future__ import annotations

import pytest
from search_doubles import fast_spec

from quicktune.search import SearchSpec, run_search

pytestmark = pytest.mark.usefixtures("fast_inputs", "no_plots")


def spec(search_id: str = "loop", **kw) -> SearchSpec:
    return fast_spec(**{"search_id": search_id, "budget_epochs": 6, **kw})


def test_a_search_trains_every_epoch_once_and_numbers_its_results(tracker_factory, backend_factory):
    tracker, backend = tracker_factory(), backend_factory()
    result = run_search(spec(), backend, tracker, progress=False)
    assert result.status == "succeeded", result.message
    assert result.epochs_done == 6 and "epoch budget" in result.message
    assert set(backend.trained.values()) == {1}
    assert tracker.tell_seqs("loop") == list(range(1, 7))
    curves = tracker.curves("loop")
    assert result.best_score == max(s for c in curves.values() for s in c.values())
    assert all(list(c) == list(range(1, len(c) + 1)) for c in curves.values())


@pytest.mark.parametrize("prefetch, queued", [(0, 1), (1, 2), (2, 3)])
def test_prefetch_keeps_steps_queued_ahead_of_the_workers(prefetch, queued, tracker_factory, backend_factory):
    backend = backend_factory(polls_to_finish=2)
    result = run_search(spec(prefetch=prefetch, budget_epochs=9), backend, tracker_factory(), progress=False)
    assert result.status == "succeeded", result.message
    assert backend.max_queued == queued
    assert set(backend.trained.values()) == {1}


def test_a_generic_failure_is_retried_and_recorded_once(tracker_factory, backend_factory):
    flaky: dict[str, int] = {}

    def script(request, attempt):
        if not flaky or request.id in flaky:  # the very first step fails twice, then trains
            flaky.setdefault(request.id, 0)
            if attempt <= 2:
                flaky[request.id] += 1
                return {"status": "failed", "message": "s3 hiccup", "epochs": []}
        return None

    tracker, backend = tracker_factory(), backend_factory(script)
    result = run_search(spec(step_retries=2), backend, tracker, progress=False)
    assert result.status == "succeeded", result.message
    (step,) = flaky
    assert flaky[step] == 2 and backend.attempts[step] == 3
    assert all(r.failure is None for r in tracker.runs.values())
    assert tracker.tell_seqs("loop") == list(range(1, 7))


def test_retries_run_out_then_the_failure_is_recorded_and_the_search_goes_on(tracker_factory, backend_factory):
    bad: set[str] = set()

    def script(request, attempt):
        if not bad or request.config_id in bad:
            bad.add(request.config_id)
            return {"status": "failed", "message": "always broken", "epochs": []}
        return None

    tracker, backend = tracker_factory(), backend_factory(script)
    result = run_search(spec(step_retries=2), backend, tracker, progress=False)
    assert result.status == "succeeded", result.message
    (cid,) = bad
    failed = [r for r in tracker.runs.values() if r.failure is not None]
    assert [r.tags["quicktune.config_id"] for r in failed] == [cid]
    assert failed[0].failure.status == "failed" and "always broken" in failed[0].tags["quicktune.message"]
    assert backend.attempts[[s for s in backend.attempts if cid[:8] in s][0]] == 3
    assert sorted(tracker.tell_seqs("loop")) == list(range(1, len(tracker.tell_seqs("loop")) + 1))


def test_a_timeout_is_not_retried(tracker_factory, backend_factory):
    def script(request, attempt):
        return {"status": "failed", "timeout": True, "message": "step timed out", "epochs": []}

    backend = backend_factory(script)
    result = run_search(spec(step_retries=3, fail_fast_steps=2), backend, tracker_factory(), progress=False)
    assert result.status == "failed"
    assert set(backend.attempts.values()) == {1}


def test_fail_fast_when_the_first_steps_all_fail(tracker_factory, backend_factory):
    backend = backend_factory(lambda r, a: {"status": "failed", "message": "no GPU", "epochs": []})
    tracker = tracker_factory()
    result = run_search(spec(step_retries=0, fail_fast_steps=3, budget_epochs=50), backend, tracker, progress=False)
    assert result.status == "failed"
    assert "first 3 steps all failed" in result.message and "no GPU" in result.message
    assert tracker.parent("loop").tags["quicktune.status"] == "failed"
    assert len(backend.attempts) == 3


def test_fail_fast_says_when_every_first_step_was_invalid(tracker_factory, backend_factory):
    backend = backend_factory(
        lambda r, a: {"status": "invalid", "invalid_kind": "config", "message": "bad lr", "epochs": []}
    )
    result = run_search(
        spec(step_retries=5, fail_fast_steps=4, budget_epochs=50), backend, tracker_factory(), progress=False
    )
    assert result.status == "failed" and "were all invalid" in result.message
    assert set(backend.attempts.values()) == {1}  # invalid is deterministic: never retried


def test_a_data_error_stops_the_search_at_once(tracker_factory, backend_factory):
    backend = backend_factory(
        lambda r, a: {"status": "invalid", "invalid_kind": "data", "message": "truncated image", "epochs": []}
    )
    result = run_search(spec(fail_fast_steps=10), backend, tracker_factory(), progress=False)
    assert result.status == "failed" and "dataset cannot be used" in result.message
    assert len(backend.attempts) == 1


def test_one_invalid_config_among_good_ones_is_recorded_not_fatal(tracker_factory, backend_factory):
    first: list[str] = []

    def script(request, attempt):
        if not first or request.config_id == first[0]:
            first[:1] = [request.config_id]
            return {"status": "invalid", "invalid_kind": "image_size", "message": "too small", "epochs": []}
        return None

    tracker = tracker_factory()
    result = run_search(spec(), backend_factory(script), tracker, progress=False)
    assert result.status == "succeeded"
    assert [r.failure.status for r in tracker.runs.values() if r.failure] == ["invalid"]


def test_a_step_reporting_ok_without_its_epoch_is_a_failure(tracker_factory, backend_factory):
    backend = backend_factory(lambda r, a: {"status": "ok", "epochs": []})
    result = run_search(spec(step_retries=0, fail_fast_steps=2), backend, tracker_factory(), progress=False)
    assert result.status == "failed" and "missing from its result" in result.message


@pytest.mark.parametrize("overhead", [3.0, -0.5])
def test_a_steps_wall_time_beyond_train_and_eval_is_the_cost_the_optimizer_sees(
    overhead, tracker_factory, backend_factory
):
    """A backend that reports the step's launch-to-result ``wall_seconds`` (Kubernetes) has its fixed
    cost spread over the step's epochs: the recorded (and replayed) cost is train + eval + the share;
    a wall time below train + eval (second-precision clocks) changes nothing."""
    done: dict[str, int] = {}

    def script(request, attempt):
        first = done.get(request.config_id, 0) + 1
        epochs = [
            {"epoch": e, "score": 0.1 * e, "cost": 2.0, "train_seconds": 1.5, "eval_seconds": 0.5}
            for e in range(first, request.to_epoch + 1)
        ]
        done[request.config_id] = request.to_epoch
        return {"status": "ok", "epochs": epochs, "wall_seconds": 2.0 * len(epochs) + overhead}

    tracker, backend = tracker_factory(), backend_factory(script)
    result = run_search(spec(budget_epochs=4), backend, tracker, progress=False)
    assert result.status == "succeeded", result.message
    costs = [ep["cost"] for run in tracker.runs.values() for ep in run.epochs.values()]
    assert len(costs) == 4
    expected = 2.0 + max(overhead, 0.0)  # one epoch per step here
    assert costs == pytest.approx([expected] * 4), costs


def test_with_step_overhead_spreads_the_fixed_cost_over_the_steps_epochs():
    from quicktune.search.loop import with_step_overhead

    epochs = [{"epoch": 2, "cost": 1.0}, {"epoch": 3, "cost": 3.0}]
    out = with_step_overhead(epochs, {"wall_seconds": 10.0})
    assert [e["cost"] for e in out] == [4.0, 6.0] and [e["epoch"] for e in out] == [2, 3]
    assert with_step_overhead(epochs, {}) == epochs  # no wall time measured: unchanged
    assert with_step_overhead(epochs, {"wall_seconds": float("nan")}) == epochs
    assert with_step_overhead([], {"wall_seconds": 5.0}) == []
