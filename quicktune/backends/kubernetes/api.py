"""The Kubernetes API as quicktune uses it: a few calls, retried, with typed errors.

Why a layer of its own: the step backend and the watcher's controller launcher make the same
calls (create, read, delete a Job; list pods; read a log; watch Jobs) and must treat the same
answers alike. A 404 on a read means "no such Job", a 409 on a create "it exists already: adopt
it", a 410 on a watch "your resourceVersion expired: re-list", and 429/5xx or a broken connection
"try again shortly". Callers say which of these they expect by catching an exception type --
``NotFound``, ``Conflict``, ``Gone``, ``ApiUnavailable``, all subclasses of ``KubernetesApiError``
(itself a ``BackendError``, so code that only knows the backend contract still sees a backend
failure) -- instead of passing ``missing_ok``/``conflict_ok`` flags and testing for ``None``.

Every call goes through the official ``kubernetes`` client with ``_preload_content=False`` and
returns plain dicts (the JSON the server sent), never the client's generated model classes.
Transient answers (0, 429, 500, 502, 503, 504) and connection errors are retried with capped
exponential back-off; after the last attempt they raise ``ApiUnavailable``. Error messages name
the call and the namespace and quote the server's Status message, never a request body.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any

from quicktune.backends.base import BackendError

__all__ = [
    "KubernetesApiError",
    "NotFound",
    "Conflict",
    "Gone",
    "ApiUnavailable",
    "KubernetesApi",
    "default_api_client",
    "own_image",
    "TRANSIENT_STATUSES",
]

TRANSIENT_STATUSES = (0, 429, 500, 502, 503, 504)


class KubernetesApiError(BackendError):
    """A Kubernetes API call failed. ``status`` is the HTTP status (None: no answer at all),
    ``reason`` the server's reason phrase, ``what`` the call in words ("create Job qt-...")."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "", what: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.what = what


class NotFound(KubernetesApiError):
    """404: the object does not exist (never created, deleted, or garbage-collected)."""


class Conflict(KubernetesApiError):
    """409: the object exists already (``AlreadyExists``) or changed under the caller."""


class Gone(KubernetesApiError):
    """410: a watch's resourceVersion is too old (etcd compacted it); re-list, then watch again."""


class ApiUnavailable(KubernetesApiError):
    """The API server could not be reached, or kept answering with a transient error (429, 5xx)
    through every retry."""


_BY_STATUS: dict[int, type[KubernetesApiError]] = {404: NotFound, 409: Conflict, 410: Gone}


def _status_message(exc: Any) -> str:
    """The ``message`` of a Status body (what the server said), else the body's first 300 characters."""
    try:
        return str(json.loads(exc.body).get("message", ""))
    except Exception:  # noqa: BLE001
        return str(exc.body or "")[:300]


def error_for(status: int | None, reason: str, message: str, what: str, namespace: str) -> KubernetesApiError:
    """The typed error for an API answer (the message format the backend has always used)."""
    text = f"Kubernetes API: cannot {what} in namespace {namespace}: {status} {reason}: {message}"
    if status in TRANSIENT_STATUSES:
        return ApiUnavailable(text, status=status, reason=reason, what=what)
    return _BY_STATUS.get(status or -1, KubernetesApiError)(text, status=status, reason=reason, what=what)


