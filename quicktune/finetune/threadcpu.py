"""Threads whose CPU time can be read while they run, so a step can keep their work out of the
CPU seconds it reports per epoch.

Why: a step reports ``train_cpu_seconds``/``eval_cpu_seconds`` as the process's CPU time over the
epoch's phases (comparable across runs on shared machines, unlike wall time). Work a step does in a
thread beside them -- the checkpoint's tensors written during evaluation, a warm process's dataset
check during training -- would otherwise be billed to the epoch and make those figures drift from
the ones recorded before. Linux: the thread's CPU clock (``pthread_getcpuclockid``); elsewhere the
thread's total once it ended (0 while it runs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

__all__ = ["CpuThread", "cpu_seconds"]


class CpuThread(threading.Thread):
    """A ``threading.Thread`` that knows its own CPU time (:meth:`cpu_seconds`)."""

    final_cpu: float | None = None

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.final_cpu = time.thread_time()

    def cpu_seconds(self) -> float:
        if self.final_cpu is not None:
            return self.final_cpu
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(self.ident))  # type: ignore[arg-type]
        except (AttributeError, OSError, TypeError, ValueError):  # not Linux, not started, or just ended
            return self.final_cpu or 0.0


def cpu_seconds(threads: Iterable[CpuThread | None]) -> float:
    """The CPU seconds the given threads used so far, together (None entries ignored)."""
    return sum(t.cpu_seconds() for t in threads if t is not None)
