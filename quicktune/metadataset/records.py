"""A campaign's result store: one JSON record per finished (task, config), and what follows from them.

Why a module of its own: the records are the campaign's memory. They make it idempotent (a
(task, config) with a record is never run again), resumable (a killed campaign re-reads them)
and exportable (the learning-curve table and the progress summary are functions of the records
and the plan alone, so ``export``/``status`` need no trial backend).

Layout under the campaign's workdir::

    results/<task>/<config_id>.json   the recorded curve of a finished (task, config)

A record is written atomically (temporary file + rename); a half-written one does not exist.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quicktune.metadataset.plan import CampaignError, CampaignPlan

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: the progress fields summed over tasks into the campaign's totals
TOTAL_KEYS = ("planned", "done", "failed", "epochs", "compute_seconds", "step_seconds", "cpu_seconds")


def read_json(path: Path) -> Any | None:
    """The JSON at ``path``, or None when it is missing or not (yet) valid JSON."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` at ``path`` atomically (readers see the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def measured_cpu_seconds(epochs: Sequence[Mapping[str, Any]]) -> float | None:
    """The CPU seconds the step itself measured for ``epochs`` (train + validation of each epoch,
    the step process's own CPU time), or None when an epoch lacks the measure (older results).

    Why the step's measure: the campaign cannot count its steps' CPU itself. A step forked by the
    local fork server is not the campaign's child, so ``RUSAGE_CHILDREN`` never sees it; steps in
    Kubernetes pods run on other machines."""
    total = 0.0
    for e in epochs:
        if e.get("train_cpu_seconds") is None or e.get("eval_cpu_seconds") is None:
            return None
        total += float(e["train_cpu_seconds"]) + float(e["eval_cpu_seconds"])
    return total


