"""The fake API server's object store: objects, resourceVersions, watch events, selectors.

What a watch needs from the store: every change to a Job gets the next resourceVersion and an
event in ``_job_events`` (read by ``http.Handler._watch_jobs``); ``expire_watches`` compacts the
log as etcd would, so older versions answer ``410 Gone``. ``Reject`` is how any part of the fake
refuses a request: it carries the ``Status`` object the HTTP layer sends back.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


class FakeClusterError(RuntimeError):
    """The fake cluster itself failed (not a rejected request)."""


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        out["details"] = dict(details)
    return out


class Reject(Exception):
    """A refused request: ``status`` is the Kubernetes ``Status`` object to answer with."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.status = status_object(code, reason, message, details)


def match_selector(labels: Mapping[str, str], selector: str | None) -> bool:
    """Equality-based label selectors (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``), comma-separated."""
    if not selector:
        return True
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif " in " in term or " notin " in term:
            raise Reject(400, "BadRequest", f"set-based selector not supported by the fake: {term!r}")
        elif term not in labels:
            return False
    return True


class ObjectStore:
    """Jobs and pods by (namespace, name), the resourceVersion counter and the Job event log that
    watches read. Every change goes through ``_bump`` (a new resourceVersion) and, for Jobs,
    ``_job_event`` (an event for the watches). Mixed into ``FakeCluster``; the lock is the cluster's."""

    _lock: threading.RLock
    _changed: threading.Condition
    _rv: int
    _compacted_rv: int
    _watch_generation: int
    jobs: dict[tuple[str, str], dict[str, Any]]
    pods: dict[tuple[str, str], dict[str, Any]]
    _job_events: list[tuple[int, str, dict[str, Any]]]

    def job(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        with self._lock:
            job = self.jobs.get((namespace, name))
            return copy.deepcopy(job) if job else None

    def pods_of(self, job_name: str, namespace: str = "default") -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(p)
                for (ns, _), p in sorted(self.pods.items())
                if ns == namespace and p["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name") == job_name
            ]

    def expire_watches(self) -> None:
        """Make every open watch end with ``ERROR 410 Gone`` and every resourceVersion seen so far
        too old (as after an etcd compaction), forcing clients to re-list."""
        with self._changed:
            self._compacted_rv = self._rv
            self._job_events.clear()
            self._watch_generation += 1
            self._changed.notify_all()

    def _bump(self, obj: dict[str, Any]) -> int:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        return self._rv

    def _job_event(self, etype: str, job: dict[str, Any]) -> None:
        rv = self._bump(job)
        self._job_events.append((rv, etype, copy.deepcopy(job)))
        self._changed.notify_all()

    def list_jobs(self, ns: str, selector: str | None) -> dict[str, Any]:
        with self._lock:
            items = [
                copy.deepcopy(j)
                for (jns, _), j in sorted(self.jobs.items())
                if jns == ns and match_selector(j["metadata"].get("labels") or {}, selector)
            ]
            return {
                "kind": "JobList",
                "apiVersion": "batch/v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    def list_pods(self, ns: str, selector: str | None) -> dict[str, Any]:
        with self._lock:
            items = [
                copy.deepcopy(p)
                for (pns, _), p in sorted(self.pods.items())
                if pns == ns and match_selector(p["metadata"].get("labels") or {}, selector)
            ]
            return {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }
