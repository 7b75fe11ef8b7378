"""The fake cluster's Job controller (``batch/v1`` Jobs), as the real one behaves for our Jobs.

One pod at a time (``parallelism``/``completions`` 1); a deleted or evicted pod is replaced by a
new one (the controller Job's own pod included: that is how a drained controller comes back);
``backoffLimit`` with exponential retry delays, ``podFailurePolicy`` (``DisruptionTarget`` ->
Ignore, exit-code rules -> FailJob or Count), ``activeDeadlineSeconds``,
``ttlSecondsAfterFinished``, ``suspend`` (and, with ``admit_suspended``, Kueue's admission of a
suspended Job carrying a queue-name label). A pod the namespace's Pod Security level refuses is
not created (``admission_denials``) and retried later.
"""

from __future__ import annotations

import copy
import json
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from quicktune.testing.fake_k8s.kubelet import PodRuntime
from quicktune.testing.fake_k8s.store import Reject, now


def _has_condition(obj: Mapping[str, Any], ctype: str) -> bool:
    return any(
        c.get("type") == ctype and c.get("status") == "True" for c in obj.get("status", {}).get("conditions", [])
    )


def _container_termination(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return {"name": cs["name"], **term}
    return None


def _pod_failure_action(policy: Mapping[str, Any] | None, pod: Mapping[str, Any]) -> tuple[str, int]:
    """The podFailurePolicy action for a failed pod (first matching rule), else ("Count", -1)."""
    for i, rule in enumerate((policy or {}).get("rules") or []):
        if "onPodConditions" in rule:
            for pat in rule["onPodConditions"]:
                if any(
                    c.get("type") == pat["type"] and c.get("status") == pat.get("status", "True")
                    for c in pod.get("status", {}).get("conditions", [])
                ):
                    return rule["action"], i
        if "onExitCodes" in rule:
            req = rule["onExitCodes"]
            term = _container_termination(pod)
            if term is None or (req.get("containerName") and req["containerName"] != term["name"]):
                continue
            code = term["exitCode"]
            inside = code in req["values"]
            if (req["operator"] == "In" and inside) or (req["operator"] == "NotIn" and not inside and code != 0):
                return rule["action"], i
    return "Count", -1


class JobController:
    """The Job controller: creates a Job's pods one at a time and turns their outcomes into the
    Job's status and conditions. Mixed into ``FakeCluster``."""

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("apiVersion") != "batch/v1" or body.get("kind") != "Job":
            raise Reject(400, "BadRequest", f"expected batch/v1 Job, got {body.get('apiVersion')} {body.get('kind')}")
        meta = body.get("metadata") or {}
        if meta.get("namespace", namespace) != namespace:
            raise Reject(400, "BadRequest", "the namespace of the object does not match the namespace of the URL")
        self.validate(body)
        name = meta["name"]
        warnings = self._pod_security(namespace, "warn", (body.get("spec") or {}).get("template") or {})
        if warnings:
            self.warnings.append(f"Job {namespace}/{name}: {warnings}")
        with self._lock:
            if (namespace, name) in self.jobs:
                raise Reject(
                    409,
                    "AlreadyExists",
                    f'jobs.batch "{name}" already exists',
                    {"name": name, "group": "batch", "kind": "jobs"},
                )
            job = copy.deepcopy(body)
            uid = str(uuid.uuid4())
            job["metadata"].update(namespace=namespace, uid=uid, creationTimestamp=now(), generation=1)
            spec = job["spec"]
            sel = {"batch.kubernetes.io/controller-uid": uid}
            spec.setdefault("selector", {"matchLabels": sel})
            spec.setdefault("manualSelector", False)
            spec.setdefault("parallelism", 1)
            spec.setdefault("completions", 1)
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("suspend", False)
            spec.setdefault("completionMode", "NonIndexed")
            tmpl_labels = spec["template"].setdefault("metadata", {}).setdefault("labels", {})
            tmpl_labels.update(
                {
                    "batch.kubernetes.io/controller-uid": uid,
                    "batch.kubernetes.io/job-name": name,
                    "controller-uid": uid,
                    "job-name": name,
                }
            )
            if not job["metadata"].get("labels"):  # an unlabelled Job takes its template's labels
                job["metadata"]["labels"] = dict(tmpl_labels)
            job["status"] = {}
            self.jobs[(namespace, name)] = job
            self._job_internal[(namespace, name)] = {"next_pod_at": 0.0, "accounted": set()}
            self._job_event("ADDED", job)
            self.created_jobs.append(name)
            return copy.deepcopy(job)

    def _controller_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._reconcile()
            except Exception as exc:  # noqa: BLE001 - surface in the log, keep going
                print(f"fake-k8s controller error: {type(exc).__name__}: {exc}", file=sys.stderr)
            time.sleep(self.tick)

    def _reconcile(self) -> None:
        with self._lock:
            keys = list(self.jobs)
        for key in keys:
            with self._lock:
                job = self.jobs.get(key)
                if job is None:
                    continue
                self._reconcile_job(key, job)
        with self._lock:
            pod_keys = list(self._runtime)
        for pkey in pod_keys:
            self._kubelet_sync(pkey)

    def _reconcile_job(self, key: tuple[str, str], job: dict[str, Any]) -> None:
        ns, name = key
        spec, status = job["spec"], job["status"]
        internal = self._job_internal[key]
        before = json.dumps(status, sort_keys=True), json.dumps(spec, sort_keys=True)
        pods = [self.pods[k] for k in self._pod_keys(key)]
        if job["metadata"].get("deletionTimestamp"):  # foreground deletion: pods first, then the Job
            for pkey in self._pod_keys(key):
                self._delete_pod_object(pkey)
            del self.jobs[key]
            self._job_internal.pop(key, None)
            self._job_event("DELETED", job)
            self._collect_dependents_of(job["metadata"]["uid"])
            return
        finished = _has_condition(job, "Complete") or _has_condition(job, "Failed")
        if finished:
            ttl = spec.get("ttlSecondsAfterFinished")
            if ttl is not None and time.monotonic() >= internal.get("finished_at", 0) + ttl:
                self._delete_job(key, "Background")
            return
        if spec.get("suspend"):
            if self.admit_suspended and job["metadata"].get("labels", {}).get("kueue.x-k8s.io/queue-name"):
                spec["suspend"] = False  # Kueue admitted the workload
            else:
                conds = status.setdefault("conditions", [])
                if not any(c["type"] == "Suspended" for c in conds):
                    conds.append(
                        {
                            "type": "Suspended",
                            "status": "True",
                            "reason": "JobSuspended",
                            "message": "Job suspended",
                            "lastProbeTime": now(),
                            "lastTransitionTime": now(),
                        }
                    )
                self._maybe_emit(job, before)
                return
        status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "Suspended"]
        if not status["conditions"]:
            status.pop("conditions")
        if "startTime" not in status:
            status["startTime"] = now()
            internal["started_at"] = time.monotonic()
        # account for finished pods, and for pods deleted before they finished (``gc.delete_pod``):
        # those count as failed unless they carry DisruptionTarget, as with the real controller
        for pod in pods + internal.get("lost", []):
            pname = pod["metadata"]["name"]
            phase = pod["status"].get("phase")
            if pname in internal["accounted"] or phase not in ("Succeeded", "Failed"):
                continue
            internal["accounted"].add(pname)
            if phase == "Succeeded":
                status["succeeded"] = status.get("succeeded", 0) + 1
                self._finish(key, job, "Complete", "", "")
                return
            action, index = _pod_failure_action(spec.get("podFailurePolicy"), pod)
            if action == "Ignore":
                internal["next_pod_at"] = time.monotonic() + self.retry_delay
                continue
            status["failed"] = status.get("failed", 0) + 1
            if action == "FailJob":
                term = _container_termination(pod) or {}
                self._finish(
                    key,
                    job,
                    "Failed",
                    "PodFailurePolicy",
                    f"Container {term.get('name', '?')} for pod {ns}/{pname} failed with exit code "
                    f"{term.get('exitCode')} matching FailJob rule at index {index}",
                )
                return
            if status["failed"] > spec.get("backoffLimit", 6):
                self._finish(key, job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                return
            internal["next_pod_at"] = time.monotonic() + self.retry_delay * (2 ** (status["failed"] - 1))
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and time.monotonic() - internal.get("started_at", time.monotonic()) > deadline:
            self._finish(
                key, job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline", kill="deadline"
            )
            return
        active = [p for p in pods if p["status"].get("phase") in ("Pending", "Running")]
        if not active and time.monotonic() >= internal["next_pod_at"]:
            self._create_pod(key, job)
            active = [
                p
                for p in (self.pods[k] for k in self._pod_keys(key))
                if p["status"].get("phase") in ("Pending", "Running")
            ]
        status["active"] = len(active)
        status["ready"] = sum(1 for p in pods if p["status"].get("phase") == "Running")
        if not status["active"]:
            status.pop("active")
        self._maybe_emit(job, before)

    def _maybe_emit(self, job: dict[str, Any], before: tuple[str, str]) -> None:
        after = json.dumps(job["status"], sort_keys=True), json.dumps(job["spec"], sort_keys=True)
        if after != before:
            self._job_event("MODIFIED", job)

    def _finish(
        self, key: tuple[str, str], job: dict[str, Any], ctype: str, reason: str, message: str, kill: str | None = None
    ) -> None:
        status = job["status"]
        for pkey in self._pod_keys(key):
            rt = self._runtime.get(pkey)
            if rt is not None and rt.proc is not None and rt.proc.poll() is None:
                threading.Thread(target=self._kill, args=(rt, kill or "deleted"), daemon=True).start()
        cond: dict[str, Any] = {"type": ctype, "status": "True", "lastProbeTime": now(), "lastTransitionTime": now()}
        if reason:
            cond.update(reason=reason, message=message)
        status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "Suspended"] + [cond]
        status.pop("active", None)
        status["ready"] = 0
        if ctype == "Complete":
            status["completionTime"] = now()
        self._job_internal[key]["finished_at"] = time.monotonic()
        self._job_event("MODIFIED", job)

    def _create_pod(self, job_key: tuple[str, str], job: dict[str, Any]) -> None:
        ns, jname = job_key
        tmpl = copy.deepcopy(job["spec"]["template"])
        pname = f"{jname[:57]}-{uuid.uuid4().hex[:5]}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                **tmpl.get("metadata", {}),
                "name": pname,
                "namespace": ns,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": now(),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": jname,
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": tmpl["spec"],
            "status": {"phase": "Pending", "conditions": []},
        }
        self.validate(
            {k: v for k, v in pod.items() if k != "status"}
            | {"metadata": {k: v for k, v in pod["metadata"].items() if k not in ("uid", "creationTimestamp")}}
        )
        denied = self._pod_security(ns, "enforce", pod)
        if denied:  # the Job controller's create is refused (event FailedCreate); it retries later
            self.admission_denials.append((f"{ns}/{jname}", denied))
            self._job_internal[job_key]["next_pod_at"] = time.monotonic() + max(self.retry_delay, 1.0)
            return
        self._bump(pod)
        self.pods[(ns, pname)] = pod
        folder = self.workdir / "pods" / pname
        folder.mkdir(parents=True, exist_ok=True)
        self._runtime[(ns, pname)] = PodRuntime(folder)
