"""Fast doubles for the search loop: an in-memory SearchTracker and a scripted backend.

``MemoryTracker`` implements the public methods of :class:`quicktune.tracking.layout.SearchTracker`
that the search uses, over a store that outlives a session (as MLflow does): each
``load_configs`` builds fresh records from the store, so a resumed session sees only what was
written, never the dead session's objects. ``ScriptedBackend`` finishes steps at once (or after
a few polls) with results from a script, trains each epoch on a per-config "checkpoint" and
counts how often each (config, epoch) was trained. ``Crash`` raises :class:`Killed` at the n-th
write of either: a ``BaseException``, so ``run_search`` records nothing, as after ``kill -9``.

Together they run a whole search, its crash and its resume in milliseconds, with the real
optimizers, without MLflow, data or processes.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from quicktune.backends.base import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    StepRequest,
    StepStatus,
    TrialBackend,
)
from quicktune.search import SearchSpec
from quicktune.tracking.layout import ConfigRecord, Observation, SearchRun
from quicktune.tracking.schema import STATE_SLOTS


class Killed(BaseException):
    """The controller process died here (kill -9): nothing after this line of it runs."""


class Crash:
    """Counts writes to MLflow and backend starts (``events`` names them, in order); raises
    :class:`Killed` at the ``at``-th (1-based). ``disarm()`` lets the resumed session run."""

    def __init__(self, at: int | None = None) -> None:
        self.at = at
        self.events: list[str] = []

    @property
    def count(self) -> int:
        return len(self.events)

    def tick(self, what: str) -> None:
        self.events.append(what)
        if self.at is not None and self.count == self.at:
            raise Killed(what)

    def disarm(self) -> None:
        self.at = None


@dataclass
class _Run:
    run_id: str
    tags: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)
    checkpoint_dir: str = ""
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)
    failure: Observation | None = None
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    state: str = "RUNNING"
    deleted: bool = False


class MemoryTracker:
    """The SearchTracker surface the search uses, in memory (see the module docstring)."""

    def __init__(self, crash: Crash | None = None, artifact_location: str = "/tmp/artifacts") -> None:
        self.tracking_uri = "memory:"
        self.experiment_name = "memory"
        self.experiment_id = "0"
        self.crash = crash or Crash()
        self.runs: dict[str, _Run] = {}
        self.calls = 0
        self.seconds = 0.0
        self.retry_limit: float | None = None
        self.location = artifact_location

    def _write(self, what: str) -> None:
        self.calls += 1
        self.crash.tick(what)

    def _new_id(self) -> str:
        return f"run{len(self.runs):04d}"

    # --- the parent run ------------------------------------------------------------------------
    def check_reachable(self, window: float = 10.0) -> None:
        pass

    def experiment_artifact_location(self) -> str:
        return self.location

    def limit_retries(self, seconds: float) -> None:
        self.retry_limit = seconds

    def find_search(self, search_id: str) -> Any | None:
        for run in self.runs.values():
            if (
                run.tags.get("quicktune.role") == "search"
                and run.tags.get("quicktune.search_id") == search_id
                and not run.deleted
            ):
                return SimpleNamespace(
                    info=SimpleNamespace(run_id=run.run_id, experiment_id="0"),
                    data=SimpleNamespace(tags=dict(run.tags)),
                )
        return None

    def open_search(self, search_id: str, spec: Mapping[str, Any]) -> SearchRun:
        found = self.find_search(search_id)
        self._write("open search")
        if found is None:
            run = _Run(
                self._new_id(),
                {"quicktune.search_id": search_id, "quicktune.role": "search", "quicktune.status": "running"},
            )
            run.artifacts["spec.json"] = json.dumps(spec, default=str)
            self.runs[run.run_id] = run
        else:
            run = self.runs[found.info.run_id]
            run.tags.update({"quicktune.status": "running", "quicktune.message": "resumed"})
            run.state = "RUNNING"
        last = {k: v[-1][1] for k, v in run.metrics.items() if v}
        return SearchRun(
            run_id=run.run_id,
            experiment_id="0",
            artifact_uri=f"{self.location}/{run.run_id}",
            resumed=found is not None,
            tags=dict(run.tags),
            metrics=last,
            params={},
        )

    def spec(self, run_id: str) -> dict[str, Any] | None:
        text = self.runs[run_id].artifacts.get("spec.json")
        return json.loads(text) if text else None

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._write("set tags")
        self.runs[run_id].tags.update({k: str(v) for k, v in tags.items()})

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int, **_: Any) -> None:
        self._write("log metrics")
        for k, v in metrics.items():
            if math.isfinite(float(v)):
                self.runs[run_id].metrics.setdefault(k, []).append((int(step), float(v)))

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float, int]]:
        return [(s, v, 0) for s, v in self.runs[run_id].metrics.get(key, [])]

    def log_figure(self, run_id: str, fig: Any, path: str) -> None:
        self._write(f"log {path}")
        self.runs[run_id].artifacts[path] = "png"

    def log_json(self, run_id: str, obj: Any, path: str) -> None:
        self._write(f"log {path}")
        self.runs[run_id].artifacts[path] = json.dumps(obj, default=str)

    # --- configurations ------------------------------------------------------------------------
    def create_config_run(
        self, parent: SearchRun, search_id: str, config_id: str, config: Mapping[str, Any], checkpoint_dir: str
    ) -> ConfigRecord:
        self._write("create config run")
        run = _Run(
            self._new_id(),
            {
                "mlflow.parentRunId": parent.run_id,
                "quicktune.role": "config",
                "quicktune.config_id": config_id,
                "quicktune.status": "running",
            },
            config=json.loads(json.dumps(dict(config), default=str)),
            checkpoint_dir=checkpoint_dir,
        )
        self.runs[run.run_id] = run
        return ConfigRecord(run_id=run.run_id, config_id=config_id, config=dict(config), checkpoint_dir=checkpoint_dir)

    def config_runs(self, parent_run_id: str) -> list[_Run]:
        return [
            r
            for r in self.runs.values()
            if r.tags.get("mlflow.parentRunId") == parent_run_id
            and r.tags.get("quicktune.role") == "config"
            and not r.deleted
        ]

    def load_configs(self, parent_run_id: str) -> dict[str, ConfigRecord]:
        records: dict[str, ConfigRecord] = {}
        for run in self.config_runs(parent_run_id):
            pending = run.tags.get("quicktune.pending_epoch", "")
            rec = ConfigRecord(
                run_id=run.run_id,
                config_id=run.tags["quicktune.config_id"],
                config=copy.deepcopy(run.config),
                checkpoint_dir=run.checkpoint_dir,
                status=run.tags.get("quicktune.status", "running"),
                pending_epoch=int(pending) if pending.isdigit() else None,
                epochs={e: {k: m[k] for k in ("score", "cost", "tell_seq") if k in m} for e, m in run.epochs.items()},
                failure=copy.deepcopy(run.failure),
            )
            records[rec.config_id] = rec
        return records

    def delete_untrained(self, records: Mapping[str, ConfigRecord], keep: Iterable[str] = ()) -> list[str]:
        keep = set(keep)
        gone = [cid for cid, rec in records.items() if not rec.epochs and rec.failure is None and cid not in keep]
        for cid in gone:
            self._write("delete run")
            self.runs[records[cid].run_id].deleted = True
            if isinstance(records, dict):
                del records[cid]
        return gone

    def mark_pending(self, rec: ConfigRecord, epoch: int | None) -> None:
        rec.pending_epoch = epoch
        self.set_tags(rec.run_id, {"quicktune.pending_epoch": "" if epoch is None else str(epoch)})

    def log_epochs(self, rec: ConfigRecord, epochs: Iterable[Mapping[str, Any]], seqs: Iterable[int]) -> None:
        self._write("log epochs")  # one request: all or nothing, as in MLflow's log_batch
        run = self.runs[rec.run_id]
        for ep, seq in zip(epochs, seqs, strict=True):
            values = {k: float(ep[k]) for k in ("score", "cost") if ep.get(k) is not None}
            values["tell_seq"] = float(seq)
            rec.epochs[int(ep["epoch"])] = dict(values)
            run.epochs[int(ep["epoch"])] = dict(values)
        rec.pending_epoch = None
        run.tags["quicktune.pending_epoch"] = ""

    def log_failure(
        self, rec: ConfigRecord, epoch: int, seq: int, status: str, message: str, cost: float, logs: str | None = None
    ) -> None:
        self._write("log failure")
        rec.failure = Observation(
            seq=seq, config_id=rec.config_id, epoch=epoch, score=math.nan, cost=cost, status=status
        )
        rec.status, rec.message, rec.pending_epoch = status, message, None
        run = self.runs[rec.run_id]
        run.failure = copy.deepcopy(rec.failure)
        run.tags.update({"quicktune.status": status, "quicktune.message": message, "quicktune.pending_epoch": ""})

    # --- optimizer snapshots -------------------------------------------------------------------
    def save_optimizer_state(self, run_id: str, generation: int, payload: Mapping[str, Any]) -> None:
        self._write("save optimizer state")
        self.runs[run_id].artifacts[STATE_SLOTS[generation % 2]] = json.dumps(
            {"generation": generation, **payload}, default=str
        )

    def load_optimizer_state(self, run_id: str) -> dict[str, Any] | None:
        docs = [json.loads(t) for s in STATE_SLOTS if (t := self.runs[run_id].artifacts.get(s))]
        return max(docs, key=lambda d: d["generation"]) if docs else None

    # --- the end -------------------------------------------------------------------------------
    def finish_search(
        self,
        parent: SearchRun,
        status: str,
        message: str,
        summary: Mapping[str, Any] | None,
        records: Mapping[str, ConfigRecord],
    ) -> None:
        for rec in records.values():
            self.set_tags(rec.run_id, {"quicktune.pending_epoch": ""})
            self.runs[rec.run_id].state = "FAILED" if rec.dead else "FINISHED"
        self.set_tags(parent.run_id, {"quicktune.status": status, "quicktune.message": message})
        self.runs[parent.run_id].state = "FINISHED" if status == "succeeded" else "FAILED"
        if summary is not None:
            self.runs[parent.run_id].artifacts["summary.json"] = json.dumps(summary, default=str)

    # --- what the tests read -------------------------------------------------------------------
    def parent(self, search_id: str) -> _Run:
        found = self.find_search(search_id)
        assert found is not None
        return self.runs[found.info.run_id]

    def curves(self, search_id: str) -> dict[str, dict[int, float]]:
        """config id -> {epoch: score} of the search's live config runs."""
        return {
            r.tags["quicktune.config_id"]: {e: m["score"] for e, m in sorted(r.epochs.items())}
            for r in self.config_runs(self.parent(search_id).run_id)
        }

    def tell_seqs(self, search_id: str) -> list[int]:
        seqs = [int(m["tell_seq"]) for r in self.config_runs(self.parent(search_id).run_id) for m in r.epochs.values()]
        seqs += [r.failure.seq for r in self.config_runs(self.parent(search_id).run_id) if r.failure is not None]
        return sorted(seqs)


