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

import functools
import json
import os
import subprocess
import sys
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


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when Syne Tune 0.13.0 can be run, else why not (and how to fix it)."""
    py = peers_python()
    hint = "run `make bench-peers` (creates .venv-peers with syne-tune==0.13.0) or set QUICKTUNE_PEERS_PYTHON"
    if not py.exists():
        return f"no peers interpreter at {py}; {hint}"
    try:
        r = subprocess.run([str(py), "-c", "import syne_tune, sys; print(syne_tune.__version__)"],
                           capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {py}: {exc}; {hint}"
    if r.returncode != 0:
        return f"{py} cannot import syne_tune ({r.stderr.strip().splitlines()[-1:]}); {hint}"
    if r.stdout.strip().splitlines()[-1:] != ["0.13.0"]:
        return f"{py} has syne-tune {r.stdout.strip()}, need 0.13.0; {hint}"
    return None


class SyneTunePeer(ReplayPeer):
    """One Syne Tune scheduler in a subprocess; ``scheduler`` is one of :data:`SCHEDULERS`."""

    name = "synetune"

    def __init__(self, candidates, max_epochs: int, seed: int = 0, scheduler: str = "asha",
                 **ignored_options: Any) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown Syne Tune scheduler {scheduler!r} (have {', '.join(SCHEDULERS)})")
        super().__init__(candidates, max_epochs, seed=seed)
        why = unavailable_reason()
        if why:
            raise RuntimeError(f"Syne Tune peer unavailable: {why}")
        self.scheduler = scheduler
        self.space = PoolSpace(self.pool)
        self._proc: subprocess.Popen | None = None
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
        assert self._proc is not None and self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(msg) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"Syne Tune server exited (code {self._proc.poll()}); see its stderr above")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"Syne Tune {self.scheduler}: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def _reset(self) -> None:
        self.close()
        env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1")
        self._proc = subprocess.Popen([str(peers_python()), str(SERVER)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        params = {n: {k: (v if k != "choices" else [repr(c) for c in v]) for k, v in p.items()}
                  for n, p in self.space.params.items()}
        self._call({"op": "init", "scheduler": self.scheduler, "space": params, "configs": self._points(),
                    "max_epochs": self.max_epochs, "seed": self.seed})

    def _ask(self) -> Suggestion | None:
        reply = self._call({"op": "ask"})
        if reply.get("none"):
            return None
        cid = reply["config_id"]
        return Suggestion(cid, self.space.config(cid), int(reply["epoch"]))

    def _tell(self, config_id: str, epoch: int, score: float, cost: float, status: str) -> None:
        self._call({"op": "tell", "config_id": config_id, "epoch": epoch,
                    "score": score if score == score else None, "status": status})

    def close(self) -> None:
        """Stop the server process (also done on garbage collection)."""
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"op": "close"}) + "\n")
                proc.stdin.flush()
                proc.wait(timeout=10)
            except Exception:
                proc.kill()
                proc.wait()
        self._proc = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def _python_ok() -> bool:  # pragma: no cover - used by tests to skip
    return unavailable_reason() is None and sys.platform != "win32"
