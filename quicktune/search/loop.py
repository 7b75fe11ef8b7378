"""The search loop: ask -> dispatch a step -> collect -> tell, tracked in MLflow, resumable.

One loop drives everything. Each round it (1) polls the steps in flight and records every
finished one (per-epoch metrics with a search-wide ``tell_seq`` number, or the failure with the
step's logs) before telling the optimizer; (2) asks the optimizer for enough work to fill the free
workers, creating each new configuration's MLflow run and marking the step as pending; (3) saves
the optimizer's state (the asks included) to the parent run; and only then (4) starts the steps.

Because of that order, MLflow always holds enough to continue after a ``kill -9`` at any point
(how a session continues from it: :mod:`quicktune.search.resume`).

A failed step is recorded on its configuration's run (status, message, logs) and told to the
optimizer with that status; a generic failure (which may be a transient S3 or node problem) is
first retried ``step_retries`` times with backoff. The search fails only when it cannot continue
(the tracking server stays unreachable, the backend fails, every one of the first steps fails),
and its ``quicktune.message`` says why.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from quicktune.backends.base import CANCELLED, RUNNING, BackendError, TrialBackend
from quicktune.optimizer.base import STATUSES
from quicktune.search import report, resume
from quicktune.search.session import InFlight, SearchState, finite
from quicktune.search.spec import SearchError, SearchResult, SearchSpec
from quicktune.tracking.layout import SearchTracker
from quicktune.tracking.retry import InfrastructureError
from quicktune.tracking.schema import METRIC_STEP_OVERHEAD

log = logging.getLogger(__name__)

# Recording the failure of a search must not wait minutes for the server whose outage may be what failed.
FAILURE_RECORD_RETRY_SECONDS = 10.0


def with_step_overhead(epochs: list[Mapping[str, Any]], result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The step's epochs with its fixed cost folded into their ``cost``.

    A backend that measured the step from launch to result (``wall_seconds``; the Kubernetes
    backend does: pod start, data sync, weight load, train, eval, checkpoint) reports more than the
    epochs' train + eval seconds. The difference is spread evenly over the epochs the step produced,
    so the cost the optimizer is told -- and MLflow records, and a resume replays -- is what the step
    really cost; ``train_seconds``/``eval_seconds`` stay as measured. No ``wall_seconds``: unchanged."""
    overhead = step_overhead(epochs, result)
    if overhead is None:
        return epochs
    share = overhead / len(epochs)
    return [{**e, "cost": (finite(e.get("cost")) or 0.0) + share} for e in epochs]


def step_overhead(epochs: list[Mapping[str, Any]], result: Mapping[str, Any]) -> float | None:
    """The step's fixed cost: its measured ``wall_seconds`` less the epochs' own cost (train +
    eval), never below 0 (the clocks differ: a wall time in whole seconds can fall short of the
    train + eval it contains). None when the backend measured no wall time or no epoch came back."""
    wall = finite(result.get("wall_seconds"))
    if not epochs or wall is None:
        return None
    return max(0.0, wall - sum(finite(e.get("cost")) or 0.0 for e in epochs))


