"""The local backend: steps as processes on this machine, surviving controller restarts.

- :mod:`.backend`    :class:`LocalBackend` (the :class:`~quicktune.backends.base.TrialBackend`);
- :mod:`.stepdir`    the per-step folder: launch/runner/exit records, logs, atomic JSON writes;
- :mod:`.runner`     the spawned parent of one step process (records its exit, enforces the timeout);
- :mod:`.forkserver` a warm process with torch/timm imported that forks runners and steps.

Imports point one way: backend -> forkserver -> stepdir, backend -> stepdir, runner -> stepdir.
The names below are loaded on first use (PEP 562), so ``python -m quicktune.backends.local.runner``
and ``python -m quicktune.backends.local.forkserver`` start without importing the backend first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quicktune.backends.local.backend import LocalBackend
    from quicktune.backends.local.forkserver import ForkServer, ForkServerError
    from quicktune.backends.local.stepdir import process_start_time

__all__ = ["LocalBackend", "ForkServer", "ForkServerError", "process_start_time"]

_LAZY = {
    "LocalBackend": "quicktune.backends.local.backend",
    "ForkServer": "quicktune.backends.local.forkserver",
    "ForkServerError": "quicktune.backends.local.forkserver",
    "process_start_time": "quicktune.backends.local.stepdir",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
