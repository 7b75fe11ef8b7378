"""Run each finetuning step as a Kubernetes ``batch/v1`` Job.

Why Jobs: a step is a run-to-completion unit that may need a GPU, must survive preemption and
must be visible to the cluster's own tooling (quotas, Kueue, ``kubectl``). One Job per step,
named by the step's deterministic id, gives us idempotency for free: creating a Job whose name
exists answers ``409 AlreadyExists`` and the backend simply re-adopts the running Job. A
restarted controller therefore never duplicates a step.

What a step Job looks like (see ``build_job``):

* labels ``app.kubernetes.io/{name,component,managed-by}``, ``quicktune.io/{search-id,config-id,
  epoch}`` (values sanitized to label syntax), annotations with the full ids and the result URI;
* an ownerReference to the controller pod (downward API ``POD_NAME``/``POD_UID``), so deleting
  the controller (or its Job / KFP run) garbage-collects the steps. ``blockOwnerDeletion`` is off
  so the controller needs no ``pods/finalizers`` permission;
* ``nvidia.com/gpu`` limits, node selector, tolerations, priority class and the Kueue queue label
  (the Job is then created suspended and Kueue admits it);
* credentials only from Secrets (``envFrom.secretRef`` / ``secretKeyRef``); inline env values
  that look like credentials are refused;
* every ``command``/``args`` string and every ``env[].value`` is passed through
  ``escape_kubelet_refs`` (``$`` -> ``$$``): the kubelet expands ``$(VAR)`` in those fields from the
  container's env -- which holds the Secrets -- so a dataset URI or a config value containing
  ``$(AWS_SECRET_ACCESS_KEY)`` would otherwise be replaced by the key itself. Escaped, the container
  receives exactly the original string. No generated field references an env var on purpose (the
  step script reads its env with the shell, ``"$VAR"``, after the kubelet);
* a non-root, read-only-root-filesystem pod with ``emptyDir`` volumes for ``/tmp`` (config,
  caches) and ``/dev/shm`` (DataLoader workers);
* ``activeDeadlineSeconds``, ``backoffLimit``, ``ttlSecondsAfterFinished``, restartPolicy Never and
  a ``podFailurePolicy``: a pod with the ``DisruptionTarget`` condition (preempted, evicted,
  drained) is retried without counting against ``backoffLimit``; exit codes in
  ``FAIL_FAST_EXIT_CODES`` fail the Job at once (retrying cannot help); other exits count.
  The Job is re-tried by Kubernetes; the step resumes from its last checkpoint on S3.

Exit codes of ``quicktune step`` (see docs/architecture.md): 0 whenever a RESULT.json was written
(the status inside says ok / diverged / oom / invalid / failed: retrying cannot change a reported
outcome, and the Job simply completes). 137 without a ``DisruptionTarget`` condition means the
kernel's OOM killer ended the container; the same config would be killed again, so it fails the
Job at once and is reported as status ``oom``. 2 is *not* fail-fast: the step uses it both for
command-line usage errors and for "could not write --out" (e.g. S3 briefly unreachable), and the
latter deserves a retry. Anything else (a crash, S3 down) counts against ``backoffLimit``.

Results: the step writes its RESULT.json to S3 next to the checkpoints
(``<checkpoint_dir>/results/<step_id>.json``) via ``--out s3://...``, so a result survives the pod
and the controller. If that object already exists when a step is started, the step finished
earlier (its Job may have been garbage-collected by its TTL) and is reported as succeeded without
starting a new Job.

Status comes from a watch on this search's Jobs (label selector) with resourceVersion
bookkeeping; a ``410 Gone`` (expired resourceVersion) re-lists and re-watches, as client-go
informers do. Failed steps' logs are read with ``read_namespaced_pod_log`` so the controller can
attach them to the config's MLflow run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from quicktune.backends.base import (CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, BackendError, StepRequest,
                                     StepStatus, TrialBackend)

log = logging.getLogger(__name__)

__all__ = ["KubernetesBackend", "backend_from_env", "ENV_SETTINGS", "build_job", "sanitize_label_value", "FAIL_FAST_EXIT_CODES", "STEP_CONTAINER",
           "looks_secret", "LABEL_SEARCH", "LABEL_CONFIG", "LABEL_EPOCH", "escape_kubelet_refs", "kubelet_literal",
           "RESTRICTED_CONTAINER_SECURITY", "RESTRICTED_POD_SECURITY"]

STEP_CONTAINER = "step"
FAIL_FAST_EXIT_CODES = (137,)
LABEL_SEARCH = "quicktune.io/search-id"
LABEL_CONFIG = "quicktune.io/config-id"
LABEL_EPOCH = "quicktune.io/epoch"
ANNOTATION_RESULT = "quicktune.io/result-uri"
ANNOTATION_SEARCH = "quicktune.io/search-id"
ANNOTATION_CONFIG = "quicktune.io/config-id"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
WORKDIR = "/tmp/quicktune"

# The step reads its configuration from a file; the pod gets it through an env var and a tiny
# POSIX shell wrapper writes it into the emptyDir-backed /tmp (the root filesystem is read-only).
STEP_SCRIPT = ('set -eu; mkdir -p "$QUICKTUNE_WORKDIR"; '
               'printf "%s" "$QUICKTUNE_STEP_CONFIG" > "$QUICKTUNE_WORKDIR/config.json"; '
               'exec quicktune step --config "$QUICKTUNE_WORKDIR/config.json" "$@"')

_SECRET_NAME_RE = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|CREDENTIAL|PRIVATE|API_KEY", re.I)
_LABEL_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# The Pod Security Standards' "restricted" profile, in the form every generated pod uses (step Jobs
# here, controller Jobs in quicktune.watch.launchers): non-root uid 1000, no privilege escalation, no
# capabilities, the runtime's default seccomp profile, and a read-only root filesystem (not required
# by the profile; /tmp is an emptyDir).
RESTRICTED_POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
}


def escape_kubelet_refs(value: str) -> str:
    """``value`` with every ``$`` doubled, so the kubelet delivers it unchanged.

    Why: the kubelet expands ``$(NAME)`` in a container's ``command``, ``args`` and ``env[].value``
    from the container's environment, Secrets included (``$$`` is its escape for a literal ``$``).
    Any string that did not come from the manifest's author -- a dataset URI, a model or experiment
    name typed in the MLflow UI, a search-space value -- must go through here, or a name like
    ``clf-$(AWS_SECRET_ACCESS_KEY)`` is delivered as the secret itself. After escaping, every ``$`` is
    followed by another one, so no reference survives and the expansion yields ``value`` exactly.
    """
    return str(value).replace("$", "$$")


def kubelet_literal(container: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a container spec whose ``command``, ``args`` and ``env[].value`` strings are all
    escaped with :func:`escape_kubelet_refs` (``valueFrom`` entries are never expanded by the
    kubelet and stay as they are). The one place every generated pod spec goes through."""
    out = copy.deepcopy(dict(container))
    for key in ("command", "args"):
        if key in out:
            out[key] = [escape_kubelet_refs(a) for a in out[key]]
    if "env" in out:
        out["env"] = [{**e, "value": escape_kubelet_refs(e["value"])} if "value" in e else e for e in out["env"]]
    return out


