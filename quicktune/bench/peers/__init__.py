"""Other libraries' optimizers in our benchmark harness (the optional ``bench`` extra).

Importing this package registers, in :mod:`quicktune.optimizer.registry`:

- ``optuna-tpe``: Optuna TPE with the Hyperband pruner (in-process; needs ``optuna``);
- ``synetune-dyhpo``, ``synetune-mobster``, ``synetune-hypertune``, ``synetune-bohb``,
  ``synetune-dehb``, ``synetune-asha``, ``synetune-random``: Syne Tune 0.13.0 schedulers, run in
  their own virtualenv (``make bench-peers``) as a JSON-lines subprocess.

:func:`unavailable_reason` says why a peer cannot run here (None when it can), so the harness
can refuse it up front with a clear message instead of failing mid-benchmark.
"""

from __future__ import annotations

import importlib.util

from quicktune.optimizer import registry

SYNETUNE = {f"synetune-{s}": s for s in ("dyhpo", "mobster", "hypertune", "bohb", "dehb", "asha", "random")}
PEERS = ["optuna-tpe", *SYNETUNE]

registry.register("optuna-tpe", "quicktune.bench.peers.optuna_peer:OptunaTPE")
for _name, _sched in SYNETUNE.items():
    registry.register(_name, "quicktune.bench.peers.synetune_peer:SyneTunePeer", scheduler=_sched)


def unavailable_reason(name: str) -> str | None:
    """Why optimizer ``name`` cannot run in this environment, or None (also for non-peers)."""
    if name == "optuna-tpe":
        if importlib.util.find_spec("optuna") is None:
            return "optuna is not installed (pip install 'kubeflow-quicktune[bench]' or pip install optuna)"
        return None
    if name in SYNETUNE:
        from quicktune.bench.peers.synetune_peer import unavailable_reason as st_reason

        return st_reason()
    return None


def available_peers() -> list[str]:
    """The peers that can run here."""
    return [n for n in PEERS if unavailable_reason(n) is None]
