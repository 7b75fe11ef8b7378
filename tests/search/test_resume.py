"""Crash and resume in milliseconds: the controller is killed (a BaseException, so nothing is
recorded, as after kill -9) at every write it makes to MLflow and at every step start, then a new
session resumes. It must end with exactly the records of an uninterrupted search: the optimizer
is rebuilt exactly (snapshot + replay in tell_seq order), no epoch is trained or recorded twice,
and every step in flight is re-adopted, collected or started as the backend says."""

from __future__ import annotations

import logging

import pytest
from search_doubles import Crash, Killed, MemoryTracker, ScriptedBackend, fast_spec

from quicktune.search import SearchError, SearchSession, SearchSpec, resume as resume_mod, run_search

pytestmark = pytest.mark.usefixtures("fast_inputs", "no_plots")


def spec(**kw) -> SearchSpec:
    return fast_spec(**{"search_id": "crash", "budget_epochs": 7, **kw})


def reference(optimizer: str, workers: int) -> tuple[MemoryTracker, ScriptedBackend, Crash]:
    crash = Crash()
    tracker, backend = MemoryTracker(crash), ScriptedBackend(workers=workers, crash=crash)
    result = run_search(spec(optimizer=optimizer, workers=workers), backend, tracker, progress=False)
    assert result.status == "succeeded", result.message
    return tracker, backend, crash


def crash_and_resume(at: int, optimizer: str, workers: int, polls: int = 0) -> tuple[MemoryTracker, ScriptedBackend]:
    crash = Crash(at)
    tracker, backend = MemoryTracker(crash), ScriptedBackend(workers=workers, crash=crash, polls_to_finish=polls)
    with pytest.raises(Killed):
        run_search(spec(optimizer=optimizer, workers=workers), backend, tracker, progress=False)
    crash.disarm()
    existed = tracker.find_search("crash") is not None  # killed before its parent run was created: a new search
    result = run_search(spec(optimizer=optimizer, workers=workers), backend, tracker, progress=False)
    assert result.status == "succeeded", result.message
    assert result.resumed == existed
    return tracker, backend


@pytest.mark.parametrize("optimizer, workers", [("random", 1), ("asha", 1), ("random", 2)])
def test_a_kill_at_any_write_resumes_to_the_records_of_an_uninterrupted_search(optimizer, workers):
    ref_tracker, ref_backend, ref_crash = reference(optimizer, workers)
    expected = ref_tracker.curves("crash")
    assert sum(map(len, expected.values())) == 7
    # every write the controller makes (MLflow and step starts) is a kill point
    for at in range(1, ref_crash.count + 1):
        tracker, backend = crash_and_resume(at, optimizer, workers)
        where = f"killed at write {at}/{ref_crash.count} ({ref_crash.events[at - 1]})"
        if workers == 1:  # one step at a time: the order of results, hence every ask, is fixed
            assert tracker.curves("crash") == expected, where
        else:
            assert sum(map(len, tracker.curves("crash").values())) == 7, where
        assert set(backend.trained.values()) == {1}, where  # no epoch trained twice
        seqs = tracker.tell_seqs("crash")
        assert seqs == list(range(1, len(seqs) + 1)), where  # no result recorded twice, none lost
        assert tracker.parent("crash").tags.get("quicktune.resumes", "1") == "1", where


def _kill_at(event: str, nth: int = 1, **kw) -> int:
    """The write number of the ``nth`` event named ``event`` in an uninterrupted search."""
    _, _, crash = reference(kw.get("optimizer", "random"), kw.get("workers", 1))
    hits = [i + 1 for i, e in enumerate(crash.events) if e.startswith(event)]
    return hits[nth - 1]


def test_a_step_asked_but_never_started_is_started_on_resume(caplog):
    at = _kill_at("start ", 2)  # snapshot saved (it lists the step), then killed before start()
    with caplog.at_level(logging.INFO, logger="quicktune.search.resume"):
        tracker, backend = crash_and_resume(at, "random", 1)
    assert "was never started: starting it" in caplog.text
    assert set(backend.trained.values()) == {1}


