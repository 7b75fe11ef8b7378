"""The step Job manifest: what one step looks like to the API server, as a plain dict.

What a step Job looks like (see ``build_job``):

* labels ``app.kubernetes.io/{name,component,managed-by}``, ``quicktune.io/{search-id,config-id,
  epoch}`` (values sanitized to label syntax), annotations with the full ids and the result URI;
* an ownerReference to the object whose lifetime is the search's (``owner``; the backend finds it,
  see ``settings.OWNER_MODES``): by default the controller pod's own controller -- the controller
  Job, which outlives a drained, preempted or evicted pod, so the pod it starts next re-adopts the
  running steps instead of finding them garbage-collected -- and the pod itself only when nothing
  controls it. Deleting the controller Job (or the KFP run's Workflow) garbage-collects the steps.
  ``blockOwnerDeletion`` is off so the controller needs no ``*/finalizers`` permission;
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
* opt-in (``cache_pvc``): a PersistentVolumeClaim mounted at ``CACHE_MOUNT`` that holds the caches
  worth keeping beyond one pod -- the dataset mirror (``QUICKTUNE_CACHE``) and the pretrained weights
  (``TORCH_HOME``, ``HF_HOME``) -- shared by every step and warm worker pod that mounts it, with
  ``fsGroupChangePolicy: OnRootMismatch`` so a large cache is not re-chowned at every pod start.
  Concurrent writers are safe: the mirror renames complete downloads into place under a per-prefix
  file lock and checks ETag and size (``quicktune.data.s3``), torch and huggingface_hub lock their
  own downloads. Without it the caches live in the pod's ``/tmp`` emptyDir (docs/cluster.md,
  "Caches that survive a pod");
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

The restricted security contexts and the ``$``-escaping helpers are shared with the watcher's
controller Jobs (``quicktune.watch.launchers``). Nothing here talks to a cluster.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from quicktune.backends.base import StepRequest

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
CACHE_VOLUME = "cache"
CACHE_MOUNT = "/cache"  # where a cache PVC is mounted (cache_pvc); otherwise the caches are under /tmp/cache
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# The step reads its configuration from a file; the pod gets it through an env var and a tiny
# POSIX shell wrapper writes it into the emptyDir-backed /tmp (the root filesystem is read-only).
STEP_SCRIPT = (
    'set -eu; mkdir -p "$QUICKTUNE_WORKDIR"; '
    'printf "%s" "$QUICKTUNE_STEP_CONFIG" > "$QUICKTUNE_WORKDIR/config.json"; '
    'exec quicktune step --config "$QUICKTUNE_WORKDIR/config.json" "$@"'
)

_SECRET_NAME_RE = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|CREDENTIAL|PRIVATE|API_KEY", re.I)
_LABEL_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# The Pod Security Standards' "restricted" profile, in the form every generated pod uses (step Jobs
# here, controller Jobs in quicktune.watch.launchers): non-root uid 1000, no privilege escalation, no
# capabilities, the runtime's default seccomp profile, and a read-only root filesystem (not required
# by the profile; /tmp is an emptyDir).
RESTRICTED_POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
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


def check_claim_name(name: str, what: str = "cache_pvc") -> str:
    """``name`` if it is a valid PersistentVolumeClaim name (a DNS-1123 subdomain), else ValueError."""
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise ValueError(
            f"{what}: {name!r} is not a PersistentVolumeClaim name (lowercase letters, digits, '-' and '.', "
            "at most 253 characters, starting and ending with a letter or digit)"
        )
    return name


def cache_env(cache_pvc: str | None) -> list[dict[str, str]]:
    """The cache folders of a step pod: on the cache PVC (``CACHE_MOUNT``) when there is one, in the
    pod's ``/tmp`` emptyDir otherwise. Only the dataset mirror and the weights go to the PVC; the
    XDG and matplotlib caches stay private to the pod (nothing there is worth sharing)."""
    base = CACHE_MOUNT if cache_pvc else "/tmp/cache"
    return [
        {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
        {"name": "TORCH_HOME", "value": f"{base}/torch"},
        {"name": "HF_HOME", "value": f"{base}/huggingface"},
        {"name": "MPLCONFIGDIR", "value": "/tmp/cache/matplotlib"},
        {"name": "QUICKTUNE_CACHE", "value": f"{base}/quicktune"},
    ]


def result_uri(request: StepRequest) -> str:
    """Where the step writes its RESULT.json: next to its checkpoints, so it outlives the pod."""
    from quicktune.storage import join

    return join(request.checkpoint_dir, "results", f"{request.id}.json")


def build_job(
    request: StepRequest,
    *,
    namespace: str,
    image: str,
    gpu: int = 0,
    cpu: str | None = "1",
    memory: str | None = "4Gi",
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] | None = None,
    priority_class: str | None = None,
    kueue_queue: str | None = None,
    secret_names: Sequence[str] = (),
    secret_env: Mapping[str, tuple[str, str]] | None = None,
    env: Mapping[str, str] | None = None,
    service_account: str | None = None,
    owner: Mapping[str, str] | None = None,
    active_deadline_seconds: int = 4 * 3600,
    backoff_limit: int = 3,
    ttl_seconds_after_finished: int | None = 24 * 3600,
    image_pull_policy: str = "IfNotPresent",
    shm_size: str = "1Gi",
    cache_pvc: str | None = None,
) -> dict[str, Any]:
    """The Job manifest (a plain dict, as sent to the API server) for one step.

    ``owner``: ``{"apiVersion", "kind", "name", "uid"}`` of the object that owns the step Job (its
    garbage-collection parent); ``apiVersion``/``kind`` default to ``v1``/``Pod``; None: no owner.
    ``cache_pvc``: the PersistentVolumeClaim to mount at ``CACHE_MOUNT`` for the dataset mirror and
    the weights (module docstring); None: they live in the pod's emptyDir."""
    if cache_pvc:
        check_claim_name(cache_pvc)
    if not request.checkpoint_dir.startswith("s3://"):
        raise ValueError(
            f"checkpoint dir {request.checkpoint_dir!r}: the Kubernetes backend needs an s3:// "
            "checkpoint dir (step pods share no filesystem with the controller)"
        )
    plain_env: dict[str, str] = {}
    for source in (env or {}), request.extra_env:
        for key, value in source.items():
            if looks_secret(key):
                raise ValueError(
                    f"env var {key!r} looks like a credential; pass it through a Kubernetes Secret "
                    "(secret_names / secret_env), never as an inline value"
                )
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
    # the one step command line (StepRequest.argv, --flag=value tokens: a value starting with "-" is
    # never parsed as an option); STEP_SCRIPT adds --config itself
    args = request.argv(out=result_uri(request), device=device)
    env_list: list[dict[str, Any]] = [
        {"name": "QUICKTUNE_STEP_CONFIG", "value": json.dumps(dict(request.config), sort_keys=True)},
        {"name": "QUICKTUNE_WORKDIR", "value": WORKDIR},
        {"name": "HOME", "value": "/tmp/home"},
        *cache_env(cache_pvc),
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
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
    ]
    pod_security = copy.deepcopy(RESTRICTED_POD_SECURITY)
    if cache_pvc:
        volumes.append({"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache_pvc}})
        container["volumeMounts"].append({"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT})
        # fsGroup makes the volume writable by the step's group; chown it only when its root is not
        # already ours, not file by file at every pod start (a cache holds many files)
        pod_security["fsGroupChangePolicy"] = "OnRootMismatch"
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # a step never calls the API server
        "securityContext": pod_security,
        "containers": [kubelet_literal(container)],
        "volumes": volumes,
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
            ANNOTATION_RESULT: result_uri(request),
            ANNOTATION_SEARCH: request.search_id,
            ANNOTATION_CONFIG: request.config_id,
        },
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
    spec: dict[str, Any] = {
        "backoffLimit": int(backoff_limit),
        "activeDeadlineSeconds": int(active_deadline_seconds),
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": STEP_CONTAINER,
                        "operator": "In",
                        "values": list(FAIL_FAST_EXIT_CODES),
                    },
                },
            ]
        },
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = int(ttl_seconds_after_finished)
    if kueue_queue:
        spec["suspend"] = True
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}