class RecordStore:
    """The records of one campaign (``workdir/results``), read in plan order."""

    def __init__(self, workdir: str | os.PathLike[str], plan: CampaignPlan) -> None:
        self.workdir = Path(workdir)
        self.plan = plan
        self.results_dir = self.workdir / "results"
        self.records: dict[tuple[str, str], dict[str, Any]] = {}

    def result_path(self, task: str, cid: str) -> Path:
        return self.results_dir / task / f"{cid}.json"

    def load(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Re-read every planned (task, config)'s record from disk (unplanned files are ignored)."""
        self.records = {}
        for task, cid in self.plan.order:
            rec = read_json(self.result_path(task, cid))
            if rec is not None:
                self.records[(task, cid)] = rec
        return self.records

    def todo(self) -> list[tuple[str, str]]:
        """The planned (task, config) pairs without a record, in run order."""
        return [(t, c) for t, c in self.plan.order if (t, c) not in self.records]

    def record(
        self, task: str, cid: str, sid: str, result: Mapping[str, Any], state_message: str, cpu_seconds: float | None
    ) -> dict[str, Any]:
        """Record a finished step's RESULT for (task, config) and return the record.

        ``cpu_seconds`` is the caller's estimate of the step's CPU time; the step's own measure of
        the epochs it trained (:func:`measured_cpu_seconds`) replaces it when the result has one."""
        history = list(result.get("history") or [])
        epochs = history if history else list(result.get("epochs") or [])
        trained_now = list(result.get("epochs") or [])
        measured = measured_cpu_seconds(trained_now) if trained_now else None
        if measured is not None:
            cpu_seconds = round(measured, 2)
        step_seconds = result.get("step_seconds")
        failed_cost = 0.0
        if step_seconds is not None:
            failed_cost = max(0.0, float(step_seconds) - sum(float(e.get("cost", 0.0)) for e in trained_now))
        rec = {
            "task": task,
            "config_id": cid,
            "config": self.plan.pool[cid],
            "status": result.get("status", "failed"),
            "message": result.get("message") or state_message,
            "epochs": epochs,
            "epochs_trained_by_step": [int(e["epoch"]) for e in trained_now],
            "meta_features": result.get("meta_features") or {},
            "step_id": sid,
            "step_seconds": step_seconds,
            "failed_cost": failed_cost,
            "cpu_seconds": cpu_seconds,
            "warnings": result.get("warnings") or [],
            "recorded_at": time.time(),
            "host": socket.gethostname(),
        }
        write_json(self.result_path(task, cid), rec)
        self.records[(task, cid)] = rec
        return rec

    def forget_failed(self, statuses: Sequence[str] = ("failed",)) -> list[tuple[str, str]]:
        """Drop the records of configs whose step ended with one of ``statuses`` (by default only
        ``failed``: an infrastructure or code error, not a property of the config like ``diverged``,
        ``invalid`` or ``oom``), so that the next run trains them again (from their checkpoints).
        The dropped file is renamed, not deleted (``<config>.json.dropped-<unix time>``)."""
        self.load()
        dropped = []
        for (t, c), rec in list(self.records.items()):
            if rec["status"] in statuses:
                path = self.result_path(t, c)
                path.rename(path.with_name(f"{c}.json.dropped-{int(time.time())}"))
                del self.records[(t, c)]
                dropped.append((t, c))
        return dropped

    # --- what follows from the records -------------------------------------------------------
    def table(self) -> pd.DataFrame | None:
        """The LCT of everything recorded so far (``None`` before the first result)."""
        from quicktune.metadataset.table import curve_rows, frame_from_rows

        rows: list[dict[str, Any]] = []
        meta_by_task: dict[str, dict[str, Any]] = {}
        for (task, _), rec in self.records.items():
            if rec.get("meta_features"):
                meta_by_task.setdefault(task, rec["meta_features"])
        for task, cid in self.plan.order:
            rec = self.records.get((task, cid))
            if rec is None:
                continue
            rows.extend(
                curve_rows(
                    task,
                    cid,
                    rec["config"],
                    rec["epochs"],
                    meta_by_task.get(task, {}),
                    status=rec["status"],
                    max_epoch=self.plan.epochs,
                    failed_cost=rec.get("failed_cost") or 0.0,
                )
            )
        if not rows:
            return None
        return frame_from_rows(rows, hp_names=self.plan.space.names)

    def write_table(self, out: str | os.PathLike[str] | None) -> None:
        """Rewrite the LCT at ``out`` atomically (nothing when ``out`` is None or nothing is recorded)."""
        from quicktune.metadataset.table import write_table_atomic

        if out is None:
            return
        df = self.table()
        if df is not None:
            write_table_atomic(df, Path(out))

    def progress(self) -> dict[str, dict[str, Any]]:
        """Per task: planned, done, failed, epochs, seconds (compute, step, CPU) and best score."""
        per: dict[str, dict[str, Any]] = {}
        for task in self.plan.tasks:
            per[task] = {
                "planned": len(self.plan.assigned(task)),
                "done": 0,
                "failed": 0,
                "epochs": 0,
                "compute_seconds": 0.0,
                "step_seconds": 0.0,
                "cpu_seconds": 0.0,
                "best_score": None,
            }
        for (task, _), rec in self.records.items():
            p = per[task]
            p["done"] += 1
            p["failed"] += rec["status"] != "ok"
            p["epochs"] += len(rec["epochs"])
            p["compute_seconds"] += sum(float(e.get("cost", 0.0)) for e in rec["epochs"])
            p["step_seconds"] += float(rec.get("step_seconds") or 0.0)
            # the CPU of the curve's epochs as the steps measured them; the record's own figure
            # only for results that predate the measure
            curve_cpu = measured_cpu_seconds(rec["epochs"])
            p["cpu_seconds"] += curve_cpu if curve_cpu is not None else float(rec.get("cpu_seconds") or 0.0)
            best = max((float(e["score"]) for e in rec["epochs"] if e.get("score") is not None), default=None)
            if best is not None and (p["best_score"] is None or best > p["best_score"]):
                p["best_score"] = best
        for p in per.values():
            for k in ("compute_seconds", "step_seconds", "cpu_seconds"):
                p[k] = round(p[k], 1)
        return per


def totals(per: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The sums of :data:`TOTAL_KEYS` over the tasks of a progress summary."""
    return {k: round(sum(p[k] for p in per.values()), 1) for k in TOTAL_KEYS}


def _loaded_store(workdir: str | os.PathLike[str]) -> RecordStore:
    """The record store of the campaign in ``workdir``, its results read from disk."""
    wd = Path(workdir).resolve()
    store = RecordStore(wd, CampaignPlan.load(wd))
    store.load()
    return store


def export_summary(workdir: str | os.PathLike[str], keep: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The progress summary (``tasks`` and ``total``) recomputed from a campaign's recorded results
    (read only; safe while the campaign runs). ``keep``: totals of an older summary that the
    results cannot give (the campaign's wall time over its sessions) and are carried over."""
    per = _loaded_store(workdir).progress()
    total: dict[str, Any] = {k: v for k, v in (keep or {}).items() if k not in TOTAL_KEYS}
    total.update(totals(per))
    return {"tasks": per, "total": total}


def export(workdir: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Rewrite the table at ``out`` from a campaign's recorded results without running anything
    (also while the campaign runs: it only reads). Returns the progress summary."""
    return export_many([workdir], out)


def export_many(workdirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> dict[str, Any]:
    """One table at ``out`` from several campaigns' recorded results, combined in the given order
    (``combine.combine_tables``: an earlier campaign's rows and names never change). Returns the
    progress summary, tasks keyed ``"<k>:<task>"`` when there is more than one campaign."""
    from quicktune.metadataset.combine import combine_tables
    from quicktune.metadataset.table import write_table_atomic

    if not workdirs:
        raise CampaignError("export: no campaign folder given")
    stores = [_loaded_store(w) for w in workdirs]
    frames = [df for df in (s.table() for s in stores) if df is not None]
    if frames:  # one table: combine_tables returns it unchanged
        write_table_atomic(combine_tables(frames), Path(out))
    if len(stores) == 1:
        per = stores[0].progress()
    else:
        per = {f"{k}:{task}": row for k, s in enumerate(stores, start=1) for task, row in s.progress().items()}
    return {"tasks": per, "total": totals(per)}
