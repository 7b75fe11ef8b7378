"""Launchers start, follow and stop one search each, named by its search id.

Why the state lives where it does: a restarted watcher must re-attach to the searches it started
and never start one twice, so every launcher can answer ``state(search_id)`` from durable state
only -- the local launcher from a JSON file per search under its state folder (pid + process start
time, so a reused pid is not mistaken for the search), the Kubernetes launcher from the Job named
after the search id, the KFP launcher from the run id it recorded. The outcome of a finished
search is read from MLflow by the watcher, not from the launcher: MLflow is the source of truth.

- ``local``: a ``quicktune search ... --search-id ID --model-name NAME`` subprocess in its own
  session; cancel sends SIGINT (the controller records "interrupted") then cancels its steps.
- ``kubernetes``: a ``batch/v1`` Job running the controller (``--backend kubernetes``), named after
  the search id, in the shape of ``k8s/base/controller-job.yaml``; cancel deletes it (its step Jobs
  are owned by that Job and garbage-collected with it).
- ``kfp``: a run of the compiled pipeline in ``pipelines/`` through ``kfp.Client``; cancel
  terminates the run.

Every launcher checks a request with ``check_launchable`` before anything starts, whatever the
request parser already did (defence in depth: names come from MLflow users): model and experiment
names within MLflow's limits, no control characters, and no value that the launched ``quicktune
search`` could take for an option (a leading ``-``). The Kubernetes launcher also escapes every
string of the controller's container (``escape_kubelet_refs``: the kubelet would expand
``$(AWS_SECRET_ACCESS_KEY)`` in a name from the pod's Secrets); the KFP launcher refuses ``$`` in
the values it passes, since KFP hands run arguments through the kubelet's expansion on the way
to the component (possibly more than once), where no single escaping is right.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicktune.watch.requests import MAX_EXPERIMENT_NAME_LENGTH, MAX_MODEL_NAME_LENGTH, RequestError, SearchRequest

log = logging.getLogger(__name__)

LAUNCH_RUNNING, LAUNCH_DONE, LAUNCH_UNKNOWN = "running", "done", "unknown"


@dataclass
class LaunchState:
    state: str  # running | done | unknown (never launched here, or its record is gone)
    message: str = ""
    exit_code: int | None = None


class Launcher:
    name = "base"

    def launch(self, request: SearchRequest) -> dict[str, Any]:
        raise NotImplementedError

    def state(self, search_id: str) -> LaunchState:
        raise NotImplementedError

    def cancel(self, search_id: str, timeout: float = 60.0) -> None:
        raise NotImplementedError

    def logs(self, search_id: str) -> str:
        return ""


# --- checks every launcher makes ---------------------------------------------------------------
# MLflow's name limits (MAX_MODEL_NAME_LENGTH, MAX_EXPERIMENT_NAME_LENGTH) come from requests.py.
MAX_VALUE_LENGTH = 4096  # dataset URI, space reference, search id: generous, but bounded
_BAD_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Cs": "a lone surrogate",
}


def _check_value(what: str, value: str, limit: int) -> None:
    """Refuse a value the launched search must not get; the message never repeats the value
    (it may be long, multi-line or crafted), only what is wrong and where."""
    import unicodedata

    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{what} is empty")
    if len(value) > limit:
        raise RequestError(f"{what} is {len(value)} characters long; at most {limit} are allowed")
    for i, ch in enumerate(value):
        kind = _BAD_CATEGORIES.get(unicodedata.category(ch))
        if kind:
            raise RequestError(f"{what} contains {kind} (U+{ord(ch):04X}) at position {i}")
    if value.startswith("-"):
        raise RequestError(f"{what} starts with '-', which the search command would take for an option")


def check_launchable(request: SearchRequest) -> None:
    """Raise :class:`RequestError` unless every free-form value of ``request`` is safe to launch:
    names MLflow accepts (length), no control or invisible characters, no leading ``-``."""
    _check_value("the model name", request.model_name, MAX_MODEL_NAME_LENGTH)
    _check_value("the experiment name", request.experiment, MAX_EXPERIMENT_NAME_LENGTH)
    _check_value("the dataset URI", request.data_uri, MAX_VALUE_LENGTH)
    _check_value("the search space", request.space, MAX_VALUE_LENGTH)
    _check_value("the search id", request.search_id, MAX_VALUE_LENGTH)


# --- local -------------------------------------------------------------------------------------
def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): with the pid it names a process
    uniquely, so a pid reused after a reboot or a long time is not taken for our search."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] == "Z":  # a zombie is finished
        return None
    return fields[19] if len(fields) > 19 else None


class LocalLauncher(Launcher):
    """Each search is a local ``quicktune search`` process; its record is
    ``STATE_DIR/searches/ID/launch.json`` and its log ``.../search.log``."""

    name = "local"

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        tracking_uri: str,
        python: str = sys.executable,
        extra_args: list[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.tracking_uri = tracking_uri
        self.python = python
        self.extra_args = list(extra_args or [])
        self.env = dict(env) if env is not None else None
        self._children: dict[str, subprocess.Popen] = {}

    def folder(self, search_id: str) -> Path:
        return self.state_dir / "searches" / search_id

    def command(self, request: SearchRequest) -> list[str]:
        return [
            self.python,
            "-m",
            "quicktune.cli",
            "search",
            *request.search_args(self.tracking_uri),
            "--workdir",
            str(self.folder(request.search_id) / "work"),
            *self.extra_args,
        ]

    def launch(self, request: SearchRequest) -> dict[str, Any]:
        check_launchable(request)
        d = self.folder(request.search_id)
        d.mkdir(parents=True, exist_ok=True)
        current = self.state(request.search_id)
        if current.state == LAUNCH_RUNNING:  # never two controllers for one search from here
            return self._record(request.search_id) or {}
        log_file = open(d / "search.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                self.command(request),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        finally:
            log_file.close()
        self._children[request.search_id] = proc
        record = {
            "launcher": self.name,
            "search_id": request.search_id,
            "pid": proc.pid,
            "start_time": _proc_start_time(proc.pid),
            "launched_at": time.time(),
        }
        tmp = d / "launch.json.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, d / "launch.json")
        return record

    def _record(self, search_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder(search_id) / "launch.json").read_text())
        except (OSError, ValueError):
            return None

    def state(self, search_id: str) -> LaunchState:
        child = self._children.get(search_id)
        if child is not None:
            rc = child.poll()
            if rc is None:
                return LaunchState(LAUNCH_RUNNING)
            return LaunchState(LAUNCH_DONE, f"exited with code {rc}", rc)
        record = self._record(search_id)
        if record is None:
            return LaunchState(LAUNCH_UNKNOWN)
        pid = int(record["pid"])
        start = _proc_start_time(pid)
        if start is not None and start == record.get("start_time"):
            return LaunchState(LAUNCH_RUNNING)
        return LaunchState(LAUNCH_DONE, "the search process has ended")

    def cancel(self, search_id: str, timeout: float = 60.0) -> None:
        """SIGINT to the controller (it records the interruption in MLflow and exits), SIGKILL if
        it lingers; then cancel its steps, which run in their own sessions."""
        record = self._record(search_id)
        if record is not None and self.state(search_id).state == LAUNCH_RUNNING:
            pid = int(record["pid"])
            try:
                os.killpg(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.state(search_id).state == LAUNCH_RUNNING:
                time.sleep(0.2)
            if self.state(search_id).state == LAUNCH_RUNNING:
                log.warning("search %s did not stop within %.0f s of SIGINT; killing it", search_id, timeout)
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        work = self.folder(search_id) / "work"
        if (work / "steps").exists():
            from quicktune.backends.local import LocalBackend

            backend = LocalBackend(work)
            for step in backend.active():
                backend.cancel(step)

    def logs(self, search_id: str) -> str:
        try:
            data = (self.folder(search_id) / "search.log").read_bytes()
        except OSError:
            return ""
        return data[-4000:].decode("utf-8", errors="replace")

    def close(self) -> None:
        """Forget child handles (the processes keep running; a new watcher re-attaches)."""
        self._children.clear()


# --- kubernetes --------------------------------------------------------------------------------
def controller_job(
    request: SearchRequest,
    *,
    tracking_uri: str,
    namespace: str,
    image: str,
    service_account: str = "quicktune-controller",
    config_map: str = "quicktune-config",
    s3_secret: str = "quicktune-s3",
    mlflow_secret: str = "quicktune-mlflow",
    checkpoint_uri: str | None = None,
    backend_options: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The controller Job for one search, in the shape of ``k8s/base/controller-job.yaml`` (same
    security context, secrets, scratch volume) with the request's arguments written out.

    Unlike the static manifest, which references its ConfigMap on purpose (``$(QUICKTUNE_DATA)``),
    nothing here is meant as a reference: every arg and env value is escaped (``kubelet_literal``),
    because the arguments carry names MLflow users chose and the container's env holds the S3 and
    MLflow Secrets. The pod runs under the "restricted" Pod Security Standard and keeps its service
    account token: the controller creates and watches the step Jobs."""
    from quicktune.backends.kubernetes.manifests import (
        RESTRICTED_CONTAINER_SECURITY,
        RESTRICTED_POD_SECURITY,
        kubelet_literal,
        sanitize_label_value,
    )

    check_launchable(request)
    args = ["search", "--backend", "kubernetes", *request.search_args(tracking_uri), "--workdir", "/tmp/quicktune"]
    if checkpoint_uri:
        args.append(f"--checkpoint-uri={checkpoint_uri}")
    for k, v in (backend_options or {}).items():
        args.append(f"--backend-option={k}={v}")

    lab = {
        "app.kubernetes.io/name": "quicktune",
        "app.kubernetes.io/component": "controller",
        "app.kubernetes.io/managed-by": "quicktune-watch",
        "quicktune.io/search-id": sanitize_label_value(request.search_id),
        **dict(labels or {}),
    }
    field_env = [
        {"name": n, "valueFrom": {"fieldRef": {"fieldPath": p}}}
        for n, p in (
            ("POD_NAME", "metadata.name"),
            ("POD_UID", "metadata.uid"),
            ("POD_NAMESPACE", "metadata.namespace"),
        )
    ]
    plain_env = [
        {"name": n, "value": v}
        for n, v in (
            ("HOME", "/tmp/home"),
            ("XDG_CACHE_HOME", "/tmp/cache"),
            ("QUICKTUNE_CACHE", "/tmp/cache/quicktune"),
            ("MPLCONFIGDIR", "/tmp/cache/matplotlib"),
            ("PYTHONUNBUFFERED", "1"),
        )
    ]
    container = kubelet_literal(
        {
            "name": "controller",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "args": args,
            "envFrom": [
                {"configMapRef": {"name": config_map}},
                {"secretRef": {"name": s3_secret}},
                {"secretRef": {"name": mlflow_secret, "optional": True}},
            ],
            "env": field_env + plain_env,
            "resources": {"requests": {"cpu": "1", "memory": "3Gi"}, "limits": {"memory": "3Gi"}},
            "securityContext": dict(RESTRICTED_CONTAINER_SECURITY),
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": request.search_id,
            "namespace": namespace,
            "labels": lab,
            "annotations": {"quicktune.io/model-name": request.model_name},
        },
        "spec": {
            "backoffLimit": 4,
            "ttlSecondsAfterFinished": 604800,
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
            },
            "template": {
                "metadata": {"labels": lab},
                "spec": {
                    "serviceAccountName": service_account,
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": True,  # the controller creates and watches step Jobs
                    "securityContext": dict(RESTRICTED_POD_SECURITY),
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}}],
                },
            },
        },
    }