class SearchSession(SearchState):
    """One controller session: :meth:`open` (new or resumed), then :meth:`run` until the budget ends."""

    def open(self) -> None:
        resume.open_search(self)

    # --- one round -------------------------------------------------------------------------------
    def collect(self) -> bool:
        """Record and tell every finished step; True if anything was told."""
        told = False
        now = time.monotonic()
        for key, fl in list(self.inflight.items()):
            if fl.retry_at is not None:
                if now >= fl.retry_at and self.budget_reason() is None:
                    log.info("step %s: starting it (attempt %d)", fl.request.id, fl.attempts + 1)
                    self.pool.rerun(key)
                    fl.retry_at, fl.started, fl.running_since = None, now, None
                continue
            status = self.pool.poll(key)
            if not status.done:
                if status.state == RUNNING and fl.running_since is None:
                    fl.running_since = now
                continue
            if status.state == CANCELLED:  # cancelled from outside: run it again
                self.pool.start(key)
                continue
            result = self.pool.result(key)
            wall = time.monotonic() - (fl.running_since or fl.started)
            if self._should_retry(fl, result):
                fl.attempts += 1
                fl.retry_at = now + self.spec.step_retry_delay * 2 ** (fl.attempts - 1)
                log.warning(
                    "step %s failed (%s); retrying in %.0f s",
                    fl.request.id,
                    str(result.get("message", ""))[:200],
                    fl.retry_at - now,
                )
                continue
            self._record_result(fl, result, status.state, wall)
            self.pool.forget(key)
            del self.inflight[key]
            told = True
        return told

    def _should_retry(self, fl: InFlight, result: Mapping[str, Any]) -> bool:
        ok_epochs = [e for e in result.get("epochs", []) if finite(e.get("score")) is not None]
        return (
            result.get("status") == "failed"
            and not ok_epochs
            and not result.get("timeout")
            and fl.attempts < self.spec.step_retries
        )

    def _record_result(self, fl: InFlight, result: Mapping[str, Any], state: str, wall: float) -> None:
        assert self.opt is not None
        rec = self.records[fl.config_id]
        status = str(result.get("status", "failed"))
        epochs = sorted(
            (e for e in result.get("epochs", []) if rec.last_epoch < int(e["epoch"]) <= fl.epoch),
            key=lambda e: int(e["epoch"]),
        )
        good: list[Mapping[str, Any]] = []
        for e in epochs:
            if finite(e.get("score")) is None or int(e["epoch"]) != rec.last_epoch + len(good) + 1:
                break
            good.append(e)
        overhead = step_overhead(good, result)
        good = with_step_overhead(good, result)
        seqs = list(range(self.next_seq, self.next_seq + len(good)))
        self.next_seq += len(good)
        self.steps_finished += 1
        self.step_walls.append(wall)
        self.step_seconds += wall
        if good:
            self.tracker.log_epochs(rec, good, seqs)
            if overhead is not None:  # after the epochs: a kill in between loses this number only
                assert self.parent is not None
                self.step_overheads.append(overhead)
                self.tracker.log_metrics(self.parent.run_id, {METRIC_STEP_OVERHEAD: overhead}, step=seqs[0])
            for e in good:
                cost = finite(e.get("cost")) or 0.0
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
            logs = self.pool.logs((fl.config_id, fl.epoch))
        except Exception as exc:  # noqa: BLE001 - logs are best effort
            logs = f"(logs unavailable: {exc})"
        self.tracker.log_failure(rec, failed_epoch, seq, opt_status, f"{status}: {message}"[:2000], cost, logs)
        self.opt.tell(rec.config_id, failed_epoch, math.nan, cost, opt_status)
        log.warning("config %s epoch %d: %s", rec.config_id, failed_epoch, message[:300])
        if opt_status == "invalid" and result.get("invalid_kind") == "data":
            # the dataset itself is unusable: every other config would fail the same way
            raise SearchError(
                f"the dataset cannot be used (config {rec.config_id} epoch {failed_epoch}): {message[:1000]}"
            )
        if self.steps_succeeded == 0:
            self.consecutive_first_failures.append(f"{opt_status}: {message[:300]}")

    def dispatch(self) -> bool:
        """Fill free workers: ask, create runs, mark pending, snapshot, then start. True if any."""
        assert self.opt is not None and self.parent is not None
        # Ask ahead by ``prefetch``: the backend queues the extra step (PENDING) and launches it the
        # moment a worker frees, so workers never wait for the optimizer or MLflow.
        free = min(self.spec.workers, self.backend.capacity()) + max(0, self.spec.prefetch) - len(self.inflight)
        new: list[InFlight] = []
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
            rec = self.record_for(sug.config_id, sug.config)
            if rec.dead or rec.last_epoch >= sug.epoch:
                raise SearchError(
                    f"optimizer asked for config {sug.config_id} epoch {sug.epoch}, which is "
                    f"already recorded (last epoch {rec.last_epoch}, dead: {rec.dead}); "
                    f"refusing to retrain it"
                )
            self.tracker.mark_pending(rec, sug.epoch)
            fl = InFlight(sug.config_id, int(sug.epoch), self.request(rec, int(sug.epoch)), started=0.0)
            self.inflight[key] = fl
            self.pool.track(key, fl.request)
            new.append(fl)
            free -= 1
        if new:
            self.snapshot()
            now = time.monotonic()
            for fl in new:
                self.pool.start((fl.config_id, fl.epoch))
                fl.started = now
        self.exhausted = exhausted
        return bool(new)

    def snapshot(self) -> None:
        assert self.opt is not None and self.parent is not None
        self.generation += 1
        self.tracker.save_optimizer_state(
            self.parent.run_id,
            self.generation,
            {
                "seq": self.next_seq - 1,
                "optimizer": self.optimizer_name,
                "observations": sum(len(r.observations()) for r in self.records.values()),
                "inflight": sorted([c, e] for c, e in self.inflight),
                # the configs of steps in flight: a resume recreates the run of one whose untrained
                # run was deleted when the last session ended (see finish)
                "inflight_configs": {c: dict(self.inflight[(c, e)].request.config) for c, e in self.inflight},
                "state": self.opt.state_dict(),
            },
        )
        self.snapshot_seq = self.next_seq - 1

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        self.exhausted = False
        self.snapshot_seq = -1
        stop_reason = ""
        while True:
            if self.collect():
                report.log_progress(self)
            first = self.consecutive_first_failures
            if first and len(first) >= self.spec.fail_fast_steps:
                if all(f.startswith("invalid:") for f in first):
                    raise SearchError(
                        f"the first {len(first)} steps were all invalid and none succeeded: the "
                        f"search space (or --image-size) proposes configs the step cannot train; "
                        f"last: {first[-1]}"
                    )
                raise SearchError(
                    f"the first {len(first)} steps all failed and none succeeded, so the data or "
                    f"environment is probably broken; last: {first[-1]}"
                )
            reason = self.budget_reason()
            if reason:
                stop_reason = reason
                break
            started = self.dispatch()
            if not self.inflight:
                if self.exhausted:
                    stop_reason = "the optimizer has nothing left to try"
                    break
                if not started and not self.worth_starting():
                    stop_reason = "the remaining budget is too short for another step"
                    break
            self.progress.update(self.elapsed(), report.status_line(self))
            if not started:
                t = time.monotonic()
                time.sleep(self.spec.poll_interval)
                self.sleep_seconds += time.monotonic() - t
        return self.finish(stop_reason)

    def stop_inflight(self) -> None:
        self.pool.cancel_all()

    def finish(self, stop_reason: str, failed: str | None = None) -> SearchResult:
        assert self.parent is not None
        self.stop_inflight()
        for fl in list(self.inflight.values()):
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
        report.log_progress(self)
        self.delete_untrained()
        summary = report.summary(self, status, message)
        report.plots(self)
        self.tracker.finish_search(self.parent, status, message, summary, self.records)
        self.progress.update(self.elapsed(), report.status_line(self), force=True)
        self.progress.close()
        return report.result(self, status, message, summary)

    def delete_untrained(self, keep: set[str] | None = None) -> None:
        """At the end of a session, delete the runs of configs that never recorded an epoch or a
        failure (asked ahead, then cut by the budget): they would show as FINISHED runs with 0
        epochs. The snapshot keeps their configs, so a resume that still wants them recreates them."""
        gone = self.tracker.delete_untrained(self.records, keep=keep or ())
        if gone:
            log.info("deleted %d run(s) of configs that were never trained", len(gone))


