"""The ask/tell contract every optimizer (Quick-Tune, its ablations, baselines) implements.

Work is scheduled one *epoch step* at a time (freeze-thaw): ``ask`` returns a config and the
epoch to train it *up to* (always its last observed epoch + 1 for the built-in optimizers);
``tell`` reports that epoch's validation score (higher is better) and cost in seconds. Several
asks may be outstanding at once (parallel workers); a pending (config, epoch) is never returned
twice. A config told with a non-``ok`` status is dead and never proposed again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STATUSES = ("ok", "diverged", "oom", "invalid", "failed")


@dataclass(frozen=True)
class Suggestion:
    config_id: str
    config: Mapping[str, Any]
    epoch: int  # train the config up to this epoch (1-based)


class Optimizer(ABC):
    """Ask/tell interface. Implementations must be deterministic given their seed and the
    sequence of calls, so that ``load_state_dict(state_dict())`` continues exactly."""

    name: str = "optimizer"

    @abstractmethod
    def ask(self) -> Suggestion | None:
        """The next (config, epoch) to run, or None when nothing is left to try right now."""

    @abstractmethod
    def tell(self, config_id: str, epoch: int, score: float, cost: float, status: str = "ok") -> None:
        """Report the result of an asked step. ``score`` may be NaN when status != 'ok'."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (tensors may be returned as nested lists)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by ``state_dict`` on an identically constructed optimizer."""
