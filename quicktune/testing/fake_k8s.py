"""A fake Kubernetes API server (a test double) for the Kubernetes backend's fake-cluster tests.

Why a fake: no kube-apiserver, kind, k3s or envtest can run on the project's machines, yet the
backend must be tested at its real boundary, HTTP, through the official ``kubernetes`` client.
This server implements *only* what ``KubernetesBackend`` uses, and implements it strictly:

* ``batch/v1`` Jobs: create, get, list (label selectors), watch (resourceVersion, bookmarks,
  ``timeoutSeconds``, ``410 Gone`` for expired versions), delete (Background / Foreground /
  Orphan propagation). Every object received is validated with
  ``kubernetes_validate.validate(obj, version, strict=True)`` plus the semantic checks the schema
  cannot express (names, label syntax, podFailurePolicy needs restartPolicy Never); invalid
  objects get a ``422 Invalid`` Status like a real API server. A name that exists gets ``409``.
* ``v1`` Pods: get, list (label selectors) and ``pods/log`` (``tailLines``, ``limitBytes``).
* Anything else answers 404 and is recorded in ``unsupported_requests`` (tests assert it stays
  empty, i.e. the backend uses no endpoint this double does not model).

It also plays the **Job controller** (one pod at a time, ``backoffLimit``, ``podFailurePolicy``
with ``DisruptionTarget`` -> Ignore and exit-code rules, ``activeDeadlineSeconds``,
``ttlSecondsAfterFinished``, ``suspend``, owner garbage collection) and the **kubelet**: a pod's
container ``command``/``args`` run as a local subprocess with the pod's env, where ``envFrom`` and
``secretKeyRef`` resolve against Secrets stored in the fake (a missing Secret leaves the pod in
``CreateContainerConfigError``, as on a real node). ``$(VAR)`` references in ``env[].value``,
``command`` and ``args`` are expanded exactly as the kubelet does (``expand``: the env the pod
declares, Secrets from ``envFrom`` included, defined-before order for env entries, ``$$`` -> ``$``),
so a generated pod spec that forgets to escape a user-supplied string leaks the Secret in a test as
it would on a cluster (``container_argv`` shows what the process got). The image's entrypoint maps to the local
venv's ``quicktune`` command. ``emptyDir`` volumes become a private folder per pod; as there
is no mount namespace, values of the container's ``env`` that start with a mount path are
rewritten to that folder (args are not). ``preempt()`` kills a pod the way the
scheduler's preemption does (``DisruptionTarget`` condition, then SIGTERM/SIGKILL).

**Pod Security Admission**: a namespace labelled with ``add_namespace(ns, {"pod-security.kubernetes.io/
enforce": "restricted"})`` gets the Pod Security Standards' checks (``pod_security_violations``) on
every pod the Job controller creates (a violating pod is refused and recorded in
``admission_denials``; the Job stays without pods) and, with ``.../warn``, a ``Warning`` header on
Job creations whose template would violate.

Limits (by design): one namespace-agnostic node, no RBAC, no admission webhooks, no real
resource isolation (a "GPU" is only a counter), second-precision timestamps. Tests using it are
*fake-cluster tests*, never end-to-end cluster tests.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import parse_qs, urlparse

__all__ = ["FakeCluster", "FakeClusterError", "expand", "pod_security_violations"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class FakeClusterError(RuntimeError):
    """The fake cluster itself failed (not a rejected request)."""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
           "reason": reason, "code": code}
    if details:
        out["details"] = dict(details)
    return out


class _Reject(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.status = _status(code, reason, message, details)


def _match_selector(labels: Mapping[str, str], selector: str | None) -> bool:
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
            raise _Reject(400, "BadRequest", f"set-based selector not supported by the fake: {term!r}")
        elif term not in labels:
            return False
    return True


class _PodRuntime:
    """The kubelet's view of one pod: its process, folder and log."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log_path = folder / "container.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.kill_reason: str | None = None  # "preempted" | "deadline" | "deleted" | "oom"
        self.killed_at: float | None = None
        self.argv: list[str] | None = None  # the container's argv after the kubelet's $(VAR) expansion
        self.declared_env: dict[str, str] = {}  # the env the pod spec declares, as the kubelet resolved it


