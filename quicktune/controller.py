"""The search controller: ask -> dispatch a step -> collect -> tell, tracked in MLflow, resumable.

One loop drives everything. Each round it (1) polls the steps in flight and records every
finished one (per-epoch metrics with a search-wide ``tell_seq`` number, or the failure with the
step's logs) before telling the optimizer; (2) asks the optimizer for enough work to fill the free
workers, creating each new configuration's MLflow run and marking the step as pending; (3) saves
the optimizer's state (the asks included) to the parent run; and only then (4) starts the steps.

Because of that order, MLflow always holds enough to continue after a ``kill -9`` at any point:

- the newest optimizer snapshot, plus the recorded results told after it (``tell_seq`` greater
  than the snapshot's), rebuild the optimizer exactly (replay happens in ``tell_seq`` order);
- every started step was asked before the newest snapshot, which lists it as in flight: on resume
  it is polled in the backend and re-adopted if running, collected if it finished while the
  controller was dead (the race "RESULT.json written, not logged"), started if it never was;
- a result is logged only for epochs not recorded yet, so no epoch is recorded (or trained) twice.

A failed step is recorded on its configuration's run (status, message, logs) and told to the
optimizer with that status; a generic failure (which may be a transient S3 or node problem) is
first retried ``step_retries`` times with backoff. The search fails only when it cannot continue
(the tracking server stays unreachable, the backend fails, every one of the first steps fails),
and its ``quicktune.message`` says why.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from quicktune.backends.base import CANCELLED, RUNNING, BackendError, StepRequest, TrialBackend, step_id
from quicktune.optimizer.artifact import MetaArtifact
from quicktune.optimizer.base import STATUSES, Optimizer
from quicktune.optimizer.registry import make_optimizer, uses_meta_artifact
from quicktune.space import SearchSpace, load_space
from quicktune.tracking.layout import ConfigRecord, SearchRun, SearchTracker
from quicktune.tracking.names import InvalidNameError, check_search_id
from quicktune.tracking.retry import InfrastructureError
from quicktune.tracking.secrets import safe_uri

log = logging.getLogger(__name__)

# Spec fields that define *what* is searched: a resumed search must keep them. The data is
# compared by its fingerprint (the same folder by another path is the same data; another dataset
# under the same path is not), see _Search.open; data_uri is compared here only for searches
# that recorded no fingerprint.
IDENTITY_FIELDS = ("data_uri", "space", "max_epochs", "seed", "optimizer", "image_size", "device", "checkpoint_uri",
                   "meta_artifact")
TAG_FINGERPRINT = "quicktune.dataset_fingerprint"


class SearchError(RuntimeError):
    """The search cannot start or continue; the message says why."""


@dataclass
class SearchSpec:
    """What to search and within which budget. ``budget_seconds`` is wall-clock time for the whole
    search (summed over resumed sessions); ``budget_epochs`` / ``budget_gpu_seconds`` optionally
    cap the number of epochs trained / the summed step cost in seconds (GPU-seconds on GPUs)."""

    data_uri: str
    budget_seconds: float
    space: str = "builtin:cpu"
    search_id: str = ""
    workers: int = 1
    max_epochs: int = 10
    seed: int = 0
    optimizer: str = "quicktune"
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    meta_artifact: str | None = None  # folder or s3:// prefix of a `quicktune metatrain` artifact; None: shipped
    image_size: int | None = None
    device: str = "cpu"
    checkpoint_uri: str | None = None
    workdir: str = ".quicktune"
    budget_epochs: int | None = None
    budget_gpu_seconds: float | None = None
    step_retries: int = 2
    step_retry_delay: float = 5.0
    fail_fast_steps: int = 6  # stop when this many first steps all fail and none succeeded
    prefetch: int = 1  # steps asked ahead and queued in the backend, so a freed worker starts at once
    poll_interval: float = 0.25

    def __post_init__(self) -> None:
        if not self.search_id:
            self.search_id = time.strftime("s%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
        try:  # it names folders, Jobs and MLflow filter values: never a path or a quote
            check_search_id(self.search_id)
        except InvalidNameError as exc:
            raise SearchError(str(exc)) from None
        if not (self.budget_seconds and self.budget_seconds > 0):
            raise SearchError(f"budget_seconds must be > 0, got {self.budget_seconds!r}")
        if self.workers < 1:
            raise SearchError(f"workers must be >= 1, got {self.workers}")
        if self.max_epochs < 1:
            raise SearchError(f"max_epochs must be >= 1, got {self.max_epochs}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data_uri"] = safe_uri(d["data_uri"])
        if d.get("meta_artifact"):
            d["meta_artifact"] = safe_uri(d["meta_artifact"])
        return d


@dataclass
class SearchResult:
    search_id: str
    parent_run_id: str
    status: str  # succeeded | failed
    message: str
    best_config_id: str | None
    best_config: dict[str, Any] | None
    best_score: float | None
    best_epoch: int | None
    best_run_id: str | None
    configs_tried: int
    epochs_done: int
    elapsed_seconds: float
    session_seconds: float
    controller_busy_seconds: float
    step_seconds: float
    resumed: bool
    tracking_uri: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class _InFlight:
    config_id: str
    epoch: int
    request: StepRequest
    started: float
    attempts: int = 0
    retry_at: float | None = None  # waiting to be started again after a transient failure
    running_since: float | None = None  # first seen running (a prefetched step waits in a queue first)


class _Progress:
    """One live line: configs tried, epochs, incumbent, budget left (tqdm when available)."""

    def __init__(self, enabled: bool, total: float, search_id: str) -> None:
        self.enabled = enabled
        self.bar = None
        self._last = 0.0
        self._printed = 0.0
        if enabled and sys.stderr.isatty():  # a live line on a terminal; a line every 10 s in logs
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=round(total), unit="s", desc="", file=sys.stderr,
                                bar_format=f"{search_id} {{bar:16}} {{n_fmt}}/{{total_fmt}}s | {{desc}}",
                                mininterval=0.5, dynamic_ncols=True)
            except ImportError:  # pragma: no cover
                self.bar = None

    def update(self, elapsed: float, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        if self.bar is not None:
            self.bar.n = min(round(elapsed), self.bar.total)
            self.bar.set_description_str(text, refresh=True)
        elif force or now - self._printed >= 10.0:
            self._printed = now
            print(f"[{elapsed:5.0f}s] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def checkpoint_dir_for(spec: SearchSpec, parent: SearchRun, config_id: str) -> str:
    """Where a configuration's checkpoints live: ``--checkpoint-uri`` if given, else the MLflow
    artifact store when it is S3, else a folder under the working directory."""
    if spec.checkpoint_uri:
        return f"{spec.checkpoint_uri.rstrip('/')}/{spec.search_id}/{config_id}"
    if parent.artifact_uri.startswith("s3://"):
        return f"{parent.artifact_uri.rstrip('/')}/checkpoints/{config_id}"
    return os.path.join(os.path.abspath(spec.workdir), "checkpoints", spec.search_id, config_id)


def fetch_meta_artifact(uri: str, workdir: str) -> MetaArtifact:
    """Load a meta-artifact: a folder is read in place; an ``s3://`` prefix holding
    ``artifact.json`` + ``weights.safetensors`` is first downloaded to
    ``WORKDIR/meta-artifacts/<hash of the URI>/``. Loaded here, before the search creates anything,
    so that a wrong path or a broken artifact is reported first (and the optimizer gets the object)."""
    import hashlib

    from quicktune import storage
    from quicktune.optimizer.artifact import MANIFEST, WEIGHTS

    if storage.is_s3(uri):
        local = Path(workdir) / "meta-artifacts" / hashlib.sha1(uri.encode()).hexdigest()[:16]
        for name in (MANIFEST, WEIGHTS):
            try:
                storage.download_file(storage.join(uri, name), local / name)
            except storage.StorageError as exc:
                raise SearchError(f"cannot fetch the meta-artifact {safe_uri(uri)}: {exc}") from exc
        path = str(local)
    else:
        path = uri[len("file://"):] if uri.startswith("file://") else uri
    try:
        return MetaArtifact.load(path)
    except (ValueError, OSError) as exc:
        raise SearchError(f"--meta-artifact {safe_uri(uri)}: {exc}") from exc


def check_space(space: SearchSpace) -> None:
    """The strict check of a new search's space (:func:`quicktune.finetune.space_check.check_space_for_step`):
    unknown knobs or models, values the step refuses. Found here, every config would otherwise
    come back ``invalid`` one step at a time. Not repeated on resume: a recorded space is kept."""
    from quicktune.finetune.space_check import check_space_for_step
    from quicktune.space import SpaceError

    try:
        check_space_for_step(space)
    except SpaceError as exc:
        raise SearchError(str(exc)) from exc


def same_location(a: str | None, b: str | None) -> bool:
    """Do two data URIs name the same place? Local paths are compared resolved (relative vs
    absolute, trailing slash, symlinks, ``file://``); S3 prefixes without a trailing slash."""
    if a is None or b is None:
        return a == b

    def norm(uri: str) -> str:
        if "://" in uri and not uri.startswith("file://"):
            return uri.rstrip("/")
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        return os.path.realpath(os.path.expanduser(path))

    return norm(str(a)) == norm(str(b))


def dataset_identity(data_uri: str) -> tuple[dict[str, float], str]:
    """``(meta-features, fingerprint)`` of a dataset: the surrogate conditions on the former; the
    latter (a hash of the file list, labels and split) is tagged on the search so that harvesting
    recognises the same data under another URI or bucket."""
    from quicktune.data import open_dataset

    ds = open_dataset(data_uri)
    meta = {k: float(v) for k, v in ds.meta_features().items()}
    # Decode every image once, before any step: a truncated or corrupt file is a deterministic error
    # that would otherwise surface in every step. Recorded per fingerprint, so a resume pays nothing.
    ds.verify()
    return meta, str(ds.fingerprint)


class _Search:
    """The state of one controller session (see the module docstring for the protocol)."""

    def __init__(self, spec: SearchSpec, backend: TrialBackend, tracker: SearchTracker, optimizer_name: str | None,
                 progress: bool) -> None:
        self.spec = spec
        self.backend = backend
        self.tracker = tracker
        self.optimizer_name = optimizer_name or spec.optimizer
        spec.optimizer = self.optimizer_name
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()  # the controller's own CPU time (children excluded)
        self.sleep_seconds = 0.0
        self.step_seconds = 0.0
        self.step_walls: list[float] = []
        self.records: dict[str, ConfigRecord] = {}
        self.inflight: dict[tuple[str, int], _InFlight] = {}
        self.next_seq = 1
        self.generation = 0
        self.elapsed_before = 0.0
        self.cost_total = 0.0
        self.steps_finished = 0
        self.steps_succeeded = 0
        self.consecutive_first_failures: list[str] = []
        self.progress = _Progress(progress, spec.budget_seconds, spec.search_id)
        self.parent: SearchRun | None = None
        self.opt: Optimizer | None = None
        self.space: SearchSpace | None = None
        self.meta_features: dict[str, float] = {}
        self.resumes = 0
        self.last_incumbent: float | None = None
        self.optimizer_seconds = 0.0
        self._fresh_meta: dict[str, float] = {}

    # --- time and budget -------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.t0)

    def epochs_done(self) -> int:
        return sum(len(r.epochs) for r in self.records.values())

    def budget_reason(self) -> str | None:
        s = self.spec
        if self.elapsed() >= s.budget_seconds:
            return f"wall-clock budget of {s.budget_seconds:g} s used"
        if s.budget_epochs is not None and self.epochs_done() >= s.budget_epochs:
            return f"epoch budget of {s.budget_epochs} used"
        if s.budget_gpu_seconds is not None and self.cost_total >= s.budget_gpu_seconds:
            return f"compute budget of {s.budget_gpu_seconds:g} step-seconds used"
        return None

    def worth_starting(self) -> bool:
        """Do not start a step that cannot finish before the wall-clock budget ends."""
        if self.spec.budget_epochs is not None and \
                self.epochs_done() + len(self.inflight) >= self.spec.budget_epochs:
            return False
        if not self.step_walls:
            return True
        typical = statistics.median(self.step_walls[-20:])
        return self.elapsed() + 0.8 * typical < self.spec.budget_seconds

    # --- setup: new or resumed -----------------------------------------------------------------
    def _check_checkpoint_location(self) -> None:
        """Remote workers cannot see this machine's disk: they need S3 checkpoints."""
        from quicktune.backends.local import LocalBackend

        if isinstance(self.backend, LocalBackend) or (self.spec.checkpoint_uri or "").startswith("s3://"):
            return
        exp = self.tracker._call("get experiment", self.tracker.client.get_experiment, self.tracker.experiment_id)
        if not str(exp.artifact_location).startswith("s3://"):
            raise SearchError(f"{type(self.backend).__name__} runs steps on other machines: give "
                              f"--checkpoint-uri s3://BUCKET/PREFIX (the experiment's artifact store "
                              f"{exp.artifact_location!r} is not S3)")

    def open(self) -> None:
        spec = self.spec
        tr = self.tracker
        tr.check_reachable()  # a server that is not there: seconds, not the 2 min of retries
        self._check_checkpoint_location()
        self.backend.warm_up()  # e.g. the local fork server's imports, while MLflow and the dataset are read
        options = dict(spec.optimizer_options)  # checked before anything is created
        if spec.meta_artifact:
            if not uses_meta_artifact(self.optimizer_name):
                raise SearchError(f"--meta-artifact is for the meta-learned optimizers (quicktune, "
                                  f"quicktune-nocost); {self.optimizer_name!r} does not use one")
            options["artifact"] = fetch_meta_artifact(spec.meta_artifact, spec.workdir)
        existing = tr.find_search(spec.search_id)
        if existing is None:
            self.space = load_space(spec.space)
            check_space(self.space)
            meta, fingerprint = self._open_data()
            self.meta_features = meta
            spec_doc = {**spec.to_dict(), "space_def": self.space.to_dict(), "meta_features": self.meta_features}
            self.parent = tr.open_search(spec.search_id, spec_doc)
            tr.set_tags(self.parent.run_id, {TAG_FINGERPRINT: fingerprint})
            if spec.checkpoint_uri:
                tr.set_tags(self.parent.run_id, {"quicktune.checkpoint_uri": safe_uri(spec.checkpoint_uri)})
        else:
            stored = tr.spec(existing.info.run_id)
            if stored is None:
                raise SearchError(f"search {spec.search_id!r} exists (run {existing.info.run_id}) but has no "
                                  f"spec.json artifact; cannot resume it")
            recorded = existing.data.tags.get(TAG_FINGERPRINT)
            self._check_identity(stored, compare_data_uri=not recorded)
            _, fingerprint = self._open_data()
            if recorded and fingerprint != recorded:  # refused before anything is written or launched
                raise SearchError(self._data_changed(stored, recorded, fingerprint))
            self.space = SearchSpace.from_dict(stored["space_def"], source=f"search {spec.search_id} spec.json")
            self.meta_features = {k: float(v) for k, v in stored.get("meta_features", {}).items()}
            self.parent = tr.open_search(spec.search_id, stored)
            self.elapsed_before = float(self.parent.metrics.get("elapsed_seconds", 0.0))
            self.resumes = int(float(self.parent.tags.get("quicktune.resumes", "0") or 0)) + 1
            tr.set_tags(self.parent.run_id, {"quicktune.resumes": str(self.resumes)})
        self.opt = make_optimizer(self.optimizer_name, self.space, spec.max_epochs, seed=spec.seed,
                                  meta_features=self.meta_features, **options)
        art = getattr(self.opt, "artifact", None)
        if existing is None and art is not None:  # which meta-data informed this search
            tr.set_tags(self.parent.run_id, {
                "quicktune.meta_artifact": safe_uri(spec.meta_artifact) if spec.meta_artifact else "shipped",
                "quicktune.meta_artifact_table_hash": str(art.table_hash)})
        if existing is not None:
            self._rebuild()

    def _open_data(self) -> tuple[dict[str, float], str]:
        """(meta-features, fingerprint) of the spec's dataset; a bad dataset is reported before
        anything is created or launched."""
        try:
            meta, fingerprint = dataset_identity(self.spec.data_uri)
        except Exception as exc:  # noqa: BLE001 - a bad dataset: say so before anything is created
            raise SearchError(f"cannot open dataset {safe_uri(self.spec.data_uri)}: {exc}") from exc
        self._fresh_meta = meta
        return meta, fingerprint

    def _data_changed(self, stored: Mapping[str, Any], old: str, new: str) -> str:
        """Why a resume is refused: the fingerprints, and the class and image counts that changed."""
        was = stored.get("meta_features") or {}
        now = self._fresh_meta
        changes = []
        for key, word in (("num_classes", "classes"), ("num_images", "images")):
            if key in was and key in now and float(was[key]) != float(now[key]):
                changes.append(f"{word} {float(was[key]):.0f} -> {float(now[key]):.0f}")
        detail = f" ({', '.join(changes)})" if changes else ""
        return (f"search {self.spec.search_id!r} was started on other data: dataset fingerprint {old} -> {new}"
                f"{detail} at {safe_uri(self.spec.data_uri)}. Scores of two datasets cannot be compared: resume "
                f"with the data the search started with, or start a new search (another --search-id)")

    def _check_identity(self, stored: Mapping[str, Any], compare_data_uri: bool = True) -> None:
        new = self.spec.to_dict()
        diffs = []
        for k in IDENTITY_FIELDS:
            a, b = stored.get(k), new.get(k)
            if k == "data_uri" and (not compare_data_uri or same_location(a, b)):
                continue
            if k == "space" and a != b:
                # same definition under another reference is fine
                try:
                    if load_space(b) == SearchSpace.from_dict(stored["space_def"], source="spec.json"):
                        continue  # compared as spaces: a space_def of an older version has no param_order
                except Exception:  # noqa: BLE001
                    pass
            if a != b:
                diffs.append(f"{k}: recorded {a!r}, given {b!r}")
        if diffs:
            raise SearchError(f"search {self.spec.search_id!r} already exists with a different definition "
                              f"({'; '.join(diffs)}); use another --search-id or the recorded settings")

    def _rebuild(self) -> None:
        """Optimizer = newest snapshot + recorded results told after it; then reconcile steps in flight."""
        assert self.parent is not None and self.opt is not None
        self.records = self.tracker.load_configs(self.parent.run_id)
        observations = sorted((o for r in self.records.values() for o in r.observations()), key=lambda o: o.seq)
        seqs = [o.seq for o in observations]
        if len(set(seqs)) != len(seqs):
            raise SearchError(f"search {self.spec.search_id!r}: duplicate tell_seq numbers in MLflow; "
                              f"the record is inconsistent")
        self.next_seq = (max(seqs) + 1) if seqs else 1
        self.cost_total = sum(m.get("cost", 0.0) for r in self.records.values() for m in r.epochs.values())
        snap = self.tracker.load_optimizer_state(self.parent.run_id)
        inflight_keys: list[tuple[str, int]] = []
        told_after = observations
        if snap is not None:
            self.generation = int(snap["generation"])
            try:
                self.opt.load_state_dict(snap["state"])
            except Exception as exc:
                raise SearchError(f"search {self.spec.search_id!r}: the saved optimizer state does not fit "
                                  f"optimizer {self.optimizer_name!r}: {exc}") from exc
            told_after = [o for o in observations if o.seq > int(snap["seq"])]
            covered = len(observations) - len(told_after)
            if "observations" in snap and covered != int(snap["observations"]):
                raise SearchError(f"search {self.spec.search_id!r}: the optimizer snapshot covers "
                                  f"{snap['observations']} observations but MLflow records {covered} up to "
                                  f"tell_seq {snap['seq']}; the record is inconsistent")
            inflight_keys = [(str(c), int(e)) for c, e in snap.get("inflight", [])]
        elif observations:
            log.warning("search %s: no optimizer snapshot; replaying all %d observations", self.spec.search_id,
                        len(observations))
        for o in told_after:
            try:
                self.opt.tell(o.config_id, o.epoch, o.score, o.cost, o.status)
            except Exception as exc:
                raise SearchError(f"search {self.spec.search_id!r}: cannot replay observation #{o.seq} "
                                  f"({o.config_id} epoch {o.epoch}) into the optimizer: {exc}") from exc
        told = {(o.config_id, o.epoch) for o in observations}
        expected = {k for k in inflight_keys if k not in told}
        # pending marks without a snapshot entry were never started: forget them; runs that never
        # trained and that the snapshot does not list are leftovers of a session killed between
        # creating a run and saving the snapshot: delete them (the optimizer may ask again)
        wanted = {cid for cid, _ in expected}
        for rec in self.records.values():
            if rec.pending_epoch is not None and (rec.config_id, rec.pending_epoch) not in expected \
                    and (rec.epochs or rec.dead):
                self.tracker.mark_pending(rec, None)
        gone = self.tracker.delete_untrained(self.records, keep=wanted)
        if gone:
            log.info("resume: deleted %d run(s) of configs that were never trained: %s", len(gone), gone)
        configs = snap.get("inflight_configs", {}) if snap is not None else {}
        now = time.monotonic()
        for cid, epoch in sorted(expected):
            rec = self.records.get(cid)
            if rec is None and isinstance(configs.get(cid), dict):  # its untrained run was deleted at the end
                rec = self._record_for(cid, configs[cid])
            if rec is None:
                raise SearchError(f"search {self.spec.search_id!r}: the optimizer snapshot lists a step for "
                                  f"config {cid} which has no run in MLflow")
            req = self._request(rec, epoch)
            fl = _InFlight(cid, epoch, req, started=now)
            try:
                state = self.backend.poll(req.id)
                log.info("resume: step %s (%s epoch %d) is %s in the backend: re-adopted", req.id, cid, epoch,
                         state.state)
                if state.state == CANCELLED:
                    fl.retry_at = now  # cancelled when the last session ended: run it again
            except KeyError:
                log.info("resume: step %s (%s epoch %d) was never started: starting it", req.id, cid, epoch)
                fl.retry_at = now
            if rec.pending_epoch != epoch:
                self.tracker.mark_pending(rec, epoch)
            self.inflight[(cid, epoch)] = fl
        known = {f.request.id for f in self.inflight.values()}
        prefix = step_id(self.spec.search_id, "zzzzzzzz", 1).rsplit("-zzzzzzzz-", 1)[0] + "-"
        strays = [s for s in self.backend.active() if s not in known and s.startswith(prefix)]
        if strays:
            log.warning("resume: backend steps not part of the recorded search state (left alone): %s", strays)
        self.last_incumbent = self.incumbent()[0]

    # --- records, requests ---------------------------------------------------------------------
    def _request(self, rec: ConfigRecord, epoch: int) -> StepRequest:
        return StepRequest(search_id=self.spec.search_id, config_id=rec.config_id, config=rec.config,
                           data_uri=self.spec.data_uri, to_epoch=epoch, checkpoint_dir=rec.checkpoint_dir,
                           seed=self.spec.seed, device=self.spec.device, image_size=self.spec.image_size,
                           extra_env={"QUICKTUNE_MAX_EPOCHS": str(self.spec.max_epochs)})

    def _record_for(self, cid: str, config: Mapping[str, Any]) -> ConfigRecord:
        rec = self.records.get(cid)
        if rec is None:
            assert self.parent is not None
            rec = self.tracker.create_config_run(self.parent, self.spec.search_id, cid, config,
                                                 checkpoint_dir_for(self.spec, self.parent, cid))
            self.records[cid] = rec
        return rec

    def incumbent(self) -> tuple[float | None, ConfigRecord | None]:
        best: ConfigRecord | None = None
        for rec in self.records.values():
            if rec.epochs and (best is None or rec.best_score > best.best_score):
                best = rec
        if best is None or not math.isfinite(best.best_score):
            return None, None
        return best.best_score, best

    # --- one round -------------------------------------------------------------------------------
    def collect(self) -> bool:
        """Record and tell every finished step; True if anything was told."""
        told = False
        now = time.monotonic()
        for key, fl in list(self.inflight.items()):
            if fl.retry_at is not None:
                if now >= fl.retry_at and self.budget_reason() is None:
                    log.info("step %s: starting it (attempt %d)", fl.request.id, fl.attempts + 1)
                    self.backend.rerun(fl.request)
                    fl.retry_at, fl.started, fl.running_since = None, now, None
                continue
            status = self.backend.poll(fl.request.id)
            if not status.done:
                if status.state == RUNNING and fl.running_since is None:
                    fl.running_since = now
                continue
            if status.state == CANCELLED:  # cancelled from outside: run it again
                self.backend.start(fl.request)
                continue
            result = self.backend.result(fl.request.id)
            wall = time.monotonic() - (fl.running_since or fl.started)
            if self._should_retry(fl, result):
                fl.attempts += 1
                fl.retry_at = now + self.spec.step_retry_delay * 2 ** (fl.attempts - 1)
                log.warning("step %s failed (%s); retrying in %.0f s", fl.request.id,
                            str(result.get("message", ""))[:200], fl.retry_at - now)
                continue
            self._record_result(fl, result, status.state, wall)
            del self.inflight[key]
            told = True
        return told

    def _should_retry(self, fl: _InFlight, result: Mapping[str, Any]) -> bool:
        ok_epochs = [e for e in result.get("epochs", []) if _finite(e.get("score")) is not None]
        return (result.get("status") == "failed" and not ok_epochs and not result.get("timeout")
                and fl.attempts < self.spec.step_retries)

    def _record_result(self, fl: _InFlight, result: Mapping[str, Any], state: str, wall: float) -> None:
        assert self.opt is not None
        rec = self.records[fl.config_id]
        status = str(result.get("status", "failed"))
        epochs = sorted((e for e in result.get("epochs", []) if rec.last_epoch < int(e["epoch"]) <= fl.epoch),
                        key=lambda e: int(e["epoch"]))
        good = []
        for e in epochs:
            if _finite(e.get("score")) is None or int(e["epoch"]) != rec.last_epoch + len(good) + 1:
                break
            good.append(e)
        seqs = list(range(self.next_seq, self.next_seq + len(good)))
        self.next_seq += len(good)
        self.steps_finished += 1
        self.step_walls.append(wall)
        self.step_seconds += wall
        if good:
            self.tracker.log_epochs(rec, good, seqs)
            for e in good:
                cost = _finite(e.get("cost")) or 0.0
                self.cost_total += cost
                t = time.perf_counter()
                self.opt.tell(rec.config_id, int(e["epoch"]), float(e["score"]), cost, "ok")
                self.optimizer_seconds += time.perf_counter() - t
        if rec.last_epoch >= fl.epoch:
            self.steps_succeeded += 1
            self.consecutive_first_failures = []
            return
        # the step did not reach its epoch: record and tell the failure
        if status == "ok":
            status, message = "failed", f"the step reported ok but epoch {fl.epoch} is missing from its result"
        else:
            message = str(result.get("message", "")) or status
        opt_status = status if status in STATUSES and status != "ok" else "failed"
        failed_epoch = rec.last_epoch + 1
        cost = float(wall)
        seq = self.next_seq
        self.next_seq += 1
        try:
            logs = self.backend.logs(fl.request.id)
        except Exception as exc:  # noqa: BLE001 - logs are best effort
            logs = f"(logs unavailable: {exc})"
        self.tracker.log_failure(rec, failed_epoch, seq, opt_status, f"{status}: {message}"[:2000], cost, logs)
        self.opt.tell(rec.config_id, failed_epoch, math.nan, cost, opt_status)
        log.warning("config %s epoch %d: %s", rec.config_id, failed_epoch, message[:300])
        if opt_status == "invalid" and result.get("invalid_kind") == "data":
            # the dataset itself is unusable: every other config would fail the same way
            raise SearchError(f"the dataset cannot be used (config {rec.config_id} epoch {failed_epoch}): "
                              f"{message[:1000]}")
        if self.steps_succeeded == 0:
            self.consecutive_first_failures.append(f"{opt_status}: {message[:300]}")

    def dispatch(self) -> bool:
        """Fill free workers: ask, create runs, mark pending, snapshot, then start. True if any."""
        assert self.opt is not None and self.parent is not None
        # Ask ahead by ``prefetch``: the backend queues the extra step (PENDING) and launches it the
        # moment a worker frees, so workers never wait for the optimizer or MLflow.
        free = min(self.spec.workers, self.backend.capacity()) + max(0, self.spec.prefetch) - len(self.inflight)
        new: list[_InFlight] = []
        exhausted = False
        while free > 0 and self.worth_starting():
            t = time.perf_counter()
            sug = self.opt.ask()
            self.optimizer_seconds += time.perf_counter() - t
            if sug is None:
                exhausted = True
                break
            key = (sug.config_id, int(sug.epoch))
            if key in self.inflight:  # cannot happen with a consistent optimizer; never start twice
                log.warning("optimizer asked for %s epoch %d which is already running", *key)
                continue
            rec = self._record_for(sug.config_id, sug.config)
            if rec.dead or rec.last_epoch >= sug.epoch:
                raise SearchError(f"optimizer asked for config {sug.config_id} epoch {sug.epoch}, which is "
                                  f"already recorded (last epoch {rec.last_epoch}, dead: {rec.dead}); "
                                  f"refusing to retrain it")
            self.tracker.mark_pending(rec, sug.epoch)
            fl = _InFlight(sug.config_id, int(sug.epoch), self._request(rec, int(sug.epoch)), started=0.0)
            self.inflight[key] = fl
            new.append(fl)
            free -= 1
        if new:
            self.snapshot()
            now = time.monotonic()
            for fl in new:
                self.backend.start(fl.request)
                fl.started = now
        self._exhausted = exhausted
        return bool(new)

    def snapshot(self) -> None:
        assert self.opt is not None and self.parent is not None
        self.generation += 1
        self.tracker.save_optimizer_state(self.parent.run_id, self.generation, {
            "seq": self.next_seq - 1, "optimizer": self.optimizer_name,
            "observations": sum(len(r.observations()) for r in self.records.values()),
            "inflight": sorted([c, e] for c, e in self.inflight),
            # the configs of steps in flight: a resume recreates the run of one whose untrained
            # run was deleted when the last session ended (see finish)
            "inflight_configs": {c: dict(self.inflight[(c, e)].request.config) for c, e in self.inflight},
            "state": self.opt.state_dict()})
        self._snapshot_seq = self.next_seq - 1

    def log_progress(self) -> None:
        assert self.parent is not None
        inc, rec = self.incumbent()
        metrics = {"elapsed_seconds": self.elapsed(), "configs_tried": len(self.records),
                   "epochs_done": self.epochs_done()}
        if inc is not None:
            metrics["incumbent"] = inc
        self.tracker.log_metrics(self.parent.run_id, metrics, step=self.epochs_done())
        self.last_incumbent = inc

    def status_line(self) -> str:
        inc, rec = self.incumbent()
        left = max(0.0, self.spec.budget_seconds - self.elapsed())
        best = f"{inc:.3f} ({rec.config.get('model', '?')} @{rec.best_epoch})" if rec else "-"
        dead = sum(r.dead for r in self.records.values())
        return (f"configs {len(self.records)} ({dead} failed) | epochs {self.epochs_done()} | best {best} | "
                f"running {len(self.inflight)} | {left:.0f}s left")

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        self._exhausted = False
        self._snapshot_seq = -1
        stop_reason = ""
        while True:
            if self.collect():
                self.log_progress()
            first = self.consecutive_first_failures
            if first and len(first) >= self.spec.fail_fast_steps:
                if all(f.startswith("invalid:") for f in first):
                    raise SearchError(f"the first {len(first)} steps were all invalid and none succeeded: the "
                                      f"search space (or --image-size) proposes configs the step cannot train; "
                                      f"last: {first[-1]}")
                raise SearchError(f"the first {len(first)} steps all failed and none succeeded, so the data or "
                                  f"environment is probably broken; last: {first[-1]}")
            reason = self.budget_reason()
            if reason:
                stop_reason = reason
                break
            started = self.dispatch()
            if not self.inflight:
                if self._exhausted:
                    stop_reason = "the optimizer has nothing left to try"
                    break
                if not started and not self.worth_starting():
                    stop_reason = "the remaining budget is too short for another step"
                    break
            self.progress.update(self.elapsed(), self.status_line())
            if not started:
                t = time.monotonic()
                time.sleep(self.spec.poll_interval)
                self.sleep_seconds += time.monotonic() - t
        return self.finish(stop_reason)

    def stop_inflight(self) -> None:
        for fl in self.inflight.values():
            try:
                self.backend.cancel(fl.request.id)
            except KeyError:
                pass

    def finish(self, stop_reason: str, failed: str | None = None) -> SearchResult:
        assert self.parent is not None
        self.stop_inflight()
        for key, fl in list(self.inflight.items()):
            rec = self.records.get(fl.config_id)
            if rec is not None and rec.pending_epoch is not None:
                self.tracker.mark_pending(rec, None)
        if self.opt is not None and failed is None:
            self.snapshot()
        inc, best = self.incumbent()
        status = "failed" if failed else "succeeded"
        message = failed or f"stopped: {stop_reason}"
        if not failed and best is None:
            dead = Counter(r.failure.status for r in self.records.values() if r.failure is not None)
            why = "".join(f"; {n} {word}" for word, n in sorted(dead.items()))
            status, message = "failed", f"no configuration finished an epoch ({stop_reason}{why})"
        self.log_progress()
        self.delete_untrained()
        summary = self.summary(status, message)
        self.plots()
        self.tracker.finish_search(self.parent, status, message, summary, self.records)
        self.progress.update(self.elapsed(), self.status_line(), force=True)
        self.progress.close()
        return self.result(status, message, summary)

    def delete_untrained(self, keep: set[str] | None = None) -> None:
        """At the end of a session, delete the runs of configs that never recorded an epoch or a
        failure (asked ahead, then cut by the budget): they would show as FINISHED runs with 0
        epochs. The snapshot keeps their configs, so a resume that still wants them recreates them."""
        gone = self.tracker.delete_untrained(self.records, keep=keep or ())
        if gone:
            log.info("deleted %d run(s) of configs that were never trained", len(gone))

    def busy_seconds(self) -> float:
        return (time.monotonic() - self.t0) - self.sleep_seconds

    def summary(self, status: str, message: str) -> dict[str, Any]:
        inc, best = self.incumbent()
        session = time.monotonic() - self.t0
        failed: dict[str, int] = {}
        for r in self.records.values():
            if r.failure is not None:
                failed[r.failure.status] = failed.get(r.failure.status, 0) + 1
        return {
            "search_id": self.spec.search_id, "status": status, "message": message,
            "best_config_id": best.config_id if best else None, "best_run_id": best.run_id if best else None,
            "best_config": best.config if best else None, "best_score": inc, "best_epoch": best.best_epoch if best else None,
            "configs_tried": len(self.records), "epochs_done": self.epochs_done(), "failed_configs": failed,
            "elapsed_seconds": self.elapsed(), "budget_seconds": self.spec.budget_seconds,
            "session_seconds": session, "controller_busy_seconds": self.busy_seconds(),
            "controller_overhead_fraction": self.busy_seconds() / max(session, 1e-9),
            "step_seconds": self.step_seconds, "steps_finished": self.steps_finished, "resumes": self.resumes,
            "optimizer": self.optimizer_name, "workers": self.spec.workers,
            "tracking_calls": self.tracker.calls, "tracking_seconds": self.tracker.seconds,
            "optimizer_seconds": self.optimizer_seconds, "controller_cpu_seconds": time.process_time() - self.cpu0,
        }

    def plots(self) -> None:
        assert self.parent is not None
        try:
            from quicktune.tracking import plots

            fig = plots.learning_curves_figure(self.records, title=f"search {self.spec.search_id}")
            self.tracker.log_figure(self.parent.run_id, fig, "plots/learning_curves.png")
            plots.close(fig)
            inc = {s: v for s, v, _ in self.tracker.metric_history(self.parent.run_id, "incumbent")}
            ela = {s: v for s, v, _ in self.tracker.metric_history(self.parent.run_id, "elapsed_seconds")}
            history = [(ela[s], v) for s, v in inc.items() if s in ela]
            fig = plots.incumbent_figure(history, self.spec.budget_seconds, title=f"search {self.spec.search_id}")
            self.tracker.log_figure(self.parent.run_id, fig, "plots/incumbent.png")
            plots.close(fig)
        except InfrastructureError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plot must never fail a search
            log.warning("could not plot the search: %s", exc)

    def result(self, status: str, message: str, summary: dict[str, Any]) -> SearchResult:
        assert self.parent is not None
        inc, best = self.incumbent()
        return SearchResult(
            search_id=self.spec.search_id, parent_run_id=self.parent.run_id, status=status, message=message,
            best_config_id=best.config_id if best else None, best_config=best.config if best else None,
            best_score=inc, best_epoch=best.best_epoch if best else None, best_run_id=best.run_id if best else None,
            configs_tried=len(self.records), epochs_done=self.epochs_done(), elapsed_seconds=self.elapsed(),
            session_seconds=time.monotonic() - self.t0, controller_busy_seconds=self.busy_seconds(),
            step_seconds=self.step_seconds, resumed=self.resumes > 0, tracking_uri=self.tracker.tracking_uri,
            summary=summary)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def run_search(spec: SearchSpec, backend: TrialBackend, tracker: SearchTracker, optimizer_name: str | None = None,
               progress: bool = True) -> SearchResult:
    """Run (or resume, when ``spec.search_id`` exists in MLflow) a search until its budget is used
    or nothing is left to try. Returns how it went; a search that cannot continue is marked failed
    in MLflow with the reason, and ``SearchResult.status`` is ``failed``."""
    _limit_threads()
    search = _Search(spec, backend, tracker, optimizer_name, progress)
    search.open()  # errors here (bad dataset, spec mismatch) raise: nothing to mark yet
    try:
        return search.run()
    except (SearchError, InfrastructureError, BackendError) as exc:
        why = str(exc)
    except KeyboardInterrupt:
        why = "interrupted; resume with the same --search-id"
        _mark_failed(search, why, cancel=True)  # cancelled steps run again on resume
        raise
    except Exception as exc:  # noqa: BLE001 - record an unexpected crash before re-raising
        _mark_failed(search, f"controller error: {type(exc).__name__}: {exc}", cancel=False)
        raise
    log.error("search %s failed: %s", spec.search_id, why)
    return _mark_failed(search, why, cancel=True)


def _limit_threads() -> None:
    """The controller shares the machine with its workers: one torch thread for the optimizer."""
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("QUICKTUNE_CONTROLLER_THREADS", "1")))
    except ImportError:  # pragma: no cover
        pass


def _mark_failed(search: _Search, why: str, cancel: bool) -> SearchResult:
    summary: dict[str, Any] = {}
    try:
        if cancel:
            search.stop_inflight()
        assert search.parent is not None
        search.tracker.retry.total = min(search.tracker.retry.total, 10.0)  # it may be what failed
        # steps left running (a crash) may still record into their runs: keep those
        search.delete_untrained(keep=None if cancel else {c for c, _ in search.inflight})
        summary = search.summary("failed", why)
        search.tracker.finish_search(search.parent, "failed", why, summary, search.records)
    except Exception as exc:  # noqa: BLE001 - the tracking server may be what failed
        log.error("could not record the failure of search %s in MLflow: %s", search.spec.search_id, exc)
    search.progress.close()
    return search.result("failed", why, summary)
