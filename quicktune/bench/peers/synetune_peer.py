"""Syne Tune 0.13.0 schedulers (DyHPO, MOBSTER, HyperTune, BOHB, DEHB, ASHA, random search) as
ask/tell optimizers.

syne-tune 0.13.0 pins numpy < 2 and cannot share our environment, so it lives in its own
virtualenv (``make bench-peers`` creates ``.venv-peers``; override with ``QUICKTUNE_PEERS_PYTHON``)
and runs :mod:`quicktune.bench.peers.synetune_server` as a subprocess that speaks JSON lines. The
parent infers the config space from the table's configs (:class:`PoolSpace`), imputes inactive
hyperparameters (numeric: the lower bound; categorical: the first choice) so that every config
is a point of that space, and sends the pool; the server restricts the searchers to exactly these
points (DEHB: nearest unused point).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from quicktune.bench.peers.base import ReplayPeer
from quicktune.bench.peers.mapping import PoolSpace
from quicktune.optimizer.base import Suggestion

SERVER = Path(__file__).with_name("synetune_server.py")
SCHEDULERS = ("dyhpo", "mobster", "hypertune", "bohb", "dehb", "asha", "random")


def peers_python() -> Path:
    """The interpreter of the peers' virtualenv."""
    env = os.environ.get("QUICKTUNE_PEERS_PYTHON")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[3]
    return root / ".venv-peers" / "bin" / "python"


class _Server:
    """One server subprocess (importing syne_tune takes seconds, so processes are reused)."""

    def __init__(self) -> None:
        env = dict(
            os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"
        )
        self.owner = os.getpid()  # a forked child must not talk to its parent's server
        self.proc = subprocess.Popen(
            [str(peers_python()), str(SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"Syne Tune server exited (code {self.proc.poll()})")
        return json.loads(line)

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            try:
                self.call({"op": "close"})
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
                self.proc.wait()


_IDLE: list[_Server] = []


def _acquire() -> _Server:
    while _IDLE:
        srv = _IDLE.pop()
        if srv.alive():
            return srv
    return _Server()


def _release(srv: _Server) -> None:
    if srv.alive():
        _IDLE.append(srv)


@atexit.register
def _stop_idle() -> None:
    while _IDLE:
        _IDLE.pop().stop()


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when Syne Tune 0.13.0 can be run, else why not (and how to fix it). Starts one server
    (kept for the first peer) to find out."""
    py = peers_python()
    hint = "run `make bench-peers` (creates .venv-peers with syne-tune==0.13.0) or set QUICKTUNE_PEERS_PYTHON"
    if not py.exists():
        return f"no peers interpreter at {py}; {hint}"
    try:
        srv = _Server()
        reply = srv.call({"op": "version"})
    except (OSError, RuntimeError, ValueError) as exc:
        return f"cannot run the Syne Tune server with {py}: {exc}; {hint}"
    if "error" in reply:
        srv.stop()
        return f"{py} cannot import syne_tune ({reply['error']}); {hint}"
    if reply.get("version") != "0.13.0":
        srv.stop()
        return f"{py} has syne-tune {reply.get('version')}, need 0.13.0; {hint}"
    _release(srv)
    return None


class SyneTunePeer(ReplayPeer):
    """One Syne Tune scheduler in a subprocess; ``scheduler`` is one of :data:`SCHEDULERS`."""

    name = "synetune"

    def __init__(
        self,
        candidates,
        max_epochs: int,
        seed: int = 0,
        scheduler: str = "asha",
        worst_score: float | None = None,
        **ignored_options: Any,
    ) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown Syne Tune scheduler {scheduler!r} (have {', '.join(SCHEDULERS)})")
        super().__init__(candidates, max_epochs, seed=seed)
        why = unavailable_reason()
        if why:
            raise RuntimeError(f"Syne Tune peer unavailable: {why}")
        self.scheduler = scheduler
        self.worst_score = None if worst_score is None else float(worst_score)
        self.space = PoolSpace(self.pool)
        self._srv: _Server | None = None
        self._reset()

    def _points(self) -> list[list[Any]]:
        out = []
        for cid, cfg in self.pool:
            point: dict[str, Any] = {}
            for name, p in self.space.params.items():
                if p["type"] == "categorical":
                    v = cfg.get(name, p["choices"][0])
                    point[name] = [repr(c) for c in p["choices"]].index(repr(v))
                elif p["type"] == "int":
                    point[name] = int(cfg.get(name, p["low"]))
                else:
                    point[name] = float(cfg.get(name, p["low"]))
            out.append([cid, point])
        return out

    def _call(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self._srv is None:
            raise RuntimeError(f"Syne Tune {self.scheduler} peer is closed")
        reply = self._srv.call(msg)
        if "error" in reply:
            raise RuntimeError(f"Syne Tune {self.scheduler}: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def _reset(self) -> None:
        if self._srv is None:
            self._srv = _acquire()
        params = {
            n: {k: (v if k != "choices" else [repr(c) for c in v]) for k, v in p.items()}
            for n, p in self.space.params.items()
        }
        self._call(
            {
                "op": "init",
                "scheduler": self.scheduler,
                "space": params,
                "configs": self._points(),
                "max_epochs": self.max_epochs,
                "seed": self.seed,
                "worst": self.worst_score,
            }
        )

    def _ask(self) -> Suggestion | None:
        reply = self._call({"op": "ask"})
        if reply.get("none"):
            return None
        cid = reply["config_id"]
        return Suggestion(cid, self.space.config(cid), int(reply["epoch"]))

    def _tell(self, config_id: str, epoch: int, score: float, cost: float, status: str) -> None:
        self._call(
            {
                "op": "tell",
                "config_id": config_id,
                "epoch": epoch,
                "score": score if score == score else None,
                "status": status,
            }
        )

    def close(self) -> None:
        """Hand the server process back for the next run (stopped at interpreter exit)."""
        srv, self._srv = getattr(self, "_srv", None), None
        if srv is not None:
            _release(srv)

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