class FakeCluster:
    """The fake API server, Job controller and kubelet (see the module docstring).

    ``workdir``: where pods' folders and logs go. ``node_labels`` / ``node_taints`` / ``gpus``
    describe the single node used for scheduling. ``node_env``: env every container gets on top
    of a minimal base (e.g. ``OMP_NUM_THREADS``); the test process's own env is *not* inherited,
    so credentials reach a step only through the pod spec. ``admit_suspended``: act like Kueue
    and unsuspend suspended Jobs that carry a queue-name label.
    """

    def __init__(self, workdir: str | os.PathLike[str], *, versions: Sequence[str] = ("1.30",),
                 node_labels: Mapping[str, str] | None = None,
                 node_taints: Sequence[Mapping[str, str]] = (), gpus: int = 0,
                 node_env: Mapping[str, str] | None = None, entrypoints: Mapping[str, Sequence[str]] | None = None,
                 admit_suspended: bool = False, tick: float = 0.05, retry_delay: float = 0.2,
                 grace_seconds: float = 2.0, bin_dirs: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.workdir = Path(workdir)
        self.versions = tuple(versions)
        self.node_labels = {"kubernetes.io/hostname": "fake-node", "kubernetes.io/os": "linux",
                            **dict(node_labels or {})}
        self.node_taints = [dict(t) for t in node_taints]
        self.gpus = int(gpus)
        self.node_env = dict(node_env or {})
        bindir = Path(sys.executable).parent
        quicktune = bindir / "quicktune"
        self.quicktune_cmd = [str(quicktune)] if quicktune.exists() else [sys.executable, "-m", "quicktune.cli"]
        self.entrypoints = {k: list(v) for k, v in (entrypoints or {}).items()}
        # the "image's" PATH: extra folders first, then the venv's bin (where ``quicktune`` lives)
        self.path = ":".join([*(str(d) for d in bin_dirs), str(bindir), "/usr/local/bin", "/usr/bin", "/bin"])
        self.admit_suspended = admit_suspended
        self.tick = tick
        self.retry_delay = retry_delay
        self.grace_seconds = grace_seconds
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._rv = 100
        self._compacted_rv = 0
        self._watch_generation = 0
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self.admission_denials: list[tuple[str, str]] = []  # (namespace/job, message): pods PSA refused
        self.warnings: list[str] = []  # PodSecurity warnings sent with Job creations (warn label)
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, str]] = {}
        self._job_events: list[tuple[int, str, dict[str, Any]]] = []
        self._runtime: dict[tuple[str, str], _PodRuntime] = {}
        self._job_internal: dict[tuple[str, str], dict[str, Any]] = {}
        self.created_jobs: list[str] = []  # names of Jobs created (201), in order
        self.create_attempts: list[tuple[str, int]] = []  # (name, HTTP status) of every POST
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.unsupported_requests: list[tuple[str, str]] = []
        self.rejected: list[dict[str, Any]] = []  # Status objects of 400/422 answers (invalid requests)
        self.validated_objects = 0
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # ---------------------------------------------------------------------------- life cycle
    def __enter__(self) -> "FakeCluster":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cluster = self

        class Handler(_Handler):
            fake = cluster

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        for target in (self._server.serve_forever, self._controller_loop):
            t = threading.Thread(target=target, daemon=True, name=f"fake-k8s-{target.__name__}")
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Kill every pod process and stop serving (watches end)."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        with self._lock:
            runtimes = list(self._runtime.values())
        for rt in runtimes:
            self._kill(rt, "deleted", grace=0.5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` pointed at this fake (plain HTTP, no auth)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)

    # ---------------------------------------------------------------------- test-facing controls
    def add_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Label a namespace, e.g. with ``pod-security.kubernetes.io/enforce: restricted``: Pod
        Security Admission then checks every pod the Job controller creates there (a violating pod
        is refused, the Job stays without pods, as on a real cluster) and ``warn`` answers Job
        creations with a ``Warning`` header for a violating pod template."""
        self.namespace_labels[name] = dict(labels or {})

    def container_argv(self, pod_name: str, namespace: str = "default") -> list[str] | None:
        """The argv a pod's container was started with, after the kubelet's ``$(VAR)`` expansion."""
        with self._lock:
            rt = self._runtime.get((namespace, pod_name))
            return None if rt is None or rt.argv is None else list(rt.argv)

    def add_secret(self, name: str, data: Mapping[str, str], namespace: str = "default") -> None:
        self.secrets[(namespace, name)] = {k: str(v) for k, v in data.items()}

    def add_configmap(self, name: str, data: Mapping[str, str], namespace: str = "default") -> None:
        self.configmaps[(namespace, name)] = {k: str(v) for k, v in data.items()}

    def add_pod(self, name: str, namespace: str = "default", labels: Mapping[str, str] | None = None) -> str:
        """Register a pod with no process (e.g. the controller's own pod, an owner); returns its uid."""
        with self._lock:
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                                "labels": dict(labels or {}), "creationTimestamp": _now()},
                   "spec": {"containers": [{"name": "main", "image": "external"}]},
                   "status": {"phase": "Running"}}
            self._bump(pod)
            self.pods[(namespace, name)] = pod
            return pod["metadata"]["uid"]

    def delete_pod(self, name: str, namespace: str = "default") -> None:
        """Delete a pod; the garbage collector then deletes objects it owns (Background)."""
        with self._lock:
            pod = self.pods.pop((namespace, name), None)
            if pod is None:
                raise KeyError(name)
            uid = pod["metadata"]["uid"]
            rt = self._runtime.get((namespace, name))
            owned = [key for key, job in self.jobs.items()
                     if any(o.get("uid") == uid for o in job["metadata"].get("ownerReferences") or [])]
        if rt is not None:
            self._kill(rt, "deleted")
        for key in owned:
            self._delete_job(key, "Background")

    def job(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        with self._lock:
            job = self.jobs.get((namespace, name))
            return copy.deepcopy(job) if job else None

    def pods_of(self, job_name: str, namespace: str = "default") -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(p) for (ns, _), p in sorted(self.pods.items())
                    if ns == namespace and p["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name")
                    == job_name]

    def running_pods(self, namespace: str = "default") -> list[str]:
        with self._lock:
            return sorted(n for (ns, n), p in self.pods.items()
                          if ns == namespace and p["status"].get("phase") == "Running" and (ns, n) in self._runtime)

    def preempt(self, job_name: str, namespace: str = "default",
                reason: str = "PreemptionByScheduler") -> str:
        """Preempt the Job's running pod: add ``DisruptionTarget`` and kill it; returns the pod name."""
        with self._lock:
            for p in self.pods_of(job_name, namespace):
                key = (namespace, p["metadata"]["name"])
                pod = self.pods[key]
                if pod["status"].get("phase") == "Running":
                    conds = pod["status"].setdefault("conditions", [])
                    conds.append({"type": "DisruptionTarget", "status": "True", "reason": reason,
                                  "message": "fake-cluster: pod preempted to make room for a higher-priority pod",
                                  "lastTransitionTime": _now()})
                    self._bump(pod)
                    rt = self._runtime[key]
                    break
            else:
                raise FakeClusterError(f"Job {job_name} has no running pod to preempt")
        self._kill(rt, "preempted")
        return key[1]

    def oom_kill(self, job_name: str, namespace: str = "default") -> str:
        """SIGKILL the Job's running pod as the kernel OOM killer would (reason OOMKilled, exit 137)."""
        with self._lock:
            for p in self.pods_of(job_name, namespace):
                key = (namespace, p["metadata"]["name"])
                if p["status"].get("phase") == "Running":
                    rt = self._runtime[key]
                    break
            else:
                raise FakeClusterError(f"Job {job_name} has no running pod")
        self._kill(rt, "oom", grace=0)
        return key[1]

    def expire_watches(self) -> None:
        """Make every open watch end with ``ERROR 410 Gone`` and every resourceVersion seen so far
        too old (as after an etcd compaction), forcing clients to re-list."""
        with self._changed:
            self._compacted_rv = self._rv
            self._job_events.clear()
            self._watch_generation += 1
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise TimeoutError(f"fake cluster: timed out after {timeout:.0f}s waiting for {what}")

    # -------------------------------------------------------------------------- object storage
    def _bump(self, obj: dict[str, Any]) -> int:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        return self._rv

    def _job_event(self, etype: str, job: dict[str, Any]) -> None:
        rv = self._bump(job)
        self._job_events.append((rv, etype, copy.deepcopy(job)))
        self._changed.notify_all()

    def validate(self, obj: Mapping[str, Any]) -> None:
        """Strict schema validation against every configured Kubernetes version, plus semantics."""
        import kubernetes_validate

        for version in self.versions:
            try:
                kubernetes_validate.validate(dict(obj), version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                raise _Reject(422, "Invalid", f"{obj.get('kind')} {obj.get('metadata', {}).get('name')!r} "
                                              f"is invalid (schema {version}, at /{path}): {exc.message}") from None
            except Exception as exc:  # noqa: BLE001 - unknown kinds etc.
                raise _Reject(422, "Invalid", f"cannot validate against schema {version}: {exc}") from None
        self.validated_objects += 1
        _semantic_checks(obj)

    def _pod_security(self, namespace: str, mode: str, pod: Mapping[str, Any]) -> str:
        """Pod Security Admission for ``mode`` (enforce | warn) in a labelled namespace: the
        violations of the level the namespace sets (as one message), or "" if none or unlabelled."""
        level = self.namespace_labels.get(namespace, {}).get(f"pod-security.kubernetes.io/{mode}", "privileged")
        if level == "privileged":
            return ""
        problems = pod_security_violations(pod.get("spec") or {}, level, pod.get("metadata"))
        if not problems:
            return ""
        return f'violates PodSecurity "{level}:latest": ' + "; ".join(problems)

    # ------------------------------------------------------------------------------ API logic
    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("apiVersion") != "batch/v1" or body.get("kind") != "Job":
            raise _Reject(400, "BadRequest", f"expected batch/v1 Job, got {body.get('apiVersion')} {body.get('kind')}")
        meta = body.get("metadata") or {}
        if meta.get("namespace", namespace) != namespace:
            raise _Reject(400, "BadRequest", "the namespace of the object does not match the namespace of the URL")
        self.validate(body)
        name = meta["name"]
        warnings = self._pod_security(namespace, "warn", (body.get("spec") or {}).get("template") or {})
        if warnings:
            self.warnings.append(f"Job {namespace}/{name}: {warnings}")
        with self._lock:
            if (namespace, name) in self.jobs:
                raise _Reject(409, "AlreadyExists", f'jobs.batch "{name}" already exists',
                              {"name": name, "group": "batch", "kind": "jobs"})
            job = copy.deepcopy(body)
            uid = str(uuid.uuid4())
            job["metadata"].update(namespace=namespace, uid=uid, creationTimestamp=_now(), generation=1)
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
            tmpl_labels.update({"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                                "controller-uid": uid, "job-name": name})
            if not job["metadata"].get("labels"):  # an unlabelled Job takes its template's labels
                job["metadata"]["labels"] = dict(tmpl_labels)
            job["status"] = {}
            self.jobs[(namespace, name)] = job
            self._job_internal[(namespace, name)] = {"next_pod_at": 0.0, "accounted": set()}
            self._job_event("ADDED", job)
            self.created_jobs.append(name)
            return copy.deepcopy(job)

    def _delete_job(self, key: tuple[str, str], propagation: str) -> dict[str, Any] | None:
        with self._lock:
            job = self.jobs.get(key)
            if job is None:
                return None
            if propagation == "Foreground":
                if not job["metadata"].get("deletionTimestamp"):
                    job["metadata"]["deletionTimestamp"] = _now()
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
        return [k for k, p in self.pods.items()
                if k[0] == ns and p["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name") == name]

    def _delete_pod_object(self, key: tuple[str, str]) -> None:
        rt = self._runtime.get(key)
        self.pods.pop(key, None)
        if rt is not None:
            threading.Thread(target=self._kill, args=(rt, "deleted"), daemon=True).start()

    # ------------------------------------------------------------------ Job controller + kubelet
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
                    conds.append({"type": "Suspended", "status": "True", "reason": "JobSuspended",
                                  "message": "Job suspended", "lastProbeTime": _now(), "lastTransitionTime": _now()})
                self._maybe_emit(job, before)
                return
        status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "Suspended"]
        if not status["conditions"]:
            status.pop("conditions")
        if "startTime" not in status:
            status["startTime"] = _now()
            internal["started_at"] = time.monotonic()
        # account for finished pods
        for pod in pods:
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
                self._finish(key, job, "Failed", "PodFailurePolicy",
                             f"Container {term.get('name', '?')} for pod {ns}/{pname} failed with exit code "
                             f"{term.get('exitCode')} matching FailJob rule at index {index}")
                return
            if status["failed"] > spec.get("backoffLimit", 6):
                self._finish(key, job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                return
            internal["next_pod_at"] = time.monotonic() + self.retry_delay * (2 ** (status["failed"] - 1))
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and time.monotonic() - internal.get("started_at", time.monotonic()) > deadline:
            self._finish(key, job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline",
                         kill="deadline")
            return
        active = [p for p in pods if p["status"].get("phase") in ("Pending", "Running")]
        if not active and time.monotonic() >= internal["next_pod_at"]:
            self._create_pod(key, job)
            active = [p for p in (self.pods[k] for k in self._pod_keys(key))
                      if p["status"].get("phase") in ("Pending", "Running")]
        status["active"] = len(active)
        status["ready"] = sum(1 for p in pods if p["status"].get("phase") == "Running")
        if not status["active"]:
            status.pop("active")
        self._maybe_emit(job, before)

    def _maybe_emit(self, job: dict[str, Any], before: tuple[str, str]) -> None:
        after = json.dumps(job["status"], sort_keys=True), json.dumps(job["spec"], sort_keys=True)
        if after != before:
            self._job_event("MODIFIED", job)

    def _finish(self, key: tuple[str, str], job: dict[str, Any], ctype: str, reason: str, message: str,
                kill: str | None = None) -> None:
        status = job["status"]
        for pkey in self._pod_keys(key):
            rt = self._runtime.get(pkey)
            if rt is not None and rt.proc is not None and rt.proc.poll() is None:
                threading.Thread(target=self._kill, args=(rt, kill or "deleted"), daemon=True).start()
        cond: dict[str, Any] = {"type": ctype, "status": "True", "lastProbeTime": _now(),
                                "lastTransitionTime": _now()}
        if reason:
            cond.update(reason=reason, message=message)
        status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "Suspended"] + [cond]
        status.pop("active", None)
        status["ready"] = 0
        if ctype == "Complete":
            status["completionTime"] = _now()
        self._job_internal[key]["finished_at"] = time.monotonic()
        self._job_event("MODIFIED", job)

    def _create_pod(self, job_key: tuple[str, str], job: dict[str, Any]) -> None:
        ns, jname = job_key
        tmpl = copy.deepcopy(job["spec"]["template"])
        pname = f"{jname[:57]}-{uuid.uuid4().hex[:5]}"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {**tmpl.get("metadata", {}), "name": pname, "namespace": ns,
                            "uid": str(uuid.uuid4()), "creationTimestamp": _now(),
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": jname,
                                                 "uid": job["metadata"]["uid"], "controller": True,
                                                 "blockOwnerDeletion": True}]},
               "spec": tmpl["spec"], "status": {"phase": "Pending", "conditions": []}}
        self.validate({k: v for k, v in pod.items() if k != "status"} | {"metadata": {
            k: v for k, v in pod["metadata"].items() if k not in ("uid", "creationTimestamp")}})
        denied = self._pod_security(ns, "enforce", pod)
        if denied:  # the Job controller's create is refused (event FailedCreate); it retries later
            self.admission_denials.append((f"{ns}/{jname}", denied))
            self._job_internal[job_key]["next_pod_at"] = time.monotonic() + max(self.retry_delay, 1.0)
            return
        self._bump(pod)
        self.pods[(ns, pname)] = pod
        folder = self.workdir / "pods" / pname
        folder.mkdir(parents=True, exist_ok=True)
        self._runtime[(ns, pname)] = _PodRuntime(folder)

    def _schedulable(self, pod: dict[str, Any]) -> str | None:
        spec = pod["spec"]
        for k, v in (spec.get("nodeSelector") or {}).items():
            if self.node_labels.get(k) != v:
                return f"0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector ({k}={v})"
        for taint in self.node_taints:
            if taint.get("effect") not in ("NoSchedule", "NoExecute"):
                continue
            if not any(_tolerates(t, taint) for t in spec.get("tolerations") or []):
                return f"0/1 nodes are available: 1 node(s) had untolerated taint {{{taint['key']}: {taint.get('value')}}}"
        want = sum(int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0))
                   for c in spec["containers"])
        if want:
            used = sum(int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0))
                       for k, p in self.pods.items() if p is not pod and p["status"].get("phase") == "Running"
                       for c in p["spec"]["containers"])
            if used + want > self.gpus:
                return f"0/1 nodes are available: 1 Insufficient nvidia.com/gpu (want {want}, free {self.gpus - used})"
        return None

    def _kubelet_sync(self, pkey: tuple[str, str]) -> None:
        with self._lock:
            pod = self.pods.get(pkey)
            rt = self._runtime.get(pkey)
            if rt is None:
                return
            if pod is None:  # deleted: reap once the process is gone
                if rt.proc is None or rt.proc.poll() is not None:
                    self._runtime.pop(pkey, None)
                return
            phase = pod["status"].get("phase")
            if phase == "Pending" and rt.proc is None:
                why = self._schedulable(pod)
                if why:
                    _set_pod_condition(pod, "PodScheduled", "False", "Unschedulable", why)
                    self._bump(pod)
                    return
                _set_pod_condition(pod, "PodScheduled", "True")
                try:
                    cmd, env, cwd = self._container_process(pod, rt)
                except _Reject as exc:
                    pod["status"]["containerStatuses"] = [{
                        "name": pod["spec"]["containers"][0]["name"], "ready": False, "restartCount": 0,
                        "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                        "state": {"waiting": {"reason": "CreateContainerConfigError",
                                              "message": exc.status["message"]}}}]
                    self._bump(pod)
                    return
                with open(rt.log_path, "ab") as logf:
                    rt.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True)
                c = pod["spec"]["containers"][0]
                pod["status"].update(phase="Running", startTime=_now(), hostIP="127.0.0.1", podIP="127.0.0.1")
                pod["status"]["containerStatuses"] = [{
                    "name": c["name"], "ready": True, "restartCount": 0, "image": c["image"], "imageID": "",
                    "started": True, "state": {"running": {"startedAt": _now()}}}]
                _set_pod_condition(pod, "Ready", "True")
                self._bump(pod)
                return
            if phase == "Running" and rt.proc is not None:
                code = rt.proc.poll()
                if code is None:
                    return
                exit_code = 128 - code if code < 0 else code
                if rt.kill_reason == "oom":
                    reason = "OOMKilled"
                elif exit_code == 0:
                    reason = "Completed"
                else:
                    reason = "Error"
                c = pod["status"]["containerStatuses"][0]
                c.update(ready=False, started=False, state={"terminated": {
                    "exitCode": exit_code, "reason": reason, "startedAt": pod["status"]["startTime"],
                    "finishedAt": _now()}})
                pod["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
                if rt.kill_reason == "deadline":
                    pod["status"]["reason"] = "DeadlineExceeded"
                _set_pod_condition(pod, "Ready", "False", "PodCompleted")
                self._bump(pod)

    def _container_process(self, pod: dict[str, Any], rt: _PodRuntime) -> tuple[list[str], dict[str, str], str]:
        """Resolve a pod's single container to (argv, env, cwd) as a kubelet + container runtime would."""
        spec = pod["spec"]
        ns = pod["metadata"]["namespace"]
        if len(spec["containers"]) != 1:
            raise _Reject(422, "Invalid", "the fake kubelet runs pods with exactly one container")
        c = spec["containers"][0]
        ctx = {**(spec.get("securityContext") or {}), **(c.get("securityContext") or {})}
        if ctx.get("runAsNonRoot") and ctx.get("runAsUser") in (None, 0):
            raise _Reject(422, "Invalid", "container has runAsNonRoot and image will run as root")
        # emptyDir volumes: a private folder per pod, mount paths rewritten in env and args
        mounts: list[tuple[str, str]] = []
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for m in c.get("volumeMounts") or []:
            vol = volumes.get(m["name"])
            if vol is None or "emptyDir" not in vol:
                raise _Reject(422, "Invalid", f"volume {m['name']!r}: the fake kubelet only supports emptyDir")
            host = rt.folder / "volumes" / m["name"]
            host.mkdir(parents=True, exist_ok=True)
            mounts.append((m["mountPath"].rstrip("/") or "/", str(host)))
        mounts.sort(key=lambda m: -len(m[0]))

        def rewrite(value: str) -> str:
            for path, host in mounts:
                if value == path or value.startswith(path + "/"):
                    return host + value[len(path):]
            return value

        # What the kubelet does (pkg/kubelet makeEnvironmentVariables): envFrom first, unexpanded; then
        # each env entry in order, a plain value expanded against what is defined so far (envFrom and
        # earlier entries), valueFrom values taken as they are; command and args are then expanded
        # against the container's whole env. The image's own env (here PATH, LANG, HOSTNAME and
        # node_env) is not known to the kubelet and takes no part in expansion.
        declared: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                data = self._lookup(self.secrets, ns, src["secretRef"]["name"], "secret",
                                    src["secretRef"].get("optional", False))
            else:
                data = self._lookup(self.configmaps, ns, src["configMapRef"]["name"], "configmap",
                                    src["configMapRef"].get("optional", False))
            declared.update({prefix + k: v for k, v in data.items()})
        for e in c.get("env") or []:
            if e.get("value"):
                declared[e["name"]] = expand(e["value"], declared)
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    ref = vf.get("secretKeyRef") or vf["configMapKeyRef"]
                    store, kind = (self.secrets, "secret") if "secretKeyRef" in vf else (self.configmaps, "configmap")
                    data = self._lookup(store, ns, ref["name"], kind, ref.get("optional", False))
                    if ref["key"] not in data:
                        if ref.get("optional"):
                            continue
                        raise _Reject(422, "Invalid", f"couldn't find key {ref['key']} in {kind.capitalize()} "
                                                      f"{ns}/{ref['name']}")
                    declared[e["name"]] = data[ref["key"]]
                elif "fieldRef" in vf:
                    field = vf["fieldRef"]["fieldPath"]
                    labels = pod["metadata"].get("labels") or {}
                    label = re.fullmatch(r"metadata\.labels\['([^']+)'\]", field)
                    declared[e["name"]] = (labels.get(label.group(1), "") if label else
                                           {"metadata.name": pod["metadata"]["name"], "metadata.namespace": ns,
                                            "metadata.uid": pod["metadata"]["uid"]}.get(field, ""))
            else:
                declared[e["name"]] = ""
        args = [expand(a, declared) for a in c.get("args") or []]
        if c.get("command"):
            command = [expand(a, declared) for a in c["command"]]
            if command[0] == "quicktune":
                command = self.quicktune_cmd + command[1:]
            argv = command + args
        else:
            argv = list(self.entrypoints.get(c["image"], self.quicktune_cmd)) + args
        env: dict[str, str] = {"PATH": self.path, "LANG": "C.UTF-8", "HOSTNAME": pod["metadata"]["name"]}
        env.update(self.node_env)
        env.update({k: rewrite(v) for k, v in declared.items()})
        rt.argv, rt.declared_env = list(argv), dict(declared)
        return argv, env, str(rt.folder)

    def _lookup(self, store: Mapping[tuple[str, str], dict[str, str]], ns: str, name: str, kind: str,
                optional: bool) -> dict[str, str]:
        if (ns, name) in store:
            return store[(ns, name)]
        if optional:
            return {}
        raise _Reject(422, "Invalid", f'{kind} "{name}" not found')

    def _kill(self, rt: _PodRuntime, reason: str, grace: float | None = None) -> None:
        """SIGTERM the pod's process group, then SIGKILL after the grace period."""
        proc = rt.proc
        if rt.kill_reason is None:
            rt.kill_reason = reason
        if proc is None or proc.poll() is not None:
            return
        grace = self.grace_seconds if grace is None else grace
        try:
            os.killpg(proc.pid, signal.SIGKILL if grace <= 0 else signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=max(grace, 0.1))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    # --------------------------------------------------------------------------- HTTP helpers
    def list_jobs(self, ns: str, selector: str | None) -> dict[str, Any]:
        with self._lock:
            items = [copy.deepcopy(j) for (jns, _), j in sorted(self.jobs.items())
                     if jns == ns and _match_selector(j["metadata"].get("labels") or {}, selector)]
            return {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {"resourceVersion": str(self._rv)},
                    "items": items}

    def list_pods(self, ns: str, selector: str | None) -> dict[str, Any]:
        with self._lock:
            items = [copy.deepcopy(p) for (pns, _), p in sorted(self.pods.items())
                     if pns == ns and _match_selector(p["metadata"].get("labels") or {}, selector)]
            return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self._rv)},
                    "items": items}

    def pod_log(self, ns: str, name: str, query: Mapping[str, list[str]]) -> bytes:
        with self._lock:
            pod = self.pods.get((ns, name))
            rt = self._runtime.get((ns, name))
        if pod is None:
            raise _Reject(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        names = [c["name"] for c in pod["spec"]["containers"]]
        container = (query.get("container") or [names[0]])[0]
        if container not in names:
            raise _Reject(400, "BadRequest", f"container {container} is not valid for pod {name}")
        if rt is None or rt.proc is None:
            raise _Reject(400, "BadRequest",
                          f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating')
        data = rt.log_path.read_bytes() if rt.log_path.exists() else b""
        if "tailLines" in query:
            n = int(query["tailLines"][0])
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-n:]) if n > 0 else b""
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"][0])]
        return data


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    """A boolean query parameter, parsed like Go's strconv.ParseBool (the client sends ``True``)."""
    return (query.get(name) or ["false"])[0].lower() in ("true", "1", "t")


def expand(value: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion (k8s.io/kubernetes ``third_party/forked/golang/expansion``
    ``Expand`` with ``MappingFuncFor(env)``), character for character.

    ``$(NAME)`` becomes ``env[NAME]`` when NAME is defined (whatever NAME contains, up to the first
    ``)``; the value is not expanded again) and stays ``$(NAME)`` when it is not; ``$$`` becomes
    ``$`` (so ``$$(NAME)`` is the literal ``$(NAME)``); a ``$`` followed by anything else, an
    unterminated ``$(`` and a ``$`` at the very end are kept as they are.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(value)
    while cursor < n:
        if value[cursor] == "$" and cursor + 1 < n:
            out.append(value[checkpoint:cursor])
            nxt = value[cursor + 1]
            if nxt == "$":  # escaped operator
                out.append("$")
                advance = 1
            elif nxt == "(":
                close = value.find(")", cursor + 2)
                if close < 0:  # incomplete reference: keep "$(" and go on after it
                    out.append("$(")
                    advance = 1
                else:
                    name = value[cursor + 2:close]
                    out.append(env[name] if name in env else f"$({name})")
                    advance = close - cursor
            else:  # not an expression: the operator and the next character
                out.append("$" + nxt)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + value[checkpoint:]



def _tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and toleration.get("value") == taint.get("value")


def _has_condition(obj: Mapping[str, Any], ctype: str) -> bool:
    return any(c.get("type") == ctype and c.get("status") == "True" for c in obj.get("status", {}).get("conditions", []))


def _set_pod_condition(pod: dict[str, Any], ctype: str, status: str, reason: str = "", message: str = "") -> None:
    conds = [c for c in pod["status"].get("conditions", []) if c["type"] != ctype]
    cond = {"type": ctype, "status": status, "lastTransitionTime": _now()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    pod["status"]["conditions"] = conds + [cond]


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
                if any(c.get("type") == pat["type"] and c.get("status") == pat.get("status", "True")
                       for c in pod.get("status", {}).get("conditions", [])):
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


# Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/), the
# checks of k8s.io/pod-security-admission for the levels "baseline" and "restricted" (latest).
_BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                  "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                 "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                 "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                 "net.ipv4.tcp_keepalive_probes"}
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}


def pod_security_violations(spec: Mapping[str, Any], level: str = "restricted",
                            metadata: Mapping[str, Any] | None = None) -> list[str]:
    """The ways a pod spec breaks the Pod Security Standard ``level`` ("baseline" or "restricted";
    "privileged" allows everything), one readable line each; empty when the pod is admitted.

    Used by the fake API server (namespaces labelled ``pod-security.kubernetes.io/enforce``) and by
    tests that check every pod template quicktune generates or ships."""
    if level not in ("privileged", "baseline", "restricted"):
        raise ValueError(f"unknown Pod Security level {level!r}")
    if level == "privileged":
        return []
    out: list[str] = []
    containers = [(kind, c) for kind in ("initContainers", "containers", "ephemeralContainers")
                  for c in spec.get(kind) or []]
    psc = spec.get("securityContext") or {}
    # --- baseline
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"host namespaces ({key}=true)")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("hostProcess (pod windowsOptions.hostProcess=true)")
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            out.append(f"hostPath volumes (volume {v.get('name')!r})")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            out.append(f"forbidden sysctls ({sysctl.get('name')})")
    annotations = (metadata or {}).get("annotations") or {}
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and value != "runtime/default" \
                and not str(value).startswith("localhost/"):
            out.append(f"forbidden AppArmor profile ({key}={value})")

    def selinux(where: str, opts: Mapping[str, Any] | None) -> None:
        if opts and (opts.get("type", "") not in _SELINUX_TYPES or opts.get("user") or opts.get("role")):
            out.append(f"seLinuxOptions ({where})")

    def apparmor(where: str, sc: Mapping[str, Any]) -> None:
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"forbidden AppArmor profile ({where}: Unconfined)")

    selinux("pod", psc.get("seLinuxOptions"))
    apparmor("pod", psc)
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        out.append("seccompProfile (pod: Unconfined)")
    for kind, c in containers:
        name, sc = c.get("name"), c.get("securityContext") or {}
        where = f"{kind[:-1]} {name!r}"
        if sc.get("privileged"):
            out.append(f"privileged ({where})")
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if added - _BASELINE_CAPS:
            out.append(f"non-default capabilities ({where}: {sorted(added - _BASELINE_CAPS)})")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"hostPort ({where}: {port['hostPort']})")
        selinux(where, sc.get("seLinuxOptions"))
        apparmor(where, sc)
        if sc.get("procMount", "Default") != "Default":
            out.append(f"procMount ({where}: {sc['procMount']})")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"seccompProfile ({where}: Unconfined)")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"hostProcess ({where})")
    if level == "baseline":
        return out
    # --- restricted
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if kinds - _RESTRICTED_VOLUMES:
            out.append(f"restricted volume types (volume {v.get('name')!r}: {sorted(kinds - _RESTRICTED_VOLUMES)})")
    if psc.get("runAsUser") == 0:
        out.append("runAsUser=0 (pod)")
    for kind, c in containers:
        name, sc = c.get("name"), c.get("securityContext") or {}
        where = f"{kind[:-1]} {name!r}"
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"allowPrivilegeEscalation != false ({where})")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"unrestricted capabilities ({where} must drop ALL)")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"unrestricted capabilities ({where} may add only NET_BIND_SERVICE)")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"runAsNonRoot != true ({where})")
        if sc.get("runAsUser") == 0:
            out.append(f"runAsUser=0 ({where})")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"seccompProfile ({where} must set RuntimeDefault or Localhost, or the pod must)")
    return out


def _semantic_checks(obj: Mapping[str, Any]) -> None:
    """What the API server's validation does beyond the OpenAPI schema (the parts we use)."""
    kind = obj.get("kind")
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    errors: list[str] = []
    if not name:
        errors.append("metadata.name: Required value")
    elif kind == "Job" and (len(name) > 63 or not _DNS_LABEL.match(name)):
        errors.append(f"metadata.name: Invalid value: {name!r}: must be a DNS-1123 label of at most 63 characters")
    elif not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        errors.append(f"metadata.name: Invalid value: {name!r}: must be a DNS-1123 subdomain")

    def check_labels(where: str, labels: Mapping[str, Any]) -> None:
        for k, v in (labels or {}).items():
            prefix, _, lname = k.rpartition("/")
            if len(lname) > 63 or not _LABEL_NAME.match(lname) or (prefix and not _DNS_SUBDOMAIN.match(prefix)):
                errors.append(f"{where}: Invalid value: {k!r}: not a valid label key")
            if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
                errors.append(f"{where}: Invalid value: {v!r}: a valid label value must be 63 characters or less, "
                              "and begin and end with an alphanumeric character")

    check_labels("metadata.labels", meta.get("labels") or {})
    pod_spec = None
    if kind == "Job":
        spec = obj.get("spec") or {}
        check_labels("spec.template.metadata.labels", (spec.get("template", {}).get("metadata") or {}).get("labels"))
        pod_spec = spec.get("template", {}).get("spec") or {}
        if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
            errors.append("spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"")
        if spec.get("podFailurePolicy") and pod_spec.get("restartPolicy") != "Never":
            errors.append("spec.podFailurePolicy: Invalid value: only allowed with restartPolicy Never")
        names = {c.get("name") for c in pod_spec.get("containers") or []}
        for i, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
            cn = (rule.get("onExitCodes") or {}).get("containerName")
            if cn and cn not in names:
                errors.append(f"spec.podFailurePolicy.rules[{i}].onExitCodes.containerName: Invalid value: {cn!r}")
    elif kind == "Pod":
        pod_spec = obj.get("spec") or {}
    if pod_spec is not None:
        for c in pod_spec.get("containers") or []:
            if not _DNS_LABEL.match(c.get("name", "")):
                errors.append(f"containers.name: Invalid value: {c.get('name')!r}")
            for e in c.get("env") or []:
                if not _ENV_NAME.match(e.get("name", "")):
                    errors.append(f"env.name: Invalid value: {e.get('name')!r}")
                if "value" in e and "valueFrom" in e:
                    errors.append(f"env[{e['name']}]: may not have both value and valueFrom")
            vols = {v.get("name") for v in pod_spec.get("volumes") or []}
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in vols:
                    errors.append(f"volumeMounts.name: Not found: {m.get('name')!r}")
    for o in meta.get("ownerReferences") or []:
        if not o.get("uid"):
            errors.append("metadata.ownerReferences.uid: Invalid value: \"\": uid must not be empty")
    if errors:
        raise _Reject(422, "Invalid", f"{kind}.{'batch' if kind == 'Job' else ''} {name!r} is invalid: "
                      + "; ".join(errors), {"name": name, "kind": kind})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeCluster

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    # routing -------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def _body(self) -> dict[str, Any] | None:
        n = int(self.headers.get("Content-Length") or 0)
        if not n:
            return None
        raw = self.rfile.read(n)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _Reject(400, "BadRequest", f"request body is not JSON: {exc}") from None

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        q = parse_qs(url.query)
        parts = [p for p in url.path.split("/") if p]
        fake = self.fake
        try:
            body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
            # /apis/batch/v1/namespaces/{ns}/jobs[/{name}]
            if parts[:3] == ["apis", "batch", "v1"] and len(parts) in (6, 7) and parts[3] == "namespaces" \
                    and parts[5] == "jobs":
                ns = parts[4]
                if len(parts) == 6 and method == "GET":
                    selector = (q.get("labelSelector") or [None])[0]
                    if _flag(q, "watch"):
                        return self._watch_jobs(ns, selector, q)
                    return self._send(200, fake.list_jobs(ns, selector))
                if len(parts) == 6 and method == "POST":
                    if body is None:
                        raise _Reject(400, "BadRequest", "missing request body")
                    name = (body.get("metadata") or {}).get("name", "?")
                    try:
                        created = fake.create_job(ns, body)
                    except _Reject as exc:
                        fake.create_attempts.append((name, exc.status["code"]))
                        raise
                    fake.create_attempts.append((name, 201))
                    warning = fake._pod_security(ns, "warn", (body.get("spec") or {}).get("template") or {})
                    headers = {"Warning": '299 - "' + warning.replace('"', "'") + '"'} if warning else {}
                    return self._send(201, created, headers)
                if len(parts) == 7 and method == "GET":
                    job = fake.job(parts[6], ns)
                    if job is None:
                        raise _Reject(404, "NotFound", f'jobs.batch "{parts[6]}" not found',
                                      {"name": parts[6], "group": "batch", "kind": "jobs"})
                    return self._send(200, job)
                if len(parts) == 7 and method == "DELETE":
                    prop = (body or {}).get("propagationPolicy") or (q.get("propagationPolicy") or ["Orphan"])[0]
                    if prop not in ("Background", "Foreground", "Orphan"):
                        raise _Reject(400, "BadRequest", f"invalid propagationPolicy {prop!r}")
                    if body and body.get("kind", "DeleteOptions") != "DeleteOptions":
                        raise _Reject(400, "BadRequest", "body must be DeleteOptions")
                    job = fake._delete_job((ns, parts[6]), prop)
                    if job is None:
                        raise _Reject(404, "NotFound", f'jobs.batch "{parts[6]}" not found',
                                      {"name": parts[6], "group": "batch", "kind": "jobs"})
                    return self._send(200, job)
            # /api/v1/namespaces/{ns}/pods[/{name}[/log]]
            if parts[:2] == ["api", "v1"] and len(parts) in (5, 6, 7) and parts[2] == "namespaces" \
                    and parts[4] == "pods" and method == "GET":
                ns = parts[3]
                if len(parts) == 5:
                    if _flag(q, "watch"):
                        raise _Reject(405, "MethodNotAllowed", "the fake does not serve pod watches")
                    return self._send(200, fake.list_pods(ns, (q.get("labelSelector") or [None])[0]))
                if len(parts) == 6:
                    with fake._lock:
                        pod = copy.deepcopy(fake.pods.get((ns, parts[5])))
                    if pod is None:
                        raise _Reject(404, "NotFound", f'pods "{parts[5]}" not found',
                                      {"name": parts[5], "kind": "pods"})
                    return self._send(200, pod)
                if parts[6] == "log":
                    return self._send_raw(200, fake.pod_log(ns, parts[5], q), "text/plain")
            fake.unsupported_requests.append((method, self.path))
            raise _Reject(404, "NotFound", "the server could not find the requested resource (fake cluster: "
                                           f"{method} {url.path} is not modelled)")
        except _Reject as exc:
            if exc.status["code"] in (400, 422):  # invalid input (404 / 409 are ordinary answers)
                fake.rejected.append(exc.status)
            self._send(exc.status["code"], exc.status)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # responses -----------------------------------------------------------------------------
    def _send(self, code: int, obj: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        self._send_raw(code, json.dumps(obj).encode(), "application/json", headers)

    def _send_raw(self, code: int, data: bytes, ctype: str, headers: Mapping[str, str] | None = None) -> None:
        self.fake.requests.append((self.command, self.path, code))
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, obj: Mapping[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch_jobs(self, ns: str, selector: str | None, q: Mapping[str, list[str]]) -> None:
        fake = self.fake
        timeout = float((q.get("timeoutSeconds") or ["1800"])[0])
        bookmarks = _flag(q, "allowWatchBookmarks")
        rv_param = (q.get("resourceVersion") or [""])[0]
        fake.requests.append(("GET", self.path, 200))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + timeout
        with fake._lock:
            generation = fake._watch_generation
            if rv_param in ("", "0"):
                initial = [("ADDED", j) for j in fake.list_jobs(ns, selector)["items"]]
                last = fake._rv
            else:
                last = int(rv_param)
                initial = []
                if last < fake._compacted_rv:
                    initial = None
        try:
            if initial is None:
                self._chunk({"type": "ERROR", "object": _status(
                    410, "Expired", f"too old resource version: {last} ({fake._compacted_rv})")})
                return
            for etype, obj in initial:
                self._chunk({"type": etype, "object": obj})
            next_bookmark = time.monotonic() + 1.0
            while not fake._stopping.is_set():
                with fake._changed:
                    if fake._watch_generation != generation:
                        gone = True
                    else:
                        gone = False
                        pending = [(rv, t, o) for rv, t, o in fake._job_events if rv > last]
                        if not pending:
                            fake._changed.wait(timeout=0.25)
                            pending = [(rv, t, o) for rv, t, o in fake._job_events if rv > last]
                        current_rv = fake._rv
                if gone:
                    self._chunk({"type": "ERROR", "object": _status(
                        410, "Expired", "too old resource version (the fake cluster expired all watches)")})
                    return
                for rv, etype, obj in pending:
                    last = rv
                    if obj["metadata"]["namespace"] == ns and _match_selector(obj["metadata"].get("labels") or {},
                                                                              selector):
                        self._chunk({"type": etype, "object": obj})
                if bookmarks and time.monotonic() >= next_bookmark:
                    last = max(last, current_rv)
                    self._chunk({"type": "BOOKMARK", "object": {"kind": "Job", "apiVersion": "batch/v1",
                                                                "metadata": {"resourceVersion": str(last)}}})
                    next_bookmark = time.monotonic() + 1.0
                if time.monotonic() >= deadline:
                    return
        finally:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass
            self.close_connection = True


def cleanup_pod_folders(workdir: str | os.PathLike[str]) -> None:
    """Remove the pods' folders (logs, emptyDirs) under a fake cluster's workdir."""
    shutil.rmtree(Path(workdir) / "pods", ignore_errors=True)
