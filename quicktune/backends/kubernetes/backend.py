"""``KubernetesBackend``: each finetuning step is one ``batch/v1`` Job (package docstring for why).

Identity: a Job is named by the step's deterministic id, so creating a Job whose name exists
answers ``409 AlreadyExists`` (``api.Conflict``) and the backend re-adopts the running Job: a
restarted controller never duplicates a step.

Results: the step writes its RESULT.json to S3 next to the checkpoints
(``<checkpoint_dir>/results/<step_id>.json``) via ``--out s3://...``, so a result survives the pod
and the controller. If that object already exists when a step is started, the step finished
earlier (its Job may have been garbage-collected by its TTL) and is reported as succeeded without
starting a new Job.

State: everything the backend knows about one step lives in one ``StepRecord`` (the last Job
object seen, the queued Job body, the result, the terminal state that outlives the Job, ...),
kept in one dict by step id and guarded by one lock. The ``JobInformer`` (list + watch, 410
handling) feeds Job objects into the records; ``poll`` falls back to a GET for a Job the watch
has not shown yet. Failed steps' logs are read from the pods so the controller can attach them to
the config's MLflow run.

Cost: a step's result carries ``wall_seconds``, the Job's start to its completion as the API server
recorded them (``status.job_wall_seconds``): everything the step paid -- pod start, imports, data
sync, weight load, train, eval, checkpoint -- beside the ``train_seconds``/``eval_seconds`` of its
epochs. The search spreads the difference over the step's epochs so the optimizer's cost model sees
what a step costs on a cluster (``quicktune.search.loop``). A Job deleted before the backend saw it
complete (its TTL, a restart long after) leaves no ``wall_seconds``.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quicktune.backends.base import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    BackendError,
    StepRequest,
    StepStatus,
    TrialBackend,
)
from quicktune.backends.kubernetes.api import Conflict, KubernetesApi, NotFound, default_api_client, own_image
from quicktune.backends.kubernetes.informer import JobInformer
from quicktune.backends.kubernetes.manifests import (
    ANNOTATION_RESULT,
    LABEL_SEARCH,
    STEP_CONTAINER,
    build_job,
    result_uri,
    sanitize_label_value,
)
from quicktune.backends.kubernetes.settings import OPTION_ENV, StepJobSettings, owner_from_env
from quicktune.backends.kubernetes.status import (
    being_deleted,
    controller_of,
    job_state,
    job_wall_seconds,
    pod_has_condition,
    pod_termination,
    resource_version,
)

log = logging.getLogger(__name__)

__all__ = ["KubernetesBackend", "StepRecord", "backend_from_env"]

# Constructor keywords that are not Job settings (how the backend itself runs)
_RUNTIME_KEYS = ("watch_timeout_seconds", "log_tail_lines", "read_result", "result_exists")


def _storage_read(uri: str) -> bytes:
    from quicktune.storage import read_bytes

    return read_bytes(uri)


def _storage_exists(uri: str) -> bool:
    from quicktune.storage import exists

    return exists(uri)


# ---------------------------------------------------------------------------- one step's record
@dataclass
class StepRecord:
    """All the backend knows about one step (by step id = Job name)."""

    job: dict[str, Any] | None = None  # the newest Job object seen (list, watch, GET, create); None: none now
    result_uri: str | None = None  # where its RESULT.json is (from the request or the Job's annotation)
    queued: dict[str, Any] | None = None  # the Job body, while it waits for capacity (FIFO by queue_seq)
    queue_seq: int = 0
    mine: bool = False  # started or adopted through this backend instance (counts against max_concurrent)
    cancelled: bool = False
    in_store: bool = False  # finished before: its RESULT.json exists, no Job needed
    result: dict[str, Any] | None = None  # its RESULT.json, once read
    final: StepStatus | None = None  # the last terminal state seen; outlives the Job object
    vanished: bool = False  # its Job disappeared before it finished
    read_error_since: float | None = None  # monotonic time of the first failed attempt to read its result
    wall_seconds: float | None = None  # the completed Job's start -> completion (outlives the Job object)


class KubernetesBackend(TrialBackend):
    """A ``TrialBackend`` that runs each step as a ``batch/v1`` Job (see the module docstring).

    ``search_id`` scopes ``active()`` and the watch to one search's Jobs (label
    ``quicktune.io/search-id``); ``None`` sees every quicktune step Job in the namespace.
    ``max_concurrent``: at most this many of *this backend's* step Jobs exist unfinished at once;
    further steps wait in an in-memory queue (PENDING) and are created as Jobs finish (on the next
    ``start``/``poll``/``active`` call). ``api_client`` defaults to the in-cluster configuration,
    then ``~/.kube/config``. ``owner_pod`` is the controller pod, ``{"name": ..., "uid": ...}``; by
    default it is read from the downward API env vars ``POD_NAME`` / ``POD_UID`` (absent: no
    ownerReference). ``owner_mode`` (``settings.OWNER_MODES``): what owns the step Jobs -- by default
    (``controller``) the pod's own controller, the controller Job, found with one GET of the pod
    before the first Job is created, so a rescheduled controller pod finds its steps still running.
    ``secret_names`` are Secrets whose keys become env vars of every step (``envFrom``);
    ``secret_env`` maps single env vars to ``(secret, key)``. ``env`` holds non-secret settings
    such as ``AWS_ENDPOINT_URL``. The Job settings end up in ``self.settings`` (a
    ``StepJobSettings``); ``from_settings`` builds a backend from one directly.
    """

    OPTION_ENV = OPTION_ENV
    #: the warm mode's class (``settings.warm_workers > 0``), registered by ``warm_backend`` on import
    #: (a subclass of this one: registering keeps the two modules free of an import circle)
    warm_class: type[KubernetesBackend] | None = None

    def __init__(
        self,
        namespace: str,
        image: str,
        search_id: str | None = None,
        max_concurrent: int = 4,
        gpu: int = 0,
        node_selector: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, Any]] | None = None,
        priority_class: str | None = None,
        kueue_queue: str | None = None,
        secret_names: Sequence[str] = (),
        secret_env: Mapping[str, tuple[str, str]] | None = None,
        env: Mapping[str, str] | None = None,
        service_account: str | None = None,
        owner_pod: Mapping[str, str] | None = None,
        active_deadline_seconds: int = 4 * 3600,
        backoff_limit: int = 3,
        ttl_seconds_after_finished: int | None = 24 * 3600,
        cpu: str | None = "1",
        memory: str | None = "4Gi",
        api_client: Any = None,
        watch_timeout_seconds: int = 60,
        log_tail_lines: int = 400,
        read_result: Callable[[str], bytes] | None = None,
        result_exists: Callable[[str], bool] | None = None,
        owner_mode: str = "controller",
        warm_workers: int = 0,
        warm_lease_seconds: int = 60,
        warm_idle_seconds: int = 300,
        warm_service_account: str | None = "quicktune-step-worker",
    ) -> None:
        settings = StepJobSettings(
            namespace=namespace,
            image=image,
            gpu=gpu,
            cpu=cpu,
            memory=memory,
            node_selector=node_selector,
            tolerations=tuple(tolerations) if tolerations is not None else None,
            priority_class=priority_class,
            kueue_queue=kueue_queue,
            secret_names=tuple(secret_names),
            secret_env=secret_env,
            env=dict(env or {}),
            service_account=service_account,
            owner_pod=dict(owner_pod) if owner_pod else owner_from_env(),
            active_deadline_seconds=active_deadline_seconds,
            backoff_limit=backoff_limit,
            ttl_seconds_after_finished=ttl_seconds_after_finished,
            owner_mode=owner_mode,
            warm_workers=warm_workers,
            warm_lease_seconds=warm_lease_seconds,
            warm_idle_seconds=warm_idle_seconds,
            warm_service_account=warm_service_account,
        )
        self._setup(
            settings,
            search_id,
            max_concurrent,
            api_client,
            watch_timeout_seconds=watch_timeout_seconds,
            log_tail_lines=log_tail_lines,
            read_result=read_result,
            result_exists=result_exists,
        )

    @classmethod
    def from_settings(
        cls,
        settings: StepJobSettings,
        search_id: str | None = None,
        *,
        max_concurrent: int = 4,
        api_client: Any = None,
        **runtime: Any,
    ) -> KubernetesBackend:
        """A backend whose Jobs follow ``settings`` (``runtime``: ``watch_timeout_seconds``,
        ``log_tail_lines``, ``read_result``, ``result_exists``)."""
        unknown = sorted(set(runtime) - set(_RUNTIME_KEYS))
        if unknown:
            raise TypeError(f"unknown KubernetesBackend argument(s) {unknown}")
        if settings.warm_workers > 0 and cls is KubernetesBackend:
            if cls.warm_class is None:  # registered by warm_backend, which the package imports
                raise BackendError("the warm mode is not available (quicktune.backends.kubernetes.warm_backend)")
            cls = cls.warm_class
        backend = cls.__new__(cls)
        backend._setup(settings, search_id, max_concurrent, api_client, **runtime)
        return backend

    def _setup(
        self,
        settings: StepJobSettings,
        search_id: str | None,
        max_concurrent: int,
        api_client: Any,
        *,
        watch_timeout_seconds: int = 60,
        log_tail_lines: int = 400,
        read_result: Callable[[str], bytes] | None = None,
        result_exists: Callable[[str], bool] | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.settings = settings
        self.namespace = settings.namespace
        self.image = settings.image
        self.search_id = search_id
        self.max_concurrent = int(max_concurrent)
        self.owner_pod = settings.owner_pod
        self._owner: dict[str, str] | None = None  # the step Jobs' owner, once resolved (_owner_reference)
        self._owner_resolved = False
        self._api = KubernetesApi(api_client or default_api_client(), settings.namespace)
        selector = "app.kubernetes.io/managed-by=quicktune,app.kubernetes.io/component=step"
        if search_id is not None:
            selector += f",{LABEL_SEARCH}={sanitize_label_value(search_id)}"
        self._selector = selector
        self._log_tail_lines = int(log_tail_lines)
        self._read_result = read_result or _storage_read
        self._result_exists = result_exists or _storage_exists
        self._lock = threading.RLock()
        self._steps: dict[str, StepRecord] = {}
        self._queue_seq = itertools.count(1)
        self.result_read_grace_seconds = 120.0
        self._informer = JobInformer(
            self._api,
            selector,
            self,
            watch_timeout_seconds=watch_timeout_seconds,
            name=f"qt-k8s-watch-{search_id or settings.namespace}",
        )
        self.created: list[str] = []  # Jobs this instance created (201), for tests and metrics

    @property
    def relists(self) -> int:
        """How often the watch (re-)listed: 1 + one per 410 Gone or error."""
        return self._informer.relists

    @classmethod
    def from_options(
        cls,
        *,
        workers: int,
        workdir: str | None = None,
        search_id: str | None = None,
        step_timeout: float | None = None,
        threads_per_worker: int = 1,
        api_client: Any = None,
        **options: Any,
    ) -> KubernetesBackend:
        """What ``quicktune search --backend kubernetes [--backend-option KEY=VALUE ...]`` builds:
        ``QUICKTUNE_*`` env settings, overridden by the options (keys of ``OPTION_ENV``);
        ``--step-timeout`` becomes the Jobs' activeDeadlineSeconds."""
        client = _LazyClient(api_client)
        settings = StepJobSettings.from_options(
            options, os.environ, step_timeout=step_timeout, own_image=client.own_image
        )
        return cls.from_settings(settings, search_id or None, max_concurrent=workers, api_client=client.get())

    # ---------------------------------------------------------------------------------------- API
    def capacity(self) -> int:
        return self.max_concurrent

    def start(self, request: StepRequest) -> str:
        return self._start(request, rerun=False)

    def rerun(self, request: StepRequest) -> str:
        """Run a finished (or never started) step again: its old Job and RESULT.json are deleted
        first; a step still pending or running is re-adopted, not duplicated."""
        return self._start(request, rerun=True)

    def _step(self, name: str) -> StepRecord:
        """The record of ``name``, created on first use (call with the lock held)."""
        rec = self._steps.get(name)
        if rec is None:
            rec = self._steps[name] = StepRecord()
        return rec

    def _owner_reference(self) -> dict[str, str] | None:
        """What owns this backend's step Jobs (resolved once). In mode ``controller``: the controller
        pod's own controller (its Job), read from the pod's ownerReferences with one GET, so that the
        steps outlive a rescheduled pod; the pod itself when nothing controls it."""
        with self._lock:
            if self._owner_resolved:
                return self._owner
        owner = self.settings.owner_reference()
        if owner is not None and self.settings.owner_mode == "controller":
            try:
                owner = controller_of(self._api.read_pod(owner["name"]))
            except (BackendError, ValueError) as exc:
                raise BackendError(
                    f"cannot read the controller pod {self.namespace}/{owner['name']} to find the Job that owns "
                    f"it (the step Jobs' owner): {exc}; grant the controller 'get' on pods, or set "
                    "QUICKTUNE_STEP_OWNER=pod (steps die with the pod) or none (clean up by label)"
                ) from None
            if owner["uid"] == (self.settings.owner_pod or {}).get("uid"):
                log.warning(
                    "the controller pod %s has no controller (no Job restarts it): its step Jobs are owned by "
                    "the pod and are garbage-collected with it",
                    owner["name"],
                )
            else:
                log.info("step Jobs are owned by %s %s (the controller pod's controller)", owner["kind"], owner["name"])
        with self._lock:
            self._owner, self._owner_resolved = owner, True
        return owner

    def _adopt(self, job: dict[str, Any]) -> None:
        self._remember(job)
        with self._lock:
            rec = self._step(job["metadata"]["name"])
            rec.mine = True
            rec.cancelled = False

    def _start(self, request: StepRequest, rerun: bool) -> str:
        self._informer.start()
        name = request.id
        uri = result_uri(request)
        kwargs = self.settings.job_kwargs()
        body = build_job(request, **kwargs)  # validates the request before anything happens
        owner = self._owner_reference()
        if owner != kwargs["owner"]:
            body = build_job(request, **{**kwargs, "owner": owner})
        with self._lock:
            rec = self._step(name)
            rec.result_uri = uri
            if rec.queued is not None:
                return name
        if rerun:
            existing = self._api.read_job_or_none(name)
            if existing is not None and not being_deleted(existing) and not job_state(existing).done:
                self._adopt(existing)
                return name
            if existing is not None:
                try:
                    self._api.delete_job(name, "Foreground")
                except NotFound:
                    pass
                self._wait_gone(name)
            self._safe_delete(uri)
            with self._lock:
                rec.cancelled = True  # forces the "run again" path below
        with self._lock:
            known = rec.job
            if not rec.cancelled and (rec.in_store or (known is not None and not being_deleted(known))):
                rec.mine = True
                return name
        existing = self._api.read_job_or_none(name)
        if existing is not None and being_deleted(existing):
            self._wait_gone(name)  # a cancelled Job is still being deleted: let it go, then run again
            existing = None
        if existing is not None:
            self._adopt(existing)
            log.info("re-adopted existing Job %s", name)
            return name
        with self._lock:
            was_cancelled = rec.cancelled
        if not was_cancelled and self._safe_exists(uri):
            log.info("step %s already has a result at %s; not starting a Job", name, uri)
            with self._lock:
                rec.in_store = True
                rec.mine = True
            return name
        with self._lock:
            rec.cancelled = rec.vanished = rec.in_store = False
            rec.final = rec.result = rec.job = rec.wall_seconds = None
            rec.mine = True
            rec.queued, rec.queue_seq = body, next(self._queue_seq)
        self._pump()
        return name

    def poll(self, step_id: str) -> StepStatus:
        self._informer.start()
        self._pump()
        with self._lock:
            rec = self._steps.get(step_id)
            if rec is None:
                job, final, vanished, in_store = None, None, False, False
            else:
                if rec.cancelled:
                    return StepStatus(CANCELLED, "cancelled")
                if rec.queued is not None:
                    return StepStatus(PENDING, f"queued: {self.max_concurrent} step Jobs already running")
                job, final, vanished, in_store = rec.job, rec.final, rec.vanished, rec.in_store
        if in_store:
            return self._state_from_result(step_id)
        if final is not None:
            return final
        if job is None:
            job = self._api.read_job_or_none(step_id)
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
        status, found = self._finished_result(step_id)
        if found is not None:
            return found
        # the Job failed without a RESULT.json: its own reason plus what the last pod said
        pod_info = self._last_pod_termination(step_id)
        outcome = "oom" if pod_info.get("reason") == "OOMKilled" else "failed"
        message = f"Job {step_id} failed ({status.message or 'no reason given'})"
        if pod_info:
            message += (
                f"; last pod {pod_info.get('pod')}: exit code {pod_info.get('exitCode')}"
                f" ({pod_info.get('reason') or 'no reason'})"
            )
        out: dict[str, Any] = {"status": outcome, "message": message, "epochs": []}
        if status.message.startswith("DeadlineExceeded"):
            out["timeout"] = True  # activeDeadlineSeconds: re-running would time out again
        return out

    def _finished_result(self, step_id: str) -> tuple[StepStatus, dict[str, Any] | None]:
        """``result``'s common half (both modes): the finished step's status and a copy of its
        RESULT with ``wall_seconds`` added, the ``failed`` answer of a cancelled step, or None
        when it finished without a RESULT. Raises while the step runs."""
        status = self.poll(step_id)
        if not status.done:
            raise BackendError(f"step {step_id} is {status.state}; its result is not available yet")
        if status.state == CANCELLED:
            return status, {"status": "failed", "message": f"step {step_id} was cancelled", "epochs": []}
        with self._lock:
            rec = self._steps.get(step_id)
            res = copy.deepcopy(rec.result) if rec is not None and rec.result is not None else None
            wall = self._result_wall_seconds(step_id, rec) if res is not None else None
        if res is not None and wall is not None:
            res["wall_seconds"] = wall
        return status, res

    def _result_wall_seconds(self, step_id: str, rec: Any) -> float | None:
        """The step's wall time for its result (the Job's; warm mode: the request's). Under the lock."""
        return rec.wall_seconds if rec is not None else None

    def logs(self, step_id: str) -> str:
        pods = self._pods_of(step_id)
        parts = []
        for i, pod in enumerate(pods, 1):
            meta, status = pod.get("metadata") or {}, pod.get("status") or {}
            term = pod_termination(pod)
            header = f"===== pod {meta.get('name')} (attempt {i}/{len(pods)}, phase {status.get('phase')}"
            if term:
                header += f", exit code {term.get('exitCode')}, {term.get('reason')}"
            if pod_has_condition(pod, "DisruptionTarget"):
                header += ", disrupted: retried without counting"
            parts.append(header + ") =====")
            try:
                text = self._api.read_pod_log(meta["name"], STEP_CONTAINER, self._log_tail_lines)
                parts.append(text.decode("utf-8", errors="replace") if text else "")
            except BackendError as exc:
                parts.append(f"(logs unavailable: {exc})")
        return "\n".join(parts)

    def cancel(self, step_id: str) -> None:
        with self._lock:
            rec = self._step(step_id)
            rec.cancelled = True
            rec.in_store = False
            if rec.queued is not None:
                rec.queued = None
                return
        # Foreground: the Job stays visible with a deletionTimestamp until its pods are gone, so every
        # watcher (another controller instance included) sees it as cancelled, not as vanished.
        try:
            self._api.delete_job(step_id, "Foreground")
        except NotFound:
            pass

    def active(self) -> list[str]:
        self._informer.start()
        self._pump()
        if self._informer.synced.wait(timeout=10):
            with self._lock:
                jobs = [rec.job for rec in self._steps.values() if rec.job is not None]
        else:
            jobs = self._api.list_jobs(self._selector)[0]
        with self._lock:
            out = {name for name, rec in self._steps.items() if rec.queued is not None}
            for job in jobs:
                name = job["metadata"]["name"]
                rec = self._steps.get(name)
                if not (rec is not None and rec.cancelled) and not job_state(job).done:
                    out.add(name)
        return sorted(out)

    def close(self) -> None:
        self._informer.stop()

    # ------------------------------------------------------------------------ JobSink (informer)
    def replace(self, jobs: list[dict[str, Any]]) -> None:
        names = {j["metadata"]["name"] for j in jobs}
        with self._lock:
            for gone in [n for n, rec in self._steps.items() if rec.job is not None and n not in names]:
                self._forget(gone)
            for job in jobs:
                self._remember(job)

    def upsert(self, job: dict[str, Any]) -> None:
        self._remember(job)

    def delete(self, job: Mapping[str, Any]) -> None:
        with self._lock:
            self._forget(job["metadata"]["name"], job)

    # ----------------------------------------------------------------------------------- helpers
    def _running_mine(self) -> int:
        with self._lock:
            return sum(
                1
                for rec in self._steps.values()
                if rec.mine and rec.job is not None and not rec.cancelled and not job_state(rec.job).done
            )

    def _pump(self) -> None:
        """Create queued Jobs while fewer than ``max_concurrent`` of ours are unfinished."""
        while True:
            with self._lock:
                queued = [(rec.queue_seq, name) for name, rec in self._steps.items() if rec.queued is not None]
                if not queued or self._running_mine() >= self.max_concurrent:
                    return
                name = min(queued)[1]
                body = self._steps[name].queued
                assert body is not None
            created: dict[str, Any] | None
            try:
                created = self._api.create_job(body)
            except Conflict:  # an earlier controller created it in between: adopt it
                created = self._api.read_job_or_none(name)
                log.info("re-adopted existing Job %s (409 AlreadyExists)", name)
            else:
                with self._lock:
                    self.created.append(name)
            with self._lock:
                self._steps[name].queued = None
            if created is not None:
                self._remember(created)

    def _wait_gone(self, name: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self._api.read_job_or_none(name) is not None:
            if time.monotonic() > deadline:
                raise BackendError(f"Job {name} is still being deleted after {timeout:.0f} s; cannot start it again")
            time.sleep(0.2)
        with self._lock:
            self._step(name).job = None

    def _set_final(self, step_id: str, state: StepStatus) -> StepStatus:
        with self._lock:
            self._step(step_id).final = state
        return state

    def _state_from_result(self, step_id: str) -> StepStatus:
        """A Job that completed (exit 0) wrote a RESULT.json; its status decides ok or failed."""
        with self._lock:
            rec = self._step(step_id)
            res = rec.result
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
                    if rec.read_error_since is None:
                        rec.read_error_since = time.monotonic()
                    first = rec.read_error_since
                if transient and time.monotonic() - first < self.result_read_grace_seconds:
                    # S3 briefly unreachable: the result is there, keep the step "running" a little
                    return StepStatus(RUNNING, f"finished; reading its RESULT.json failed ({why}); retrying")
                res = {
                    "status": "failed",
                    "epochs": [],
                    "message": f"step {step_id} finished but its RESULT.json at {uri} could not be read: {why}",
                }
            with self._lock:
                rec.result = res
                rec.read_error_since = None
        status = str(res.get("status", "failed"))
        if status == "ok":
            return self._set_final(step_id, StepStatus(SUCCEEDED, str(res.get("message", ""))))
        return self._set_final(step_id, StepStatus(FAILED, f"{status}: {res.get('message', '')}".strip()))

    def _result_uri_of(self, step_id: str) -> str | None:
        with self._lock:
            rec = self._steps.get(step_id)
            uri, job = (rec.result_uri, rec.job) if rec is not None else (None, None)
        if uri:
            return uri
        if job is None:
            job = self._api.read_job_or_none(step_id)
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
            rec = self._step(name)
            if rec.job is None or resource_version(job) >= resource_version(rec.job):
                rec.job = job
                wall = job_wall_seconds(job)
                if wall is not None:
                    rec.wall_seconds = wall
            ann = (job["metadata"].get("annotations") or {}).get(ANNOTATION_RESULT)
            if ann and rec.result_uri is None:
                rec.result_uri = ann
            if being_deleted(rec.job) and rec.final is None:
                rec.final = StepStatus(CANCELLED, "the Job was deleted (cancelled)")

    def _forget(self, name: str, deleted: Mapping[str, Any] | None = None) -> None:
        """A Job disappeared (deleted by a cancel, its TTL, garbage collection or a person); call
        with the lock held.

        ``deleted``: the object from the DELETED event; a late event for an older Job of the
        same name (before a re-run) must not drop the new one."""
        rec = self._steps.get(name)
        job = rec.job if rec is not None else None
        if rec is None or job is None:
            return
        if deleted is not None and deleted["metadata"].get("uid") != job["metadata"].get("uid"):
            return
        rec.job = None
        if rec.cancelled:
            return
        state = job_state(job)
        if being_deleted(job):
            if rec.final is None:
                rec.final = StepStatus(CANCELLED, "the Job was deleted (cancelled)")
        elif state.state == SUCCEEDED:
            rec.in_store = True  # deleted after finishing (TTL): its RESULT.json is in S3
        elif state.done:
            if rec.final is None:
                rec.final = state
        else:
            rec.vanished = True

    def _pods_of(self, step_id: str) -> list[dict[str, Any]]:
        pods = self._api.list_pods(f"batch.kubernetes.io/job-name={step_id}", f"list pods of Job {step_id}")

        def order(p: Mapping[str, Any]) -> tuple[str, int, str, str]:
            term = pod_termination(p)
            return (
                p["metadata"].get("creationTimestamp") or "",
                0 if term else 1,
                str(term.get("finishedAt", "")),
                p["metadata"]["name"],
            )

        return sorted(pods, key=order)

    def _last_pod_termination(self, step_id: str) -> dict[str, Any]:
        try:
            pods = self._pods_of(step_id)
        except BackendError:
            return {}
        for pod in reversed(pods):
            term = pod_termination(pod)
            if term:
                return {"pod": pod["metadata"]["name"], **term}
        return {}


# ----------------------------------------------------------------------------- configuration
class _LazyClient:
    """An API client made only when first needed (the settings may fail before that)."""

    def __init__(self, api_client: Any = None) -> None:
        self._client = api_client

    def get(self) -> Any:
        if self._client is None:
            self._client = default_api_client()
        return self._client

    def own_image(self, namespace: str, pod_name: str | None) -> str | None:
        return own_image(self.get(), namespace, pod_name) if pod_name else None


def backend_from_env(
    search_id: str | None, max_concurrent: int, environ: Mapping[str, str] | None = None, **overrides: Any
) -> KubernetesBackend:
    """A ``KubernetesBackend`` configured from ``QUICKTUNE_*`` env vars (``settings.ENV_SETTINGS``).

    This is how ``quicktune search --backend kubernetes`` gets its settings inside a cluster: the
    controller pod loads them from the ``quicktune-config`` ConfigMap (k8s/base), and the GPU
    overlay only changes that ConfigMap. Bad values raise ValueError naming the variable.
    ``overrides``: ``api_client``, ``StepJobSettings`` fields, or the backend's runtime arguments.
    """
    client = _LazyClient(overrides.pop("api_client", None))
    runtime = {k: overrides.pop(k) for k in _RUNTIME_KEYS if k in overrides}
    settings = StepJobSettings.from_env(environ, own_image=client.own_image, **overrides)
    return KubernetesBackend.from_settings(
        settings, search_id, max_concurrent=max_concurrent, api_client=client.get(), **runtime
    )
