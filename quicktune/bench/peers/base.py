"""Shared plumbing for peer optimizers (other libraries behind our ask/tell API).

Other libraries' internal state is not JSON-serialisable, so a peer's ``state_dict`` is the log of
the calls it received; ``load_state_dict`` replays that log on a freshly constructed peer. The
peers are seeded, so the replay reaches the same state and the next ask is the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from quicktune.optimizer.base import STATUSES, Optimizer, Suggestion
from quicktune.space import SearchSpace


class ReplayPeer(Optimizer):
    """Records ask/tell calls for state_dict; subclasses implement ``_ask`` and ``_tell``."""

    def __init__(
        self, candidates: SearchSpace | Sequence[tuple[str, Mapping[str, Any]]], max_epochs: int, seed: int = 0
    ) -> None:
        if isinstance(candidates, SearchSpace):
            raise ValueError(
                f"peer {type(self).__name__} needs a finite pool of (config_id, config) pairs "
                "(the configs of a learning-curve table), not a search space"
            )
        self.pool = [(str(cid), dict(cfg)) for cid, cfg in candidates]
        if not self.pool:
            raise ValueError("candidates is empty")
        self.max_epochs = int(max_epochs)
        self.seed = int(seed)
        self._log: list[list[Any]] = []
        self._pending: dict[str, int] = {}

    def ask(self) -> Suggestion | None:
        self._log.append(["ask"])
        out = self._ask()
        if out is not None:
            if out.config_id in self._pending:
                raise RuntimeError(f"{self.name}: proposed pending config {out.config_id!r} again")
            self._pending[out.config_id] = out.epoch
        return out

    def tell(self, config_id: str, epoch: int, score: float, cost: float, status: str = "ok") -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} for config {config_id!r} is not one of {STATUSES}")
        if self._pending.get(config_id) != epoch:
            raise ValueError(f"config {config_id!r} epoch {epoch} was not asked")
        del self._pending[config_id]
        self._log.append(["tell", config_id, int(epoch), float(score), float(cost), status])
        self._tell(config_id, int(epoch), float(score), float(cost), status)

    def _ask(self) -> Suggestion | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _tell(self, config_id: str, epoch: int, score: float, cost: float, status: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def _reset(self) -> None:
        """Return to the freshly constructed state (subclasses rebuild their library objects)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "seed": self.seed, "log": [list(x) for x in self._log]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != type(self).__name__:
            raise ValueError(f"state is for {state.get('kind')}, not {type(self).__name__}")
        self._reset()
        self._log = []
        self._pending = {}
        for entry in state["log"]:
            if entry[0] == "ask":
                self.ask()
            else:
                _, cid, epoch, score, cost, status = entry
                self.tell(cid, epoch, score, cost, status)