def default_api_client() -> Any:
    """An ``ApiClient`` for the in-cluster configuration, else ``~/.kube/config`` (``KUBECONFIG``)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except Exception as exc:  # noqa: BLE001
            raise BackendError(
                "no Kubernetes configuration: not running in a cluster and no usable kubeconfig "
                f"({exc}); pass api_client= or set KUBECONFIG"
            ) from None
    return client.ApiClient()


def own_image(api_client: Any, namespace: str, pod_name: str | None) -> str | None:
    """The image of the caller's own pod (``POD_NAME``), so the pods it starts run exactly its image
    by default; None when ``pod_name`` is unset (not in a pod)."""
    if not pod_name:
        return None
    try:
        pod = KubernetesApi(api_client, namespace, attempts=1).read_pod(pod_name)
        return str(pod["spec"]["containers"][0]["image"])
    except (KubernetesApiError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise BackendError(
            f"cannot read the controller pod {namespace}/{pod_name} to find its image: "
            f"{type(exc).__name__}: {exc}; set QUICKTUNE_STEP_IMAGE"
        ) from None


class KubernetesApi:
    """The calls quicktune makes in one namespace, retried, with typed errors (module docstring).

    ``attempts``: tries per call for transient errors; ``sleep``: how to wait between them
    (tests pass a no-op). The RBAC Roles in ``k8s/base`` grant exactly the verbs of the methods
    each component calls (``VERBS``)."""

    #: method -> (resource, RBAC verb): what a Role must grant for a caller of that method
    VERBS: Mapping[str, tuple[str, str]] = {
        "create_job": ("jobs", "create"),
        "read_job": ("jobs", "get"),
        "read_job_or_none": ("jobs", "get"),
        "delete_job": ("jobs", "delete"),
        "list_jobs": ("jobs", "list"),
        "watch_jobs": ("jobs", "watch"),
        "read_pod": ("pods", "get"),
        "list_pods": ("pods", "list"),
        "read_pod_log": ("pods/log", "get"),
        "create_configmap": ("configmaps", "create"),
        "read_configmap": ("configmaps", "get"),
        "read_configmap_or_none": ("configmaps", "get"),
        "replace_configmap": ("configmaps", "update"),
        "delete_configmap": ("configmaps", "delete"),
        "list_configmaps": ("configmaps", "list"),
    }

    def __init__(
        self, api_client: Any, namespace: str, *, attempts: int = 4, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        from kubernetes import client

        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.api_client = api_client
        self.namespace = namespace
        self.attempts = int(attempts)
        self._sleep = sleep
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    # ------------------------------------------------------------------------------ the one loop
    def call(self, fn: Callable[[], Any], what: str, *, raw: bool = False) -> Any:
        """Run ``fn`` (a client call with ``_preload_content=False``) with retries on transient
        errors; return its JSON body as a dict (``raw``: the bytes), or raise a typed error."""
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            try:
                resp = fn()
                if resp is None or not hasattr(resp, "data"):
                    return resp
                body = resp.data
                return body if raw else (json.loads(body) if body else {})
            except ApiException as exc:
                error = error_for(exc.status, exc.reason, _status_message(exc), what, self.namespace)
                if not isinstance(error, ApiUnavailable) or attempt == self.attempts:
                    raise error from None
            except (HTTPError, OSError) as exc:
                if attempt == self.attempts:
                    raise ApiUnavailable(f"Kubernetes API unreachable: cannot {what}: {exc}", what=what) from None
            self._sleep(delay)
            delay = min(delay * 2, 5)
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------------------------- Jobs
    def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a Job; ``Conflict`` if one of that name exists."""
        name = (body.get("metadata") or {}).get("name")
        return self.call(
            lambda: self.batch.create_namespaced_job(self.namespace, body, _preload_content=False), f"create Job {name}"
        )

    def read_job(self, name: str) -> dict[str, Any]:
        """The Job named ``name``; ``NotFound`` if there is none."""
        return self.call(
            lambda: self.batch.read_namespaced_job(name, self.namespace, _preload_content=False), f"read Job {name}"
        )

    def read_job_or_none(self, name: str) -> dict[str, Any] | None:
        """The Job named ``name``, or None if there is none (the common "does it exist" question)."""
        try:
            return self.read_job(name)
        except NotFound:
            return None

    def delete_job(self, name: str, propagation: str = "Foreground") -> None:
        """Delete a Job (``propagation``: Foreground keeps it visible, with a deletionTimestamp,
        until its pods are gone; Background deletes it at once); ``NotFound`` if there is none."""
        from kubernetes import client

        body = client.V1DeleteOptions(propagation_policy=propagation)
        self.call(
            lambda: self.batch.delete_namespaced_job(name, self.namespace, body=body, _preload_content=False),
            f"delete Job {name}",
        )

    def list_jobs(self, label_selector: str) -> tuple[list[dict[str, Any]], str | None]:
        """(Jobs matching the selector, the list's resourceVersion to watch from)."""
        data = self.call(
            lambda: self.batch.list_namespaced_job(
                self.namespace, label_selector=label_selector, _preload_content=False
            ),
            "list step Jobs",
        )
        return data.get("items") or [], (data.get("metadata") or {}).get("resourceVersion")

    def watch_jobs(
        self, label_selector: str, resource_version: str | None, timeout_seconds: int
    ) -> Generator[tuple[str, dict[str, Any]], None, None]:
        """(event type, object) from a watch of Jobs since ``resource_version``, until the server
        ends it (``timeout_seconds``). ``Gone`` when the version expired; other failures raise
        their typed error. No retries: the caller re-lists (an informer's job)."""
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        w = watch.Watch()
        # timeout_seconds also disables the client's own 410 retry, which would re-use the expired
        # resourceVersion; the caller re-lists instead.
        try:
            for event in w.stream(
                self.batch.list_namespaced_job,
                self.namespace,
                label_selector=label_selector,
                resource_version=resource_version,
                timeout_seconds=timeout_seconds,
                allow_watch_bookmarks=True,
                _request_timeout=timeout_seconds + 10,
            ):
                yield str(event.get("type")), event.get("raw_object") or {}
        except ApiException as exc:
            raise error_for(exc.status, exc.reason, _status_message(exc), "watch step Jobs", self.namespace) from None
        finally:
            w.stop()

    # ---------------------------------------------------------------------------------- pods
    def read_pod(self, name: str) -> dict[str, Any]:
        return self.call(
            lambda: self.core.read_namespaced_pod(name, self.namespace, _preload_content=False), f"read pod {name}"
        )

    def list_pods(self, label_selector: str, what: str = "list pods") -> list[dict[str, Any]]:
        data = self.call(
            lambda: self.core.list_namespaced_pod(
                self.namespace, label_selector=label_selector, _preload_content=False
            ),
            what,
        )
        return (data or {}).get("items") or []

    def read_pod_log(self, name: str, container: str, tail_lines: int) -> bytes:
        return (
            self.call(
                lambda: self.core.read_namespaced_pod_log(
                    name, self.namespace, container=container, tail_lines=tail_lines, _preload_content=False
                ),
                f"read logs of pod {name}",
                raw=True,
            )
            or b""
        )

    # ---------------------------------------------------------------------------- ConfigMaps
    # The warm mode's step requests (``quicktune.backends.kubernetes.warm``): created by the
    # controller, claimed by worker pods with a compare-and-set (``replace_configmap`` with the
    # resourceVersion that was read: ``Conflict`` when someone else changed it first).
    def create_configmap(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a ConfigMap; ``Conflict`` if one of that name exists."""
        name = (body.get("metadata") or {}).get("name")
        return self.call(
            lambda: self.core.create_namespaced_config_map(self.namespace, body, _preload_content=False),
            f"create ConfigMap {name}",
        )

    def read_configmap(self, name: str) -> dict[str, Any]:
        """The ConfigMap named ``name``; ``NotFound`` if there is none."""
        return self.call(
            lambda: self.core.read_namespaced_config_map(name, self.namespace, _preload_content=False),
            f"read ConfigMap {name}",
        )

    def read_configmap_or_none(self, name: str) -> dict[str, Any] | None:
        try:
            return self.read_configmap(name)
        except NotFound:
            return None

    def replace_configmap(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Replace a ConfigMap (``PUT``). With ``metadata.resourceVersion`` set this is a
        compare-and-set: ``Conflict`` when the object changed since that version was read."""
        name = (body.get("metadata") or {}).get("name")
        return self.call(
            lambda: self.core.replace_namespaced_config_map(name, self.namespace, body, _preload_content=False),
            f"update ConfigMap {name}",
        )

    def delete_configmap(self, name: str) -> None:
        """Delete a ConfigMap; ``NotFound`` if there is none."""
        self.call(
            lambda: self.core.delete_namespaced_config_map(name, self.namespace, _preload_content=False),
            f"delete ConfigMap {name}",
        )

    def list_configmaps(self, label_selector: str) -> list[dict[str, Any]]:
        data = self.call(
            lambda: self.core.list_namespaced_config_map(
                self.namespace, label_selector=label_selector, _preload_content=False
            ),
            "list step requests",
        )
        return (data or {}).get("items") or []
