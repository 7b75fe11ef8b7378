"""What a search tells people: the status text of the live line (drawn by
:mod:`quicktune.search.progress`), the progress metrics of the parent run, and at the end its
summary, plots and :class:`~quicktune.search.spec.SearchResult`.

Nothing here decides anything: it reads the session's state. A plot that cannot be drawn is
logged and skipped (it must never fail a search); an unreachable tracking server is not hidden.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import TYPE_CHECKING, Any

from quicktune.search.spec import SearchResult
from quicktune.tracking.retry import InfrastructureError
from quicktune.tracking.schema import (
    METRIC_CONFIGS_TRIED,
    METRIC_ELAPSED,
    METRIC_EPOCHS_DONE,
    METRIC_INCUMBENT,
    PLOT_INCUMBENT,
    PLOT_LEARNING_CURVES,
    SUMMARY_STEP_OVERHEAD_MEDIAN,
    SUMMARY_STEP_OVERHEAD_STEPS,
)

if TYPE_CHECKING:
    from quicktune.search.session import SearchState

log = logging.getLogger(__name__)


def status_line(s: SearchState) -> str:
    inc, rec = s.incumbent()
    left = max(0.0, s.spec.budget_seconds - s.elapsed())
    best = f"{inc:.3f} ({rec.config.get('model', '?')} @{rec.best_epoch})" if rec else "-"
    dead = sum(r.dead for r in s.records.values())
    return (
        f"configs {len(s.records)} ({dead} failed) | epochs {s.epochs_done()} | best {best} | "
        f"running {len(s.inflight)} | {left:.0f}s left"
    )


def log_progress(s: SearchState) -> None:
    """The parent run's progress metrics, step = epochs done (the incumbent plot reads them back)."""
    assert s.parent is not None
    inc, rec = s.incumbent()
    metrics = {METRIC_ELAPSED: s.elapsed(), METRIC_CONFIGS_TRIED: len(s.records), METRIC_EPOCHS_DONE: s.epochs_done()}
    if inc is not None:
        metrics[METRIC_INCUMBENT] = inc
    s.tracker.log_metrics(s.parent.run_id, metrics, step=s.epochs_done())
    s.last_incumbent = inc


def summary(s: SearchState, status: str, message: str) -> dict[str, Any]:
    inc, best = s.incumbent()
    session = time.monotonic() - s.t0
    failed: dict[str, int] = {}
    for r in s.records.values():
        if r.failure is not None:
            failed[r.failure.status] = failed.get(r.failure.status, 0) + 1
    return {
        "search_id": s.spec.search_id,
        "status": status,
        "message": message,
        "best_config_id": best.config_id if best else None,
        "best_run_id": best.run_id if best else None,
        "best_config": best.config if best else None,
        "best_score": inc,
        "best_epoch": best.best_epoch if best else None,
        "configs_tried": len(s.records),
        "epochs_done": s.epochs_done(),
        "failed_configs": failed,
        "elapsed_seconds": s.elapsed(),
        "budget_seconds": s.spec.budget_seconds,
        "session_seconds": session,
        "controller_busy_seconds": s.busy_seconds(),
        "controller_overhead_fraction": s.busy_seconds() / max(session, 1e-9),
        "step_seconds": s.step_seconds,
        "steps_finished": s.steps_finished,
        "resumes": s.resumes,
        "optimizer": s.optimizer_name,
        "workers": s.spec.workers,
        "tracking_calls": s.tracker.calls,
        "tracking_seconds": s.tracker.seconds,
        "optimizer_seconds": s.optimizer_seconds,
        "controller_cpu_seconds": time.process_time() - s.cpu0,
        SUMMARY_STEP_OVERHEAD_MEDIAN: statistics.median(s.step_overheads) if s.step_overheads else None,
        SUMMARY_STEP_OVERHEAD_STEPS: len(s.step_overheads),
    }


def plots(s: SearchState) -> None:
    """Learning curves and the incumbent over time, as PNGs on the parent run."""
    assert s.parent is not None
    try:
        from quicktune.tracking import plots as figures

        fig = figures.learning_curves_figure(s.records, title=f"search {s.spec.search_id}")
        s.tracker.log_figure(s.parent.run_id, fig, PLOT_LEARNING_CURVES)
        figures.close(fig)
        inc = {st: v for st, v, _ in s.tracker.metric_history(s.parent.run_id, METRIC_INCUMBENT)}
        ela = {st: v for st, v, _ in s.tracker.metric_history(s.parent.run_id, METRIC_ELAPSED)}
        history = [(ela[st], v) for st, v in inc.items() if st in ela]
        fig = figures.incumbent_figure(history, s.spec.budget_seconds, title=f"search {s.spec.search_id}")
        s.tracker.log_figure(s.parent.run_id, fig, PLOT_INCUMBENT)
        figures.close(fig)
    except InfrastructureError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plot must never fail a search
        log.warning("could not plot the search: %s", exc)


def result(s: SearchState, status: str, message: str, summary: dict[str, Any]) -> SearchResult:
    assert s.parent is not None
    inc, best = s.incumbent()
    return SearchResult(
        search_id=s.spec.search_id,
        parent_run_id=s.parent.run_id,
        status=status,
        message=message,
        best_config_id=best.config_id if best else None,
        best_config=best.config if best else None,
        best_score=inc,
        best_epoch=best.best_epoch if best else None,
        best_run_id=best.run_id if best else None,
        configs_tried=len(s.records),
        epochs_done=s.epochs_done(),
        elapsed_seconds=s.elapsed(),
        session_seconds=time.monotonic() - s.t0,
        controller_busy_seconds=s.busy_seconds(),
        step_seconds=s.step_seconds,
        resumed=s.resumes > 0,
        tracking_uri=s.tracker.tracking_uri,
        summary=summary,
    )
