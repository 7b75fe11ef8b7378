"""The live progress line of a search on a terminal (tqdm), or a line every 10 s in logs.

A module of its own so that the session can own its line without importing the report, which
reads the session (no import circle).
"""

from __future__ import annotations

import sys
import time


class Progress:
    """One live line: configs tried, epochs, incumbent, budget left (tqdm when available)."""

    def __init__(self, enabled: bool, total: float, search_id: str) -> None:
        self.enabled = enabled
        self.bar = None
        self._last = 0.0
        self._printed = 0.0
        if enabled and sys.stderr.isatty():  # a live line on a terminal; a line every 10 s in logs
            try:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=round(total),
                    unit="s",
                    desc="",
                    file=sys.stderr,
                    bar_format=f"{search_id} {{bar:16}} {{n_fmt}}/{{total_fmt}}s | {{desc}}",
                    mininterval=0.5,
                    dynamic_ncols=True,
                )
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
