"""Deletion in the fake cluster: propagation policies and ownerReference garbage collection.

``Foreground`` keeps a Job visible with a ``deletionTimestamp`` (and the ``foregroundDeletion``
finalizer) until the Job controller has removed its pods; ``Background`` deletes it at once and
its pods after; ``Orphan`` leaves the pods.

Garbage collection, as the real collector does it: an object is deleted (in the background) once
*every* object its ownerReferences name is gone -- by uid, so a new object of the same name does
not keep an orphan alive. Whenever a pod or a Job disappears (``delete_pod``, ``evict_pod``, a
Job's deletion, its TTL), the Jobs and ConfigMaps it owned are collected; a Job's pods go with it. Owners are
looked up among the kinds the fake models (``v1`` Pod, ``batch/v1`` Job); an owner of any other
kind (an Argo Workflow, a KFP run) counts as present, since the fake cannot know it is gone.

Deleting a pod that belongs to a Job does not touch the Job: the Job controller sees the pod gone
and creates a new one (``jobs``), counting the lost pod as a failure unless it carried the
``DisruptionTarget`` condition (``evict_pod``: a drain or an API-initiated eviction), which the
step and controller Jobs' ``podFailurePolicy`` ignores.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Any

from quicktune.testing.fake_k8s.store import now

# the owner kinds the fake can look up: (apiVersion, kind)
_MODELLED = {("v1", "Pod"), ("batch/v1", "Job")}


class GarbageCollector:
    """Deletion with propagation (Background / Foreground / Orphan) and ownerReference garbage
    collection. Mixed into ``FakeCluster``."""

    def delete_pod(self, name: str, namespace: str = "default", *, evicted: bool = False) -> None:
        """Delete a pod (``kubectl delete pod``); the garbage collector then deletes the objects it
        owned. ``evicted``: the pod gets the ``DisruptionTarget`` condition first, as a node drain
        or the Eviction API gives it. A Job's pod is replaced by the Job controller."""
        with self._lock:
            pod = self.pods.pop((namespace, name), None)
            if pod is None:
                raise KeyError(name)
            rt = self._runtime.get((namespace, name))
            self._bump(pod)
            job_key = _owning_job(pod)
            internal = self._job_internal.get((namespace, job_key)) if job_key else None
            if internal is not None and pod["status"].get("phase") not in ("Succeeded", "Failed"):
                lost = copy.deepcopy(pod)
                lost["status"]["phase"] = "Failed"  # the Job controller sees a pod that did not finish
                if evicted:
                    lost["status"].setdefault("conditions", []).append(
                        {
                            "type": "DisruptionTarget",
                            "status": "True",
                            "reason": "EvictionByEvictionAPI",
                            "message": "fake-cluster: evicted (node drain)",
                            "lastTransitionTime": now(),
                        }
                    )
                internal.setdefault("lost", []).append(lost)
        if rt is not None:
            self._kill(rt, "evicted" if evicted else "deleted")
        self._collect_dependents_of(pod["metadata"]["uid"])

    def evict_pod(self, name: str, namespace: str = "default") -> None:
        """Evict a pod as ``kubectl drain`` does (``DisruptionTarget``, then deletion)."""
        self.delete_pod(name, namespace, evicted=True)

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
            out = copy.deepcopy(job)
        if propagation != "Orphan":
            self._collect_dependents_of(job["metadata"]["uid"])
        return out

    def _collect_dependents_of(self, uid: str) -> None:
        """The garbage collector's pass after the object ``uid`` disappeared: every Job that named
        it as an owner and has no live owner left is deleted (Background), recursively."""
        with self._lock:
            live = {p["metadata"]["uid"] for p in self.pods.values()} | {
                j["metadata"]["uid"] for j in self.jobs.values()
            }
            garbage = [
                key
                for key, job in self.jobs.items()
                if any(o.get("uid") == uid for o in job["metadata"].get("ownerReferences") or [])
                and not any(_alive(o, live) for o in job["metadata"]["ownerReferences"])
            ]
        for key in garbage:
            self._delete_job(key, "Background")
        self._collect_configmaps_of(live, uid, _alive)

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


def _alive(owner: Mapping[str, Any], live_uids: set[str]) -> bool:
    if (owner.get("apiVersion"), owner.get("kind")) not in _MODELLED:
        return True  # a kind the fake does not model: it cannot tell that it is gone
    return owner.get("uid") in live_uids


def _owning_job(pod: Mapping[str, Any]) -> str | None:
    """The name of the Job that controls ``pod``, if any."""
    for o in pod["metadata"].get("ownerReferences") or []:
        if o.get("kind") == "Job" and o.get("controller"):
            return str(o["name"])
    return None
