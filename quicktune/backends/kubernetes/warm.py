"""Warm step pods: a pool of at most W worker pods that take step requests one after another.

Why: a step Job pays every fixed cost on every epoch -- pod start, ``import torch, timm``, the
dataset's S3 sync, the weights' download, the decode -- and on a continued epoch of a small model
that is a large part of the step (``benchmarks/bench_k8s_step_overhead.py``). A warm worker pays
them once and keeps them: the interpreter with torch/timm imported, the dataset mirror and the
weights in its cache folders (``/tmp/cache``, an ``emptyDir`` that lives as long as the pod, or
``/cache`` on a claim shared by the step pods when ``cache_pvc`` is set) and, in memory, the opened
dataset, its decoded images and the last config's training state (``quicktune.finetune.warm_cache``).

Coordination: step requests are Kubernetes objects, so no new infrastructure (no queue, no
database, no service to reach the workers) and nothing a restarted controller cannot see again:

* one **ConfigMap per step request**, named by the step id (``409 AlreadyExists`` = re-adopt, as
  for Jobs), labelled ``quicktune.io/step-request`` and owned like step Jobs (the controller's
  Job: ``settings.OWNER_MODES``) and with its pool (``quicktune.io/worker-pool``: the workers of
  the backend that queued it serve it); ``data["request.json"]`` is the ``StepRequest``, the annotations
  hold its state (``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``), the claim;
* a worker **claims** a request with a compare-and-set: a ``PUT`` carrying the
  ``resourceVersion`` it read; the API server answers ``409 Conflict`` to every writer but the
  first, so two workers never both run one request. The claim is a random token
  (``quicktune.io/claim``) plus the worker's pod name;
* the claim is a **lease**: the worker renews it (another CAS write) every ``lease/4`` seconds; a
  claim whose object did not change for ``lease`` seconds *as the observer's own clock measures
  it* (client-go's leader election does the same: no clock skew between nodes matters) is taken
  over by any worker, counting an attempt. A worker that cannot renew for ``0.6 x lease`` stops its
  step by exiting (it can no longer know it still holds the claim). After ``backoff_limit + 1``
  attempts a request fails (a step that kills its worker every time);
* the **result** is the step's own RESULT.json on S3 (``manifests.result_uri``, as for Jobs); the
  worker then writes ``done`` (or ``failed`` with the reason, when the step raised before writing
  one) with the step's log tail and its claim/finish times into the object;
* a **follow-up** request (the same config, the next epoch) carries the label
  ``quicktune.io/preferred-worker`` = the pod that ran the config's last step: that worker takes it
  first, others only after ``PREFERENCE_GRACE_SECONDS``;
* **cancel** marks the request ``cancelled``; the worker sees its claim gone at its next renewal
  and exits (its Job then completes; the pool is refilled on demand).

The pool: W worker Jobs (``parallelism`` 1 each, restartPolicy Never, a killed pod replaced by
its Job), created by the controller while there is work and fewer than W are unfinished; a worker
idle for ``idle_seconds`` exits 0 and its Job completes (and is TTL-collected). Worker pods run
under their own ServiceAccount (``quicktune-step-worker``: get/list/update ConfigMaps in the
namespace, nothing else) with the same restricted security context as step pods.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quicktune.backends.base import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    BackendError,
    StepRequest,
    StepStatus,
)
from quicktune.backends.kubernetes.api import Conflict, NotFound
from quicktune.backends.kubernetes.manifests import (
    ANNOTATION_CONFIG,
    ANNOTATION_RESULT,
    ANNOTATION_SEARCH,
    LABEL_CONFIG,
    LABEL_EPOCH,
    LABEL_SEARCH,
    STEP_CONTAINER,
    build_job,
    kubelet_literal,
    looks_secret,
    result_uri,
    sanitize_label_value,
)

log = logging.getLogger(__name__)

__all__ = [
    "LABEL_REQUEST",
    "LABEL_PREFERRED",
    "LABEL_POOL",
    "WORKER_SERVICE_ACCOUNT",
    "WORKER_MODULE",
    "PREFERENCE_GRACE_SECONDS",
    "RequestView",
    "build_request_configmap",
    "build_worker_job",
    "request_selector",
    "pool_selector",
]

LABEL_REQUEST = "quicktune.io/step-request"
LABEL_PREFERRED = "quicktune.io/preferred-worker"
LABEL_POOL = "quicktune.io/worker-pool"
A_STATE = "quicktune.io/state"
A_CLAIM = "quicktune.io/claim"
A_WORKER = "quicktune.io/worker"
A_ATTEMPTS = "quicktune.io/attempts"
A_CLAIMED_AT = "quicktune.io/claimed-at"
A_RENEWED_AT = "quicktune.io/renewed-at"
A_FINISHED_AT = "quicktune.io/finished-at"
A_MESSAGE = "quicktune.io/message"
A_MAX_ATTEMPTS = "quicktune.io/max-attempts"
A_DEADLINE = "quicktune.io/active-deadline-seconds"
KEY_REQUEST = "request.json"
KEY_LOG = "log"
QUEUED, CLAIMED, DONE, FAILED_STATE, CANCELLED_STATE = "queued", "running", "done", "failed", "cancelled"
FINISHED_STATES = (DONE, FAILED_STATE)
WORKER_SERVICE_ACCOUNT = "quicktune-step-worker"
WORKER_MODULE = "quicktune.backends.kubernetes.worker"
WORKER_COMPONENT = "step-worker"
PREFERENCE_GRACE_SECONDS = 5.0
LOG_LIMIT_BYTES = 200_000  # of a step's log kept in its request object (a ConfigMap holds at most 1 MiB)


def pool_name(search_id: str | None) -> str:
    """The label value naming a worker pool: the search's, or the namespace-wide one."""
    return sanitize_label_value(search_id) if search_id else "namespace"


