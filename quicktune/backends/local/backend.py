"""Run finetuning steps as local ``quicktune step`` subprocesses, surviving controller restarts.

Every step lives in ``WORKDIR/steps/<step id>/`` (the files: :mod:`.stepdir`).

The runner (``python -m quicktune.backends.local.runner DIR``, :mod:`.runner`) is a tiny parent of
the step process that records the exit code and enforces the timeout even when no controller is alive, so state
is decided from files alone: a new :class:`LocalBackend` on the same workdir re-adopts running
steps (pid alive *and* same start time, so a recycled pid is not mistaken for ours) and sees
finished ones. A runner that vanished without writing ``exit.json`` (killed from outside, machine
restart) leaves a *lost* step: it polls as FAILED, and ``start()`` runs it again -- as it does a
cancelled step. A step that ran and failed is re-adopted, never re-run. A launch cut short before
any process of it existed (the launching backend killed between the provisional ``launch.json``
and the fork) is queued again by the next ``poll()``: it never ran, so it is not a failure.

By default the runner and its step are not fresh interpreters but forks of a warm *fork server*
that has torch/timm imported (:mod:`.forkserver`: ~6 CPU-seconds saved per step); the files, the
process group, the re-adoption and the timeout are the same either way (``launch.json`` says
``via``). A custom ``step_command`` or ``QUICKTUNE_FORK_SERVER=0`` spawns fresh processes.

Steps beyond ``max_workers`` are queued (PENDING; a marker in ``WORKDIR/queue/``) and launched as
slots free up, on the next ``start``/``poll``/``active`` call.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from quicktune.backends.base import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    BackendError,
    StepRequest,
    StepStatus,
    TrialBackend,
)
from quicktune.backends.local.forkserver import ForkServer, ForkServerError
from quicktune.backends.local.stepdir import (
    LOG_PREFIX,
    process_start_time,
    read_json,
    read_launch,
    read_log_tail,
    write_json_atomic,
)

log_ = logging.getLogger(__name__)
LOG_TAIL_BYTES = 256 * 1024
_KILL_GRACE_SECONDS = 3.0
_LAUNCH_GRACE_SECONDS = 30.0


class LocalBackend(TrialBackend):
    """``quicktune step`` as local subprocesses, ``max_workers`` at a time, each limited to
    ``threads_per_worker`` CPU threads (OMP/MKL/torch), each in its own process group."""

    shares_filesystem = True  # steps run on this machine: a local checkpoint folder is fine

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        max_workers: int = 1,
        threads_per_worker: int = 1,
        python: str = sys.executable,
        step_timeout: float | None = None,
        step_command: Sequence[str] | None = None,
        fork_server: bool | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
        self.workdir = Path(workdir).resolve()
        self.steps_dir = self.workdir / "steps"
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        self.queue_dir = self.workdir / "queue"
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.max_workers = int(max_workers)
        self.threads_per_worker = int(threads_per_worker)
        self.python = python
        self.step_timeout = step_timeout
        # The command that runs one step; the step arguments are appended.
        self.step_command = list(step_command) if step_command else [python, "-m", "quicktune.cli", "step"]
        self._children: dict[str, subprocess.Popen] = {}  # runners we spawned (reaped by poll)
        # Steps are forked from a warm process that has torch/timm imported (forkserver.py) unless
        # a custom step command is given or QUICKTUNE_FORK_SERVER=0; on any trouble with the fork
        # server the backend falls back to spawning a fresh process per step.
        if fork_server is None:
            fork_server = (
                step_command is None
                and sys.platform.startswith("linux")
                and os.environ.get("QUICKTUNE_FORK_SERVER", "1") != "0"
            )
        self._fork: ForkServer | None = ForkServer(python, threads=self.threads_per_worker) if fork_server else None

    # --- files ---------------------------------------------------------------------------------
    def _dir(self, step_id: str) -> Path:
        if not step_id or "/" in step_id or step_id.startswith("."):
            raise KeyError(step_id)
        return self.steps_dir / step_id

    def step_dir(self, step_id: str) -> Path:
        """Where a step's files live (request, log, RESULT.json)."""
        d = self._dir(step_id)
        if not (d / "request.json").exists():
            raise KeyError(step_id)
        return d

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.workdir / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # --- contract ------------------------------------------------------------------------------
    def capacity(self) -> int:
        return self.max_workers

    def start(self, request: StepRequest) -> str:
        sid = request.id
        d = self._dir(sid)
        with self._lock():
            if (d / "request.json").exists():
                state = self._state(sid)
                if not self._rerunnable(d, state):
                    return sid  # re-adopt: running, pending or finished
                self._reset(d)
            d.mkdir(parents=True, exist_ok=True)
            write_json_atomic(d / "config.json", dict(request.config))
            queued_at = time.time()
            write_json_atomic(d / "request.json", {**request.to_dict(), "queued_at": queued_at})
            (self.queue_dir / f"{queued_at:017.6f}_{sid}").touch()
            self._pump_locked()
        return sid

    def rerun(self, request: StepRequest) -> str:
        sid = request.id
        d = self._dir(sid)
        with self._lock():
            if (d / "request.json").exists() and self._state(sid).done:
                self._reset(d)
        return self.start(request)

    def poll(self, step_id: str) -> StepStatus:
        d = self.step_dir(step_id)
        with self._lock():
            if self._launch_cut_short(d):
                self._requeue_locked(d)
            self._pump_locked()
        return self._state(step_id)

    def result(self, step_id: str) -> dict[str, Any]:
        d = self.step_dir(step_id)
        state = self._state(step_id)
        if not state.done:
            raise BackendError(f"step {step_id} is {state.state}; its result is not available yet")
        if state.state == CANCELLED:
            return {"status": "failed", "message": "cancelled", "epochs": []}
        exit_info = read_json(d / "exit.json") or {}
        if exit_info.get("timed_out"):
            res = read_json(d / "RESULT.json") or {}
            return {
                **res,
                "status": "failed",
                "message": state.message,
                "epochs": res.get("epochs", []),
                "timeout": True,
            }
        res = read_json(d / "RESULT.json")
        if res is None:
            return {"status": "failed", "message": state.message, "epochs": []}
        res.setdefault("epochs", [])
        res.setdefault("message", "")
        return res

    def logs(self, step_id: str) -> str:
        return read_log_tail(self.step_dir(step_id), LOG_TAIL_BYTES)

    def cancel(self, step_id: str) -> None:
        d = self.step_dir(step_id)
        with self._lock():
            state = self._state(step_id)
            if state.state in (SUCCEEDED, FAILED) or (d / "cancelled").exists():
                return
            (d / "cancelled").write_text(str(time.time()))
            launch = self._read_launch(d)
            if launch:
                self._kill_group(step_id, launch)
            self._pump_locked()

    def active(self) -> list[str]:
        with self._lock():
            for d in self.steps_dir.iterdir():
                if self._launch_cut_short(d):
                    self._requeue_locked(d)
            self._pump_locked()
        out = []
        for d in sorted(self.steps_dir.iterdir()):
            if (d / "request.json").exists() and not self._state(d.name).done:
                out.append(d.name)
        return out

    def warm_up(self) -> None:
        """Start the fork server's interpreter (torch/timm imports: seconds of CPU) now, so that it
        overlaps the controller's own start-up instead of delaying the first step."""
        if self._fork is None:
            return
        try:
            self._fork.spawn()
        except ForkServerError as exc:
            log_.warning("fork server unavailable (%s): spawning a fresh process per step", exc)
            self._fork = None

    def close(self) -> None:
        """Steps keep running (they are session leaders); a later backend re-adopts them. The fork
        server, if any, stops."""
        self._children.clear()
        if self._fork is not None:
            self._fork.close()

    # --- state -----------------------------------------------------------------------------------
    _read_launch = staticmethod(read_launch)

    def _alive(self, step_id: str, launch: Mapping[str, Any]) -> bool:
        child = self._children.get(step_id)
        if child is not None and child.pid == launch.get("pid"):
            if child.poll() is not None:  # reap our own zombie
                self._children.pop(step_id, None)
                return False
        pid = launch.get("pid")
        if not pid:
            return False
        return process_start_time(int(pid)) == launch.get("proc_start")

    def _state(self, step_id: str) -> StepStatus:
        d = self._dir(step_id)
        if not (d / "request.json").exists():
            raise KeyError(step_id)
        launch = self._read_launch(d)
        if (d / "cancelled").exists():
            if launch and self._alive(step_id, launch):
                return StepStatus(RUNNING, "cancelling")
            return StepStatus(CANCELLED, "cancelled")
        if launch is None:
            return StepStatus(PENDING, "queued: waiting for a free worker")
        if not launch.get("pid") and read_json(d / "exit.json") is None:
            # launched by a backend that died before recording the runner's pid, and the runner has
            # not (yet) recorded itself: give it a moment, then call it lost (start() runs it again)
            if time.time() - float(launch.get("started_at", 0.0)) < _LAUNCH_GRACE_SECONDS:
                return StepStatus(RUNNING, "launching")
        alive = self._alive(step_id, launch)
        exit_info = read_json(d / "exit.json")
        if alive and exit_info is None:
            timeout = launch.get("timeout")
            if timeout and time.time() - float(launch["started_at"]) > float(timeout) + 5.0:
                # the runner should have enforced it; it did not (stopped, wedged): do it here
                write_json_atomic(
                    d / "exit.json",
                    {"returncode": None, "timed_out": True, "finished_at": time.time(), "by": "backend"},
                )
                self._kill_group(step_id, launch)
                return StepStatus(FAILED, f"timeout: exceeded {timeout:g} s")
            return StepStatus(RUNNING, "")
        if exit_info is None and alive is False:
            # the runner vanished without recording an exit: give it a moment (it may be writing)
            exit_info = read_json(d / "exit.json")
        if exit_info is not None and exit_info.get("timed_out"):
            return StepStatus(FAILED, f"timeout: exceeded {launch.get('timeout')} s")
        result = read_json(d / "RESULT.json")
        if result is not None:
            status = str(result.get("status", "failed"))
            if status == "ok":
                return StepStatus(SUCCEEDED, str(result.get("message", "")))
            return StepStatus(FAILED, f"{status}: {result.get('message', '')}".strip())
        if exit_info is not None:
            rc = exit_info.get("returncode")
            how = f"killed by signal {-rc}" if isinstance(rc, int) and rc < 0 else f"exited with code {rc}"
            return StepStatus(FAILED, f"the step process {how} without writing a result; see its logs")
        return StepStatus(
            FAILED,
            "lost: the step process is gone without a result or exit record "
            "(killed from outside?); start() runs it again",
        )

    @staticmethod
    def _launch_cut_short(d: Path) -> bool:
        """A launch whose backend died between the provisional record and the fork: no pid, no
        runner of its own, no exit, no result, and past the grace period in which a runner that was
        forked at the last moment records itself. No process of it ever ran, so nothing of it can
        have trained: it is put back in the queue (the caller holds the lock, and a live launcher
        holds that lock for the whole launch, so a record seen like this has no launcher left)."""
        launch = read_json(d / "launch.json")
        if launch is None or launch.get("pid") or (d / "cancelled").exists():
            return False
        if any((d / name).exists() for name in ("runner.json", "exit.json", "RESULT.json")):
            return False
        return time.time() - float(launch.get("started_at", 0.0)) >= _LAUNCH_GRACE_SECONDS

    def _requeue_locked(self, d: Path) -> None:
        req = read_json(d / "request.json") or {}
        self._reset(d, keep_request=True)
        log_.warning(
            "step %s: its launch was cut short (the launching process died before the fork); queued again", d.name
        )
        (self.queue_dir / f"{float(req.get('queued_at', time.time())):017.6f}_{d.name}").touch()

    @staticmethod
    def _rerunnable(d: Path, state: StepStatus) -> bool:
        """Cancelled and lost steps run again on start(); everything else is re-adopted."""
        if state.state == CANCELLED:
            return True
        return state.state == FAILED and not (d / "exit.json").exists() and not (d / "RESULT.json").exists()

    def _reset(self, d: Path, keep_request: bool = False) -> None:
        attempt = (read_json(d / "launch.json") or {}).get("attempt", 0)
        log = d / "step.log"
        if log.exists():
            log.rename(d / f"step.log.{attempt}")
        names = ["launch.json", "runner.json", "exit.json", "RESULT.json", "cancelled"]
        for name in names if keep_request else [*names, "request.json"]:
            (d / name).unlink(missing_ok=True)
        (d / ".attempt").write_text(str(attempt + 1))

    # --- launching -----------------------------------------------------------------------------
    def _running_count(self) -> int:
        n = 0
        for d in self.steps_dir.iterdir():
            launch = self._read_launch(d)
            if launch and read_json(d / "exit.json") is None and self._alive(d.name, launch):
                n += 1
        return n

    def _pump_locked(self) -> None:
        """Launch queued steps while there are free slots (caller holds the lock). The queue is a
        folder of markers, so a poll costs nothing when nothing waits, however many steps exist."""
        markers = sorted(self.queue_dir.iterdir())
        if not markers:
            return
        queued = []
        for m in markers:
            sid = m.name.split("_", 1)[1]
            d = self._dir(sid)
            if (d / "request.json").exists() and not (d / "launch.json").exists() and not (d / "cancelled").exists():
                queued.append(sid)
            else:
                m.unlink(missing_ok=True)
        if not queued:
            return
        free = self.max_workers - self._running_count()
        for sid in queued[: max(free, 0)]:
            self._launch(sid)

    def _step_argv(self, d: Path, req: Mapping[str, Any]) -> list[str]:
        request = StepRequest.from_dict(req)
        return [*self.step_command, *request.argv(out=str(d / "RESULT.json"), config_path=str(d / "config.json"))]

    def _launch(self, step_id: str) -> None:
        d = self._dir(step_id)
        req = read_json(d / "request.json")
        if req is None:
            raise BackendError(f"step {step_id}: request.json is unreadable")
        attempt = int((d / ".attempt").read_text()) if (d / ".attempt").exists() else 0
        argv = self._step_argv(d, req)
        # Only non-secret overrides (extra_env, thread limits) are written to disk; the rest of the
        # environment (credentials included) reaches the step by inheritance through the runner.
        overrides = {str(k): str(v) for k, v in (req.get("extra_env") or {}).items()}
        threads = str(self.threads_per_worker)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "QUICKTUNE_NUM_THREADS"):
            overrides[var] = threads
        overrides.setdefault("PYTHONUNBUFFERED", "1")
        write_json_atomic(d / ".runner.json", {"argv": argv, "env_overrides": overrides, "timeout": self.step_timeout})
        with open(d / "step.log", "ab") as log:
            log.write(f"{LOG_PREFIX} {' '.join(argv)}\n".encode())
            log.flush()
        # Provisional record first: if this process dies between the fork and the final record, a
        # later backend must not launch the step a second time (the runner records its own pid in
        # runner.json, see _read_launch).
        record = {
            "pid": None,
            "proc_start": None,
            "started_at": time.time(),
            "argv": argv,
            "timeout": self.step_timeout,
            "attempt": attempt,
        }
        write_json_atomic(d / "launch.json", record)
        pid, via = None, "spawn"
        if self._fork is not None:
            try:
                pid = self._fork.launch(argv[len(self.step_command) :], d, overrides, self.step_timeout)
                via = "fork-server"
            except ForkServerError as exc:
                log_.warning("fork server unavailable (%s): spawning a fresh process per step from now on", exc)
                self._fork.close()
                self._fork = None
        if pid is None:
            with open(d / "step.log", "ab") as log:
                proc = subprocess.Popen(
                    [self.python, "-m", "quicktune.backends.local.runner", str(d)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(d),
                    start_new_session=True,
                )
            self._children[step_id] = proc
            pid = proc.pid
        for marker in self.queue_dir.glob(f"*_{step_id}"):
            marker.unlink(missing_ok=True)
        write_json_atomic(d / "launch.json", {**record, "pid": pid, "proc_start": process_start_time(pid), "via": via})

    def _kill_group(self, step_id: str, launch: Mapping[str, Any]) -> None:
        pid = int(launch.get("pid") or 0)
        if not pid or not self._alive(step_id, launch):
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.time() + _KILL_GRACE_SECONDS
        while time.time() < deadline and self._alive(step_id, launch):
            time.sleep(0.05)
        if self._alive(step_id, launch):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for _ in range(100):
                if not self._alive(step_id, launch):
                    break
                time.sleep(0.02)
