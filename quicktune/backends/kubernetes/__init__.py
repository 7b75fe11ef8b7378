"""Run each finetuning step as a Kubernetes ``batch/v1`` Job.

Why Jobs: a step is a run-to-completion unit that may need a GPU, must survive preemption and
must be visible to the cluster's own tooling (quotas, Kueue, ``kubectl``). One Job per step,
named by the step's deterministic id, gives us idempotency for free: creating a Job whose name
exists answers ``409 AlreadyExists`` and the backend simply re-adopts the running Job. A
restarted controller therefore never duplicates a step.

The package, one responsibility per module:

* ``manifests`` -- the step Job as a dict (labels, ownerReference, resources, the restricted
  security context, podFailurePolicy) and the ``$``-escaping helpers every generated pod spec
  goes through (``escape_kubelet_refs``, ``kubelet_literal``). Pure; no cluster needed.
* ``settings`` -- ``StepJobSettings``, the backend's Job settings as one frozen, validated value,
  parsed once from ``QUICKTUNE_*`` env vars and ``--backend-option`` strings.
* ``api`` -- the API calls with retries on transient errors and typed errors (``NotFound``,
  ``Conflict``, ``Gone``, ``ApiUnavailable``, all ``KubernetesApiError``); shared with the
  watcher's controller launcher.
* ``informer`` -- list + watch of one search's Jobs with resourceVersion bookkeeping; ``410 Gone``
  re-lists and re-watches, as client-go informers do.
* ``status`` -- what a Job or pod object says (``job_state``: Kubernetes' conditions to a step status;
  ``controller_of``: the object that recreates a pod, i.e. what owns the step Jobs).
* ``backend`` -- ``KubernetesBackend`` (the ``TrialBackend``), one ``StepRecord`` per step.
* ``warm``, ``warm_backend``, ``worker`` -- the warm mode (``warm_workers=W``): step requests as
  ConfigMaps claimed by compare-and-set on ``resourceVersion`` by at most W warm worker pods
  (``WarmKubernetesBackend``; the worker pod's loop).

Everything public is re-exported here, so ``from quicktune.backends.kubernetes import X`` works
for the names below.
"""

from __future__ import annotations

from quicktune.backends.kubernetes.api import (
    ApiUnavailable,
    Conflict,
    Gone,
    KubernetesApi,
    KubernetesApiError,
    NotFound,
    default_api_client,
    own_image,
)
from quicktune.backends.kubernetes.backend import (
    KubernetesBackend,
    StepRecord,
    backend_from_env,
)
from quicktune.backends.kubernetes.informer import JobInformer
from quicktune.backends.kubernetes.manifests import (
    ANNOTATION_CONFIG,
    ANNOTATION_RESULT,
    ANNOTATION_SEARCH,
    FAIL_FAST_EXIT_CODES,
    KUEUE_QUEUE_LABEL,
    LABEL_CONFIG,
    LABEL_EPOCH,
    LABEL_SEARCH,
    RESTRICTED_CONTAINER_SECURITY,
    RESTRICTED_POD_SECURITY,
    STEP_CONTAINER,
    STEP_SCRIPT,
    WORKDIR,
    build_job,
    escape_kubelet_refs,
    kubelet_literal,
    looks_secret,
    result_uri,
    sanitize_label_value,
)
from quicktune.backends.kubernetes.settings import (
    ENV_SETTINGS,
    OPTION_ENV,
    OWNER_MODES,
    StepJobSettings,
    in_cluster_namespace,
    owner_from_env,
)
from quicktune.backends.kubernetes.status import controller_of, iter_labels, job_state
from quicktune.backends.kubernetes.warm_backend import WarmKubernetesBackend

__all__ = [
    # the backend
    "KubernetesBackend",
    "WarmKubernetesBackend",
    "StepRecord",
    "backend_from_env",
    "job_state",
    "iter_labels",
    "controller_of",
    # settings
    "StepJobSettings",
    "ENV_SETTINGS",
    "OPTION_ENV",
    "OWNER_MODES",
    "owner_from_env",
    "in_cluster_namespace",
    # manifests and escaping
    "build_job",
    "result_uri",
    "sanitize_label_value",
    "looks_secret",
    "escape_kubelet_refs",
    "kubelet_literal",
    "RESTRICTED_CONTAINER_SECURITY",
    "RESTRICTED_POD_SECURITY",
    "FAIL_FAST_EXIT_CODES",
    "STEP_CONTAINER",
    "STEP_SCRIPT",
    "WORKDIR",
    "LABEL_SEARCH",
    "LABEL_CONFIG",
    "LABEL_EPOCH",
    "ANNOTATION_RESULT",
    "ANNOTATION_SEARCH",
    "ANNOTATION_CONFIG",
    "KUEUE_QUEUE_LABEL",
    # the API layer
    "KubernetesApi",
    "KubernetesApiError",
    "NotFound",
    "Conflict",
    "Gone",
    "ApiUnavailable",
    "JobInformer",
    "default_api_client",
    "own_image",
]