def test_a_step_that_finished_while_the_controller_was_dead_is_collected(caplog):
    at = _kill_at("log epochs", 1)  # the step's RESULT was read, not yet logged: the controller died
    with caplog.at_level(logging.INFO, logger="quicktune.search.resume"):
        tracker, backend = crash_and_resume(at, "random", 1)
    assert "is succeeded in the backend: re-adopted" in caplog.text
    assert set(backend.trained.values()) == {1}


def test_a_step_still_running_is_re_adopted_not_started_again(caplog):
    crash = Crash()
    tracker, backend = MemoryTracker(crash), ScriptedBackend(crash=crash, polls_to_finish=50)
    session = SearchSession(spec(), backend, tracker, None, progress=False)
    session.open()
    session.dispatch()  # asked, snapshot, started; then the controller dies
    (step,) = backend.active()
    with caplog.at_level(logging.INFO, logger="quicktune.search.resume"):
        again = SearchSession(spec(), backend, tracker, None, progress=False)
        again.open()
    assert "is running in the backend: re-adopted" in caplog.text
    assert [fl.request.id for fl in again.inflight.values()] == [step]
    assert all(fl.retry_at is None for fl in again.inflight.values())
    backend.polls_to_finish = 0
    result = again.run()
    assert result.status == "succeeded"
    assert backend.attempts[step] == 1 and set(backend.trained.values()) == {1}


def test_results_told_after_the_snapshot_are_replayed_in_tell_seq_order(monkeypatch):
    """Two configs in flight; the one created second finishes first (tell_seq 1). Killed at the
    snapshot after both results: the replay must tell seq 1 then seq 2, not the records' order."""

    def polls(request):
        return 3 if request.config_id == first_config[0] else 0

    first_config: list[str] = []
    crash = Crash()
    tracker = MemoryTracker(crash)
    backend = ScriptedBackend(workers=2, crash=crash, polls_to_finish=polls)
    original_start = backend.start

    def start(request):
        if not first_config:
            first_config.append(request.config_id)
        return original_start(request)

    backend.start = start
    result = run_search(spec(workers=2, budget_epochs=2), backend, tracker, progress=False)
    assert result.status == "succeeded"
    saves = [i + 1 for i, e in enumerate(crash.events) if e == "save optimizer state"]
    assert len(saves) == 2  # at the first dispatch (both asks) and at the end

    first_config.clear()
    crash = Crash(saves[-1])
    tracker = MemoryTracker(crash)
    backend = ScriptedBackend(workers=2, crash=crash, polls_to_finish=polls)
    original_start = backend.start
    backend.start = start
    with pytest.raises(Killed):
        run_search(spec(workers=2, budget_epochs=2), backend, tracker, progress=False)
    crash.disarm()

    told: list[tuple[str, int]] = []
    make = resume_mod.make_optimizer

    def spying_make(*args, **kwargs):
        opt = make(*args, **kwargs)
        tell = opt.tell

        def spy(cid, epoch, *rest):
            told.append((cid, epoch))
            return tell(cid, epoch, *rest)

        opt.tell = spy
        return opt

    monkeypatch.setattr(resume_mod, "make_optimizer", spying_make)
    session = SearchSession(spec(workers=2, budget_epochs=2), backend, tracker, None, progress=False)
    session.open()
    by_seq = sorted(
        (int(r.epochs[1]["tell_seq"]), r.tags["quicktune.config_id"]) for r in tracker.runs.values() if r.epochs
    )
    assert [cid for _, cid in by_seq][-1] == first_config[0]  # the first created finished last
    assert told == [(cid, 1) for _, cid in by_seq]


def test_a_snapshot_that_does_not_match_the_records_is_refused():
    crash = Crash()
    tracker, backend = MemoryTracker(crash), ScriptedBackend(crash=crash)
    run_search(spec(budget_epochs=3), backend, tracker, progress=False)
    victim = next(r for r in tracker.runs.values() if r.epochs)
    del victim.epochs[min(victim.epochs)]  # a recorded result vanished
    with pytest.raises(SearchError, match="inconsistent"):
        SearchSession(spec(budget_epochs=5), backend, tracker, None, progress=False).open()