def request_selector(search_id: str | None) -> str:
    """The label selector of a search's step requests (every request in the namespace for None)."""
    sel = f"{LABEL_REQUEST}=true"
    return sel + (f",{LABEL_SEARCH}={sanitize_label_value(search_id)}" if search_id else "")


def pool_selector(search_id: str | None) -> str:
    """The label selector of the requests a pool serves: those its backend queued (labelled with
    the pool, whatever search id each request carries)."""
    return f"{LABEL_REQUEST}=true,{LABEL_POOL}={pool_name(search_id)}"


def build_request_configmap(
    request: StepRequest,
    *,
    namespace: str,
    owner: Mapping[str, str] | None,
    preferred_worker: str | None = None,
    pool: str = "namespace",
    max_attempts: int = 4,
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """The ConfigMap that queues ``request`` for the warm workers (module docstring)."""
    if not request.checkpoint_dir.startswith("s3://"):
        raise ValueError(
            f"checkpoint dir {request.checkpoint_dir!r}: the Kubernetes backend needs an s3:// "
            "checkpoint dir (step pods share no filesystem with the controller)"
        )
    for key in request.extra_env:
        if looks_secret(key):
            raise ValueError(
                f"env var {key!r} looks like a credential; pass it through a Kubernetes Secret "
                "(secret_names / secret_env), never as an inline value"
            )
    labels = {
        "app.kubernetes.io/name": "quicktune",
        "app.kubernetes.io/component": "step-request",
        "app.kubernetes.io/managed-by": "quicktune",
        LABEL_REQUEST: "true",
        LABEL_POOL: sanitize_label_value(pool),
        LABEL_SEARCH: sanitize_label_value(request.search_id),
        LABEL_CONFIG: sanitize_label_value(request.config_id),
        LABEL_EPOCH: str(int(request.to_epoch)),
    }
    if preferred_worker:
        labels[LABEL_PREFERRED] = sanitize_label_value(preferred_worker)
    annotations = {
        ANNOTATION_RESULT: result_uri(request),
        ANNOTATION_SEARCH: request.search_id,
        ANNOTATION_CONFIG: request.config_id,
        A_STATE: QUEUED,
        A_ATTEMPTS: "0",
        A_MAX_ATTEMPTS: str(int(max_attempts)),
    }
    if active_deadline_seconds:
        annotations[A_DEADLINE] = str(int(active_deadline_seconds))
    metadata: dict[str, Any] = {
        "name": request.id,
        "namespace": namespace,
        "labels": labels,
        "annotations": annotations,
    }
    if owner and owner.get("name") and owner.get("uid"):
        metadata["ownerReferences"] = [
            {
                "apiVersion": owner.get("apiVersion") or "v1",
                "kind": owner.get("kind") or "Pod",
                "name": owner["name"],
                "uid": owner["uid"],
                "blockOwnerDeletion": False,
                "controller": False,
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {KEY_REQUEST: json.dumps(request.to_dict(), sort_keys=True)},
    }


def build_worker_job(
    name: str,
    *,
    search_id: str | None,
    settings_kwargs: Mapping[str, Any],
    lease_seconds: int,
    idle_seconds: int,
    service_account: str | None = WORKER_SERVICE_ACCOUNT,
) -> dict[str, Any]:
    """A worker Job of the pool: the step Job's pod (same image, resources, Secrets, security
    context, volumes; ``build_job``) running the worker loop instead of one step, under the
    worker ServiceAccount with its token mounted (it reads and updates request ConfigMaps)."""
    probe = StepRequest(
        search_id=search_id or "pool",
        config_id="worker",
        config={},
        data_uri="s3://unused/unused",
        to_epoch=1,
        checkpoint_dir="s3://unused/unused",
    )
    kw = dict(settings_kwargs)
    job = build_job(probe, **kw)
    pool = pool_name(search_id)
    labels = {
        "app.kubernetes.io/name": "quicktune",
        "app.kubernetes.io/component": WORKER_COMPONENT,
        "app.kubernetes.io/managed-by": "quicktune",
        LABEL_POOL: pool,
    }
    if search_id:
        labels[LABEL_SEARCH] = sanitize_label_value(search_id)
    meta = job["metadata"]
    meta["name"] = name
    meta["labels"] = {**labels, **{k: v for k, v in meta["labels"].items() if k.startswith("kueue.")}}
    meta["annotations"] = {ANNOTATION_SEARCH: search_id or ""}
    spec = job["spec"]
    spec.pop("activeDeadlineSeconds", None)  # a worker lives across steps; each request has its own deadline
    spec["backoffLimit"] = max(int(kw.get("backoff_limit", 3)), 6)  # killed pods are replaced; requests retry
    spec["template"]["metadata"]["labels"] = dict(labels)
    pod = spec["template"]["spec"]
    pod["automountServiceAccountToken"] = True  # the worker claims requests through the API
    if service_account:
        pod["serviceAccountName"] = service_account
    (container,) = pod["containers"]
    env = [e for e in container["env"] if e["name"] not in ("QUICKTUNE_STEP_CONFIG",)]
    env += [
        {"name": "QUICKTUNE_WORKER_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "QUICKTUNE_WORKER_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    device = "cuda" if int(kw.get("gpu") or 0) > 0 else "cpu"
    container["command"] = ["python", "-m", WORKER_MODULE]
    container["args"] = [
        f"--selector={pool_selector(search_id)}",
        f"--lease-seconds={int(lease_seconds)}",
        f"--idle-seconds={int(idle_seconds)}",
        f"--device={device}",
    ]
    container["env"] = env
    container["name"] = STEP_CONTAINER
    pod["containers"] = [kubelet_literal(container)]
    return job


@dataclass
class RequestView:
    """What a request ConfigMap says, read once."""

    obj: dict[str, Any]

    @property
    def annotations(self) -> dict[str, str]:
        return (self.obj.get("metadata") or {}).get("annotations") or {}

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def state(self) -> str:
        return self.annotations.get(A_STATE, QUEUED)

    @property
    def attempts(self) -> int:
        try:
            return int(self.annotations.get(A_ATTEMPTS) or 0)
        except ValueError:
            return 0

    @property
    def worker(self) -> str:
        return self.annotations.get(A_WORKER, "")

    @property
    def message(self) -> str:
        return self.annotations.get(A_MESSAGE, "")

    def request(self) -> StepRequest:
        return StepRequest.from_dict(json.loads((self.obj.get("data") or {})[KEY_REQUEST]))

    def wall_seconds(self) -> float | None:
        try:
            return max(0.0, float(self.annotations[A_FINISHED_AT]) - float(self.annotations[A_CLAIMED_AT]))
        except (KeyError, ValueError):
            return None

    def status(self) -> StepStatus:
        """The step status, except ``done`` (its RESULT.json decides)."""
        state = self.state
        if state == QUEUED:
            return StepStatus(PENDING, "queued for a warm worker" + (f" ({self.message})" if self.message else ""))
        if state == CLAIMED:
            return StepStatus(RUNNING, f"running on worker {self.worker}")
        if state == CANCELLED_STATE:
            return StepStatus(CANCELLED, "cancelled")
        if state == FAILED_STATE:
            return StepStatus(FAILED, self.message or "the worker reported a failure")
        return StepStatus(SUCCEEDED, "")


def update_request(api: Any, name: str, change: Any, attempts: int = 20) -> dict[str, Any] | None:
    """Read-modify-write with compare-and-set: ``change(view)`` edits the object in place and
    returns True to write it (False: leave it); retried on ``Conflict``. None if the object is gone
    or ``change`` declined."""
    for _ in range(attempts):
        try:
            obj = api.read_configmap(name)
        except NotFound:
            return None
        if not change(RequestView(obj)):
            return None
        try:
            return api.replace_configmap(obj)  # carries the resourceVersion read above: a CAS
        except Conflict:
            time.sleep(0.05)
        except NotFound:
            return None
    raise BackendError(f"could not update step request {name}: it kept changing ({attempts} conflicts)")


def set_annotations(view: RequestView, **values: str | None) -> None:
    ann = view.obj["metadata"].setdefault("annotations", {})
    for key, value in values.items():
        if value is None:
            ann.pop(key, None)
        else:
            ann[key] = value


def new_worker_name(search_id: str | None) -> str:
    base = sanitize_label_value(f"qt-{search_id}" if search_id else "qt").lower()
    base = "".join(c if c.isalnum() or c == "-" else "-" for c in base).strip("-")[:44].strip("-")
    return f"{base}-worker-{uuid.uuid4().hex[:6]}"


class WorkerPool:
    """The controller's side of the pool: keeps at most ``size`` unfinished worker Jobs while there
    is work. Called from the backend's ``start``/``poll``/``active`` (at most once a second)."""

    def __init__(self, api: Any, search_id: str | None, size: int, job_body: Any) -> None:
        self.api = api
        self.search_id = search_id
        self.size = int(size)
        self._job_body = job_body  # name -> Job manifest
        self._selector = (
            f"app.kubernetes.io/component={WORKER_COMPONENT},app.kubernetes.io/managed-by=quicktune,"
            f"{LABEL_POOL}={pool_name(search_id)}"
        )
        self._last = 0.0
        self._lock = threading.Lock()
        self.created: list[str] = []

    def ensure(self, work: int, force: bool = False) -> None:
        """Create worker Jobs until ``min(size, work)`` are unfinished."""
        from quicktune.backends.kubernetes.status import job_state

        with self._lock:
            if not force and time.monotonic() - self._last < 1.0:
                return
            self._last = time.monotonic()
            if work <= 0:
                return
            jobs = self.api.list_jobs(self._selector)[0]
            unfinished = sum(1 for j in jobs if not job_state(j).done)
            for _ in range(min(self.size, work) - unfinished):
                name = new_worker_name(self.search_id)
                self.api.create_job(self._job_body(name))
                self.created.append(name)
                log.info("started warm worker Job %s", name)
