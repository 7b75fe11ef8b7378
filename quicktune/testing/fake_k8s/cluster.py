"""``FakeCluster``: the fake API server, Job controller and kubelet, put together.

One object plays every part, each written in its own module and mixed in here: the object store
(``store``), admission (``admission``), the Job controller (``jobs``), deletion and garbage
collection (``gc``), the kubelet (``kubelet``); the HTTP server (``http``) answers the official
client's requests from them. This module holds the life cycle (``start``/``stop``, one controller
thread, one HTTP server thread) and the controls tests use to set a scene (Secrets, ConfigMaps,
pods without a process, waiting for a condition); ConfigMaps live in ``configmaps``.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from quicktune.testing.fake_k8s.admission import Admission
from quicktune.testing.fake_k8s.configmaps import ConfigMapStore
from quicktune.testing.fake_k8s.gc import GarbageCollector
from quicktune.testing.fake_k8s.http import Handler
from quicktune.testing.fake_k8s.jobs import JobController
from quicktune.testing.fake_k8s.kubelet import Kubelet, PodRuntime
from quicktune.testing.fake_k8s.store import ObjectStore, now


class FakeCluster(ObjectStore, ConfigMapStore, Admission, JobController, GarbageCollector, Kubelet):
    """The fake API server, Job controller and kubelet (see the module docstring).

    ``workdir``: where pods' folders and logs go. ``node_labels`` / ``node_taints`` / ``gpus``
    describe the single node used for scheduling. ``node_env``: env every container gets on top
    of a minimal base (e.g. ``OMP_NUM_THREADS``); the test process's own env is *not* inherited,
    so credentials reach a step only through the pod spec. ``admit_suspended``: act like Kueue
    and unsuspend suspended Jobs that carry a queue-name label.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        versions: Sequence[str] = ("1.30",),
        node_labels: Mapping[str, str] | None = None,
        node_taints: Sequence[Mapping[str, str]] = (),
        gpus: int = 0,
        node_env: Mapping[str, str] | None = None,
        entrypoints: Mapping[str, Sequence[str]] | None = None,
        admit_suspended: bool = False,
        tick: float = 0.05,
        retry_delay: float = 0.2,
        grace_seconds: float = 2.0,
        bin_dirs: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.versions = tuple(versions)
        self.node_labels = {
            "kubernetes.io/hostname": "fake-node",
            "kubernetes.io/os": "linux",
            **dict(node_labels or {}),
        }
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
        self.configmaps: dict[tuple[str, str], dict[str, str]] = {}  # data, for the kubelet
        self.configmap_objects: dict[tuple[str, str], dict[str, Any]] = {}  # the API objects (``configmaps``)
        self.configmap_conflicts = 0  # PUTs refused with 409 Conflict (a stale resourceVersion)
        self._job_events: list[tuple[int, str, dict[str, Any]]] = []
        self._runtime: dict[tuple[str, str], PodRuntime] = {}
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

    def __enter__(self) -> FakeCluster:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cluster = self

        class BoundHandler(Handler):
            fake = cluster

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), BoundHandler)
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

    def add_secret(self, name: str, data: Mapping[str, str], namespace: str = "default") -> None:
        self.secrets[(namespace, name)] = {k: str(v) for k, v in data.items()}

    def add_configmap(self, name: str, data: Mapping[str, str], namespace: str = "default") -> None:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}}
        body["data"] = {k: str(v) for k, v in data.items()}
        with self._lock:
            if (namespace, name) in self.configmap_objects:
                self.delete_configmap(namespace, name)
            self.create_configmap(namespace, body)

    def add_pod(self, name: str, namespace: str = "default", labels: Mapping[str, str] | None = None) -> str:
        """Register a pod with no process (e.g. the controller's own pod, an owner); returns its uid."""
        with self._lock:
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "labels": dict(labels or {}),
                    "creationTimestamp": now(),
                },
                "spec": {"containers": [{"name": "main", "image": "external"}]},
                "status": {"phase": "Running"},
            }
            self._bump(pod)
            self.pods[(namespace, name)] = pod
            return pod["metadata"]["uid"]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise TimeoutError(f"fake cluster: timed out after {timeout:.0f}s waiting for {what}")


def cleanup_pod_folders(workdir: str | os.PathLike[str]) -> None:
    """Remove the pods' folders (logs, emptyDirs) under a fake cluster's workdir."""
    shutil.rmtree(Path(workdir) / "pods", ignore_errors=True)