class KubernetesLauncher(Launcher):
    """A controller Job per search; the Job (named after the search id) is the launcher state.

    API calls go through ``quicktune.backends.kubernetes.api`` (retries on transient errors; a
    409 on create is ``Conflict``: the Job exists, re-attach; a 404 on read or delete is
    ``NotFound``: never launched here, or already gone). The watcher Role in ``k8s/base`` grants
    exactly the verbs of the calls below (``KubernetesApi.VERBS``)."""

    name = "kubernetes"

    def __init__(
        self, tracking_uri: str, namespace: str, image: str, api_client: Any = None, **job_options: Any
    ) -> None:
        from quicktune.backends.kubernetes.api import KubernetesApi, default_api_client

        self.tracking_uri = tracking_uri
        self.namespace = namespace
        self.image = image
        self.job_options = job_options
        self.api = KubernetesApi(api_client if api_client is not None else default_api_client(), namespace)

    def launch(self, request: SearchRequest) -> dict[str, Any]:
        from quicktune.backends.kubernetes.api import Conflict

        check_launchable(request)
        body = controller_job(
            request, tracking_uri=self.tracking_uri, namespace=self.namespace, image=self.image, **self.job_options
        )
        try:
            self.api.create_job(body)
        except Conflict:  # it exists already (a duplicate start): re-attach
            pass
        return {"launcher": self.name, "job": request.search_id, "namespace": self.namespace}

    def state(self, search_id: str) -> LaunchState:
        job = self.api.read_job_or_none(search_id)
        if job is None:
            return LaunchState(LAUNCH_UNKNOWN)
        for cond in (job.get("status") or {}).get("conditions") or []:
            ctype = cond.get("type")
            if cond.get("status") == "True" and ctype in ("Complete", "Failed"):
                why = cond.get("message") or cond.get("reason") or ""
                return LaunchState(LAUNCH_DONE, f"Job {ctype.lower()}: {why}", 0 if ctype == "Complete" else 1)
        return LaunchState(LAUNCH_RUNNING)

    def cancel(self, search_id: str, timeout: float = 60.0) -> None:
        from quicktune.backends.kubernetes.api import NotFound

        try:
            self.api.delete_job(search_id, "Background")
        except NotFound:
            pass