def looks_secret(env_name: str) -> bool:
    """Whether an env var name looks like it carries a credential (those must come from Secrets)."""
    return bool(_SECRET_NAME_RE.search(env_name))


def sanitize_label_value(value: str) -> str:
    """A valid label value (<= 63 chars, alphanumeric at both ends) that stays unique.

    Values that had to be changed or shortened keep a short hash of the original, so two
    different long search ids never collide on the same label value.
    """
    value = str(value)
    if len(value) <= 63 and _LABEL_RE.match(value):
        return value
    digest = hashlib.sha1(value.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:54]
    cleaned = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
    return f"{cleaned}-{digest}" if cleaned else digest


def _result_uri(request: StepRequest) -> str:
    from quicktune.storage import join

    return join(request.checkpoint_dir, "results", f"{request.id}.json")


def build_job(request: StepRequest, *, namespace: str, image: str, gpu: int = 0, cpu: str | None = "1",
              memory: str | None = "4Gi", node_selector: Mapping[str, str] | None = None,
              tolerations: Sequence[Mapping[str, Any]] | None = None, priority_class: str | None = None,
              kueue_queue: str | None = None, secret_names: Sequence[str] = (),
              secret_env: Mapping[str, tuple[str, str]] | None = None, env: Mapping[str, str] | None = None,
              service_account: str | None = None, owner_pod: Mapping[str, str] | None = None,
              active_deadline_seconds: int = 4 * 3600, backoff_limit: int = 3,
              ttl_seconds_after_finished: int | None = 24 * 3600, image_pull_policy: str = "IfNotPresent",
              shm_size: str = "1Gi") -> dict[str, Any]:
    """The Job manifest (a plain dict, as sent to the API server) for one step."""
    if not request.checkpoint_dir.startswith("s3://"):
        raise ValueError(f"checkpoint dir {request.checkpoint_dir!r}: the Kubernetes backend needs an s3:// "
                         "checkpoint dir (step pods share no filesystem with the controller)")
    plain_env: dict[str, str] = {}
    for source in (env or {}), request.extra_env:
        for key, value in source.items():
            if looks_secret(key):
                raise ValueError(f"env var {key!r} looks like a credential; pass it through a Kubernetes Secret "
                                 "(secret_names / secret_env), never as an inline value")
            plain_env[key] = str(value)
    name = request.id
    labels = {
        "app.kubernetes.io/name": "quicktune",
        "app.kubernetes.io/component": "step",
        "app.kubernetes.io/managed-by": "quicktune",
        LABEL_SEARCH: sanitize_label_value(request.search_id),
        LABEL_CONFIG: sanitize_label_value(request.config_id),
        LABEL_EPOCH: str(int(request.to_epoch)),
    }
    job_labels = dict(labels)
    if kueue_queue:
        job_labels[KUEUE_QUEUE_LABEL] = sanitize_label_value(kueue_queue)
    device = "cuda" if gpu > 0 else request.device
    # free-form values as --flag=value: a value starting with "-" is never parsed as an option
    args = [f"--data={request.data_uri}", "--to-epoch", str(int(request.to_epoch)),
            f"--checkpoint-dir={request.checkpoint_dir}", f"--out={_result_uri(request)}",
            "--device", device, "--seed", str(int(request.seed))]
    if request.image_size:
        args += ["--image-size", str(int(request.image_size))]
    env_list: list[dict[str, Any]] = [
        {"name": "QUICKTUNE_STEP_CONFIG", "value": json.dumps(dict(request.config), sort_keys=True)},
        {"name": "QUICKTUNE_WORKDIR", "value": WORKDIR},
        {"name": "HOME", "value": "/tmp/home"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
        {"name": "TORCH_HOME", "value": "/tmp/cache/torch"},
        {"name": "HF_HOME", "value": "/tmp/cache/huggingface"},
        {"name": "MPLCONFIGDIR", "value": "/tmp/cache/matplotlib"},
        {"name": "QUICKTUNE_CACHE", "value": "/tmp/cache/quicktune"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    fixed = {e["name"] for e in env_list}
    env_list += [{"name": k, "value": v} for k, v in sorted(plain_env.items()) if k not in fixed]
    for env_name, (secret, key) in sorted((secret_env or {}).items()):
        env_list.append({"name": env_name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    resources: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    if cpu:
        resources["requests"]["cpu"] = cpu
    if memory:
        resources["requests"]["memory"] = memory
        resources["limits"]["memory"] = memory
    if gpu > 0:
        resources["limits"]["nvidia.com/gpu"] = str(int(gpu))
    resources = {k: v for k, v in resources.items() if v}
    container: dict[str, Any] = {
        "name": STEP_CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["/bin/sh", "-c", STEP_SCRIPT, "quicktune-step"],
        "args": args,
        "env": env_list,
        "resources": resources,
        "securityContext": copy.deepcopy(RESTRICTED_CONTAINER_SECURITY),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if secret_names:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in secret_names]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # a step never calls the API server
        "securityContext": copy.deepcopy(RESTRICTED_POD_SECURITY),
        "containers": [kubelet_literal(container)],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
        ],
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tolerations]
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": job_labels,
        "annotations": {
            ANNOTATION_RESULT: _result_uri(request),
            ANNOTATION_SEARCH: request.search_id,
            ANNOTATION_CONFIG: request.config_id,
        },
    }
    if owner_pod and owner_pod.get("name") and owner_pod.get("uid"):
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": owner_pod["name"],
                                        "uid": owner_pod["uid"], "blockOwnerDeletion": False,
                                        "controller": False}]
    spec: dict[str, Any] = {
        "backoffLimit": int(backoff_limit),
        "activeDeadlineSeconds": int(active_deadline_seconds),
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": STEP_CONTAINER, "operator": "In",
                                                  "values": list(FAIL_FAST_EXIT_CODES)}},
        ]},
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = int(ttl_seconds_after_finished)
    if kueue_queue:
        spec["suspend"] = True
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def _condition(job: Mapping[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return cond
    return None


def job_state(job: Mapping[str, Any]) -> StepStatus:
    """Map a Job object to a step status (Kubernetes' own conditions are authoritative)."""
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return StepStatus(CANCELLED, "the Job is being deleted")
    if cond := _condition(job, "Complete"):
        return StepStatus(SUCCEEDED, cond.get("message") or "")
    cond = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if cond:
        return StepStatus(FAILED, f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip(": "))
    status = job.get("status") or {}
    if (job.get("spec") or {}).get("suspend"):
        return StepStatus(PENDING, "suspended (waiting for admission, e.g. by Kueue)")
    if status.get("active") or status.get("ready"):
        return StepStatus(RUNNING)
    return StepStatus(PENDING)


class KubernetesBackend(TrialBackend):
    """A ``TrialBackend`` that runs each step as a ``batch/v1`` Job (see the module docstring).

    ``search_id`` scopes ``active()`` and the watch to one search's Jobs (label
    ``quicktune.io/search-id``); ``None`` sees every quicktune step Job in the namespace.
    ``max_concurrent``: at most this many of *this backend's* step Jobs exist unfinished at once;
    further steps wait in an in-memory queue (PENDING) and are created as Jobs finish (on the next
    ``start``/``poll``/``active`` call). ``api_client`` defaults to the in-cluster configuration,
    then ``~/.kube/config``. ``owner_pod`` is ``{"name": ..., "uid": ...}``; by default it is read
    from the downward API env vars ``POD_NAME`` / ``POD_UID`` (absent: no ownerReference).
    ``secret_names`` are Secrets whose keys become env vars of every step (``envFrom``);
    ``secret_env`` maps single env vars to ``(secret, key)``. ``env`` holds non-secret settings
    such as ``AWS_ENDPOINT_URL``.
    """

    def __init__(self, namespace: str, image: str, search_id: str | None = None, max_concurrent: int = 4,
                 gpu: int = 0, node_selector: Mapping[str, str] | None = None,
                 tolerations: Sequence[Mapping[str, Any]] | None = None, priority_class: str | None = None,
                 kueue_queue: str | None = None, secret_names: Sequence[str] = (),
                 secret_env: Mapping[str, tuple[str, str]] | None = None, env: Mapping[str, str] | None = None,
                 service_account: str | None = None, owner_pod: Mapping[str, str] | None = None,
                 active_deadline_seconds: int = 4 * 3600, backoff_limit: int = 3,
                 ttl_seconds_after_finished: int | None = 24 * 3600, cpu: str | None = "1",
                 memory: str | None = "4Gi", api_client: Any = None, watch_timeout_seconds: int = 60,
                 log_tail_lines: int = 400, read_result: Callable[[str], bytes] | None = None,
                 result_exists: Callable[[str], bool] | None = None) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if gpu < 0:
            raise ValueError(f"gpu must be >= 0, got {gpu}")
        for key in env or {}:
            if looks_secret(key):
                raise ValueError(f"env var {key!r} looks like a credential; pass it through a Kubernetes Secret "
                                 "(secret_names / secret_env), never as an inline value")
        from kubernetes import client

        self.namespace = namespace
        self.image = image
        self.search_id = search_id
        self.max_concurrent = int(max_concurrent)
        self.owner_pod = dict(owner_pod) if owner_pod else owner_from_env()
        self._job_kwargs = dict(
            namespace=namespace, image=image, gpu=int(gpu), cpu=cpu, memory=memory, node_selector=node_selector,
            tolerations=tolerations, priority_class=priority_class, kueue_queue=kueue_queue,
            secret_names=tuple(secret_names), secret_env=secret_env, env=env, service_account=service_account,
            owner_pod=self.owner_pod, active_deadline_seconds=active_deadline_seconds,
            backoff_limit=backoff_limit, ttl_seconds_after_finished=ttl_seconds_after_finished)
        self._api_client = api_client or _default_api_client()
        self._batch = client.BatchV1Api(self._api_client)
        self._core = client.CoreV1Api(self._api_client)
        selector = "app.kubernetes.io/managed-by=quicktune,app.kubernetes.io/component=step"
        if search_id is not None:
            selector += f",{LABEL_SEARCH}={sanitize_label_value(search_id)}"
        self._selector = selector
        self._watch_timeout = int(watch_timeout_seconds)
        self._log_tail_lines = int(log_tail_lines)
        self._read_result = read_result or _storage_read
        self._result_exists = result_exists or _storage_exists
        self._lock = threading.RLock()
        self._cache: dict[str, dict[str, Any]] = {}  # Job name -> last seen object (from list/watch/GET)
        self._result_uris: dict[str, str] = {}
        self._queue: dict[str, dict[str, Any]] = {}  # step id -> Job body waiting for capacity (FIFO)
        self._mine: set[str] = set()  # steps started or adopted through this instance
        self._cancelled: set[str] = set()
        self._in_store: set[str] = set()  # finished before: RESULT.json exists, no Job needed
        self._results: dict[str, dict[str, Any]] = {}
        self._final: dict[str, StepStatus] = {}  # last terminal state seen, outlives the Job object
        self._vanished: set[str] = set()
        self._read_errors: dict[str, float] = {}  # step id -> first failed attempt to read its result
        self.result_read_grace_seconds = 120.0
        self._resource_version: str | None = None
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.relists = 0  # how often the watch (re-)listed: 1 + one per 410 Gone or error
        self.created: list[str] = []  # Jobs this instance created (201), for tests and metrics

    # ------------------------------------------------------------------------------ construction
    OPTION_ENV = {  # ``--backend-option KEY=VALUE`` -> the env setting it overrides
        "namespace": "QUICKTUNE_K8S_NAMESPACE", "image": "QUICKTUNE_STEP_IMAGE", "gpu": "QUICKTUNE_STEP_GPU",
        "cpu": "QUICKTUNE_STEP_CPU", "memory": "QUICKTUNE_STEP_MEMORY",
        "node_selector": "QUICKTUNE_STEP_NODE_SELECTOR", "tolerations": "QUICKTUNE_STEP_TOLERATIONS",
        "priority_class": "QUICKTUNE_STEP_PRIORITY_CLASS", "kueue_queue": "QUICKTUNE_KUEUE_QUEUE",
        "secrets": "QUICKTUNE_STEP_SECRETS", "service_account": "QUICKTUNE_STEP_SERVICE_ACCOUNT",
        "env": "QUICKTUNE_STEP_ENV", "active_deadline_seconds": "QUICKTUNE_STEP_ACTIVE_DEADLINE_SECONDS",
        "backoff_limit": "QUICKTUNE_STEP_BACKOFF_LIMIT", "ttl_seconds": "QUICKTUNE_STEP_TTL_SECONDS",
    }

    @classmethod
    def from_options(cls, *, workers: int, workdir: str | None = None, search_id: str | None = None,
                     step_timeout: float | None = None, threads_per_worker: int = 1,
                     api_client: Any = None, **options: Any) -> "KubernetesBackend":
        """What ``quicktune search --backend kubernetes [--backend-option KEY=VALUE ...]`` builds:
        ``QUICKTUNE_*`` env settings (``backend_from_env``), overridden by the options
        (keys of ``OPTION_ENV``); ``--step-timeout`` becomes the Jobs' activeDeadlineSeconds."""
        unknown = sorted(set(options) - set(cls.OPTION_ENV))
        if unknown:
            raise ValueError(f"unknown Kubernetes backend option(s) {unknown}; known: {sorted(cls.OPTION_ENV)}")
        environ = dict(os.environ)
        environ.update({cls.OPTION_ENV[k]: str(v) for k, v in options.items()})
        if step_timeout:
            environ["QUICKTUNE_STEP_ACTIVE_DEADLINE_SECONDS"] = str(int(step_timeout))
        extra = {"api_client": api_client} if api_client is not None else {}
        return backend_from_env(search_id or None, workers, environ=environ, **extra)

    # ---------------------------------------------------------------------------------------- API
    def capacity(self) -> int:
        return self.max_concurrent

    def start(self, request: StepRequest) -> str:
        return self._start(request, rerun=False)

    def rerun(self, request: StepRequest) -> str:
        """Run a finished (or never started) step again: its old Job and RESULT.json are deleted
        first; a step still pending or running is re-adopted, not duplicated."""
        return self._start(request, rerun=True)

    def _start(self, request: StepRequest, rerun: bool) -> str:
        self._ensure_watch()
        name = request.id
        uri = _result_uri(request)
        body = build_job(request, **self._job_kwargs)  # validates the request before anything happens
        with self._lock:
            self._result_uris[name] = uri
            if name in self._queue:
                return name
        if rerun:
            existing = self._get_job_or_none(name)
            if existing is not None and not existing["metadata"].get("deletionTimestamp") \
                    and not job_state(existing).done:
                self._remember(existing)
                with self._lock:
                    self._mine.add(name)
                    self._cancelled.discard(name)
                return name
            if existing is not None:
                from kubernetes import client

                self._call(lambda: self._batch.delete_namespaced_job(
                    name, self.namespace, body=client.V1DeleteOptions(propagation_policy="Foreground"),
                    _preload_content=False), f"delete Job {name}", missing_ok=True)
                self._wait_gone(name)
            self._safe_delete(uri)
            with self._lock:
                self._cancelled.add(name)  # forces the "run again" path below
        with self._lock:
            known = self._cache.get(name)
            if name not in self._cancelled and (name in self._in_store or (
                    known is not None and not known["metadata"].get("deletionTimestamp"))):
                self._mine.add(name)
                return name
        existing = self._get_job_or_none(name)
        if existing is not None and existing["metadata"].get("deletionTimestamp"):
            self._wait_gone(name)  # a cancelled Job is still being deleted: let it go, then run again
            existing = None
        if existing is not None:
            self._remember(existing)
            with self._lock:
                self._mine.add(name)
                self._cancelled.discard(name)
            log.info("re-adopted existing Job %s", name)
            return name
        with self._lock:
            was_cancelled = name in self._cancelled
        if not was_cancelled and self._safe_exists(uri):
            log.info("step %s already has a result at %s; not starting a Job", name, uri)
            with self._lock:
                self._in_store.add(name)
                self._mine.add(name)
            return name
        with self._lock:
            for store in (self._cancelled, self._vanished, self._in_store):
                store.discard(name)
            self._final.pop(name, None)
            self._results.pop(name, None)
            self._cache.pop(name, None)
            self._mine.add(name)
            self._queue[name] = body
        self._pump()
        return name

    def poll(self, step_id: str) -> StepStatus:
        self._ensure_watch()
        self._pump()
        with self._lock:
            if step_id in self._cancelled:
                return StepStatus(CANCELLED, "cancelled")
            if step_id in self._queue:
                return StepStatus(PENDING, f"queued: {self.max_concurrent} step Jobs already running")
            if step_id in self._in_store:
                return self._state_from_result(step_id)
            job = self._cache.get(step_id)
            final = self._final.get(step_id)
            vanished = step_id in self._vanished
        if final is not None:
            return final
        if job is None:
            job = self._get_job_or_none(step_id)
            if job is None:
                if vanished:
                    return self._set_final(step_id, StepStatus(FAILED, f"Job {step_id} was deleted before it finished"))
                raise KeyError(step_id)
            self._remember(job)
        state = job_state(job)
        if state.state == SUCCEEDED:
            return self._state_from_result(step_id)
        if state.done:
            return self._set_final(step_id, state)
        return state

    def result(self, step_id: str) -> dict[str, Any]:
        status = self.poll(step_id)
        if not status.done:
            raise BackendError(f"step {step_id} is {status.state}; its result is not available yet")
        if status.state == CANCELLED:
            return {"status": "failed", "message": f"step {step_id} was cancelled", "epochs": []}
        with self._lock:
            res = self._results.get(step_id)
        if res is not None:
            return copy.deepcopy(res)
        # the Job failed without a RESULT.json: its own reason plus what the last pod said
        pod_info = self._last_pod_termination(step_id)
        outcome = "oom" if pod_info.get("reason") == "OOMKilled" else "failed"
        message = f"Job {step_id} failed ({status.message or 'no reason given'})"
        if pod_info:
            message += (f"; last pod {pod_info.get('pod')}: exit code {pod_info.get('exitCode')}"
                        f" ({pod_info.get('reason') or 'no reason'})")
        out: dict[str, Any] = {"status": outcome, "message": message, "epochs": []}
        if status.message.startswith("DeadlineExceeded"):
            out["timeout"] = True  # activeDeadlineSeconds: re-running would time out again
        return out

    def logs(self, step_id: str) -> str:
        pods = self._pods_of(step_id)
        parts = []
        for i, pod in enumerate(pods, 1):
            meta, status = pod.get("metadata") or {}, pod.get("status") or {}
            term = _termination(pod)
            header = f"===== pod {meta.get('name')} (attempt {i}/{len(pods)}, phase {status.get('phase')}"
            if term:
                header += f", exit code {term.get('exitCode')}, {term.get('reason')}"
            if _pod_condition(pod, "DisruptionTarget"):
                header += ", disrupted: retried without counting"
            parts.append(header + ") =====")
            try:
                text = self._call(lambda: self._core.read_namespaced_pod_log(
                    meta["name"], self.namespace, container=STEP_CONTAINER, tail_lines=self._log_tail_lines,
                    _preload_content=False), f"read logs of pod {meta.get('name')}", raw=True)
                parts.append(text.decode("utf-8", errors="replace") if text else "")
            except BackendError as exc:
                parts.append(f"(logs unavailable: {exc})")
        return "\n".join(parts)

    def cancel(self, step_id: str) -> None:
        from kubernetes import client

        with self._lock:
            self._cancelled.add(step_id)
            self._in_store.discard(step_id)
            if self._queue.pop(step_id, None) is not None:
                return
        # Foreground: the Job stays visible with a deletionTimestamp until its pods are gone, so every
        # watcher (another controller instance included) sees it as cancelled, not as vanished.
        body = client.V1DeleteOptions(propagation_policy="Foreground")
        self._call(lambda: self._batch.delete_namespaced_job(step_id, self.namespace, body=body,
                                                             _preload_content=False),
                   f"delete Job {step_id}", missing_ok=True)

    def active(self) -> list[str]:
        self._ensure_watch()
        self._pump()
        if self._synced.wait(timeout=10):
            with self._lock:
                jobs = list(self._cache.values())
        else:
            jobs = self._list_jobs()[0]
        with self._lock:
            out = set(self._queue)
            for job in jobs:
                name = job["metadata"]["name"]
                if name not in self._cancelled and not job_state(job).done:
                    out.add(name)
        return sorted(out)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ----------------------------------------------------------------------------------- helpers
    def _running_mine(self) -> int:
        with self._lock:
            return sum(1 for name in self._mine
                       if name in self._cache and name not in self._cancelled
                       and not job_state(self._cache[name]).done)

    def _pump(self) -> None:
        """Create queued Jobs while fewer than ``max_concurrent`` of ours are unfinished."""
        while True:
            with self._lock:
                if not self._queue or self._running_mine() >= self.max_concurrent:
                    return
                name, body = next(iter(self._queue.items()))
            created = self._call(lambda: self._batch.create_namespaced_job(self.namespace, body,
                                                                            _preload_content=False),
                                 f"create Job {name}", conflict_ok=True)
            if created is None:  # 409: an earlier controller created it in between: adopt it
                created = self._get_job_or_none(name)
                log.info("re-adopted existing Job %s (409 AlreadyExists)", name)
            else:
                with self._lock:
                    self.created.append(name)
            with self._lock:
                self._queue.pop(name, None)
            if created is not None:
                self._remember(created)

    def _wait_gone(self, name: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self._get_job_or_none(name) is not None:
            if time.monotonic() > deadline:
                raise BackendError(f"Job {name} is still being deleted after {timeout:.0f} s; cannot start it again")
            time.sleep(0.2)
        with self._lock:
            self._cache.pop(name, None)

    def _set_final(self, step_id: str, state: StepStatus) -> StepStatus:
        with self._lock:
            self._final[step_id] = state
        return state

    def _state_from_result(self, step_id: str) -> StepStatus:
        """A Job that completed (exit 0) wrote a RESULT.json; its status decides ok or failed."""
        with self._lock:
            res = self._results.get(step_id)
        if res is None:
            uri = self._result_uri_of(step_id)
            try:
                if uri is None:
                    raise ValueError("the Job has no result-uri annotation")
                res = json.loads(self._read_result(uri))
                if not isinstance(res, dict) or "status" not in res:
                    raise ValueError("not a RESULT.json object")
                res.setdefault("epochs", [])
                res.setdefault("message", "")
            except Exception as exc:  # noqa: BLE001 - said clearly, below
                why = f"{type(exc).__name__}: {exc}"
                transient = not isinstance(exc, (ValueError, FileNotFoundError))
                with self._lock:
                    first = self._read_errors.setdefault(step_id, time.monotonic())
                if transient and time.monotonic() - first < self.result_read_grace_seconds:
                    # S3 briefly unreachable: the result is there, keep the step "running" a little
                    return StepStatus(RUNNING, f"finished; reading its RESULT.json failed ({why}); retrying")
                res = {"status": "failed", "epochs": [],
                       "message": f"step {step_id} finished but its RESULT.json at {uri} could not be read: {why}"}
            with self._lock:
                self._results[step_id] = res
                self._read_errors.pop(step_id, None)
        status = str(res.get("status", "failed"))
        if status == "ok":
            return self._set_final(step_id, StepStatus(SUCCEEDED, str(res.get("message", ""))))
        return self._set_final(step_id, StepStatus(FAILED, f"{status}: {res.get('message', '')}".strip()))

    def _result_uri_of(self, step_id: str) -> str | None:
        with self._lock:
            uri = self._result_uris.get(step_id)
            job = self._cache.get(step_id)
        if uri:
            return uri
        if job is None:
            job = self._get_job_or_none(step_id)
            if job is None:
                return None
        return ((job.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_RESULT)

    def _safe_delete(self, uri: str) -> None:
        try:
            from quicktune.storage import delete

            delete(uri)
        except Exception as exc:  # noqa: BLE001 - a stale result is overwritten by the new run anyway
            log.warning("could not delete the old result %s before a re-run: %s", uri, exc)

    def _safe_exists(self, uri: str) -> bool:
        try:
            return bool(self._result_exists(uri))
        except Exception as exc:  # noqa: BLE001 - an unreachable store must not block starting
            log.warning("could not check for an earlier result at %s (%s); starting the Job", uri, exc)
            return False

    def _remember(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        with self._lock:
            old = self._cache.get(name)
            if old is None or _rv(job) >= _rv(old):
                self._cache[name] = job
            ann = (job["metadata"].get("annotations") or {}).get(ANNOTATION_RESULT)
            if ann:
                self._result_uris.setdefault(name, ann)
            if self._cache[name]["metadata"].get("deletionTimestamp"):
                self._final.setdefault(name, StepStatus(CANCELLED, "the Job was deleted (cancelled)"))

    def _forget(self, name: str, deleted: Mapping[str, Any] | None = None) -> None:
        """A Job disappeared (deleted by a cancel, its TTL, garbage collection or a person).

        ``deleted``: the object from the DELETED event; a late event for an older Job of the
        same name (before a re-run) must not drop the new one."""
        job = self._cache.get(name)
        if job is None:
            return
        if deleted is not None and deleted["metadata"].get("uid") != job["metadata"].get("uid"):
            return
        self._cache.pop(name, None)
        if name in self._cancelled:
            return
        state = job_state(job)
        if job["metadata"].get("deletionTimestamp"):
            self._final.setdefault(name, StepStatus(CANCELLED, "the Job was deleted (cancelled)"))
        elif state.state == SUCCEEDED:
            self._in_store.add(name)  # deleted after finishing (TTL): its RESULT.json is in S3
        elif state.done:
            self._final.setdefault(name, state)
        else:
            self._vanished.add(name)

    def _pods_of(self, step_id: str) -> list[dict[str, Any]]:
        data = self._call(lambda: self._core.list_namespaced_pod(
            self.namespace, label_selector=f"batch.kubernetes.io/job-name={step_id}", _preload_content=False),
            f"list pods of Job {step_id}")
        pods = (data or {}).get("items") or []

        def order(p: Mapping[str, Any]) -> tuple[str, int, str, str]:
            term = _termination(p)
            return (p["metadata"].get("creationTimestamp") or "", 0 if term else 1,
                    str(term.get("finishedAt", "")), p["metadata"]["name"])

        return sorted(pods, key=order)

    def _last_pod_termination(self, step_id: str) -> dict[str, Any]:
        try:
            pods = self._pods_of(step_id)
        except BackendError:
            return {}
        for pod in reversed(pods):
            term = _termination(pod)
            if term:
                return {"pod": pod["metadata"]["name"], **term}
        return {}

    def _get_job_or_none(self, name: str) -> dict[str, Any] | None:
        return self._call(lambda: self._batch.read_namespaced_job(name, self.namespace, _preload_content=False),
                          f"read Job {name}", missing_ok=True)

    def _list_jobs(self) -> tuple[list[dict[str, Any]], str | None]:
        data = self._call(lambda: self._batch.list_namespaced_job(self.namespace, label_selector=self._selector,
                                                                  _preload_content=False),
                          "list step Jobs")
        return data.get("items") or [], (data.get("metadata") or {}).get("resourceVersion")

    def _call(self, fn: Callable[[], Any], what: str, *, missing_ok: bool = False, conflict_ok: bool = False,
              raw: bool = False, attempts: int = 4) -> Any:
        """One API call with retries on transient errors; 404/409 become None when allowed."""
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        delay = 0.5
        for attempt in range(1, attempts + 1):
            try:
                resp = fn()
                if resp is None or not hasattr(resp, "data"):
                    return resp
                body = resp.data
                return body if raw else (json.loads(body) if body else {})
            except ApiException as exc:
                if exc.status == 404 and missing_ok:
                    return None
                if exc.status == 409 and conflict_ok:
                    return None
                transient = exc.status in (0, 429, 500, 502, 503, 504)
                if not transient or attempt == attempts:
                    raise BackendError(f"Kubernetes API: cannot {what} in namespace {self.namespace}: "
                                       f"{exc.status} {exc.reason}: {_status_message(exc)}") from None
            except (HTTPError, OSError) as exc:
                if attempt == attempts:
                    raise BackendError(f"Kubernetes API unreachable: cannot {what}: {exc}") from None
            time.sleep(delay)
            delay = min(delay * 2, 5)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------ watch thread
    def _ensure_watch(self) -> None:
        with self._lock:
            if self._stop.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._watch_loop, daemon=True,
                                            name=f"qt-k8s-watch-{self.search_id or self.namespace}")
            self._thread.start()

    def _relist(self) -> None:
        items, rv = self._list_jobs()
        names = {j["metadata"]["name"] for j in items}
        with self._lock:
            for gone in set(self._cache) - names:
                self._forget(gone)
            for job in items:
                self._remember(job)
            self._resource_version = rv
        self._synced.set()

    def _watch_loop(self) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        need_list = True
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if need_list:
                    self.relists += 1
                    self._relist()
                    need_list = False
                w = watch.Watch()
                # timeout_seconds also disables the client's own 410 retry, which would re-use the
                # expired resourceVersion; we re-list instead.
                stream = w.stream(self._batch.list_namespaced_job, self.namespace, label_selector=self._selector,
                                  resource_version=self._resource_version, timeout_seconds=self._watch_timeout,
                                  allow_watch_bookmarks=True, _request_timeout=self._watch_timeout + 10)
                for event in stream:
                    if self._stop.is_set():
                        w.stop()
                        break
                    obj = event.get("raw_object") or {}
                    etype = event.get("type")
                    if etype in ("ADDED", "MODIFIED"):
                        self._remember(obj)
                    elif etype == "DELETED":
                        with self._lock:
                            self._forget(obj["metadata"]["name"], obj)
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        with self._lock:
                            self._resource_version = rv
                backoff = 0.5
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch of step Jobs expired (410 Gone); re-listing")
                else:
                    log.warning("watch of step Jobs failed (%s %s); re-listing", exc.status, exc.reason)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10)
                need_list = True
            except Exception as exc:  # noqa: BLE001 - keep the informer alive; callers fall back to GETs
                if self._stop.is_set():
                    break
                log.warning("watch of step Jobs interrupted (%s); re-listing", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10)
                need_list = True


# ------------------------------------------------------------------------------------ utilities
def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _pod_condition(pod: Mapping[str, Any], ctype: str) -> bool:
    return any(c.get("type") == ctype and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _termination(pod: Mapping[str, Any]) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == STEP_CONTAINER:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                return {"exitCode": term.get("exitCode"), "reason": term.get("reason")}
    return {}


def _status_message(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message", "")
    except Exception:  # noqa: BLE001
        return str(exc.body or "")[:300]


def _default_api_client() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except Exception as exc:  # noqa: BLE001
            raise BackendError("no Kubernetes configuration: not running in a cluster and no usable kubeconfig "
                               f"({exc}); pass api_client= or set KUBECONFIG") from None
    return client.ApiClient()


def _storage_read(uri: str) -> bytes:
    from quicktune.storage import read_bytes

    return read_bytes(uri)


def _storage_exists(uri: str) -> bool:
    from quicktune.storage import exists

    return exists(uri)


def owner_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The controller pod's identity from the downward API (``POD_NAME``, ``POD_UID``), if set."""
    environ = os.environ if environ is None else environ
    if environ.get("POD_NAME") and environ.get("POD_UID"):
        return {"name": environ["POD_NAME"], "uid": environ["POD_UID"]}
    return None


def iter_labels(job: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """(key, value) pairs of a Job's labels; handy for tests and the CLI."""
    return ((job.get("metadata") or {}).get("labels") or {}).items()


# ----------------------------------------------------------------------------- configuration
ENV_SETTINGS = {
    "QUICKTUNE_K8S_NAMESPACE": "namespace of the step Jobs (default: POD_NAMESPACE, then the in-cluster namespace)",
    "QUICKTUNE_STEP_IMAGE": "container image of the steps (default: the controller pod's own image)",
    "QUICKTUNE_STEP_GPU": "nvidia.com/gpu per step (default 0)",
    "QUICKTUNE_STEP_CPU": "CPU request per step (default 1)",
    "QUICKTUNE_STEP_MEMORY": "memory request and limit per step (default 4Gi)",
    "QUICKTUNE_STEP_NODE_SELECTOR": 'JSON object, e.g. {"nvidia.com/gpu.present": "true"}',
    "QUICKTUNE_STEP_TOLERATIONS": "JSON list of tolerations",
    "QUICKTUNE_STEP_PRIORITY_CLASS": "priorityClassName of the step pods",
    "QUICKTUNE_KUEUE_QUEUE": "Kueue LocalQueue name (Jobs are created suspended for Kueue to admit)",
    "QUICKTUNE_STEP_SECRETS": "comma-separated Secret names whose keys become the steps' env (envFrom)",
    "QUICKTUNE_STEP_SERVICE_ACCOUNT": "service account of the step pods (e.g. for workload identity)",
    "QUICKTUNE_STEP_ENV": "JSON object of extra non-secret env for the steps (e.g. AWS_ENDPOINT_URL)",
    "QUICKTUNE_STEP_ACTIVE_DEADLINE_SECONDS": "activeDeadlineSeconds per step Job (default 14400)",
    "QUICKTUNE_STEP_BACKOFF_LIMIT": "backoffLimit per step Job (default 3)",
    "QUICKTUNE_STEP_TTL_SECONDS": "ttlSecondsAfterFinished per step Job (default 86400)",
}
# Non-secret S3 settings the controller passes on to the steps when QUICKTUNE_STEP_ENV does not.
_PASS_THROUGH = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION",
                 "AWS_REGION")


def _in_cluster_namespace() -> str | None:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def backend_from_env(search_id: str | None, max_concurrent: int, environ: Mapping[str, str] | None = None,
                     **overrides: Any) -> KubernetesBackend:
    """A ``KubernetesBackend`` configured from ``QUICKTUNE_*`` env vars (see ``ENV_SETTINGS``).

    This is how ``quicktune search --backend kubernetes`` gets its settings inside a cluster: the
    controller pod loads them from the ``quicktune-config`` ConfigMap (k8s/base), and the GPU
    overlay only changes that ConfigMap. Bad values raise ValueError naming the variable.
    """
    env = os.environ if environ is None else environ

    def get_json(name: str, kind: type) -> Any:
        raw = env.get(name)
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}: not valid JSON ({exc})") from None
        if not isinstance(value, kind):
            raise ValueError(f"{name}: expected a JSON {kind.__name__}, got {type(value).__name__}")
        return value

    def get_int(name: str, default: int) -> int:
        raw = env.get(name)
        if raw in (None, ""):
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name}: expected an integer, got {raw!r}") from None

    namespace = env.get("QUICKTUNE_K8S_NAMESPACE") or env.get("POD_NAMESPACE") or _in_cluster_namespace()
    if not namespace:
        raise ValueError("no namespace: set QUICKTUNE_K8S_NAMESPACE (or run in a pod with POD_NAMESPACE)")
    api_client = overrides.pop("api_client", None) or _default_api_client()
    image = env.get("QUICKTUNE_STEP_IMAGE") or _own_image(api_client, namespace, env.get("POD_NAME"))
    if not image:
        raise ValueError("QUICKTUNE_STEP_IMAGE is not set and the controller's own image is unknown "
                         "(POD_NAME unset): the Kubernetes backend needs the step image")
    step_env = {k: env[k] for k in _PASS_THROUGH if env.get(k)}
    step_env.update(get_json("QUICKTUNE_STEP_ENV", dict) or {})
    kwargs: dict[str, Any] = dict(
        gpu=get_int("QUICKTUNE_STEP_GPU", 0),
        cpu=env.get("QUICKTUNE_STEP_CPU") or "1",
        memory=env.get("QUICKTUNE_STEP_MEMORY") or "4Gi",
        node_selector=get_json("QUICKTUNE_STEP_NODE_SELECTOR", dict),
        tolerations=get_json("QUICKTUNE_STEP_TOLERATIONS", list),
        priority_class=env.get("QUICKTUNE_STEP_PRIORITY_CLASS") or None,
        kueue_queue=env.get("QUICKTUNE_KUEUE_QUEUE") or None,
        secret_names=[s.strip() for s in (env.get("QUICKTUNE_STEP_SECRETS") or "").split(",") if s.strip()],
        service_account=env.get("QUICKTUNE_STEP_SERVICE_ACCOUNT") or None,
        env=step_env,
        owner_pod=owner_from_env(env),
        active_deadline_seconds=get_int("QUICKTUNE_STEP_ACTIVE_DEADLINE_SECONDS", 4 * 3600),
        backoff_limit=get_int("QUICKTUNE_STEP_BACKOFF_LIMIT", 3),
        ttl_seconds_after_finished=get_int("QUICKTUNE_STEP_TTL_SECONDS", 24 * 3600),
    )
    kwargs.update(overrides)
    return KubernetesBackend(namespace, image, search_id, max_concurrent=max_concurrent, api_client=api_client,
                             **kwargs)


def _own_image(api_client: Any, namespace: str, pod_name: str | None) -> str | None:
    """The image of the controller's own pod, so steps run exactly the controller's image by default."""
    if not pod_name:
        return None
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        pod = json.loads(client.CoreV1Api(api_client).read_namespaced_pod(pod_name, namespace,
                                                                          _preload_content=False).data)
    except (ApiException, OSError, ValueError) as exc:
        raise BackendError(f"cannot read the controller pod {namespace}/{pod_name} to find its image: {exc}; "
                           "set QUICKTUNE_STEP_IMAGE") from None
    return pod["spec"]["containers"][0]["image"]
