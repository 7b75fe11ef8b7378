"""A fork server for local steps: torch, torchvision and timm are imported once, every step is a
fork of that warm process.

Why: a fresh ``quicktune step`` process spends ~6 CPU-seconds importing torch/timm before it
trains anything, 40-50 % of a small epoch on a CPU (``benchmarks/bench_step.py``). Forking a process
that already has them imported costs milliseconds, and each step still is its own process, so
everything the local backend relies on is unchanged:

- the server forks a *runner* R for each request; R calls ``setsid()`` (its own process group, so
  cancel/timeout kill R and the step together), redirects stdout/stderr to the step's log and
  forks the *step* S, which runs ``quicktune step ARGS`` in-process through the step's own entry
  point (:data:`STEP_ENTRY`, in ``quicktune.finetune``; never the whole ``quicktune`` command line)
  and exits with its code;
- R waits for S and writes ``exit.json`` (return code, or the timeout) exactly as the subprocess
  runner (:mod:`.runner`) does, through the same step-folder helpers (:mod:`.stepdir`); the server
  answers with R's pid, which the backend records in ``launch.json`` for re-adoption (pid + kernel
  start time);
- S gets the caller's *current* environment (sent over the socket, never written to disk: it may
  hold credentials) plus the backend's overrides, and chdirs to the step folder.

The server never runs a torch operation (no thread pools exist at fork time) and never touches
CUDA (forking after CUDA initialisation is unsupported), so it is safe to fork. It listens on a
Unix socket in a private (0700) temporary folder, accepts only connections from its own user
(``SO_PEERCRED``), serves one backend, and exits when that backend closes it, when its parent
process is gone, or after ``idle_seconds`` without a request.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from quicktune.backends.local.niceness import inherit_niceness
from quicktune.backends.local.stepdir import LOG, LOG_PREFIX, record_exit, record_runner

__all__ = ["ForkServer", "ForkServerError", "STEP_ENTRY"]

# The step's in-process entry point, ``module:function(argv) -> exit code``. Named, not imported: the
# backend runs the step as a program (as the spawn path runs ``quicktune step``), and only the server
# process, which preloads it, ever imports it.
STEP_ENTRY = "quicktune.finetune.entry:run_step_main"

_PRELOAD = (
    "torch",
    "torchvision",
    "timm",
    "PIL.Image",
    "numpy",
    "safetensors.torch",
    "quicktune.finetune.step",
    STEP_ENTRY.split(":")[0],
)


def _step_entry() -> Callable[[Sequence[str]], int]:
    module, func = STEP_ENTRY.split(":")
    return getattr(importlib.import_module(module), func)


class ForkServerError(RuntimeError):
    """The fork server could not be started or did not answer; the caller falls back to spawning."""


def _recv_line(conn: socket.socket, limit: int = 16 << 20) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise ValueError("request too large")
    return bytes(buf)


class ForkServer:
    """Client side: starts the server lazily and asks it to launch steps."""

    def __init__(
        self, python: str = sys.executable, threads: int = 1, start_timeout: float = 120.0, idle_seconds: float = 900.0
    ) -> None:
        self.python = python
        self.threads = int(threads)
        self.start_timeout = float(start_timeout)
        self.idle_seconds = float(idle_seconds)
        self._dir: str | None = None
        self._proc: subprocess.Popen | None = None
        self._ready = False
        self._spawned_at = 0.0

    @property
    def socket_path(self) -> str | None:
        return None if self._dir is None else os.path.join(self._dir, "s")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def spawn(self) -> None:
        """Start the server process without waiting for it (it imports torch/timm: seconds); the
        first :meth:`launch` waits for the rest."""
        if self.alive():
            return
        self.close()
        self._dir = tempfile.mkdtemp(prefix="qt-fork-")  # 0700, short path (AF_UNIX allows ~107 bytes)
        sock = os.path.join(self._dir, "s")
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
            "OPENBLAS_NUM_THREADS": str(self.threads),
        }
        log = open(os.path.join(self._dir, "server.log"), "ab")
        try:
            self._proc = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "quicktune.backends.local.forkserver",
                    sock,
                    str(os.getpid()),
                    str(self.idle_seconds),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            self.close()
            raise ForkServerError(f"cannot start the fork server: {exc}") from exc
        finally:
            log.close()
        self._spawned_at = time.monotonic()

    def start(self) -> None:
        """Start the server if needed and wait until it accepts requests."""
        if self._proc is None or self._proc.poll() is not None:
            self.spawn()
        if self._ready:
            return
        assert self._proc is not None and self._dir is not None
        deadline = self._spawned_at + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ForkServerError(f"the fork server exited with code {self._proc.returncode}: {self._log_tail()}")
            if os.path.exists(os.path.join(self._dir, "ready")):
                self._ready = True
                return
            time.sleep(0.05)
        self.close()
        raise ForkServerError(f"the fork server did not get ready in {self.start_timeout:g} s")

    def _log_tail(self) -> str:
        try:
            return Path(self._dir or "", "server.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def launch(
        self,
        step_args: Sequence[str],
        step_dir: str | os.PathLike[str],
        env_overrides: Mapping[str, str],
        timeout: float | None,
    ) -> int:
        """Fork a runner for one step; returns the runner's pid (its process group id)."""
        self.start()
        sock = self.socket_path
        if sock is None:  # start() returned, so the server folder exists; this is for the type checker
            raise ForkServerError("the fork server is not running")
        d = str(Path(step_dir).resolve())
        req = {"args": list(step_args), "dir": d, "env": {**os.environ, **dict(env_overrides)}, "timeout": timeout}
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(30.0)
                s.connect(sock)
                s.sendall(json.dumps(req).encode() + b"\n")
                answer = json.loads(_recv_line(s) or b"{}")
        except (OSError, ValueError) as exc:
            raise ForkServerError(f"the fork server did not answer: {exc}") from exc
        if "pid" not in answer:
            raise ForkServerError(f"the fork server refused the step: {answer.get('error', answer)}")
        return int(answer["pid"])

    def close(self) -> None:
        """Stop the server (running steps are in their own sessions and keep running)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None
        self._ready = False
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


# --- server side ---------------------------------------------------------------------------------
def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _run_step_in_child(req: Mapping[str, Any], ready_fd: int) -> None:
    """The runner R (already forked): new session, log redirection, fork the step, record its exit.
    ``ready_fd`` is closed once R leads its own process group, so the pid the server hands out can
    be signalled as a group at once."""
    os.setsid()
    inherit_niceness()
    d = Path(req["dir"])
    record_runner(d)
    os.close(ready_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(d)
    fd = os.open(d / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in req["env"].items()})
    pid = os.fork()
    if pid == 0:  # the step S
        rc = 1
        try:
            sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
            sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
            sys.argv = ["quicktune", "step", *req["args"]]
            rc = int(_step_entry()(list(req["args"])) or 0)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            rc = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(rc)
    timeout = float(req["timeout"]) if req.get("timeout") else None
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            record_exit(d, os.waitstatus_to_exitcode(status))
            os._exit(0)
        if deadline is not None and time.monotonic() > deadline:
            record_exit(d, None, timed_out=True, by="runner")
            print(f"{LOG_PREFIX} step exceeded its timeout of {timeout:g} s: killed", flush=True)
            os.killpg(os.getpgid(0), signal.SIGKILL)
        time.sleep(0.1)


def serve(path: str, parent_pid: int, idle_seconds: float) -> int:
    for name in _PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # runners are reaped by the kernel
    uid = os.getuid()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o600)
    srv.listen(16)
    srv.settimeout(1.0)
    Path(path).with_name("ready").touch()
    last = time.monotonic()
    while True:
        if os.getppid() != parent_pid and not _pid_alive(parent_pid):
            # the backend died without close() (kill -9): its private socket folder is ours to remove
            shutil.rmtree(Path(path).parent, ignore_errors=True)
            return 0
        if time.monotonic() - last > idle_seconds:
            return 0
        try:
            conn, _ = srv.accept()
        except TimeoutError:  # socket.timeout
            continue
        last = time.monotonic()
        with conn:
            try:
                conn.settimeout(30.0)
                if _peer_uid(conn) != uid:
                    conn.sendall(b'{"error": "wrong user"}\n')
                    continue
                req = json.loads(_recv_line(conn))
                if not isinstance(req, dict) or not isinstance(req.get("args"), list) or "dir" not in req:
                    raise ValueError("a request needs 'args' (list) and 'dir'")
            except (OSError, ValueError) as exc:
                try:
                    conn.sendall(json.dumps({"error": str(exc)}).encode() + b"\n")
                except OSError:
                    pass
                continue
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                srv.close()
                conn.close()
                os.close(r)
                try:
                    _run_step_in_child(req, w)
                finally:
                    os._exit(70)
            os.close(w)
            os.read(r, 1)  # EOF once the runner has called setsid()
            os.close(r)
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":  # pragma: no cover - started by ForkServer
    inherit_niceness()  # the server too starts a session of its own
    sys.exit(serve(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
