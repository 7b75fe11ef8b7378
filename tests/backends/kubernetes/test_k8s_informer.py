"""JobInformer: list, then watch; ``410 Gone`` and errors re-list. Fast (a scripted API, no cluster)."""

from __future__ import annotations

import threading
from typing import Any

from quicktune.backends.kubernetes import ApiUnavailable, Gone, JobInformer


def _job(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": str(rv), "uid": f"u-{name}"}}


class _ScriptedApi:
    """``list_jobs`` answers the current list; each ``watch_jobs`` plays the next script entry
    (a list of events, or an exception raised after them)."""

    def __init__(self, watches: list[Any]) -> None:
        self.watches = list(watches)
        self.lists = 0
        self.watched_from: list[str | None] = []
        self.done = threading.Event()

    def list_jobs(self, selector: str) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        return [_job("a", 10 * self.lists)], str(10 * self.lists)

    def watch_jobs(self, selector: str, resource_version: str | None, timeout_seconds: int):
        self.watched_from.append(resource_version)
        if not self.watches:
            self.done.set()
            threading.Event().wait(0.05)
            return
        script = self.watches.pop(0)
        yield from (script if isinstance(script, list) else [])
        if isinstance(script, BaseException):
            raise script


class _Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def replace(self, jobs):
        self.calls.append(("replace", [j["metadata"]["name"] for j in jobs]))

    def upsert(self, job):
        self.calls.append(("upsert", job["metadata"]["name"]))

    def delete(self, job):
        self.calls.append(("delete", job["metadata"]["name"]))


def test_watch_resumes_from_the_last_version_and_410_relists():
    api = _ScriptedApi(
        [
            [("ADDED", _job("b", 11)), ("BOOKMARK", {"metadata": {"resourceVersion": "15"}})],  # ends normally
            [("DELETED", _job("a", 16))],
            Gone("too old resource version", status=410),
            ApiUnavailable("connection refused"),
        ]
    )
    sink = _Sink()
    informer = JobInformer(api, "app=x", sink, watch_timeout_seconds=1)
    informer._stop.wait = lambda t: False  # type: ignore[method-assign]  # no back-off sleeps in the test
    informer.start()
    try:
        assert api.done.wait(10) and informer.synced.is_set()
    finally:
        informer.stop()
    # first list at rv 10; a normal end resumes from the last version seen (the bookmark's 15, then 16);
    # 410 re-lists (rv 20) without waiting; an error re-lists too (rv 30)
    assert api.watched_from[:5] == ["10", "15", "16", "20", "30"]
    assert informer.relists == 3 == api.lists
    assert sink.calls[:4] == [("replace", ["a"]), ("upsert", "b"), ("delete", "a"), ("replace", ["a"])]


def test_start_is_idempotent_and_stop_ends_the_thread():
    api = _ScriptedApi([])
    informer = JobInformer(api, "app=x", _Sink(), watch_timeout_seconds=1)
    informer.start()
    first = informer._thread
    informer.start()
    assert informer._thread is first
    informer.stop()
    assert first is not None and not first.is_alive()
    informer.start()  # stopped for good: no new thread
    assert informer._thread is first
