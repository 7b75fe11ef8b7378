"""The MLflow layout of a search, written and read back through ``MlflowClient``.

One experiment (default ``quicktune``) holds, per search:

- a **parent run** tagged ``quicktune.search_id`` / ``quicktune.role=search``: the search spec as
  params and as ``spec.json``; status tags ``quicktune.status`` (running/succeeded/failed) and
  ``quicktune.message``; metrics ``incumbent``, ``elapsed_seconds`` and ``epochs_done`` with
  step = number of epochs done; the optimizer's state snapshots (``optimizer/state-{0,1}.json``);
  at the end ``summary.json``, summary metrics and PNG plots under ``plots/``;
- one **child run per configuration** (``mlflow.parentRunId``, ``quicktune.config_id``,
  ``quicktune.role=config``): the config as params (logged once) and as the exact JSON tag
  ``quicktune.config``; per-epoch metrics ``score, top5, val_loss, train_loss, cost,
  train_seconds, eval_seconds`` and ``tell_seq`` with step = epoch; tags ``quicktune.status``,
  ``quicktune.epochs_done``, ``quicktune.pending_epoch`` (a step is in flight) and, for a failed
  step, ``quicktune.failed_epoch/failed_seq/failed_cost/message`` plus its logs as an artifact.

``tell_seq`` is a search-wide, strictly increasing number given to every result told to the
optimizer, so the order of observations is exact when a search is resumed. MLflow is the source
of truth: everything the controller needs to continue is read back from here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from quicktune.tracking.names import check_search_id, filter_string, tag
from quicktune.tracking.records import ConfigRecord, Observation, SearchRun
from quicktune.tracking.retry import InfrastructureError, RetryPolicy, check_reachable, repeat_if_write_race
from quicktune.tracking.schema import (  # noqa: F401 - TAG_* re-exported for older importers
    ARTIFACT_SPEC,
    ARTIFACT_SUMMARY,
    EPOCH_METRICS,
    METRIC_BEST_SCORE,
    METRIC_COST,
    METRIC_SCORE,
    METRIC_TELL_SEQ,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    ROLE_CONFIG,
    ROLE_PROMOTION,
    ROLE_SEARCH,
    STATE_SLOTS,
    SUMMARY_METRIC_PREFIX,
    TAG_BEST_CONFIG_ID,
    TAG_BEST_RUN_ID,
    TAG_CHECKPOINT_DIR,
    TAG_CHECKPOINT_URI,
    TAG_CONFIG,
    TAG_CONFIG_ID,
    TAG_EPOCHS_DONE,
    TAG_FAILED_COST,
    TAG_FAILED_EPOCH,
    TAG_FAILED_SEQ,
    TAG_MESSAGE,
    TAG_PENDING,
    TAG_ROLE,
    TAG_SEARCH_ID,
    TAG_STATUS,
    failure_log_path,
)
from quicktune.tracking.secrets import redact, safe_uri

log = logging.getLogger(__name__)

MAX_TAG = 5000
MAX_PARAM = 6000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b": "value"}`` with string values (MLflow params)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


class SearchTracker:
    """Writes and reads the layout above. Every call goes through ``retry`` so that an MLflow or
    S3 outage is ridden out with backoff and, if it lasts, reported as ``InfrastructureError``."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "quicktune",
        retry: RetryPolicy | None = None,
        artifact_location: str | None = None,
    ) -> None:
        from mlflow import MlflowClient

        # reading back a 1 kB spec must not draw a progress bar over the search's own
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment
        self.retry = retry or RetryPolicy()
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.artifact_location = artifact_location
        self._experiment_id: str | None = None
        self.calls = 0
        self.seconds = 0.0  # time spent in MLflow calls (for the overhead benchmark)

    # --- plumbing ------------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.retry.call(
                fn, *args, what=what, service=f"MLflow ({safe_uri(str(self.tracking_uri))})", **kwargs
            )
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - t0

    def _upsert(self, what: str, fn, *args):
        """A tag/alias write that another client may be making at the same moment (see
        :func:`~quicktune.tracking.retry.repeat_if_write_race`)."""
        return repeat_if_write_race(lambda: self._call(what, fn, *args), what=what)

    def check_reachable(self, window: float = 10.0) -> None:
        """Fail fast (:class:`InfrastructureError`) when the tracking server does not answer at all,
        instead of retrying for minutes; see :func:`quicktune.tracking.retry.check_reachable`."""
        from mlflow import get_tracking_uri

        check_reachable(str(self.tracking_uri or get_tracking_uri()), window=window)

    def limit_retries(self, seconds: float) -> None:
        """Give up on an unreachable server within ``seconds`` from now on (never longer than the
        policy already allows): recording a failure must not wait minutes for the very server
        whose outage may be what failed."""
        self.retry.total = min(self.retry.total, float(seconds))

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run an MLflow call this class has no method for (e.g. ``mlflow.pytorch.log_model`` in
        the fluent API) with the same retries, accounting and error reporting as its own calls."""
        return self._call(what, fn, *args, **kwargs)

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self._call("get experiment", self.client.get_experiment_by_name, self.experiment_name)
            if exp is None:
                try:
                    self._experiment_id = self._call(
                        "create experiment",
                        self.client.create_experiment,
                        self.experiment_name,
                        artifact_location=self.artifact_location,
                    )
                except Exception:  # created concurrently
                    exp = self._call("get experiment", self.client.get_experiment_by_name, self.experiment_name)
                    if exp is None:
                        raise
                    self._experiment_id = exp.experiment_id
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def _search(self, filter_string: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self._call(
                "search runs",
                self.client.search_runs,
                [self.experiment_id],
                filter_string,
                max_results=1000,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    # --- the parent run ------------------------------------------------------------------------
    def find_search(self, search_id: str) -> Any | None:
        runs = self._search(filter_string({tag(TAG_SEARCH_ID): check_search_id(search_id), tag(TAG_ROLE): ROLE_SEARCH}))
        if not runs:
            return None
        return sorted(runs, key=lambda r: r.info.start_time)[0]

    def find_searches(self) -> list[Any]:
        """Every parent run (``quicktune.role=search``) of the experiment, unordered (harvest)."""
        return self._search(filter_string({tag(TAG_ROLE): ROLE_SEARCH}))

    def experiment_artifact_location(self) -> str:
        """Where the experiment stores artifacts (``s3://...`` or a local path): decides whether a
        worker on another machine can read checkpoints kept there."""
        exp = self._call("get experiment", self.client.get_experiment, self.experiment_id)
        return str(exp.artifact_location)

    def open_search(self, search_id: str, spec: Mapping[str, Any]) -> SearchRun:
        """The parent run of ``search_id``, created (with the spec) if it does not exist yet."""
        run = self.find_search(search_id)
        resumed = run is not None
        if run is None:
            tags = {
                TAG_SEARCH_ID: search_id,
                TAG_ROLE: ROLE_SEARCH,
                TAG_STATUS: "running",
                TAG_MESSAGE: "",
                MLFLOW_RUN_NAME: search_id,
            }
            run = self._call("create search run", self.client.create_run, self.experiment_id, tags=tags)
            self.log_params(run.info.run_id, flatten(spec))
            # in the order given (no sort_keys): the space definition inside reads as written
            self._call(
                "log spec",
                self.client.log_text,
                run.info.run_id,
                redact(json.dumps(spec, indent=2, default=str)),
                ARTIFACT_SPEC,
            )
        else:
            self.set_tags(run.info.run_id, {TAG_STATUS: "running", TAG_MESSAGE: "resumed"})
            if run.info.status != "RUNNING":
                self._call("reopen run", self.client.update_run, run.info.run_id, status="RUNNING")
        return SearchRun(
            run_id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            artifact_uri=run.info.artifact_uri,
            resumed=resumed,
            tags=dict(run.data.tags),
            metrics=dict(run.data.metrics),
            params=dict(run.data.params),
        )

    def read_text(self, run_id: str, path: str) -> str | None:
        """An artifact's text, or None if it does not exist."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self._call(f"download {path}", self.client.download_artifacts, run_id, path, tmp)
            except Exception as exc:  # noqa: BLE001 - a missing artifact is a normal answer
                if isinstance(exc, InfrastructureError):
                    raise
                return None
            p = Path(local)
            return p.read_text() if p.is_file() else None

    def spec(self, run_id: str) -> dict[str, Any] | None:
        text = self.read_text(run_id, ARTIFACT_SPEC)
        return json.loads(text) if text else None

    # --- generic writes ------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], redact(str(v))[:MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call("log params", self.client.log_batch, run_id, params=items[i : i + 100])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, redact(str(v))[:MAX_TAG]) for k, v in tags.items()]
        self._call("set tags", self.client.log_batch, run_id, tags=items)

    def log_metrics(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        step: int,
        tags: Mapping[str, Any] | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        from mlflow.entities import Metric, RunTag

        ts = timestamp_ms or _now_ms()
        ms = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if _finite(v) is not None]
        ts_tags = [RunTag(k, redact(str(v))[:MAX_TAG]) for k, v in (tags or {}).items()]
        self._call("log metrics", self.client.log_batch, run_id, metrics=ms, tags=ts_tags)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self._call(f"log {path}", self.client.log_text, run_id, redact(text), path)

    def log_json(self, run_id: str, obj: Any, path: str) -> None:
        self._call(f"log {path}", self.client.log_text, run_id, redact(json.dumps(obj, indent=1, default=str)), path)

    def log_figure(self, run_id: str, fig: Any, path: str) -> None:
        self._call(f"log {path}", self.client.log_figure, run_id, fig, path)

    def terminate(self, run_id: str, status: str) -> None:
        self._call("end run", self.client.set_terminated, run_id, status)

    # --- promotion -----------------------------------------------------------------------------
    def create_promotion_run(self, parent_run_id: str, experiment_id: str, search_id: str, config_id: str) -> str:
        """A child run of the search (``quicktune.role=promotion``) that will hold the promoted
        model of ``config_id``; returns its run id."""
        tags = {
            MLFLOW_PARENT_RUN_ID: parent_run_id,
            TAG_SEARCH_ID: search_id,
            TAG_ROLE: ROLE_PROMOTION,
            TAG_CONFIG_ID: config_id,
            MLFLOW_RUN_NAME: f"promote-{config_id[:8]}",
        }
        run = self._call("create promotion run", self.client.create_run, experiment_id, tags=tags)
        return str(run.info.run_id)

    def set_model_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version``; another client may move the same alias at the same moment
        (a write race, repeated, see :meth:`_upsert`)."""
        self._upsert("set alias", self.client.set_registered_model_alias, model_name, alias, version)

    def set_model_version_tags(self, model_name: str, version: str, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self._call("tag model version", self.client.set_model_version_tag, model_name, version, k, str(v))

    # --- configurations ------------------------------------------------------------------------
    def create_config_run(
        self, parent: SearchRun, search_id: str, config_id: str, config: Mapping[str, Any], checkpoint_dir: str
    ) -> ConfigRecord:
        model = str(config.get("model", "config"))
        tags = {
            MLFLOW_PARENT_RUN_ID: parent.run_id,
            TAG_SEARCH_ID: search_id,
            TAG_ROLE: ROLE_CONFIG,
            TAG_CONFIG_ID: config_id,
            TAG_CONFIG: json.dumps(dict(config), sort_keys=True, default=str),
            TAG_CHECKPOINT_DIR: safe_uri(checkpoint_dir),
            TAG_STATUS: "running",
            TAG_EPOCHS_DONE: "0",
            MLFLOW_RUN_NAME: f"{model}-{config_id[:8]}",
        }
        run = self._call(
            "create config run",
            self.client.create_run,
            parent.experiment_id,
            tags={k: redact(v)[:MAX_TAG] for k, v in tags.items()},
        )
        self.log_params(run.info.run_id, {k: v for k, v in config.items()})
        return ConfigRecord(
            run_id=run.info.run_id, config_id=config_id, config=dict(config), checkpoint_dir=checkpoint_dir
        )

    def load_configs(self, parent_run_id: str) -> dict[str, ConfigRecord]:
        """Every configuration of the search with its recorded epochs and failure (if any)."""
        runs = self._search(filter_string({tag(MLFLOW_PARENT_RUN_ID): parent_run_id, tag(TAG_ROLE): ROLE_CONFIG}))
        records: dict[str, ConfigRecord] = {}
        for run in sorted(runs, key=lambda r: r.info.start_time):
            tags = run.data.tags
            cid = tags.get(TAG_CONFIG_ID)
            if not cid:
                continue
            rec = ConfigRecord(
                run_id=run.info.run_id,
                config_id=cid,
                config=json.loads(tags.get(TAG_CONFIG, "{}")),
                checkpoint_dir=tags.get(TAG_CHECKPOINT_DIR, ""),
                status=tags.get(TAG_STATUS, "running"),
                message=tags.get(TAG_MESSAGE, ""),
            )
            pending = tags.get(TAG_PENDING, "")
            rec.pending_epoch = int(pending) if pending.strip().isdigit() else None
            if METRIC_TELL_SEQ in run.data.metrics or METRIC_SCORE in run.data.metrics:
                for key in (METRIC_SCORE, METRIC_COST, METRIC_TELL_SEQ):  # what resuming needs (one request each)
                    for m in self._call("metric history", self.client.get_metric_history, run.info.run_id, key):
                        rec.epochs.setdefault(int(m.step), {})[key] = float(m.value)
            if tags.get(TAG_FAILED_EPOCH, "").isdigit():
                rec.failure = Observation(
                    seq=int(tags[TAG_FAILED_SEQ]),
                    config_id=cid,
                    epoch=int(tags[TAG_FAILED_EPOCH]),
                    score=math.nan,
                    cost=float(tags.get(TAG_FAILED_COST) or "nan"),
                    status=tags.get(TAG_STATUS, "failed"),
                )
            prev = records.get(cid)
            if prev is None or len(rec.epochs) > len(prev.epochs):  # a duplicate run: keep the fuller one
                records[cid] = rec
        return records

    def delete_untrained(self, records: Mapping[str, ConfigRecord], keep: Iterable[str] = ()) -> list[str]:
        """Delete (MLflow's soft delete: restorable until ``mlflow gc``) the runs of configurations
        that never recorded an epoch nor a failure -- steps asked ahead (prefetch) that the budget
        cut before they trained -- except the config ids in ``keep``. Removes them from ``records``
        (when it is a dict) and returns their config ids. Why delete rather than tag: such a run holds
        nothing but a config that was never tried, yet showed in the UI as a FINISHED run with 0
        epochs; a resumed search that still wants it recreates it (see the controller)."""
        keep = set(keep)
        gone = [cid for cid, rec in records.items() if not rec.epochs and rec.failure is None and cid not in keep]
        for cid in gone:
            self._call("delete untrained config run", self.client.delete_run, records[cid].run_id)
            if isinstance(records, dict):
                del records[cid]
        return gone

    def mark_pending(self, rec: ConfigRecord, epoch: int | None) -> None:
        rec.pending_epoch = epoch
        self.set_tags(rec.run_id, {TAG_PENDING: "" if epoch is None else str(epoch)})

    def log_epochs(self, rec: ConfigRecord, epochs: Iterable[Mapping[str, Any]], seqs: Iterable[int]) -> None:
        """Record finished epochs (with their tell sequence numbers) and clear the pending mark, in
        one request, so an epoch is either fully recorded or not at all."""
        from mlflow.entities import Metric, RunTag

        ts = _now_ms()
        metrics = []
        for ep, seq in zip(epochs, seqs, strict=False):
            e = int(ep["epoch"])
            values = {k: _finite(ep.get(k)) for k in EPOCH_METRICS}
            values[METRIC_TELL_SEQ] = float(seq)
            for k, v in values.items():
                if v is not None:
                    metrics.append(Metric(k, v, ts, e))
            rec.epochs[e] = {k: v for k, v in values.items() if v is not None}
        best = rec.best_epoch
        if best is not None:
            metrics.append(Metric(METRIC_BEST_SCORE, rec.best_score, ts, best))
        tags = [RunTag(TAG_EPOCHS_DONE, str(rec.last_epoch)), RunTag(TAG_PENDING, "")]
        rec.pending_epoch = None
        self._call("log epochs", self.client.log_batch, rec.run_id, metrics=metrics, tags=tags)

    def log_failure(
        self, rec: ConfigRecord, epoch: int, seq: int, status: str, message: str, cost: float, logs: str | None = None
    ) -> None:
        rec.failure = Observation(
            seq=seq, config_id=rec.config_id, epoch=epoch, score=math.nan, cost=cost, status=status
        )
        rec.status, rec.message, rec.pending_epoch = status, message, None
        if logs:
            self.log_text(rec.run_id, logs, failure_log_path(epoch))
        self.set_tags(
            rec.run_id,
            {
                TAG_STATUS: status,
                TAG_MESSAGE: message[:MAX_TAG] or status,
                TAG_FAILED_EPOCH: str(epoch),
                TAG_FAILED_SEQ: str(seq),
                TAG_FAILED_COST: repr(float(cost)),
                TAG_PENDING: "",
            },
        )

    # --- optimizer snapshots -------------------------------------------------------------------
    def save_optimizer_state(self, run_id: str, generation: int, payload: Mapping[str, Any]) -> None:
        """Alternate between two slots so a write cut short never destroys the last good snapshot."""
        body = json.dumps({"generation": generation, **payload}, default=str)
        self._call("save optimizer state", self.client.log_text, run_id, body, STATE_SLOTS[generation % 2])

    def load_optimizer_state(self, run_id: str) -> dict[str, Any] | None:
        best = None
        for slot in STATE_SLOTS:
            text = self.read_text(run_id, slot)
            if not text:
                continue
            try:
                doc = json.loads(text)
            except json.JSONDecodeError:
                log.warning("optimizer snapshot %s of run %s is corrupt; ignoring it", slot, run_id)
                continue
            if best is None or doc.get("generation", -1) > best.get("generation", -1):
                best = doc
        return best

    # --- the end -------------------------------------------------------------------------------
    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float, int]]:
        return [
            (int(m.step), float(m.value), int(m.timestamp))
            for m in self._call("metric history", self.client.get_metric_history, run_id, key)
        ]

    def finish_search(
        self,
        parent: SearchRun,
        status: str,
        message: str,
        summary: Mapping[str, Any] | None,
        records: Mapping[str, ConfigRecord],
    ) -> None:
        """Status tags, run states and the summary; ``status`` is succeeded or failed. The status is
        recorded before the summary artifact, so an artifact store outage cannot leave it unset."""
        if summary is not None:
            numeric = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.log_metrics(
                parent.run_id,
                {f"{SUMMARY_METRIC_PREFIX}{k}": v for k, v in numeric.items()},
                step=int(summary.get("epochs_done", 0) or 0),
            )
            best = {TAG_BEST_CONFIG_ID: summary.get("best_config_id"), TAG_BEST_RUN_ID: summary.get("best_run_id")}
            tags = {k: v for k, v in best.items() if v}
            if tags:
                self.set_tags(parent.run_id, tags)
        for rec in records.values():
            tags = {TAG_PENDING: ""}
            if not rec.dead:
                tags[TAG_STATUS] = "finished"
            self.set_tags(rec.run_id, tags)
            self.terminate(rec.run_id, "FAILED" if rec.dead else "FINISHED")
        self.set_tags(parent.run_id, {TAG_STATUS: status, TAG_MESSAGE: message})
        self.terminate(parent.run_id, "FINISHED" if status == "succeeded" else "FAILED")
        if summary is not None:
            self.log_json(parent.run_id, summary, ARTIFACT_SUMMARY)


def default_tracking_uri(workdir: str | os.PathLike[str] = ".") -> str:
    """The embedded default: a sqlite store in the working directory (artifacts next to it)."""
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"
