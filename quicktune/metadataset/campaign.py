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

Sampling: one shared pool of configs (1.5 x N, drawn from a seeded stream), each dataset gets a
random N of them, so configs overlap partly across datasets (which helps meta-learning). The run
order is round-robin over datasets, so a partial campaign covers every task evenly. Extending a
campaign (more configs per dataset, more datasets) appends to the plan; nothing planned changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from quicktune import storage
from quicktune.backends.base import StepRequest, TrialBackend
from quicktune.space import SearchSpace, config_id, load_space

PLAN_VERSION = 1
POOL_FACTOR = 1.5
#: packaged datasets kept out of the project's meta-dataset (they evaluate the shipped surrogate)
HELD_OUT = ("animal-mnist", "emoji")

_OPTION_RE = re.compile(r":(classes|max_per_class|name)=([^:]*)$")


class CampaignError(ValueError):
    """The campaign cannot run as asked (bad dataset spec, plan mismatch); the message says what."""


# --------------------------------------------------------------------------------------------
# Dataset specs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """One task of the campaign: a packaged dataset (optionally a class subset) or a path/URI."""

    task: str  # the ``dataset`` value in the table
    source: str  # packaged name, or a folder / s3:// URI
    packaged: bool
    classes: tuple[int, ...] | None = None
    max_per_class: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes) if self.classes is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatasetSpec":
        return cls(task=str(d["task"]), source=str(d["source"]), packaged=bool(d["packaged"]),
                   classes=tuple(int(c) for c in d["classes"]) if d.get("classes") is not None else None,
                   max_per_class=int(d["max_per_class"]) if d.get("max_per_class") is not None else None)


def _packaged_names() -> list[str]:
    from quicktune.data.packaged import LOADERS

    return sorted(LOADERS)


