"""A fake Kubernetes API server (a test double) for the Kubernetes backend's fake-cluster tests.

Why a fake: no kube-apiserver, kind, k3s or envtest can run on the project's machines, yet the
backend must be tested at its real boundary, HTTP, through the official ``kubernetes`` client.
This server implements *only* what ``KubernetesBackend`` and the watcher's ``KubernetesLauncher``
use, and implements it strictly. One module per part it plays:

* ``http`` -- the HTTP boundary: the REST paths of ``batch/v1`` Jobs (create, get, list, watch,
  delete) and ``v1`` Pods (get, list, ``pods/log``); anything else is a 404 recorded in
  ``unsupported_requests`` (tests assert it stays empty).
* ``configmaps`` -- ConfigMaps with the real server's optimistic concurrency (a ``PUT`` with a
  stale ``resourceVersion`` is ``409 Conflict``), owner garbage collection.
* ``store`` -- objects by namespace and name, resourceVersions, the Job event log watches read
  (``expire_watches`` makes every version too old: ``410 Gone``), label selectors.
* ``admission`` -- strict schema validation (``kubernetes_validate``, every configured version)
  plus the semantic checks the schema cannot express (``422 Invalid``), and Pod Security
  Admission for labelled namespaces (``pod_security_violations``).
* ``jobs`` -- the Job controller: one pod at a time, ``backoffLimit``, ``podFailurePolicy``,
  ``activeDeadlineSeconds``, ``ttlSecondsAfterFinished``, ``suspend`` (and Kueue-like admission).
* ``kubelet`` -- pods as local processes with the env the pod declares (Secrets included) and the
  kubelet's exact ``$(VAR)`` expansion (``expand``); preemption and OOM kills.
* ``gc`` -- deletion with propagation policies and ownerReference garbage collection.
* ``cluster`` -- ``FakeCluster``, all of the above in one object, with its life cycle and the
  controls tests use.

Limits (by design): one namespace-agnostic node, no RBAC, no admission webhooks, no real
resource isolation (a "GPU" is only a counter), second-precision timestamps. Tests using it are
*fake-cluster tests*, never end-to-end cluster tests.
"""

from __future__ import annotations

from quicktune.testing.fake_k8s.admission import pod_security_violations, semantic_checks
from quicktune.testing.fake_k8s.cluster import FakeCluster, cleanup_pod_folders
from quicktune.testing.fake_k8s.kubelet import PodRuntime, expand
from quicktune.testing.fake_k8s.store import FakeClusterError

__all__ = [
    "FakeCluster",
    "FakeClusterError",
    "expand",
    "pod_security_violations",
    "semantic_checks",
    "PodRuntime",
    "cleanup_pod_folders",
]
