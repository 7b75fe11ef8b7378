"""``quicktune watch``: turn requests made in the MLflow UI into searches and report back there.

Each round (every ``poll`` seconds, or at once when a verified webhook arrives) the watcher lists
registered models and experiments tagged ``quicktune.request`` (``start`` or ``cancel``) and moves
each one forward; all its state is in MLflow tags plus the launcher's own durable state, so a
restarted watcher continues where the last one stopped.

Claiming (why it is safe enough, and where it is not): MLflow has no compare-and-set, so a watcher
writes ``quicktune.claim=<watcher-id>:<nonce>``, waits ``claim_delay`` seconds, reads it back and
proceeds only if the claim is still its own (last writer wins, and every watcher reads the same
winner). A tag write that loses MLflow's own first-write race (its SQL stores insert a new tag
non-atomically; racing writers of one new key get "UNIQUE constraint failed") is written again,
so a watcher never drops out of a claim halfway (once, both racing watchers did). Two watchers
can still both proceed if one reads back before the other's write lands, i.e. if a write takes
longer than ``claim_delay``; even then both derive the *same* search id
from the request (:func:`~quicktune.watch.requests.search_id_for`), the local/Kubernetes
launchers refuse to start a search id that is already running (Kubernetes: the Job name is the
search id, so the second create gets 409), and the controller resumes by search id instead of
creating a second search. A claim whose ``quicktune.heartbeat`` is older than ``stale_after``
seconds is taken over by another watcher (the search id stays the same, so it is resumed).

What a request may read is limited by ``WatcherConfig.roots`` (:mod:`quicktune.watch.roots`;
default: S3 only), and what the watcher writes back is meant for every MLflow user: rejection
reasons in general terms, a failed launch's log tail redacted.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from quicktune.tracking.names import SEARCH_ID_RULE, filter_string, is_search_id, tag
from quicktune.tracking.retry import repeat_if_write_race
from quicktune.tracking.schema import METRIC_INCUMBENT, ROLE_SEARCH, TAG_ROLE
from quicktune.watch.launchers import LAUNCH_RUNNING, LAUNCH_UNKNOWN, Launcher
from quicktune.watch.requests import (
    ACTIVE,
    CANCELLED,
    EXPERIMENT,
    FAILED,
    MODEL,
    QUEUED,
    REJECTED,
    RUNNING,
    SUCCEEDED,
    TAG_CHAMPION_VERSION,
    TAG_CLAIM,
    TAG_HEARTBEAT,
    TAG_INCUMBENT,
    TAG_LAUNCHER,
    TAG_MESSAGE,
    TAG_PARENT_RUN,
    TAG_REQUEST,
    TAG_SEARCH_ID,
    TAG_SEARCHES_DONE,
    TAG_STATUS,
    TERMINAL,
    RequestError,
    SearchRequest,
    Target,
    parse_request,
    search_id_for,
    target_from_experiment,
    target_from_model,
)
from quicktune.watch.retrain import Retrainer
from quicktune.watch.roots import AllowedRoots

log = logging.getLogger(__name__)


def default_watcher_id() -> str:
    """Stable across restarts on one host (or set ``QUICKTUNE_WATCHER_ID``, as the Deployment does)."""
    return os.environ.get("QUICKTUNE_WATCHER_ID") or socket.gethostname()


@dataclass
class WatcherConfig:
    tracking_uri: str
    experiment: str = "quicktune"  # where searches requested on registered models record their runs
    watcher_id: str = field(default_factory=default_watcher_id)
    poll: float = 10.0
    claim_delay: float = 1.5
    heartbeat_every: float = 30.0
    stale_after: float = 300.0
    max_workers: int = 16
    alias: str = "champion"
    roots: AllowedRoots = field(default_factory=AllowedRoots.default)  # where data / space files may lie
    retrain_every: int = 0  # > 0: retrain the surrogate after this many ended searches (quicktune.watch.retrain)
    retrain_with_shipped: bool = False
    state_dir: str = ".quicktune-watch"  # the retrain's log


class Watcher:
    def __init__(self, config: WatcherConfig, launcher: Launcher, client: Any = None) -> None:
        from mlflow import MlflowClient

        self.cfg = config
        self.launcher = launcher
        self.client = client or MlflowClient(tracking_uri=config.tracking_uri)
        self.wake = threading.Event()
        self._heartbeats: dict[str, float] = {}
        self.launched: list[str] = []  # search ids this watcher object started (for reports/tests)
        self.retrainer: Retrainer | None = None
        if config.retrain_every > 0:
            self.retrainer = Retrainer(
                config.tracking_uri, config.retrain_every, config.state_dir, with_shipped=config.retrain_with_shipped
            )

    # --- MLflow objects -----------------------------------------------------------------------
    def _filter(self, value: str) -> str:
        return filter_string({tag(TAG_REQUEST): value})

    def targets(self) -> list[Target]:
        """Every registered model / experiment carrying a request."""
        out: list[Target] = []
        for value in ("start", "cancel"):
            for m in self._all(self.client.search_registered_models, self._filter(value)):
                out.append(target_from_model(m))
            for e in self._all(self.client.search_experiments, self._filter(value)):
                out.append(target_from_experiment(e))
        return out

    @staticmethod
    def _all(fn: Any, filter_string: str) -> list[Any]:
        items, token = [], None
        while True:
            page = fn(filter_string=filter_string, max_results=100, page_token=token)
            items += list(page)
            token = getattr(page, "token", None)
            if not token:
                return items

    def refresh(self, t: Target) -> Target:
        if t.kind == MODEL:
            return target_from_model(self.client.get_registered_model(t.key))
        return target_from_experiment(self.client.get_experiment(t.key))

    def set_tags(self, t: Target, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            v = str(v)[:4900]
            if t.tags.get(k) == v:
                continue
            self._set_tag(t, k, v)
            t.tags[k] = v

    def _set_tag(self, t: Target, key: str, value: str) -> None:
        """One tag write, repeated when it lost MLflow's first-write race: watchers racing for one
        request write the same new keys (claim, heartbeat) at the same moment, and a watcher whose
        write failed must not drop out of the claim it may have already won."""
        write = self.client.set_registered_model_tag if t.kind == MODEL else self.client.set_experiment_tag
        repeat_if_write_race(lambda: write(t.key, key, value), what=f"{t.label}: tag {key}")

    # --- one round ----------------------------------------------------------------------------
    def tick(self) -> int:
        """Move every request one step forward; returns how many are still in progress here."""
        active = 0
        if self.retrainer is not None:
            self.retrainer.poll()
        for t in self.targets():
            try:
                if self.handle(t):
                    active += 1
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the others
                log.exception("%s: %s", t.label, exc)
        return active

    def handle(self, t: Target) -> bool:
        """True while the request still needs this watcher (queued or running here)."""
        word = t.status_word
        if word == REJECTED or word in TERMINAL:
            return False
        if t.request == "cancel":
            return self._cancel(t)
        if t.request != "start":
            return False
        claim = t.tags.get(TAG_CLAIM, "")
        if claim and not self._mine(claim):
            if not self._stale(t):
                return False  # another live watcher has it
            log.warning("%s: claim %s is stale; taking over", t.label, claim)
        elif claim and word in ACTIVE:
            return self._follow(t)
        # a new request (or a stale one): validate before claiming anything
        try:
            req = parse_request(
                t, experiment=self.cfg.experiment, max_workers=self.cfg.max_workers, roots=self.cfg.roots
            )
        except RequestError as exc:
            self.set_tags(t, {TAG_STATUS: f"{REJECTED}: {exc}"})
            log.warning("%s rejected: %s", t.label, exc)
            return False
        t = self._claim(t)
        if t is None:
            return False
        self.set_tags(
            t, {TAG_SEARCH_ID: req.search_id, TAG_STATUS: QUEUED, TAG_LAUNCHER: self.launcher.name, TAG_MESSAGE: ""}
        )
        return self._follow(t, req)

    def _mine(self, claim: str) -> bool:
        return claim.split(":", 1)[0] == self.cfg.watcher_id

    def _stale(self, t: Target) -> bool:
        try:
            beat = float(t.tags.get(TAG_HEARTBEAT, "0") or 0)
        except ValueError:
            beat = 0.0
        return time.time() - beat > self.cfg.stale_after

    def _claim(self, t: Target) -> Target | None:
        mine = f"{self.cfg.watcher_id}:{uuid.uuid4().hex[:12]}"
        self.set_tags(t, {TAG_CLAIM: mine, TAG_HEARTBEAT: f"{time.time():.0f}"})
        time.sleep(self.cfg.claim_delay)
        fresh = self.refresh(t)
        if fresh.tags.get(TAG_CLAIM) != mine:
            log.info("%s: claimed by %s", t.label, fresh.tags.get(TAG_CLAIM))
            return None
        return fresh

    # --- following a search -------------------------------------------------------------------
    def _follow(self, t: Target, req: SearchRequest | None = None) -> bool:
        search_id = t.tags.get(TAG_SEARCH_ID) or search_id_for(t)
        if not is_search_id(search_id):  # the tag is editable by any MLflow user: never trust it
            self.set_tags(t, {TAG_STATUS: f"{REJECTED}: tag {TAG_SEARCH_ID} is not a search id ({SEARCH_ID_RULE})"})
            return False
        st = self.launcher.state(search_id)
        if st.state == LAUNCH_UNKNOWN:
            # never launched from here (a crash between claim and launch, or a takeover): launch;
            # the controller resumes the search if it exists already
            if req is None:
                try:
                    req = parse_request(
                        t,
                        experiment=self.cfg.experiment,
                        max_workers=self.cfg.max_workers,
                        check_data=False,
                        roots=self.cfg.roots,
                    )
                except RequestError as exc:
                    self.set_tags(t, {TAG_STATUS: f"{REJECTED}: {exc}"})
                    return False
                req.search_id = search_id
            try:
                self.launcher.launch(req)
            except RequestError as exc:  # the launcher's own checks (names, values): final, not retried
                self.set_tags(t, {TAG_STATUS: f"{REJECTED}: {exc}"})
                return False
            self.launched.append(search_id)
            log.info("%s: started search %s (%s)", t.label, search_id, self.launcher.name)
            st = self.launcher.state(search_id)
        self._report_progress(t, search_id)
        if st.state == LAUNCH_RUNNING:
            now = time.time()
            tags = {TAG_STATUS: RUNNING} if t.tags.get(TAG_PARENT_RUN) else {}
            if now - self._heartbeats.get(search_id, 0.0) >= self.cfg.heartbeat_every:
                tags[TAG_HEARTBEAT] = f"{now:.0f}"
                self._heartbeats[search_id] = now
            self.set_tags(t, tags)
            return True
        self._finish(t, search_id, st.message)
        return False

    def _parent(self, t: Target, search_id: str) -> Any | None:
        exp_name = t.name if t.kind == EXPERIMENT else self.cfg.experiment
        exp = self.client.get_experiment_by_name(exp_name)
        if exp is None:
            return None
        runs = self.client.search_runs(
            [exp.experiment_id],
            filter_string({tag(TAG_SEARCH_ID): search_id, tag(TAG_ROLE): ROLE_SEARCH}),
            max_results=1,
        )
        return runs[0] if runs else None

    def run_link(self, run: Any) -> str:
        uri = self.cfg.tracking_uri.rstrip("/")
        if uri.startswith(("http://", "https://")):
            return f"{uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        return f"runs:/{run.info.run_id}"

    def _report_progress(self, t: Target, search_id: str) -> Any | None:
        parent = self._parent(t, search_id)
        if parent is None:
            return None
        tags = {TAG_PARENT_RUN: self.run_link(parent)}
        inc = parent.data.metrics.get(METRIC_INCUMBENT)
        if inc is not None:
            tags[TAG_INCUMBENT] = f"{inc:.4f}"
        self.set_tags(t, tags)
        return parent

    def _champion(self, model_name: str, search_id: str) -> str | None:
        try:
            mv = self.client.get_model_version_by_alias(model_name, self.cfg.alias)
        except Exception:  # noqa: BLE001 - no such model / alias yet
            return None
        return str(mv.version) if (mv.tags or {}).get(TAG_SEARCH_ID) == search_id else None

    def _finish(self, t: Target, search_id: str, launch_message: str) -> None:
        """The launch ended: the outcome comes from MLflow (parent run status, champion version)."""
        parent = self._report_progress(t, search_id)
        done = str(t.generation + 1)
        version = self._champion(t.model_name, search_id)
        if self.retrainer is not None:
            try:
                self.retrainer.search_finished()
            except Exception as exc:  # noqa: BLE001 - a retrain never stops the watcher
                log.error("surrogate retrain: %s", exc)
        if parent is None:
            why = f"the search ended before it was recorded ({launch_message})"
            from quicktune.tracking.secrets import redact

            tail = [line[:300] for line in self.launcher.logs(search_id).strip().splitlines()[-3:]]
            if tail:
                why += ": " + redact(" | ".join(tail))
            self.set_tags(t, {TAG_STATUS: FAILED, TAG_MESSAGE: why, TAG_SEARCHES_DONE: done})
            return
        ptags = parent.data.tags
        if version is not None:
            self.set_tags(
                t,
                {
                    TAG_CHAMPION_VERSION: version,
                    TAG_STATUS: SUCCEEDED,
                    TAG_MESSAGE: ptags.get(TAG_MESSAGE, ""),
                    TAG_SEARCHES_DONE: done,
                },
            )
            return
        if ptags.get(TAG_STATUS) == "succeeded":
            why = f"the search succeeded but no '{self.cfg.alias}' version was registered ({launch_message})"
        else:
            why = ptags.get(TAG_MESSAGE, "") or launch_message
        self.set_tags(t, {TAG_STATUS: FAILED, TAG_MESSAGE: why, TAG_SEARCHES_DONE: done})

    def _cancel(self, t: Target) -> bool:
        word = t.status_word
        claim = t.tags.get(TAG_CLAIM, "")
        if word in ACTIVE and claim and not self._mine(claim) and not self._stale(t):
            return False  # its watcher will cancel it
        search_id = t.tags.get(TAG_SEARCH_ID)
        if search_id and word in ACTIVE:
            self.launcher.cancel(search_id)
            parent = self._report_progress(t, search_id)
            if parent is not None:
                self.client.set_tag(parent.info.run_id, TAG_STATUS, "cancelled")
                self.client.set_tag(parent.info.run_id, TAG_MESSAGE, "cancelled from the MLflow UI")
            self.set_tags(
                t,
                {TAG_STATUS: CANCELLED, TAG_MESSAGE: "cancelled on request", TAG_SEARCHES_DONE: str(t.generation + 1)},
            )
        else:
            self.set_tags(t, {TAG_STATUS: CANCELLED, TAG_MESSAGE: "cancelled before it started"})
        log.info("%s: cancelled", t.label)
        return False

    # --- loops --------------------------------------------------------------------------------
    def run_once(self, timeout: float | None = None) -> None:
        """Handle the pending requests until none is queued or running here, then return."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.tick():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"requests still running after {timeout:.0f} s")
            self.wake.wait(self.cfg.poll)
            self.wake.clear()

    def run_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the tracking server may be down for a while
                log.error("watch round failed: %s", exc)
            self.wake.wait(self.cfg.poll)
            self.wake.clear()
