"""A list-then-watch informer for one label selector's Jobs, as client-go's informers work.

Why: polling every step Job with a GET per ``poll()`` would cost one API call per step per
controller tick; a watch costs one long request. The informer lists the Jobs once (remembering
the list's resourceVersion), then watches from that version and hands every event to a sink.
When the watch ends (``timeout_seconds``), it watches again from the last version it saw
(bookmarks keep that version fresh). When the server answers ``410 Gone`` (the version was
compacted away), or anything else goes wrong, it re-lists -- the sink then gets the whole list,
so Jobs deleted while nobody watched are noticed -- and watches again, with capped back-off on
errors. ``relists`` counts the lists (1 + one per 410 or error), for tests and metrics.

The informer owns no Job state: the sink (``JobSink``, the backend) decides what an event means.
It calls the sink from its own daemon thread; the sink does its own locking.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from quicktune.backends.kubernetes.api import Gone, KubernetesApi

log = logging.getLogger(__name__)

__all__ = ["JobSink", "JobInformer"]


class JobSink(Protocol):
    """What the informer tells: a full list, a Job added or changed, a Job deleted."""

    def replace(self, jobs: list[dict[str, Any]]) -> None:
        """The complete current list: any Job not in it is gone."""

    def upsert(self, job: dict[str, Any]) -> None:
        """A Job was added or modified (this is its latest object)."""

    def delete(self, job: Mapping[str, Any]) -> None:
        """A Job was deleted (this is its last object, from the DELETED event)."""


class JobInformer:
    """Lists, then watches, the Jobs matching ``selector``, telling ``sink`` (module docstring).

    ``start()`` is idempotent and restarts a thread that died; ``stop()`` ends it; ``synced``
    is set once the first list arrived (until then callers should list themselves)."""

    def __init__(
        self,
        api: KubernetesApi,
        selector: str,
        sink: JobSink,
        *,
        watch_timeout_seconds: int = 60,
        name: str = "qt-k8s-watch",
    ) -> None:
        self.api = api
        self.selector = selector
        self.sink = sink
        self.watch_timeout = int(watch_timeout_seconds)
        self.name = name
        self.resource_version: str | None = None
        self.synced = threading.Event()
        self.relists = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._stop.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._run, daemon=True, name=self.name)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _relist(self) -> None:
        items, rv = self.api.list_jobs(self.selector)
        self.sink.replace(items)
        self.resource_version = rv
        self.synced.set()

    def _run(self) -> None:
        need_list = True
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if need_list:
                    self.relists += 1
                    self._relist()
                    need_list = False
                events = self.api.watch_jobs(self.selector, self.resource_version, self.watch_timeout)
                try:
                    for etype, obj in events:
                        if self._stop.is_set():
                            break
                        if etype in ("ADDED", "MODIFIED"):
                            self.sink.upsert(obj)
                        elif etype == "DELETED":
                            self.sink.delete(obj)
                        rv = (obj.get("metadata") or {}).get("resourceVersion")
                        if rv:
                            self.resource_version = rv
                finally:
                    events.close()
                backoff = 0.5
            except Gone:
                log.info("watch of step Jobs expired (410 Gone); re-listing")
                need_list = True
            except Exception as exc:  # noqa: BLE001 - keep the informer alive; callers fall back to GETs
                if self._stop.is_set():
                    break
                log.warning("watch of step Jobs interrupted (%s); re-listing", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10)
                need_list = True
