"""StepPool (:mod:`quicktune.backends.pool`): the in-flight bookkeeping the search loop and the
campaign share, against a small scripted backend that keeps the TrialBackend contract (unknown
ids raise KeyError, ``start`` of a known id re-adopts, never duplicates)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from quicktune.backends.base import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    StepRequest,
    StepStatus,
    TrialBackend,
)
from quicktune.backends.pool import StepPool


class Scripted(TrialBackend):
    """Steps finish after ``polls`` polls; a config named ``bad*`` fails. Counts launches."""

    def __init__(self, polls: int = 1, listable: bool = True) -> None:
        self.polls = polls
        self.listable = listable
        self.steps: dict[str, dict[str, Any]] = {}
        self.launches: list[str] = []
        self.cancelled: list[str] = []

    def _launch(self, request: StepRequest) -> None:
        self.launches.append(request.id)
        self.steps[request.id] = {"request": request, "polls": 0, "state": PENDING}

    def start(self, request: StepRequest) -> str:
        if request.id not in self.steps:
            self._launch(request)
        return request.id

    def rerun(self, request: StepRequest) -> str:
        self._launch(request)
        return request.id

    def poll(self, step_id: str) -> StepStatus:
        step = self.steps[step_id]
        if step["state"] in (PENDING, RUNNING):
            step["polls"] += 1
            if step["polls"] >= self.polls:
                step["state"] = FAILED if step["request"].config_id.startswith("bad") else SUCCEEDED
            else:
                step["state"] = RUNNING
        return StepStatus(step["state"])

    def result(self, step_id: str) -> dict[str, Any]:
        req = self.steps[step_id]["request"]
        return {"status": "ok" if self.steps[step_id]["state"] == SUCCEEDED else "failed", "config": req.config_id}

    def logs(self, step_id: str) -> str:
        return f"logs of {step_id}"

    def cancel(self, step_id: str) -> None:
        step = self.steps[step_id]
        self.cancelled.append(step_id)
        if step["state"] in (PENDING, RUNNING):
            step["state"] = CANCELLED

    def active(self) -> list[str]:
        if not self.listable:
            raise RuntimeError("cannot list")
        return [sid for sid, s in self.steps.items() if s["state"] in (PENDING, RUNNING)]

    def capacity(self) -> int:
        return 2


def req(config_id: str, epoch: int = 1, search: str = "s") -> StepRequest:
    return StepRequest(
        search_id=search,
        config_id=config_id,
        config={"model": "m"},
        data_uri="/data",
        to_epoch=epoch,
        checkpoint_dir=f"/ckpt/{config_id}",
    )


def test_start_poll_collect_forgets_only_what_was_collected() -> None:
    backend = Scripted(polls=2)
    pool: StepPool[tuple[str, int]] = StepPool(backend)
    assert pool.start(("a", 1), req("a")) == req("a").id
    pool.start(("bad", 1), req("bad"))
    assert len(pool) == 2 and ("a", 1) in pool
    assert pool.finished() == []  # first poll: running
    done = pool.finished()
    assert [k for k, _ in done] == [("a", 1), ("bad", 1)]
    assert [s.state for _, s in done] == [SUCCEEDED, FAILED]
    assert pool.result(("bad", 1))["status"] == "failed" and ("bad", 1) in pool  # result keeps it
    assert pool.logs(("bad", 1)) == f"logs of {req('bad').id}"
    assert pool.collect(("a", 1)) == {"status": "ok", "config": "a"}
    assert list(pool) == [("bad", 1)]
    pool.rerun(("bad", 1))  # a retry runs the tracked request again under the same id
    assert backend.launches == [req("a").id, req("bad").id, req("bad").id]
    pool.forget(("bad", 1))
    pool.forget(("bad", 1))  # idempotent
    assert len(pool) == 0


def test_tracked_before_started_polls_as_unknown_then_starts_the_tracked_request() -> None:
    backend = Scripted()
    pool: StepPool[str] = StepPool(backend)
    pool.track("a", req("a"))
    with pytest.raises(KeyError):  # the contract: the backend never saw it
        pool.poll("a")
    pool.cancel_all()  # a step the backend never saw is skipped, not an error
    assert pool.start("a") == req("a").id and backend.launches == [req("a").id]
    assert pool.start("a") == req("a").id and backend.launches == [req("a").id]  # re-adopted


def test_adopt_takes_only_candidates_the_backend_still_runs() -> None:
    backend = Scripted(polls=5)
    backend.start(req("a"))
    backend.start(req("b"))
    backend.start(req("other", search="elsewhere"))
    backend.steps[req("b").id]["state"] = SUCCEEDED  # finished while nobody watched: not adopted
    pool: StepPool[str] = StepPool(backend)
    adopted = pool.adopt({"a": req("a"), "b": req("b"), "c": req("c")})
    assert adopted == ["a"] and list(pool) == ["a"]
    assert backend.launches.count(req("a").id) == 1  # re-adopted, not started twice
    assert pool.strays(f"{req('a').search_id}-") == []
    assert pool.strays("") == [req("other", search="elsewhere").id]


def test_adopt_with_a_backend_that_cannot_list_adopts_nothing() -> None:
    backend = Scripted(listable=False)
    pool: StepPool[str] = StepPool(backend)
    assert pool.adopt({"a": req("a")}) == [] and len(pool) == 0


def test_cancel_all_cancels_every_tracked_step_and_keeps_them() -> None:
    backend = Scripted(polls=5)
    pool: StepPool[str] = StepPool(backend)
    for c in "abc":
        pool.start(c, req(c))
    pool.cancel_all()
    assert backend.cancelled == [req(c).id for c in "abc"]
    assert [s.state for _, s in pool.finished()] == [CANCELLED] * 3 and len(pool) == 3


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["start", "track", "collect", "forget"]), st.sampled_from(["a", "b", "bad", "c"])),
        max_size=25,
    )
)
def test_the_pool_tracks_exactly_the_keys_started_and_not_yet_collected(ops: list[tuple[str, str]]) -> None:
    """A model: the pool's keys (in order) are those tracked/started and not collected/forgotten,
    and a collected result is always the one of the step under that key."""
    backend = Scripted(polls=1)
    pool: StepPool[str] = StepPool(backend)
    model: dict[str, None] = {}
    for op, key in ops:
        if op in ("start", "track"):
            getattr(pool, op)(key, req(key))
            model[key] = None
        elif op == "collect" and key in model:
            pool.start(key)  # a tracked-only key starts its tracked request; a started one is re-adopted
            if pool.poll(key).done:
                assert pool.collect(key)["config"] == key
                del model[key]
        elif op == "forget":
            pool.forget(key)
            model.pop(key, None)
        assert list(pool) == list(model)
