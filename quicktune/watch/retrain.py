"""Retrain the surrogate after every N finished searches, in its own process (``quicktune watch --retrain-every N``).

Why a separate process: meta-training takes minutes of CPU and imports torch; the watcher must keep
claiming, launching and reporting searches meanwhile, and a crash or an out-of-memory kill of the
retrain must not take the watcher with it. So the watcher only counts the searches it saw end, starts
``quicktune metatrain --from-mlflow URI --min-new N`` as a child process when the count reaches N
(one at a time), and checks on it each round: a failure is logged with its log's tail, never raised.
``--min-new`` makes the retrain itself count the ended searches recorded in MLflow since the
champion, so a restarted watcher, or two watchers, do not retrain twice for the same searches.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quicktune.tracking.secrets import redact

log = logging.getLogger(__name__)


class Retrainer:
    def __init__(
        self,
        tracking_uri: str,
        every: int,
        log_dir: str | Path,
        with_shipped: bool = False,
        popen: Callable[..., Any] = subprocess.Popen,
    ) -> None:
        if every < 1:
            raise ValueError(f"retrain every N searches needs N >= 1, got {every}")
        self.tracking_uri = tracking_uri
        self.every = int(every)
        self.log_dir = Path(log_dir)
        self.with_shipped = with_shipped
        self.popen = popen
        self.finished = 0  # searches seen ending since the last launch
        self.proc: Any = None
        self.launches = 0

    def should_launch(self) -> bool:
        """N searches ended since the last launch, and no retrain is running."""
        return self.finished >= self.every and self.proc is None

    def argv(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "quicktune.cli",
            "metatrain",
            f"--from-mlflow={self.tracking_uri}",
            f"--min-new={self.every}",
        ]
        return args + (["--with-shipped"] if self.with_shipped else [])

    def search_finished(self) -> bool:
        """Count one ended search; launch a retrain when due. True when one was launched."""
        self.finished += 1
        self.poll()
        if not self.should_launch():
            return False
        return self.launch()

    def launch(self) -> bool:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / "retrain.log"
        try:
            with open(path, "ab") as out:
                self.proc = self.popen(
                    self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
        except OSError as exc:
            log.error("could not start the surrogate retrain: %s", exc)
            self.proc = None
            return False
        self.finished = 0
        self.launches += 1
        log.info("surrogate retrain started (pid %s) after %d searches; log in %s", self.proc.pid, self.every, path)
        return True

    def poll(self) -> int | None:
        """The exit code of a retrain that just ended (logged; a failure is not raised), else None."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            return None
        self.proc = None
        if rc == 0:
            log.info("surrogate retrain finished")
        else:
            tail = ""
            try:
                tail = " | ".join((self.log_dir / "retrain.log").read_text(errors="replace").splitlines()[-3:])
            except OSError:
                pass
            log.error("surrogate retrain failed (exit %s): %s", rc, redact(tail)[:1000])
        return int(rc)
