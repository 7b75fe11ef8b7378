"""Optuna's TPE sampler with its Hyperband pruner, on a table's configs.

Each Optuna trial samples every hyperparameter of the space inferred from the pool
(:class:`~quicktune.bench.peers.mapping.PoolSpace`; independent TPE, no conditions), and the trial
is bound to the nearest unused pool config (see the mapping module for the distance). The
config is then trained one epoch per ask; after each epoch the score is reported to the trial
(``trial.report(score, epoch)``) and the ``HyperbandPruner(min_resource=1, max_resource=max_epochs,
reduction_factor=3)`` decides whether to prune it. A trial completes with its last score at
``max_epochs``; a failed epoch fails the trial. TPE learns from the sampled values (what it
asked for), which is the usual convention for nearest-neighbour tabular benchmarks.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from quicktune.bench.peers.base import ReplayPeer
from quicktune.bench.peers.mapping import PoolSpace
from quicktune.optimizer.base import Suggestion


class OptunaTPE(ReplayPeer):
    name = "optuna-tpe"

    def __init__(self, candidates, max_epochs: int, seed: int = 0, **ignored_options: Any) -> None:
        super().__init__(candidates, max_epochs, seed=seed)
        self.space = PoolSpace(self.pool)
        self._reset()

    def _reset(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.getLogger("optuna").setLevel(logging.WARNING)
        # a fixed study name: the Hyperband pruner assigns brackets by hashing it (replayable state)
        self.study = optuna.create_study(
            study_name=f"quicktune-peer-{self.seed}",
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=self.seed),
            pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=self.max_epochs, reduction_factor=3),
        )
        self._trials: dict[str, Any] = {}  # config -> running optuna trial
        self._last: dict[str, int] = {}
        self._used: set[str] = set()
        self._order: list[str] = []  # running configs in start order

    def _sample(self, trial: Any) -> dict[str, Any]:
        x: dict[str, Any] = {}
        for name, p in self.space.params.items():
            if p["type"] == "categorical":
                idx = trial.suggest_categorical(name, list(range(len(p["choices"]))))
                x[name] = p["choices"][idx]
            elif p["type"] == "int":
                x[name] = trial.suggest_int(name, int(p["low"]), int(p["high"]), log=p["log"])
            else:
                x[name] = trial.suggest_float(name, p["low"], p["high"], log=p["log"])
        return x

    def _ask(self) -> Suggestion | None:
        for cid in self._order:
            if cid not in self._pending:
                return Suggestion(cid, self.space.config(cid), self._last[cid] + 1)
        if len(self._used) >= len(self.pool):
            return None
        trial = self.study.ask()
        cid = self.space.nearest(self._sample(trial), exclude=self._used)
        assert cid is not None
        self._used.add(cid)
        self._trials[cid] = trial
        self._last[cid] = 0
        self._order.append(cid)
        return Suggestion(cid, self.space.config(cid), 1)

    def _finish(self, cid: str, **kwargs: Any) -> None:
        self.study.tell(self._trials.pop(cid), **kwargs)
        self._order.remove(cid)

    def _tell(self, config_id: str, epoch: int, score: float, cost: float, status: str) -> None:
        import optuna

        if config_id not in self._trials:
            raise ValueError(f"config {config_id!r} is not a running trial")
        self._last[config_id] = epoch
        if status != "ok" or not math.isfinite(score):
            self._finish(config_id, state=optuna.trial.TrialState.FAIL)
            return
        trial = self._trials[config_id]
        trial.report(score, epoch)
        if epoch >= self.max_epochs:
            self._finish(config_id, values=score)
        elif trial.should_prune():
            self._finish(config_id, state=optuna.trial.TrialState.PRUNED)
