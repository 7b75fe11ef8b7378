"""A meta-dataset campaign: datasets x sampled configs x epochs, resumable, through any backend.

Why: Quick-Tune meta-learns from learning curves of many (dataset, config) runs. The campaign
produces them with the very step code a search uses (``quicktune step`` through a
:class:`~quicktune.backends.base.TrialBackend`), so the curves have the costs and scores a real
search would see, and it survives being killed: it takes hours on CPUs.

Workdir layout (``WORKDIR`` outside the repository)::

    plan.json                  datasets, config pool, per-dataset assignment, run order, seed, epochs
    data/<task>/               each packaged dataset spec materialised once as an image folder
    backend/steps/<step id>/   LocalBackend's step folders (request, log, RESULT.json)
    ckpt/<task>/<config_id>/   the config's checkpoints (a lost step resumes from here)
    results/<task>/<config_id>.json   the recorded curve of a finished (task, config)
    progress.json, progress.log       what is done, wall time, CPU seconds

Idempotence: a (task, config) with a results file is never run again. Unfinished pairs are
started in plan order; a step that is still running (the campaign process was killed, the steps
were not) is re-adopted by the backend under its deterministic id, a finished one is read, and a
lost one (its process vanished) is re-run by the backend from the config's newest checkpoint.

This module is the run loop only. The plan (tasks, config pool, assignments, run order) is
:mod:`quicktune.metadataset.plan`; the per-(task, config) records, the table and the progress
summary are :mod:`quicktune.metadataset.records` (``export`` needs no backend).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from quicktune import storage
from quicktune.backends.base import StepRequest, TrialBackend
from quicktune.backends.pool import StepPool
from quicktune.metadataset.plan import (
    HELD_OUT,
    PLAN_VERSION,
    POOL_FACTOR,
    CampaignError,
    CampaignPlan,
    DatasetSpec,
    load_plan,
    make_or_extend_plan,
    parse_dataset_spec,
)
from quicktune.metadataset.records import RecordStore, export, read_json, totals, write_json
from quicktune.space import load_space

# Re-exported: the CLI and older callers import these from here.
__all__ = [
    "Campaign",
    "build",
    "export",
    "CampaignError",
    "DatasetSpec",
    "parse_dataset_spec",
    "make_or_extend_plan",
    "load_plan",
    "HELD_OUT",
    "PLAN_VERSION",
    "POOL_FACTOR",
]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Campaign:
    """Runs a planned campaign through ``backend`` and keeps the LCT at ``out`` up to date.

    ``storage_root`` is where data and checkpoints live (the workdir for local backends; an
    ``s3://`` prefix for remote ones, whose workers cannot see this machine's disk)."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        backend: TrialBackend,
        out: str | os.PathLike[str] | None,
        storage_root: str | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.campaign_plan = CampaignPlan.load(self.workdir)
        self.plan = self.campaign_plan.raw
        self.store = RecordStore(self.workdir, self.campaign_plan)
        self.backend = backend
        self.out = Path(out) if out is not None else None
        self.root = storage_root or str(self.workdir)
        self.log = log
        self.campaign_id = self.campaign_plan.campaign_id

    # --- data --------------------------------------------------------------------------------
    def data_uri(self, task: str) -> str:
        return self.campaign_plan.data_uri(task, self.root)

    def materialise(self) -> None:
        """Write each packaged dataset spec once as an image folder (a completion marker makes a
        half-written import start over)."""
        from quicktune.data.packaged import import_dataset

        for task, spec in self.campaign_plan.specs.items():
            if not spec.packaged:
                continue
            dest = self.data_uri(task)
            marker = storage.join(self.root, "data", f".{task}.complete")
            if storage.exists(marker):
                continue
            if not storage.is_s3(dest) and Path(dest).exists():
                shutil.rmtree(dest)
            t0 = time.time()
            summary = import_dataset(
                spec.source,
                dest,
                classes=list(spec.classes) if spec.classes else None,
                max_per_class=spec.max_per_class,
                size=self.campaign_plan.task_image_size(task),
                force=True,
            )
            storage.write_bytes(marker, json.dumps(summary, default=str).encode())
            self.log(f"materialised {task}: {summary['num_images']} images of {spec.source} in {time.time() - t0:.1f}s")

    def request(self, task: str, cid: str) -> StepRequest:
        """The step that trains (task, config) to the plan's epochs (a deterministic step id)."""
        e = self.campaign_plan.epochs
        return StepRequest(
            search_id=f"{self.campaign_id}-{task}",
            config_id=cid,
            config=self.campaign_plan.pool[cid],
            data_uri=self.data_uri(task),
            to_epoch=e,
            checkpoint_dir=storage.join(self.root, "ckpt", task, cid),
            seed=self.campaign_plan.seed,
            image_size=self.campaign_plan.task_image_size(task),
            max_epochs=e,
        )

    # --- progress ----------------------------------------------------------------------------
    def _save_progress(self, session: dict[str, Any]) -> dict[str, Any]:
        path = self.workdir / "progress.json"
        prog = read_json(path) or {"sessions": []}
        sessions = [s for s in prog.get("sessions", []) if s.get("id") != session["id"]] + [session]
        per = self.store.progress()
        total: dict[str, Any] = totals(per)
        total["campaign_wall_seconds"] = round(sum(s["wall_seconds"] for s in sessions), 1)
        total["campaign_cpu_seconds"] = round(sum(s["cpu_seconds"] for s in sessions), 1)
        prog = {
            "tasks": per,
            "total": total,
            "sessions": sessions,
            "epochs_per_config": self.plan["epochs"],
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json(path, prog)
        return prog

    def _log_line(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}"
        with open(self.workdir / "progress.log", "a") as fh:
            fh.write(line + "\n")
        self.log(line)

    # --- the loop ----------------------------------------------------------------------------
    def run(
        self,
        poll_interval: float = 2.0,
        max_results: int | None = None,
        deadline: float | None = None,
        retry_failed: bool = False,
    ) -> dict[str, Any]:
        """Run until every planned (task, config) has a record (or ``max_results`` new records, or
        the wall-clock ``deadline``). With ``retry_failed``, configs whose step failed (status
        ``failed``) are run again. Returns the progress summary."""
        self.materialise()
        retry = set(self.store.forget_failed()) if retry_failed else set()
        for t, c in sorted(retry):
            self._log_line(f"retrying failed config ({t}, {c})")
        records = self.store.load()
        todo = self.store.todo()
        session = {
            "id": f"{os.getpid()}-{time.time():.0f}",
            "started_at": time.time(),
            "wall_seconds": 0.0,
            "cpu_seconds": 0.0,
            "recorded": 0,
            "host": socket.gethostname(),
        }
        t0, cpu0 = time.time(), time.process_time()
        self._log_line(
            f"session start: {len(records)}/{len(self.plan['order'])} recorded, {len(todo)} to go, "
            f"backend {type(self.backend).__name__} x{self.backend.capacity()}"
        )
        # steps a killed campaign left running: keep them, count them first
        inflight: StepPool[tuple[str, str]] = StepPool(self.backend)
        for t, c in inflight.adopt({(t, c): self.request(t, c) for t, c in todo}):
            todo.remove((t, c))
            self._log_line(f"re-adopted running step {inflight.request((t, c)).id} ({t}, {c})")
        if records:
            self.store.write_table(self.out)
        new = 0
        steps_cpu = 0.0  # CPU seconds of the steps recorded this session, as the steps measured them
        last_cpu = _children_cpu()
        while todo or inflight:
            if deadline is not None and time.time() >= deadline:
                self._log_line("deadline reached; steps in flight keep running and are re-adopted next time")
                break
            while todo and len(inflight) < self.backend.capacity():
                t, c = todo.pop(0)
                req = self.request(t, c)
                if (t, c) in retry:
                    inflight.rerun((t, c), req)
                else:
                    inflight.start((t, c), req)
            finished = inflight.finished()
            if not finished:
                time.sleep(poll_interval)
                continue
            now_cpu = _children_cpu()
            # a fallback for results without the step's own CPU measure: exact only when one step
            # finished and it was our child (a subprocess backend with 1 worker, not re-adopted)
            cpu = round(now_cpu - last_cpu, 2) if len(finished) == 1 and now_cpu > last_cpu else None
            last_cpu = now_cpu
            for (t, c), st in finished:
                sid = inflight.request((t, c)).id
                res = inflight.collect((t, c))
                rec = self.store.record(t, c, sid, res, st.message, cpu)
                step_cpu = rec["cpu_seconds"]
                steps_cpu += float(step_cpu or 0.0)
                new += 1
                scores = [e["score"] for e in rec["epochs"]]
                self._log_line(
                    f"done {len(records)}/{len(self.plan['order'])} {t} {c} {rec['config']['model']} "
                    f"status={rec['status']} epochs={len(scores)} "
                    f"last={scores[-1] if scores else float('nan'):.4f} "
                    f"best={max(scores) if scores else float('nan'):.4f} "
                    f"step={float(rec['step_seconds'] or 0):.1f}s cpu={step_cpu if step_cpu is not None else 'n/a'}"
                    + (f" message={rec['message'][:200]!r}" if rec["status"] != "ok" else "")
                )
            self.store.write_table(self.out)
            session["wall_seconds"] = round(time.time() - t0, 1)
            session["cpu_seconds"] = round(steps_cpu + time.process_time() - cpu0, 1)
            session["recorded"] = new
            self._save_progress(session)
            if max_results is not None and new >= max_results:
                break
        session["wall_seconds"] = round(time.time() - t0, 1)
        session["cpu_seconds"] = round(steps_cpu + time.process_time() - cpu0, 1)
        session["recorded"] = new
        prog = self._save_progress(session)
        left = len(self.plan["order"]) - len(records)
        self._log_line(
            f"session end: {new} recorded this session, {len(records)}/{len(self.plan['order'])} "
            f"recorded, {left} to go, {len(inflight)} in flight"
        )
        self.backend.close()
        return prog


# --------------------------------------------------------------------------------------------
# Convenience: plan + run in one call (the CLI's build)
# --------------------------------------------------------------------------------------------
def build(
    workdir: str | os.PathLike[str],
    backend: TrialBackend,
    out: str | os.PathLike[str] | None,
    datasets: Sequence[str] = (),
    configs: int | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    space: str | None = None,
    image_size: int | None = None,
    storage_root: str | None = None,
    max_results: int | None = None,
    poll_interval: float = 2.0,
    deadline: float | None = None,
    retry_failed: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Plan (or extend) a campaign in ``workdir`` and run it. Omitted arguments come from an
    existing plan, so ``build(workdir, backend, out)`` resumes."""
    wd = Path(workdir).resolve()
    existing = read_json(wd / "plan.json")
    if existing is None and not datasets:
        raise CampaignError(f"{wd}: no campaign here yet; give --datasets (and --configs, --epochs)")
    specs = [parse_dataset_spec(s) for s in datasets]
    if existing is None:
        if configs is None or epochs is None:
            raise CampaignError("a new campaign needs --configs and --epochs")
    seed_v = int(seed) if seed is not None else int(existing["seed"]) if existing else 0
    epochs_v = int(epochs) if epochs is not None else int(existing["epochs"])
    configs_v = int(configs) if configs is not None else int(existing["configs_per_dataset"])
    if epochs_v < 1 or configs_v < 1:
        raise CampaignError(f"--configs and --epochs must be >= 1, got {configs_v} and {epochs_v}")
    image_v = image_size if image_size is not None else (existing["image_size"] if existing else 32)
    space_ref = space or (existing["space_ref"] if existing else "builtin:cpu")
    sp = load_space(space_ref)
    make_or_extend_plan(wd, specs, configs_v, epochs_v, seed_v, sp, space_ref, image_v)
    camp = Campaign(wd, backend, out, storage_root=storage_root, log=log)
    return camp.run(poll_interval=poll_interval, max_results=max_results, deadline=deadline, retry_failed=retry_failed)
