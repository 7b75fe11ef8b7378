"""The runner: a tiny parent of one step process, ``python -m quicktune.backends.local.runner DIR``.

It records its own pid first (``runner.json``), starts the step from ``DIR/.runner.json`` (argv,
non-secret env overrides on top of the inherited environment, timeout), waits, and writes
``exit.json`` -- the return code, or the timeout after killing its whole process group. Because it
outlives no step and needs no controller, a step's end is recorded even when the backend that
launched it is gone. This is the *spawn* path; the fork server (:mod:`.forkserver`) does the same
from a warm, forked process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from quicktune.backends.local.niceness import inherit_niceness
from quicktune.backends.local.stepdir import LOG_PREFIX, RUNNER_SPEC, record_exit, record_runner


def run(step_dir: str | os.PathLike[str]) -> int:
    """Run the step described in ``step_dir/.runner.json``; record how it ended in exit.json."""
    d = Path(step_dir)
    inherit_niceness()  # started in a session of its own (see niceness.py)
    record_runner(d)
    spec = json.loads((d / RUNNER_SPEC).read_text())
    timeout = spec.get("timeout")
    env = {**os.environ, **spec.get("env_overrides", {})}
    try:
        proc = subprocess.Popen(spec["argv"], stdin=subprocess.DEVNULL, env=env, cwd=str(d))
    except OSError as exc:
        print(f"{LOG_PREFIX} cannot start the step: {exc}", flush=True)
        record_exit(d, 127)
        return 0
    try:
        rc = proc.wait(timeout=float(timeout) if timeout else None)
    except subprocess.TimeoutExpired:
        record_exit(d, None, timed_out=True, by="runner")
        print(f"{LOG_PREFIX} step exceeded its timeout of {float(timeout):g} s: killed", flush=True)
        os.killpg(os.getpgid(0), signal.SIGKILL)  # the step, its workers and this runner
        return 124
    record_exit(d, rc)
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through LocalBackend
    if len(sys.argv) == 2:
        sys.exit(run(sys.argv[1]))
    print("usage: python -m quicktune.backends.local.runner STEP_DIR", file=sys.stderr)
    sys.exit(2)
