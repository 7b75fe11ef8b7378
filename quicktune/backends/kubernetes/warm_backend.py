"""``WarmKubernetesBackend``: the Kubernetes backend's warm mode (``warm_workers=W``).

Steps are queued as request ConfigMaps and run by a pool of at most W warm worker pods (the
protocol, and why, in ``quicktune.backends.kubernetes.warm``). Everything the contract asks holds
as in the one-Job-per-step mode: ids are the step ids (a request object that exists is re-adopted,
never duplicated), a new backend instance sees every request of its search in the namespace
(``active`` lists them), a finished step's result is its RESULT.json on S3, ``rerun`` resets a
finished request, ``cancel`` marks it cancelled. ``capacity()`` is W: no more steps run at once
than there are workers.

Follow-ups prefer the warm worker: when a config's step finished on pod P, the next request of
that config carries ``quicktune.io/preferred-worker=P`` and P takes it first.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

from quicktune.backends.base import CANCELLED, BackendError, StepRequest, StepStatus
from quicktune.backends.kubernetes.api import Conflict, NotFound
from quicktune.backends.kubernetes.backend import KubernetesBackend
from quicktune.backends.kubernetes.manifests import ANNOTATION_CONFIG, ANNOTATION_RESULT, result_uri
from quicktune.backends.kubernetes.warm import (
    A_ATTEMPTS,
    A_CLAIM,
    A_CLAIMED_AT,
    A_FINISHED_AT,
    A_MESSAGE,
    A_RENEWED_AT,
    A_STATE,
    A_WORKER,
    CANCELLED_STATE,
    DONE,
    FINISHED_STATES,
    KEY_LOG,
    QUEUED,
    RequestView,
    WorkerPool,
    build_request_configmap,
    build_worker_job,
    pool_name,
    request_selector,
    set_annotations,
    update_request,
)

log = logging.getLogger(__name__)

__all__ = ["WarmKubernetesBackend"]


class WarmKubernetesBackend(KubernetesBackend):
    """A ``KubernetesBackend`` whose steps run on warm worker pods (module docstring). Built by
    ``KubernetesBackend.from_settings`` when ``settings.warm_workers > 0``."""

    def _setup(
        self, settings: Any, search_id: str | None, max_concurrent: int, api_client: Any, **runtime: Any
    ) -> None:
        super()._setup(settings, search_id, max_concurrent, api_client, **runtime)
        self.warm_workers = int(settings.warm_workers)
        self._req_selector = request_selector(search_id)
        self._views: dict[str, RequestView] = {}  # newest request object seen, by step id
        self._config_worker: dict[str, str] = {}  # config id -> the worker pod that ran its last step
        self.pool = WorkerPool(self._api, search_id, self.warm_workers, self._worker_job)

    def _worker_job(self, name: str) -> dict[str, Any]:
        kwargs = self.settings.job_kwargs()
        kwargs["owner"] = self._owner_reference()
        return build_worker_job(
            name,
            search_id=self.search_id,
            settings_kwargs=kwargs,
            lease_seconds=self.settings.warm_lease_seconds,
            idle_seconds=self.settings.warm_idle_seconds,
            service_account=self.settings.warm_service_account,
        )

    # ------------------------------------------------------------------------------------ API
    def capacity(self) -> int:
        return self.warm_workers

    def _start(self, request: StepRequest, rerun: bool) -> str:
        name = request.id
        uri = result_uri(request)
        with self._lock:
            preferred = self._config_worker.get(request.config_id)
        body = build_request_configmap(
            request,
            namespace=self.namespace,
            owner=self._owner_reference(),
            preferred_worker=preferred,
            pool=pool_name(self.search_id),
            max_attempts=self.settings.backoff_limit + 1,
            active_deadline_seconds=self.settings.active_deadline_seconds,
        )
        with self._lock:
            rec = self._step(name)
            rec.result_uri = uri
            rec.mine = True
        existing = self._api.read_configmap_or_none(name)
        if existing is not None:
            view = RequestView(existing)
            if not rerun and view.state != CANCELLED_STATE:
                self._see(view)
                return name  # re-adopted (queued, running or finished)
            if view.state in (QUEUED, "running") and rerun:
                self._see(view)
                return name  # still pending or running: re-adopted, not duplicated
            self._wait_worker_gone(view)
            self._safe_delete(uri)
            self._reset(name, body)
            self.pool.ensure(1, force=True)
            return name
        if not rerun and self._safe_exists(uri):
            log.info("step %s already has a result at %s; not queueing it", name, uri)
            with self._lock:
                rec.in_store = True
            return name
        if rerun:
            self._safe_delete(uri)
        try:
            created = self._api.create_configmap(body)
        except Conflict:  # an earlier controller queued it in between: adopt it
            created = self._api.read_configmap(name)
        else:
            with self._lock:
                self.created.append(name)
        self._see(RequestView(created))
        self.pool.ensure(self._work(), force=True)
        return name

    def _reset(self, name: str, body: dict[str, Any]) -> None:
        """A finished or cancelled request, queued again (its old outcome and claim dropped)."""

        def change(view: RequestView) -> bool:
            view.obj["metadata"]["labels"] = body["metadata"]["labels"]
            view.obj["data"] = copy.deepcopy(body["data"])
            set_annotations(
                view,
                **{
                    A_STATE: QUEUED,
                    A_ATTEMPTS: "0",
                    A_CLAIM: None,
                    A_WORKER: None,
                    A_MESSAGE: None,
                    A_CLAIMED_AT: None,
                    A_RENEWED_AT: None,
                    A_FINISHED_AT: None,
                },
            )
            return True

        obj = update_request(self._api, name, change)
        with self._lock:
            rec = self._step(name)
            rec.cancelled = rec.in_store = rec.vanished = False
            rec.final = rec.result = rec.wall_seconds = None
            rec.read_error_since = None
        if obj is None:  # deleted in between: queue it anew
            obj = self._api.create_configmap(body)
        self._see(RequestView(obj))

    def _wait_worker_gone(self, view: RequestView, timeout: float = 120.0) -> None:
        """Before a cancelled request runs again, the worker that ran it must have stopped (it
        exits at its next lease renewal), so two processes never train one config at once."""
        if view.state != CANCELLED_STATE or not view.worker:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pod = self._api.read_pod(view.worker)
            except NotFound:
                return
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return
            time.sleep(0.3)
        raise BackendError(f"worker pod {view.worker} still runs cancelled step {view.name} after {timeout:.0f} s")

    def poll(self, step_id: str) -> StepStatus:
        with self._lock:
            rec = self._steps.get(step_id)
            if rec is not None:
                if rec.in_store:
                    in_store = True
                elif rec.final is not None:
                    return rec.final
                else:
                    in_store = False
            else:
                in_store = False
        if in_store:
            return self._state_from_result(step_id)
        obj = self._api.read_configmap_or_none(step_id)
        if obj is None:
            with self._lock:
                known = rec is not None and (rec.cancelled or step_id in self._views)
            if not known:
                raise KeyError(step_id)
            return self._set_final(step_id, StepStatus(CANCELLED, f"step request {step_id} was deleted"))
        view = self._see(obj=obj)
        self.pool.ensure(self._work())
        status = view.status()
        if view.state == DONE:
            return self._state_from_result(step_id)
        if status.done:
            return self._set_final(step_id, status)
        return status

    def result(self, step_id: str) -> dict[str, Any]:
        status, found = self._finished_result(step_id)
        if found is not None:
            return found
        message = status.message or f"step {step_id} failed on a warm worker"
        return {"status": "failed", "message": message, "epochs": []}

    def _result_wall_seconds(self, step_id: str, rec: Any) -> float | None:
        view = self._views.get(step_id)  # claimed .. finished, as the request records them
        return view.wall_seconds() if view is not None else None

    def logs(self, step_id: str) -> str:
        obj = self._api.read_configmap_or_none(step_id)
        if obj is None:
            return ""
        view = RequestView(obj)
        parts = [
            f"===== step request {step_id}: {view.state}, attempt {view.attempts}, worker {view.worker or '-'} ====="
        ]
        stored = (obj.get("data") or {}).get(KEY_LOG)
        if stored:
            parts.append(stored)
        elif view.worker and view.state == "running":
            try:
                text = self._api.read_pod_log(view.worker, "step", self._log_tail_lines)
                parts.append(text.decode("utf-8", errors="replace"))
            except BackendError as exc:
                parts.append(f"(worker log unavailable: {exc})")
        return "\n".join(parts)

    def cancel(self, step_id: str) -> None:
        with self._lock:
            rec = self._step(step_id)
            rec.cancelled = True
            rec.in_store = False
            rec.final = StepStatus(CANCELLED, "cancelled")

        def change(view: RequestView) -> bool:
            if view.state == CANCELLED_STATE:
                return False
            set_annotations(view, **{A_STATE: CANCELLED_STATE, A_CLAIM: None, A_MESSAGE: "cancelled by the controller"})
            return True

        obj = update_request(self._api, step_id, change)
        if obj is not None:
            self._see(RequestView(obj))

    def active(self) -> list[str]:
        items = self._api.list_configmaps(self._req_selector)
        out = []
        for obj in items:
            view = self._see(obj=obj)
            if view.state in (QUEUED, "running"):
                out.append(view.name)
        self.pool.ensure(len(out))
        return sorted(out)

    def close(self) -> None:
        super().close()  # the workers keep running and stop when idle

    # -------------------------------------------------------------------------------- helpers
    def _work(self) -> int:
        with self._lock:
            return sum(1 for v in self._views.values() if v.state in (QUEUED, "running"))

    def _see(self, view: RequestView | None = None, obj: dict[str, Any] | None = None) -> RequestView:
        view = view or RequestView(obj or {})
        with self._lock:
            self._views[view.name] = view
            rec = self._step(view.name)
            uri = view.annotations.get(ANNOTATION_RESULT)
            if uri and rec.result_uri is None:
                rec.result_uri = uri
            if view.state in FINISHED_STATES and view.worker:
                cfg = view.annotations.get(ANNOTATION_CONFIG)
                if cfg:
                    self._config_worker[cfg] = view.worker
            if view.state == CANCELLED_STATE and rec.final is None:
                rec.final = StepStatus(CANCELLED, "cancelled")
            wall = view.wall_seconds()
            if wall is not None:
                rec.wall_seconds = wall
        return view

    def preferred_worker_of(self, config_id: str) -> str | None:
        """The worker pod that ran ``config_id``'s last finished step (seen by this backend)."""
        with self._lock:
            return self._config_worker.get(config_id)


KubernetesBackend.warm_class = WarmKubernetesBackend