def parse_dataset_spec(text: str) -> DatasetSpec:
    """``NAME[:classes=0,2,3][:max_per_class=60][:name=TASK]`` for a packaged dataset, or
    ``PATH_OR_URI[:name=TASK]`` for an image folder / ``s3://`` prefix.

    The task name defaults to NAME (``-c`` + the class indices for a subset, e.g. ``digits-c01234``)
    or to the folder's base name."""
    raw = text.strip()
    if not raw:
        raise CampaignError("empty dataset spec")
    opts: dict[str, str] = {}
    rest = raw
    while True:
        m = _OPTION_RE.search(rest)
        if not m:
            break
        if m.group(1) in opts:
            raise CampaignError(f"dataset spec {text!r}: option {m.group(1)!r} given twice")
        opts[m.group(1)] = m.group(2)
        rest = rest[:m.start()]
    if not rest:
        raise CampaignError(f"dataset spec {text!r}: no dataset name or path")
    names = _packaged_names()
    packaged = rest in names
    if not packaged and ":" in rest and not storage.is_s3(rest):
        raise CampaignError(f"dataset spec {text!r}: unknown option in {rest!r} "
                            f"(options: classes=, max_per_class=, name=)")
    if not packaged and not (storage.is_s3(rest) or "/" in rest or os.path.isdir(rest)):
        raise CampaignError(f"dataset spec {text!r}: {rest!r} is neither a packaged dataset ({', '.join(names)}) "
                            f"nor an existing folder / s3:// URI")
    classes: tuple[int, ...] | None = None
    max_per_class: int | None = None
    if "classes" in opts:
        if not packaged:
            raise CampaignError(f"dataset spec {text!r}: classes= only applies to packaged datasets")
        try:
            classes = tuple(int(c) for c in opts["classes"].split(",") if c.strip())
        except ValueError:
            raise CampaignError(f"dataset spec {text!r}: classes must be comma-separated integers") from None
        if len(set(classes)) < 2:
            raise CampaignError(f"dataset spec {text!r}: a class subset needs at least 2 distinct classes")
    if "max_per_class" in opts:
        if not packaged:
            raise CampaignError(f"dataset spec {text!r}: max_per_class= only applies to packaged datasets")
        try:
            max_per_class = int(opts["max_per_class"])
        except ValueError:
            raise CampaignError(f"dataset spec {text!r}: max_per_class must be an integer") from None
        if max_per_class < 1:
            raise CampaignError(f"dataset spec {text!r}: max_per_class must be >= 1")
    if "name" in opts:
        task = opts["name"]
    elif packaged:
        task = rest
        if classes is not None:
            sep = "" if all(c < 10 for c in classes) else "-"
            task += "-c" + sep.join(str(c) for c in classes)
    else:
        task = rest.rstrip("/").rsplit("/", 1)[-1]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", task):
        raise CampaignError(f"dataset spec {text!r}: task name {task!r} must be 1-63 letters, digits, '.', '_' or '-'")
    return DatasetSpec(task=task, source=rest, packaged=packaged, classes=classes, max_per_class=max_per_class)


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
def _stable_int(*parts: Any) -> int:
    return int(hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def _pool_stream(space: SearchSpace, seed: int, start: int, have: set[str], n: int) -> list[tuple[int, dict[str, Any]]]:
    """``n`` new distinct configs from the deterministic stream (draw ``k`` uses rng seed (seed, k))."""
    out: list[tuple[int, dict[str, Any]]] = []
    k = start
    tries = 0
    while len(out) < n:
        cfg = space.sample(np.random.default_rng([seed, 7919, k]))
        k += 1
        tries += 1
        cid = config_id(cfg)
        if cid not in have:
            have.add(cid)
            out.append((k, cfg))
        if tries > 50 * n + 1000:  # a small space: fewer distinct configs than asked for
            break
    return out


def make_or_extend_plan(workdir: Path, specs: Sequence[DatasetSpec], configs: int, epochs: int, seed: int,
                        space: SearchSpace, space_ref: str, image_size: int | None) -> dict[str, Any]:
    """Create ``workdir/plan.json`` or extend it (new datasets, more configs per dataset).

    A plan's seed, epochs, image size and space are fixed once made; asking for different ones is
    an error (start a new workdir instead). Existing assignments and run order never change."""
    path = workdir / "plan.json"
    if path.exists():
        plan = json.loads(path.read_text())
        for key, want in (("seed", seed), ("epochs", epochs), ("image_size", image_size)):
            if plan[key] != want:
                raise CampaignError(f"{path}: the campaign was planned with {key}={plan[key]!r}, asked for {want!r}; "
                                    f"use the same value or a new --workdir")
        if SearchSpace.from_dict(plan["space"], source=str(path)) != space:  # as spaces: older plans lack param_order
            raise CampaignError(f"{path}: the campaign was planned with space {plan['space_ref']!r}, "
                                f"asked for {space_ref!r} (different parameters); use a new --workdir")
    else:
        plan = {"version": PLAN_VERSION, "seed": seed, "epochs": epochs, "image_size": image_size,
                "space_ref": space_ref, "space": space.to_dict(), "configs_per_dataset": 0,
                "datasets": [], "pool": [], "pool_draws": 0, "assignments": {}, "order": [],
                "created_at": time.time()}
    known = {d["task"]: DatasetSpec.from_dict(d) for d in plan["datasets"]}
    for s in specs:
        if s.task in known and known[s.task] != s:
            raise CampaignError(f"{path}: task {s.task!r} is already planned as {known[s.task].to_dict()}, "
                                f"asked for {s.to_dict()}; give the new one another name (:name=...)")
        if s.task not in known:
            known[s.task] = s
            plan["datasets"].append(s.to_dict())
    seen_tasks = [s.task for s in specs]
    dup = {t for t in seen_tasks if seen_tasks.count(t) > 1}
    if dup:
        raise CampaignError(f"dataset specs name the same task twice: {sorted(dup)} (use :name=...)")

    n_target = max(int(configs), int(plan["configs_per_dataset"]))
    pool_target = int(math.ceil(POOL_FACTOR * n_target))
    pool_ids = [p["config_id"] for p in plan["pool"]]
    if len(pool_ids) < pool_target:
        have = set(pool_ids)
        for k, cfg in _pool_stream(space, seed, int(plan["pool_draws"]), have, pool_target - len(pool_ids)):
            plan["pool"].append({"config_id": config_id(cfg), "config": cfg})
            plan["pool_draws"] = k
        pool_ids = [p["config_id"] for p in plan["pool"]]
    if len(pool_ids) < n_target:
        raise CampaignError(f"space {space.name!r} has only {len(pool_ids)} distinct configs; "
                            f"cannot assign {n_target} per dataset")
    new_per_task: dict[str, list[str]] = {}
    for d in plan["datasets"]:
        task = d["task"]
        assigned = plan["assignments"].setdefault(task, [])
        need = n_target - len(assigned)
        if need <= 0:
            continue
        rng = np.random.default_rng([seed, _stable_int(task), len(assigned)])
        free = [c for c in pool_ids if c not in set(assigned)]
        pick = [free[i] for i in rng.permutation(len(free))[:need]]
        assigned.extend(pick)
        new_per_task[task] = pick
    longest = max((len(v) for v in new_per_task.values()), default=0)
    for i in range(longest):
        for d in plan["datasets"]:
            lst = new_per_task.get(d["task"], [])
            if i < len(lst):
                plan["order"].append([d["task"], lst[i]])
    plan["configs_per_dataset"] = n_target
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".plan.json.tmp")
    tmp.write_text(json.dumps(plan, indent=1))  # no sort_keys: parameter order matters
    os.replace(tmp, path)
    return plan


