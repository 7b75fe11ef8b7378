"""The Kubernetes backend's settings: one frozen value, parsed and checked once.

Why a dataclass: the settings come from three places -- ``QUICKTUNE_*`` env vars (the controller
pod loads them from the ``quicktune-config`` ConfigMap, see ``k8s/base``), ``--backend-option
KEY=VALUE`` strings, and keyword arguments of ``KubernetesBackend`` -- and every Job the backend
builds must see the same, valid values. ``StepJobSettings`` is built once, refuses bad values at
once with a message that names the setting (never echoing a value that might be a credential),
and is then passed around whole; ``job_kwargs()`` is what ``build_job`` takes.

``from_env`` reads ``ENV_SETTINGS``; ``from_options`` lays ``--backend-option`` values (keys of
``OPTION_ENV``) over the env first, so an option and its env variable are parsed by the same code.
The step image defaults to the controller pod's own image, which needs the API: the caller passes
``own_image`` (``quicktune.backends.kubernetes.api.own_image``) for that one lookup.

Ownership (``owner_mode``, ``QUICKTUNE_STEP_OWNER``): what the step Jobs' ownerReference names, i.e.
what deleting garbage-collects them. ``controller`` (the default) is the controller pod's own
controller -- the controller Job (``k8s/base``, the watcher's Jobs) or the Argo Workflow of a KFP
run -- which the backend finds with one GET of its pod (``POD_NAME``) when it creates its first Job:
a pod that is drained, preempted or evicted is replaced by that Job and the new pod re-adopts the
steps, while deleting the Job still deletes them. ``pod`` names the controller pod itself (its
steps die with it: only for a pod that nothing restarts); ``none`` sets no ownerReference (clean up
with ``kubectl delete jobs -l quicktune.io/search-id=<id>``).

Warm mode (``warm_workers``, ``QUICKTUNE_WARM_WORKERS``): W > 0 runs the steps on at most W warm
worker pods that take step requests (ConfigMaps) one after another instead of one Job per step;
``warm_lease_seconds``, ``warm_idle_seconds`` and ``warm_service_account`` shape the pool
(``quicktune.backends.kubernetes.warm``).

Caches (``cache_pvc``, ``QUICKTUNE_STEP_CACHE_PVC``): the name of a PersistentVolumeClaim that every
step pod and warm worker pod mounts for the dataset mirror and the weights, so a new pod finds them
instead of downloading them again (``manifests.build_job``; docs/cluster.md "Caches that survive a
pod"). Unset: each pod has its own, in an emptyDir.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quicktune.backends.kubernetes.manifests import check_claim_name, looks_secret

__all__ = [
    "StepJobSettings",
    "ENV_SETTINGS",
    "OPTION_ENV",
    "OWNER_MODES",
    "PASS_THROUGH",
    "owner_from_env",
    "in_cluster_namespace",
]

#: what owns the step Jobs (module docstring): the controller pod's controller, the pod, nothing
OWNER_MODES = ("controller", "pod", "none")

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
    "QUICKTUNE_STEP_OWNER": "what owns the step Jobs: controller (the controller pod's Job; default), pod, none",
    "QUICKTUNE_STEP_CACHE_PVC": "PersistentVolumeClaim mounted at /cache in every step and warm worker pod for the "
    "dataset mirror and the weights (default: none, an emptyDir per pod; docs/cluster.md)",
    "QUICKTUNE_WARM_WORKERS": "warm mode: at most this many worker pods run the steps (default 0: one Job per step)",
    "QUICKTUNE_WARM_LEASE_SECONDS": "warm mode: a claim not renewed for this long is taken over (default 60)",
    "QUICKTUNE_WARM_IDLE_SECONDS": "warm mode: a worker with nothing to do for this long exits (default 300)",
    "QUICKTUNE_WARM_SERVICE_ACCOUNT": "warm mode: the worker pods' ServiceAccount (default quicktune-step-worker)",
}

OPTION_ENV = {  # ``--backend-option KEY=VALUE`` -> the env setting it overrides
    "namespace": "QUICKTUNE_K8S_NAMESPACE",
    "image": "QUICKTUNE_STEP_IMAGE",
    "gpu": "QUICKTUNE_STEP_GPU",
    "cpu": "QUICKTUNE_STEP_CPU",
    "memory": "QUICKTUNE_STEP_MEMORY",
    "node_selector": "QUICKTUNE_STEP_NODE_SELECTOR",
    "tolerations": "QUICKTUNE_STEP_TOLERATIONS",
    "priority_class": "QUICKTUNE_STEP_PRIORITY_CLASS",
    "kueue_queue": "QUICKTUNE_KUEUE_QUEUE",
    "secrets": "QUICKTUNE_STEP_SECRETS",
    "service_account": "QUICKTUNE_STEP_SERVICE_ACCOUNT",
    "env": "QUICKTUNE_STEP_ENV",
    "active_deadline_seconds": "QUICKTUNE_STEP_ACTIVE_DEADLINE_SECONDS",
    "backoff_limit": "QUICKTUNE_STEP_BACKOFF_LIMIT",
    "ttl_seconds": "QUICKTUNE_STEP_TTL_SECONDS",
    "owner": "QUICKTUNE_STEP_OWNER",
    "cache_pvc": "QUICKTUNE_STEP_CACHE_PVC",
    "warm_workers": "QUICKTUNE_WARM_WORKERS",
    "warm_lease_seconds": "QUICKTUNE_WARM_LEASE_SECONDS",
    "warm_idle_seconds": "QUICKTUNE_WARM_IDLE_SECONDS",
    "warm_service_account": "QUICKTUNE_WARM_SERVICE_ACCOUNT",
}

# Non-secret S3 settings the controller passes on to the steps when QUICKTUNE_STEP_ENV does not.
PASS_THROUGH = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")


def owner_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The controller pod's identity from the downward API (``POD_NAME``, ``POD_UID``), if set."""
    environ = os.environ if environ is None else environ
    if environ.get("POD_NAME") and environ.get("POD_UID"):
        return {"name": environ["POD_NAME"], "uid": environ["POD_UID"]}
    return None