def score_of(config_id: str, epoch: int) -> float:
    """A learning curve that depends only on the config and the epoch (rising, below 1)."""
    base = (int(config_id[:6], 16) % 1000) / 2000.0
    return round(base + 0.4 * (1 - 0.5**epoch), 6)


Script = Callable[[StepRequest, int], Mapping[str, Any] | None]


class ScriptedBackend(TrialBackend):
    """Steps that finish at once (or after ``polls_to_finish`` polls), with results from ``script``.

    ``script(request, attempt)`` returns a RESULT dict, or None for the default: every epoch from
    the config's checkpoint to ``to_epoch`` trained, scored by :func:`score_of`, cost 1.0.
    ``polls_to_finish`` (a number, or a function of the request) is how many polls a step runs.
    """

    shares_filesystem = True

    def __init__(
        self,
        script: Script | None = None,
        workers: int = 1,
        polls_to_finish: int | Callable[[StepRequest], int] = 0,
        crash: Crash | None = None,
    ) -> None:
        self.script = script or (lambda request, attempt: None)
        self.workers = workers
        self.polls_to_finish = polls_to_finish
        self.crash = crash or Crash()
        self.steps: dict[str, dict[str, Any]] = {}
        self.checkpoint: dict[str, int] = {}  # config id -> last epoch trained (the checkpoint on "disk")
        self.trained: dict[tuple[str, int], int] = {}  # (config, epoch) -> times trained
        self.attempts: dict[str, int] = {}
        self.starts: list[str] = []
        self.max_queued = 0

    def _launch(self, request: StepRequest) -> None:
        self.attempts[request.id] = self.attempts.get(request.id, 0) + 1
        self.steps[request.id] = {"request": request, "polls": 0, "state": PENDING, "result": None}
        self.max_queued = max(self.max_queued, len(self.active()))

    def start(self, request: StepRequest) -> str:
        self.crash.tick(f"start {request.id}")
        self.starts.append(request.id)
        step = self.steps.get(request.id)
        if step is None or step["state"] == CANCELLED:
            self._launch(request)
        return request.id  # a known step is re-adopted, never run twice

    def rerun(self, request: StepRequest) -> str:
        self.crash.tick(f"rerun {request.id}")
        self.starts.append(request.id)
        self._launch(request)
        return request.id

    def _finish(self, step: dict[str, Any]) -> None:
        req: StepRequest = step["request"]
        result = self.script(req, self.attempts[req.id])
        if result is None:
            done = self.checkpoint.get(req.config_id, 0)
            epochs = []
            for e in range(done + 1, req.to_epoch + 1):
                self.trained[(req.config_id, e)] = self.trained.get((req.config_id, e), 0) + 1
                epochs.append({"epoch": e, "score": score_of(req.config_id, e), "cost": 1.0})
            self.checkpoint[req.config_id] = max(done, req.to_epoch)
            result = {"status": "ok", "epochs": epochs}
        step["result"] = dict(result)
        step["state"] = SUCCEEDED if result.get("status") == "ok" else FAILED

    def poll(self, step_id: str) -> StepStatus:
        step = self.steps[step_id]  # KeyError: never started (the contract)
        if step["state"] in (PENDING, RUNNING):
            step["polls"] += 1
            polls = self.polls_to_finish
            if step["polls"] > (polls(step["request"]) if callable(polls) else polls):
                self._finish(step)
            else:
                step["state"] = RUNNING
        return StepStatus(step["state"])

    def result(self, step_id: str) -> dict[str, Any]:
        return dict(self.steps[step_id]["result"] or {"status": "failed", "message": "no result"})

    def logs(self, step_id: str) -> str:
        return f"logs of {step_id}"

    def cancel(self, step_id: str) -> None:
        step = self.steps[step_id]
        if step["state"] in (PENDING, RUNNING):
            step["state"] = CANCELLED

    def active(self) -> list[str]:
        return [s for s, st in self.steps.items() if st["state"] in (PENDING, RUNNING)]

    def capacity(self) -> int:
        return self.workers


def fast_spec(search_id: str, budget_epochs: int, **kw: Any) -> SearchSpec:
    """A search spec for the doubles: the tiny fake data (``fast_inputs`` fixture), random search
    over builtin:cpu, no waiting between polls or retries, no prefetch; ``kw`` overrides."""
    base: dict[str, Any] = dict(
        data_uri="/data/tiny",
        budget_seconds=1e6,
        space="builtin:cpu",
        search_id=search_id,
        max_epochs=3,
        optimizer="random",
        budget_epochs=budget_epochs,
        poll_interval=0.0,
        step_retry_delay=0.0,
        prefetch=0,
    )
    return SearchSpec(**{**base, **kw})
