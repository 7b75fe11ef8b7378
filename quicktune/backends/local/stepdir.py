"""The files of one local step, ``WORKDIR/steps/<step id>/``, and how they are written.

- ``request.json``  the :class:`~quicktune.backends.base.StepRequest` (no secrets: the environment is
                    inherited, not stored) plus ``queued_at``;
- ``config.json``   the config handed to ``quicktune step --config``;
- ``.runner.json``  what the runner runs: argv, the non-secret env overrides, the timeout;
- ``launch.json``   pid and kernel start time of the step's *runner* process, argv, wall start time,
                    attempt, ``via`` (written provisionally, without the pid, before the fork);
- ``runner.json``   the runner's own pid record, so a step whose backend died mid-launch is adopted;
- ``step.log``      combined stdout/stderr (``step.log.N``: the log of an earlier attempt N);
- ``RESULT.json``   written by the step itself;
- ``exit.json``     written by the runner when the step process ends (return code, timeout flag);
- ``cancelled``     a marker written before a cancel kills the process group.

State is decided from these files alone, so they are written atomically (a reader never sees half a
record) and a pid is always recorded with its kernel start time (a recycled pid is not ours).
This module is shared by the backend (:mod:`.backend`), the subprocess runner (:mod:`.runner`) and
the fork server (:mod:`.forkserver`), which otherwise know nothing of each other.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REQUEST, CONFIG, RUNNER_SPEC = "request.json", "config.json", ".runner.json"
LAUNCH, RUNNER, EXIT, RESULT, CANCELLED_MARK, LOG = (
    "launch.json",
    "runner.json",
    "exit.json",
    "RESULT.json",
    "cancelled",
    "step.log",
)
ATTEMPT = ".attempt"
LOG_PREFIX = "[quicktune local backend]"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON so that readers see the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is absent or not (yet) valid JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:  # half-written by a foreign writer; treat as absent for now
        return None


def process_start_time(pid: int) -> int | None:
    """The kernel start time (clock ticks since boot) of ``pid``, or None if it is gone or a zombie.

    Compared with the value recorded at launch, it tells our process from a recycled pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        if sys.platform.startswith("linux"):
            return None
        try:  # no procfs: the best we can do is "a process with this pid exists"
            os.kill(pid, 0)
            return 0
        except OSError:
            return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # zombie / dead: finished, just not reaped
        return None
    return int(fields[19])


def record_runner(d: Path) -> None:
    """The runner's own pid record (``runner.json``), written first thing, so that a step whose
    launching backend died before recording the pid is still re-adopted, not launched twice."""
    pid = os.getpid()
    write_json_atomic(d / RUNNER, {"pid": pid, "proc_start": process_start_time(pid)})


def record_exit(d: Path, returncode: int | None, timed_out: bool = False, by: str | None = None) -> None:
    """``exit.json``: how the step process ended (``by``: who enforced a timeout)."""
    record: dict[str, Any] = {"returncode": returncode, "timed_out": timed_out, "finished_at": time.time()}
    if by is not None:
        record["by"] = by
    write_json_atomic(d / EXIT, record)


def read_launch(d: Path) -> dict[str, Any] | None:
    """``launch.json``, completed from the runner's own ``runner.json`` when the backend that
    launched it died between writing the provisional record (before the fork) and the pid."""
    launch = read_json(d / LAUNCH)
    if launch is not None and not launch.get("pid"):
        runner = read_json(d / RUNNER)
        if runner:
            launch = {**launch, **runner}
    return launch


def read_log_tail(d: Path, max_bytes: int) -> str:
    """The last ``max_bytes`` of ``step.log`` (marked when truncated); "" before there is one."""
    path = d / LOG
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ""
    with open(path, "rb") as fh:
        if size > max_bytes:
            fh.seek(size - max_bytes)
        data = fh.read()
    text = data.decode("utf-8", errors="replace")
    return text if size <= max_bytes else "[... log truncated ...]\n" + text
