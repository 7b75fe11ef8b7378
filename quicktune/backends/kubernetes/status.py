"""What a Job or pod object says, read the way the backend needs it.

Kubernetes' own conditions are authoritative: a Job is done when it has a ``Complete`` or
``Failed`` (or ``FailureTarget``) condition, cancelled while it carries a ``deletionTimestamp``,
pending while suspended (e.g. waiting for Kueue). Pods tell how an attempt ended (the step
container's exit code and reason, ``OOMKilled`` included) and whether it was disrupted
(``DisruptionTarget``: preempted, evicted, drained); a pod's ``controller_of`` is the object
that recreates it (the controller Job), which is what owns the step Jobs. Pure functions over the
API's JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from quicktune.backends.base import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, StepStatus
from quicktune.backends.kubernetes.manifests import STEP_CONTAINER

__all__ = [
    "job_state",
    "job_condition",
    "being_deleted",
    "resource_version",
    "pod_has_condition",
    "pod_termination",
    "iter_labels",
    "controller_of",
    "job_wall_seconds",
]


def job_condition(job: Mapping[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return cond
    return None


def job_state(job: Mapping[str, Any]) -> StepStatus:
    """Map a Job object to a step status (Kubernetes' own conditions are authoritative)."""
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return StepStatus(CANCELLED, "the Job is being deleted")
    if cond := job_condition(job, "Complete"):
        return StepStatus(SUCCEEDED, cond.get("message") or "")
    cond = job_condition(job, "Failed") or job_condition(job, "FailureTarget")
    if cond:
        return StepStatus(FAILED, f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip(": "))
    status = job.get("status") or {}
    if (job.get("spec") or {}).get("suspend"):
        return StepStatus(PENDING, "suspended (waiting for admission, e.g. by Kueue)")
    if status.get("active") or status.get("ready"):
        return StepStatus(RUNNING)
    return StepStatus(PENDING)


def resource_version(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def being_deleted(job: Mapping[str, Any]) -> bool:
    return bool((job.get("metadata") or {}).get("deletionTimestamp"))


def pod_has_condition(pod: Mapping[str, Any], ctype: str) -> bool:
    return any(
        c.get("type") == ctype and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or []
    )


def pod_termination(pod: Mapping[str, Any]) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == STEP_CONTAINER:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                return {"exitCode": term.get("exitCode"), "reason": term.get("reason")}
    return {}


def iter_labels(job: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """(key, value) pairs of a Job's labels; handy for tests and the CLI."""
    return ((job.get("metadata") or {}).get("labels") or {}).items()


def controller_of(pod: Mapping[str, Any]) -> dict[str, str]:
    """The object that controls ``pod`` (its ``controller: true`` ownerReference: the Job of a Job's
    pod, the Argo Workflow of a KFP task's pod), as ``{"apiVersion", "kind", "name", "uid"}``; the pod
    itself when nothing controls it (a bare pod has no one to bring it back)."""
    meta = pod.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") and ref.get("name"):
            return {k: str(ref[k]) for k in ("apiVersion", "kind", "name", "uid")}
    if not meta.get("name") or not meta.get("uid"):
        raise ValueError("the pod object has no metadata.name/uid")
    return {"apiVersion": "v1", "kind": "Pod", "name": str(meta["name"]), "uid": str(meta["uid"])}


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def job_wall_seconds(job: Mapping[str, Any]) -> float | None:
    """Seconds from the Job's start to its completion, as the API server recorded them (second
    precision): pod scheduling and start, image start-up, data sync, weight load, train, eval and
    checkpoint -- what the step really cost. The start is ``status.startTime`` (a Job created
    suspended, waiting for Kueue, starts when admitted: queueing is not the step's cost), else the
    ``creationTimestamp``; the end is ``status.completionTime``. None until the Job completed."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    start = _timestamp(status.get("startTime")) or _timestamp(meta.get("creationTimestamp"))
    end = _timestamp(status.get("completionTime"))
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())
