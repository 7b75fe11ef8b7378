"""ConfigMaps in the fake API server, with the real server's optimistic concurrency.

Why: the Kubernetes backend's warm mode (``quicktune.backends.kubernetes.warm``) queues step
requests as ConfigMaps that worker pods claim with a compare-and-set on ``resourceVersion``. That
protocol is only as safe as the server's update semantics, so the fake enforces them as the
kube-apiserver does:

* create: ``409 AlreadyExists`` for a name that exists; a new ``uid``, ``creationTimestamp`` and
  ``resourceVersion``;
* update (``PUT``): when the body carries ``metadata.resourceVersion`` it must equal the stored
  one, else ``409 Conflict`` ("the object has been modified"); without one the update is
  unconditional (ConfigMaps allow that); ``uid`` and ``creationTimestamp`` are kept, the name and
  namespace must match the URL; ``404`` for a name that does not exist;
* delete: ``404`` for an unknown name; objects whose every owner (ownerReferences, by uid) is gone
  are garbage-collected like Jobs (``gc``);
* list with label selectors; every object is schema-validated (``admission``).

Every change gets the next resourceVersion from the shared counter. ``FakeCluster.configmaps``
(name -> data, what the kubelet resolves ``envFrom``/``configMapKeyRef`` against) is kept in step.
No watch: the warm-mode code lists and reads.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from quicktune.testing.fake_k8s.store import Reject, match_selector, now


def _not_found(name: str) -> Reject:
    return Reject(404, "NotFound", f'configmaps "{name}" not found', {"name": name, "kind": "configmaps"})


class ConfigMapStore:
    """ConfigMap objects by (namespace, name). Mixed into ``FakeCluster``; the lock is the cluster's."""

    _lock: threading.RLock
    configmaps: dict[tuple[str, str], dict[str, str]]
    configmap_objects: dict[tuple[str, str], dict[str, Any]]
    configmap_conflicts: int

    def _check_kind(self, body: Mapping[str, Any], namespace: str) -> None:
        if body.get("apiVersion") != "v1" or body.get("kind") != "ConfigMap":
            raise Reject(400, "BadRequest", f"expected v1 ConfigMap, got {body.get('apiVersion')} {body.get('kind')}")
        if (body.get("metadata") or {}).get("namespace", namespace) != namespace:
            raise Reject(400, "BadRequest", "the namespace of the object does not match the namespace of the URL")

    def create_configmap(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check_kind(body, namespace)
        meta = dict(body.get("metadata") or {})
        for key in ("uid", "resourceVersion", "creationTimestamp"):
            meta.pop(key, None)  # the server sets these (a create ignores them)
        obj = {**copy.deepcopy(body), "metadata": meta}
        self.validate(obj)
        name = meta["name"]
        with self._lock:
            if (namespace, name) in self.configmap_objects:
                raise Reject(
                    409, "AlreadyExists", f'configmaps "{name}" already exists', {"name": name, "kind": "configmaps"}
                )
            meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now())
            self._bump(obj)
            self.configmap_objects[(namespace, name)] = obj
            self.configmaps[(namespace, name)] = dict(obj.get("data") or {})
            return copy.deepcopy(obj)

    def read_configmap(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            obj = self.configmap_objects.get((namespace, name))
            if obj is None:
                raise _not_found(name)
            return copy.deepcopy(obj)

    def replace_configmap(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """``PUT``: optimistic concurrency on ``metadata.resourceVersion`` (module docstring)."""
        self._check_kind(body, namespace)
        meta = dict(body.get("metadata") or {})
        if meta.get("name") != name:
            raise Reject(
                400, "BadRequest", f"the name of the object ({meta.get('name')}) does not match the URL ({name})"
            )
        with self._lock:
            current = self.configmap_objects.get((namespace, name))
            if current is None:
                raise _not_found(name)
            cur_meta = current["metadata"]
            asked = meta.get("resourceVersion")
            if asked not in (None, "") and str(asked) != cur_meta["resourceVersion"]:
                self.configmap_conflicts += 1
                raise Reject(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on configmaps "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                    {"name": name, "kind": "configmaps"},
                )
            if meta.get("uid") not in (None, "", cur_meta["uid"]):
                raise Reject(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {cur_meta['uid']}",
                )
            meta.update(namespace=namespace, uid=cur_meta["uid"], creationTimestamp=cur_meta["creationTimestamp"])
            meta.pop("resourceVersion", None)
            obj = {**copy.deepcopy(body), "metadata": meta}
            self.validate({**obj, "metadata": {k: v for k, v in meta.items() if k not in ("uid", "creationTimestamp")}})
            self._bump(obj)
            self.configmap_objects[(namespace, name)] = obj
            self.configmaps[(namespace, name)] = dict(obj.get("data") or {})
            return copy.deepcopy(obj)

    def delete_configmap(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            obj = self.configmap_objects.pop((namespace, name), None)
            if obj is None:
                raise _not_found(name)
            self.configmaps.pop((namespace, name), None)
            self._bump(obj)
            return copy.deepcopy(obj)

    def list_configmaps(self, namespace: str, selector: str | None) -> dict[str, Any]:
        with self._lock:
            items = [
                copy.deepcopy(o)
                for (ns, _), o in sorted(self.configmap_objects.items())
                if ns == namespace and match_selector(o["metadata"].get("labels") or {}, selector)
            ]
            return {
                "kind": "ConfigMapList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    def _collect_configmaps_of(self, live_uids: set[str], gone_uid: str, alive: Any) -> None:
        """Garbage collection: ConfigMaps that named ``gone_uid`` as an owner and have no live owner left."""
        with self._lock:
            garbage = [
                key
                for key, o in self.configmap_objects.items()
                if any(r.get("uid") == gone_uid for r in o["metadata"].get("ownerReferences") or [])
                and not any(alive(r, live_uids) for r in o["metadata"]["ownerReferences"])
            ]
            for ns, name in garbage:
                self.delete_configmap(ns, name)