def load_plan(workdir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(workdir) / "plan.json"
    if not path.exists():
        raise CampaignError(f"{path}: no campaign plan here (run build with --datasets first)")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Campaign:
    """Runs a planned campaign through ``backend`` and keeps the LCT at ``out`` up to date.

    ``storage_root`` is where data and checkpoints live (the workdir for local backends; an
    ``s3://`` prefix for remote ones, whose workers cannot see this machine's disk)."""

    def __init__(self, workdir: str | os.PathLike[str], backend: TrialBackend, out: str | os.PathLike[str] | None,
                 storage_root: str | None = None, log: Callable[[str], None] = print) -> None:
        self.workdir = Path(workdir).resolve()
        self.plan = load_plan(self.workdir)
        self.backend = backend
        self.out = Path(out) if out is not None else None
        self.root = storage_root or str(self.workdir)
        self.log = log
        self.results_dir = self.workdir / "results"
        self.space = SearchSpace.from_dict(self.plan["space"], source=self.plan["space_ref"])
        self.pool = {p["config_id"]: p["config"] for p in self.plan["pool"]}
        self.specs = {d["task"]: DatasetSpec.from_dict(d) for d in self.plan["datasets"]}
        self.campaign_id = "mds-" + hashlib.sha1(f"{self.plan['seed']}/{self.plan['created_at']}".encode()).hexdigest()[:8]
        self._records: dict[tuple[str, str], dict[str, Any]] = {}

    # --- data --------------------------------------------------------------------------------
    def data_uri(self, task: str) -> str:
        spec = self.specs[task]
        if not spec.packaged:
            return spec.source
        return storage.join(self.root, "data", task)

    def materialise(self) -> None:
        """Write each packaged dataset spec once as an image folder (a completion marker makes a
        half-written import start over)."""
        from quicktune.data.packaged import import_dataset

        for task, spec in self.specs.items():
            if not spec.packaged:
                continue
            dest = self.data_uri(task)
            marker = storage.join(self.root, "data", f".{task}.complete")
            if storage.exists(marker):
                continue
            if not storage.is_s3(dest) and Path(dest).exists():
                shutil.rmtree(dest)
            t0 = time.time()
            summary = import_dataset(spec.source, dest, classes=list(spec.classes) if spec.classes else None,
                                     max_per_class=spec.max_per_class, size=self.plan["image_size"], force=True)
            storage.write_bytes(marker, json.dumps(summary, default=str).encode())
            self.log(f"materialised {task}: {summary['num_images']} images of {spec.source} in {time.time() - t0:.1f}s")

    # --- records -----------------------------------------------------------------------------
    def result_path(self, task: str, cid: str) -> Path:
        return self.results_dir / task / f"{cid}.json"

    def load_records(self) -> dict[tuple[str, str], dict[str, Any]]:
        self._records = {}
        for task, cid in self.plan["order"]:
            rec = _read_json(self.result_path(task, cid))
            if rec is not None:
                self._records[(task, cid)] = rec
        return self._records

    def request(self, task: str, cid: str) -> StepRequest:
        e = int(self.plan["epochs"])
        return StepRequest(search_id=f"{self.campaign_id}-{task}", config_id=cid, config=self.pool[cid],
                           data_uri=self.data_uri(task), to_epoch=e,
                           checkpoint_dir=storage.join(self.root, "ckpt", task, cid), seed=int(self.plan["seed"]),
                           image_size=self.plan["image_size"], extra_env={"QUICKTUNE_MAX_EPOCHS": str(e)})

    def record(self, task: str, cid: str, sid: str, result: Mapping[str, Any], state_message: str,
               cpu_seconds: float | None) -> dict[str, Any]:
        history = list(result.get("history") or [])
        epochs = history if history else list(result.get("epochs") or [])
        trained_now = list(result.get("epochs") or [])
        step_seconds = result.get("step_seconds")
        failed_cost = 0.0
        if step_seconds is not None:
            failed_cost = max(0.0, float(step_seconds) - sum(float(e.get("cost", 0.0)) for e in trained_now))
        rec = {"task": task, "config_id": cid, "config": self.pool[cid], "status": result.get("status", "failed"),
               "message": result.get("message") or state_message, "epochs": epochs,
               "epochs_trained_by_step": [int(e["epoch"]) for e in trained_now],
               "meta_features": result.get("meta_features") or {}, "step_id": sid,
               "step_seconds": step_seconds, "failed_cost": failed_cost, "cpu_seconds": cpu_seconds,
               "warnings": result.get("warnings") or [], "recorded_at": time.time(),
               "host": socket.gethostname()}
        _write_json(self.result_path(task, cid), rec)
        self._records[(task, cid)] = rec
        return rec

    # --- the table ---------------------------------------------------------------------------
    def table(self):
        """The LCT of everything recorded so far (``None`` before the first result)."""
        from quicktune.metadataset.table import curve_rows, frame_from_rows

        rows: list[dict[str, Any]] = []
        meta_by_task: dict[str, dict[str, Any]] = {}
        for (task, _), rec in self._records.items():
            if rec.get("meta_features"):
                meta_by_task.setdefault(task, rec["meta_features"])
        for task, cid in self.plan["order"]:
            rec = self._records.get((task, cid))
            if rec is None:
                continue
            rows.extend(curve_rows(task, cid, rec["config"], rec["epochs"], meta_by_task.get(task, {}),
                                   status=rec["status"], max_epoch=int(self.plan["epochs"]),
                                   failed_cost=rec.get("failed_cost") or 0.0))
        if not rows:
            return None
        return frame_from_rows(rows, hp_names=self.space.names)

    def write_table(self) -> None:
        from quicktune.metadataset.table import write_table_atomic

        if self.out is None:
            return
        df = self.table()
        if df is not None:
            write_table_atomic(df, self.out)

    # --- progress ----------------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        per: dict[str, dict[str, Any]] = {}
        for d in self.plan["datasets"]:
            per[d["task"]] = {"planned": len(self.plan["assignments"].get(d["task"], [])), "done": 0, "failed": 0,
                              "epochs": 0, "compute_seconds": 0.0, "step_seconds": 0.0, "cpu_seconds": 0.0,
                              "best_score": None}
        for (task, _), rec in self._records.items():
            p = per[task]
            p["done"] += 1
            p["failed"] += rec["status"] != "ok"
            p["epochs"] += len(rec["epochs"])
            p["compute_seconds"] += sum(float(e.get("cost", 0.0)) for e in rec["epochs"])
            p["step_seconds"] += float(rec.get("step_seconds") or 0.0)
            p["cpu_seconds"] += float(rec.get("cpu_seconds") or 0.0)
            best = max((float(e["score"]) for e in rec["epochs"] if e.get("score") is not None), default=None)
            if best is not None and (p["best_score"] is None or best > p["best_score"]):
                p["best_score"] = best
        for p in per.values():
            for k in ("compute_seconds", "step_seconds", "cpu_seconds"):
                p[k] = round(p[k], 1)
        return per

    def _save_progress(self, session: dict[str, Any]) -> dict[str, Any]:
        path = self.workdir / "progress.json"
        prog = _read_json(path) or {"sessions": []}
        sessions = [s for s in prog.get("sessions", []) if s.get("id") != session["id"]] + [session]
        per = self.progress()
        total = {k: round(sum(p[k] for p in per.values()), 1) for k in
                 ("planned", "done", "failed", "epochs", "compute_seconds", "step_seconds", "cpu_seconds")}
        total["campaign_wall_seconds"] = round(sum(s["wall_seconds"] for s in sessions), 1)
        total["campaign_cpu_seconds"] = round(sum(s["cpu_seconds"] for s in sessions), 1)
        prog = {"tasks": per, "total": total, "sessions": sessions, "epochs_per_config": self.plan["epochs"],
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_json(path, prog)
        return prog

    def _log_line(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}"
        with open(self.workdir / "progress.log", "a") as fh:
            fh.write(line + "\n")
        self.log(line)

    # --- the loop ----------------------------------------------------------------------------
    def forget_failed(self, statuses: Sequence[str] = ("failed",)) -> list[tuple[str, str]]:
        """Drop the records of configs whose step ended with one of ``statuses`` (by default only
        ``failed``: an infrastructure or code error, not a property of the config like ``diverged``,
        ``invalid`` or ``oom``), so that the next run trains them again (from their checkpoints)."""
        self.load_records()
        dropped = []
        for (t, c), rec in list(self._records.items()):
            if rec["status"] in statuses:
                path = self.result_path(t, c)
                path.rename(path.with_name(f"{c}.json.dropped-{int(time.time())}"))
                del self._records[(t, c)]
                dropped.append((t, c))
        return dropped

    def run(self, poll_interval: float = 2.0, max_results: int | None = None,
            deadline: float | None = None, retry_failed: bool = False) -> dict[str, Any]:
        """Run until every planned (task, config) has a record (or ``max_results`` new records, or
        the wall-clock ``deadline``). With ``retry_failed``, configs whose step failed (status
        ``failed``) are run again. Returns the progress summary."""
        self.materialise()
        retry = set(self.forget_failed()) if retry_failed else set()
        for t, c in sorted(retry):
            self._log_line(f"retrying failed config ({t}, {c})")
        self.load_records()
        todo = [(t, c) for t, c in self.plan["order"] if (t, c) not in self._records]
        by_sid = {self.request(t, c).id: (t, c) for t, c in todo}
        session = {"id": f"{os.getpid()}-{time.time():.0f}", "started_at": time.time(), "wall_seconds": 0.0,
                   "cpu_seconds": 0.0, "recorded": 0, "host": socket.gethostname()}
        t0, cpu0 = time.time(), _children_cpu() + time.process_time()
        self._log_line(f"session start: {len(self._records)}/{len(self.plan['order'])} recorded, {len(todo)} to go, "
                       f"backend {type(self.backend).__name__} x{self.backend.capacity()}")
        inflight: dict[str, tuple[str, str]] = {}
        try:
            adopted = [sid for sid in self.backend.active() if sid in by_sid]
        except Exception:  # noqa: BLE001 - a backend that cannot list re-adopts on start() anyway
            adopted = []
        for sid in adopted:  # steps a killed campaign left running: keep them, count them first
            t, c = by_sid[sid]
            self.backend.start(self.request(t, c))
            inflight[sid] = (t, c)
            todo.remove((t, c))
            self._log_line(f"re-adopted running step {sid} ({t}, {c})")
        if self._records:
            self.write_table()
        new = 0
        last_cpu = _children_cpu()
        while todo or inflight:
            if deadline is not None and time.time() >= deadline:
                self._log_line("deadline reached; steps in flight keep running and are re-adopted next time")
                break
            while todo and len(inflight) < self.backend.capacity():
                t, c = todo.pop(0)
                req = self.request(t, c)
                sid = self.backend.rerun(req) if (t, c) in retry else self.backend.start(req)
                inflight[sid] = (t, c)
            finished = []
            for sid, (t, c) in list(inflight.items()):
                st = self.backend.poll(sid)
                if st.done:
                    finished.append((sid, t, c, st))
            if not finished:
                time.sleep(poll_interval)
                continue
            now_cpu = _children_cpu()
            # exact only when one step finished and it was our child (1 worker, not re-adopted)
            cpu = round(now_cpu - last_cpu, 2) if len(finished) == 1 and now_cpu > last_cpu else None
            last_cpu = now_cpu
            for sid, t, c, st in finished:
                res = self.backend.result(sid)
                rec = self.record(t, c, sid, res, st.message, cpu)
                del inflight[sid]
                new += 1
                scores = [e["score"] for e in rec["epochs"]]
                self._log_line(
                    f"done {len(self._records)}/{len(self.plan['order'])} {t} {c} {rec['config']['model']} "
                    f"status={rec['status']} epochs={len(scores)} "
                    f"last={scores[-1] if scores else float('nan'):.4f} best={max(scores) if scores else float('nan'):.4f} "
                    f"step={float(rec['step_seconds'] or 0):.1f}s cpu={cpu if cpu is not None else 'n/a'}"
                    + (f" message={rec['message'][:200]!r}" if rec["status"] != "ok" else ""))
            self.write_table()
            session["wall_seconds"] = round(time.time() - t0, 1)
            session["cpu_seconds"] = round(_children_cpu() + time.process_time() - cpu0, 1)
            session["recorded"] = new
            self._save_progress(session)
            if max_results is not None and new >= max_results:
                break
        session["wall_seconds"] = round(time.time() - t0, 1)
        session["cpu_seconds"] = round(_children_cpu() + time.process_time() - cpu0, 1)
        session["recorded"] = new
        prog = self._save_progress(session)
        left = len(self.plan["order"]) - len(self._records)
        self._log_line(f"session end: {new} recorded this session, {len(self._records)}/{len(self.plan['order'])} "
                       f"recorded, {left} to go, {len(inflight)} in flight")
        self.backend.close()
        return prog


# --------------------------------------------------------------------------------------------
# Convenience: plan + run in one call (the CLI's build)
# --------------------------------------------------------------------------------------------
def build(workdir: str | os.PathLike[str], backend: TrialBackend, out: str | os.PathLike[str] | None,
          datasets: Sequence[str] = (), configs: int | None = None, epochs: int | None = None, seed: int | None = None,
          space: str | None = None, image_size: int | None = None, storage_root: str | None = None,
          max_results: int | None = None, poll_interval: float = 2.0, deadline: float | None = None,
          retry_failed: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Plan (or extend) a campaign in ``workdir`` and run it. Omitted arguments come from an
    existing plan, so ``build(workdir, backend, out)`` resumes."""
    wd = Path(workdir).resolve()
    existing = _read_json(wd / "plan.json")
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
    return camp.run(poll_interval=poll_interval, max_results=max_results, deadline=deadline,
                    retry_failed=retry_failed)


def export(workdir: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Rewrite the table at ``out`` from a campaign's recorded results without running anything
    (also while the campaign runs: it only reads). Returns the progress summary."""

    class _NoBackend(TrialBackend):  # export never starts a step
        def start(self, request):  # pragma: no cover - never called
            raise CampaignError("export does not run steps")

        poll = result = logs = cancel = start  # type: ignore[assignment]

        def active(self):  # pragma: no cover
            return []

    camp = Campaign(workdir, _NoBackend(), out)
    camp.load_records()
    camp.write_table()
    per = camp.progress()
    return {"tasks": per, "total": {k: round(sum(p[k] for p in per.values()), 1) for k in
                                    ("planned", "done", "failed", "epochs", "compute_seconds", "step_seconds",
                                     "cpu_seconds")}}
