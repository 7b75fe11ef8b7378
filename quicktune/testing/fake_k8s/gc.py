"""Deletion in the fake cluster: propagation policies and ownerReference garbage collection.

``Foreground`` keeps a Job visible with a ``deletionTimestamp`` (and the ``foregroundDeletion``
finalizer) until the Job controller has removed its pods; ``Background`` deletes it at once and
its pods after; ``Orphan`` leaves the pods. Deleting a pod (``delete_pod``, e.g. the controller's
own pod) deletes, in the background, every Job whose ownerReferences name that pod's uid -- how
the step Jobs of a deleted controller disappear on a real cluster.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from quicktune.testing.fake_k8s.store import now


class GarbageCollector:
    """Deletion with propagation (Background / Foreground / Orphan) and ownerReference garbage
    collection. Mixed into ``FakeCluster``."""

    def delete_pod(self, name: str, namespace: str = "default") -> None:
        """Delete a pod; the garbage collector then deletes objects it owns (Background)."""
        with self._lock:
            pod = self.pods.pop((namespace, name), None)
            if pod is None:
                raise KeyError(name)
            uid = pod["metadata"]["uid"]
            rt = self._runtime.get((namespace, name))
            owned = [
                key
                for key, job in self.jobs.items()
                if any(o.get("uid") == uid for o in job["metadata"].get("ownerReferences") or [])
            ]
        if rt is not None:
            self._kill(rt, "deleted")
        for key in owned:
            self._delete_job(key, "Background")

    def _delete_job(self, key: tuple[str, str], propagation: str) -> dict[str, Any] | None:
        with self._lock:
            job = self.jobs.get(key)
            if job is None:
                return None
            if propagation == "Foreground":
                if not job["metadata"].get("deletionTimestamp"):
                    job["metadata"]["deletionTimestamp"] = now()
                    job["metadata"]["finalizers"] = ["foregroundDeletion"]
                    self._job_event("MODIFIED", job)
                return copy.deepcopy(job)
            del self.jobs[key]
            self._job_internal.pop(key, None)
            self._job_event("DELETED", job)
            if propagation != "Orphan":
                for pkey in self._pod_keys(key):
                    self._delete_pod_object(pkey)
            return copy.deepcopy(job)

    def _pod_keys(self, job_key: tuple[str, str]) -> list[tuple[str, str]]:
        ns, name = job_key
        return [
            k
            for k, p in self.pods.items()
            if k[0] == ns and p["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name") == name
        ]

    def _delete_pod_object(self, key: tuple[str, str]) -> None:
        rt = self._runtime.get(key)
        self.pods.pop(key, None)
        if rt is not None:
            threading.Thread(target=self._kill, args=(rt, "deleted"), daemon=True).start()