def run_search(
    spec: SearchSpec,
    backend: TrialBackend,
    tracker: SearchTracker,
    optimizer_name: str | None = None,
    progress: bool = True,
) -> SearchResult:
    """Run (or resume, when ``spec.search_id`` exists in MLflow) a search until its budget is used
    or nothing is left to try. Returns how it went; a search that cannot continue is marked failed
    in MLflow with the reason, and ``SearchResult.status`` is ``failed``."""
    _limit_threads()
    search = SearchSession(spec, backend, tracker, optimizer_name, progress)
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


def _mark_failed(search: SearchSession, why: str, cancel: bool) -> SearchResult:
    summary: dict[str, Any] = {}
    try:
        if cancel:
            search.stop_inflight()
        assert search.parent is not None
        search.tracker.limit_retries(FAILURE_RECORD_RETRY_SECONDS)  # it may be what failed
        # steps left running (a crash) may still record into their runs: keep those
        search.delete_untrained(keep=None if cancel else {c for c, _ in search.inflight})
        summary = report.summary(search, "failed", why)
        search.tracker.finish_search(search.parent, "failed", why, summary, search.records)
    except Exception as exc:  # noqa: BLE001 - the tracking server may be what failed
        log.error("could not record the failure of search %s in MLflow: %s", search.spec.search_id, exc)
    search.progress.close()
    return report.result(search, "failed", why, summary)