def in_cluster_namespace() -> str | None:
    """The namespace of the pod this runs in (its service account's mount), or None outside a pod."""
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _refuse_inline_secrets(env: Mapping[str, str]) -> None:
    for key in env:
        if looks_secret(key):
            raise ValueError(
                f"env var {key!r} looks like a credential; pass it through a Kubernetes Secret "
                "(secret_names / secret_env), never as an inline value"
            )


@dataclass(frozen=True)
class StepJobSettings:
    """How every step Job of one backend is shaped (see ``build_job`` for what each becomes).

    Validated on construction: a namespace and an image, ``gpu >= 0``, ``backoff_limit >= 0``,
    ``active_deadline_seconds >= 1``, ``ttl_seconds_after_finished`` None or ``>= 0``, and no
    inline env var that looks like a credential (those must come from Secrets)."""

    namespace: str
    image: str
    gpu: int = 0
    cpu: str | None = "1"
    memory: str | None = "4Gi"
    node_selector: Mapping[str, str] | None = None
    tolerations: tuple[Mapping[str, Any], ...] | None = None
    priority_class: str | None = None
    kueue_queue: str | None = None
    secret_names: tuple[str, ...] = ()
    secret_env: Mapping[str, tuple[str, str]] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    service_account: str | None = None
    owner_pod: Mapping[str, str] | None = None
    active_deadline_seconds: int = 4 * 3600
    backoff_limit: int = 3
    ttl_seconds_after_finished: int | None = 24 * 3600
    owner_mode: str = "controller"
    # a PersistentVolumeClaim for the caches that should outlive a pod (manifests.CACHE_MOUNT); None: emptyDir
    cache_pvc: str | None = None
    # warm mode (``quicktune.backends.kubernetes.warm``): 0 = one Job per step (the default)
    warm_workers: int = 0
    warm_lease_seconds: int = 60
    warm_idle_seconds: int = 300
    warm_service_account: str | None = "quicktune-step-worker"

    def __post_init__(self) -> None:
        if not self.namespace or not isinstance(self.namespace, str):
            raise ValueError("no namespace: set QUICKTUNE_K8S_NAMESPACE (or run in a pod with POD_NAMESPACE)")
        if not self.image or not isinstance(self.image, str):
            raise ValueError("no step image: set QUICKTUNE_STEP_IMAGE (or --backend-option image=...)")
        for name, low in (
            ("gpu", 0),
            ("backoff_limit", 0),
            ("active_deadline_seconds", 1),
            ("warm_workers", 0),
            ("warm_lease_seconds", 3),
            ("warm_idle_seconds", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        ttl = self.ttl_seconds_after_finished
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0):
            raise ValueError(f"ttl_seconds_after_finished must be None or an integer >= 0, got {ttl!r}")
        if self.owner_mode not in OWNER_MODES:
            raise ValueError(
                f"QUICKTUNE_STEP_OWNER (owner) must be one of {list(OWNER_MODES)}, got {self.owner_mode!r}"
            )
        if self.cache_pvc is not None:
            check_claim_name(self.cache_pvc, "QUICKTUNE_STEP_CACHE_PVC (cache_pvc)")
        _refuse_inline_secrets(self.env)
        # normalise containers to immutable-ish, comparable forms (frozen: set through object.__setattr__)
        object.__setattr__(self, "secret_names", tuple(self.secret_names))
        object.__setattr__(self, "env", {str(k): str(v) for k, v in self.env.items()})
        if self.tolerations is not None:
            object.__setattr__(self, "tolerations", tuple(dict(t) for t in self.tolerations))
        if self.owner_pod is not None:
            object.__setattr__(self, "owner_pod", dict(self.owner_pod))

    def owner_reference(self) -> dict[str, str] | None:
        """The step Jobs' owner as far as the settings know it: the controller pod (``owner_mode``
        ``controller`` or ``pod``), or None (mode ``none``, or not in a pod). In mode ``controller``
        the backend replaces the pod by its controller (``status.controller_of``) before creating Jobs."""
        if self.owner_mode == "none" or not self.owner_pod:
            return None
        return {"apiVersion": "v1", "kind": "Pod", "name": self.owner_pod["name"], "uid": self.owner_pod["uid"]}

    def job_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``build_job`` these settings stand for."""
        return dict(
            namespace=self.namespace,
            image=self.image,
            gpu=self.gpu,
            cpu=self.cpu,
            memory=self.memory,
            node_selector=self.node_selector,
            tolerations=self.tolerations,
            priority_class=self.priority_class,
            kueue_queue=self.kueue_queue,
            secret_names=self.secret_names,
            secret_env=self.secret_env,
            env=self.env,
            service_account=self.service_account,
            owner=self.owner_reference(),
            active_deadline_seconds=self.active_deadline_seconds,
            backoff_limit=self.backoff_limit,
            ttl_seconds_after_finished=self.ttl_seconds_after_finished,
            cache_pvc=self.cache_pvc,
        )

    # ------------------------------------------------------------------------------- parsing
    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        own_image: Callable[[str, str | None], str | None] | None = None,
        **overrides: Any,
    ) -> StepJobSettings:
        """Settings from ``QUICKTUNE_*`` env vars (``ENV_SETTINGS``), then ``overrides`` (field
        names). Bad values raise ValueError naming the variable. ``own_image(namespace, pod_name)``
        finds the controller's image when ``QUICKTUNE_STEP_IMAGE`` is unset."""
        env = os.environ if environ is None else environ

        def get_json(name: str, kind: type) -> Any:
            raw = env.get(name)
            if not raw:
                return None
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}: not valid JSON ({exc.msg} at position {exc.pos})") from None
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

        namespace = (
            overrides.pop("namespace", None)
            or env.get("QUICKTUNE_K8S_NAMESPACE")
            or env.get("POD_NAMESPACE")
            or in_cluster_namespace()
        )
        if not namespace:
            raise ValueError("no namespace: set QUICKTUNE_K8S_NAMESPACE (or run in a pod with POD_NAMESPACE)")
        image = overrides.pop("image", None) or env.get("QUICKTUNE_STEP_IMAGE")
        if not image and own_image is not None:
            image = own_image(namespace, env.get("POD_NAME"))
        if not image:
            raise ValueError(
                "QUICKTUNE_STEP_IMAGE is not set and the controller's own image is unknown "
                "(POD_NAME unset): the Kubernetes backend needs the step image"
            )
        step_env = {k: env[k] for k in PASS_THROUGH if env.get(k)}
        step_env.update(get_json("QUICKTUNE_STEP_ENV", dict) or {})
        kwargs: dict[str, Any] = dict(
            gpu=get_int("QUICKTUNE_STEP_GPU", 0),
            cpu=env.get("QUICKTUNE_STEP_CPU") or "1",
            memory=env.get("QUICKTUNE_STEP_MEMORY") or "4Gi",
            node_selector=get_json("QUICKTUNE_STEP_NODE_SELECTOR", dict),
            tolerations=get_json("QUICKTUNE_STEP_TOLERATIONS", list),
            priority_class=env.get("QUICKTUNE_STEP_PRIORITY_CLASS") or None,
            kueue_queue=env.get("QUICKTUNE_KUEUE_QUEUE") or None,
            secret_names=tuple(s.strip() for s in (env.get("QUICKTUNE_STEP_SECRETS") or "").split(",") if s.strip()),
            service_account=env.get("QUICKTUNE_STEP_SERVICE_ACCOUNT") or None,
            env=step_env,
            owner_pod=owner_from_env(env),
            active_deadline_seconds=get_int("QUICKTUNE_STEP_ACTIVE_DEADLINE_SECONDS", 4 * 3600),
            backoff_limit=get_int("QUICKTUNE_STEP_BACKOFF_LIMIT", 3),
            ttl_seconds_after_finished=get_int("QUICKTUNE_STEP_TTL_SECONDS", 24 * 3600),
            owner_mode=(env.get("QUICKTUNE_STEP_OWNER") or "controller").strip().lower(),
            cache_pvc=(env.get("QUICKTUNE_STEP_CACHE_PVC") or "").strip() or None,
            warm_workers=get_int("QUICKTUNE_WARM_WORKERS", 0),
            warm_lease_seconds=get_int("QUICKTUNE_WARM_LEASE_SECONDS", 60),
            warm_idle_seconds=get_int("QUICKTUNE_WARM_IDLE_SECONDS", 300),
            warm_service_account=env.get("QUICKTUNE_WARM_SERVICE_ACCOUNT") or "quicktune-step-worker",
        )
        unknown = sorted(set(overrides) - set(kwargs) - {"secret_env"})
        if unknown:
            raise ValueError(f"unknown Kubernetes backend setting(s) {unknown}")
        kwargs.update(overrides)
        return cls(namespace=namespace, image=image, **kwargs)

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
        *,
        step_timeout: float | None = None,
        own_image: Callable[[str, str | None], str | None] | None = None,
    ) -> StepJobSettings:
        """``--backend-option KEY=VALUE`` values (keys of ``OPTION_ENV``) laid over the env
        settings; ``step_timeout`` (``--step-timeout``) becomes activeDeadlineSeconds."""
        unknown = sorted(set(options) - set(OPTION_ENV))
        if unknown:
            raise ValueError(f"unknown Kubernetes backend option(s) {unknown}; known: {sorted(OPTION_ENV)}")
        merged = dict(os.environ if environ is None else environ)
        merged.update({OPTION_ENV[k]: str(v) for k, v in options.items()})
        if step_timeout:
            merged["QUICKTUNE_STEP_ACTIVE_DEADLINE_SECONDS"] = str(int(step_timeout))
        return cls.from_env(merged, own_image=own_image)