# --- kfp ---------------------------------------------------------------------------------------
def kfp_arguments(request: SearchRequest, tracking_uri: str, **extra: Any) -> dict[str, Any]:
    """Parameters of ``pipelines/quicktune_pipeline.yaml`` for a request."""
    args: dict[str, Any] = {
        "data_uri": request.data_uri,
        "tracking_uri": tracking_uri,
        "model_name": request.model_name,
        "budget": f"{request.budget_seconds:g}s",
        "space": request.space,
        "workers": request.workers,
        "max_epochs": request.max_epochs,
        "budget_epochs": request.budget_epochs or 0,
        "image_size": request.image_size or 0,
        "experiment": request.experiment,
        "search_id": request.search_id,
    }
    args.update(extra)
    return args


class KfpLauncher(Launcher):
    """A KFP run of the compiled pipeline per search; the run id is kept in a small JSON file."""

    name = "kfp"
    _FINAL = {"SUCCEEDED": 0, "FAILED": 1, "SKIPPED": 1, "CANCELED": 1, "CANCELLED": 1}

    def __init__(
        self,
        tracking_uri: str,
        state_dir: str | os.PathLike[str],
        pipeline_file: str,
        host: str | None = None,
        experiment: str = "quicktune",
        client: Any = None,
        **pipeline_args: Any,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.state_dir = Path(state_dir).resolve()
        self.pipeline_file = pipeline_file
        self.experiment = experiment
        self.pipeline_args = pipeline_args
        if client is None:
            import kfp

            client = kfp.Client(host=host)
        self.client = client

    def _path(self, search_id: str) -> Path:
        return self.state_dir / "kfp" / f"{search_id}.json"

    def launch(self, request: SearchRequest) -> dict[str, Any]:
        check_launchable(request)
        for what, value in (
            ("model name", request.model_name),
            ("experiment name", request.experiment),
            ("dataset URI", request.data_uri),
            ("search space", request.space),
        ):
            if "$" in value:
                raise RequestError(
                    f"the {what} contains '$', which the KFP launcher does not pass on: Kubeflow "
                    "hands run arguments through the kubelet's $(VAR) expansion"
                )
        path = self._path(request.search_id)
        if path.exists():
            return json.loads(path.read_text())
        run = self.client.create_run_from_pipeline_package(
            self.pipeline_file,
            arguments=kfp_arguments(request, self.tracking_uri, **self.pipeline_args),
            run_name=request.search_id,
            experiment_name=self.experiment,
            enable_caching=False,
        )
        record = {"launcher": self.name, "search_id": request.search_id, "run_id": run.run_id}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        return record

    def state(self, search_id: str) -> LaunchState:
        path = self._path(search_id)
        if not path.exists():
            return LaunchState(LAUNCH_UNKNOWN)
        run = self.client.get_run(json.loads(path.read_text())["run_id"])
        state = str(getattr(run, "state", "") or "").upper()
        if state in self._FINAL:
            return LaunchState(LAUNCH_DONE, f"KFP run {state.lower()}", self._FINAL[state])
        return LaunchState(LAUNCH_RUNNING)

    def cancel(self, search_id: str, timeout: float = 60.0) -> None:
        path = self._path(search_id)
        if path.exists():
            self.client.terminate_run(json.loads(path.read_text())["run_id"])
