"""The steps one caller has in flight on a :class:`~quicktune.backends.base.TrialBackend`.

Why: the search loop (:mod:`quicktune.search.loop`, :mod:`quicktune.search.resume`) and the
meta-dataset campaign (:mod:`quicktune.metadataset.campaign`) both keep the same bookkeeping over a
backend: which of their steps are in flight (under a key of their own: ``(config, epoch)`` or
``(task, config)``), starting or re-running one, polling them, collecting a finished one's result,
re-adopting steps a killed process left running, and cancelling what is left. :class:`StepPool`
is that bookkeeping, once. It only runs steps and decides nothing (when to start, retry or stop
stays with the caller), so it lives beside the backend contract and imports nothing above it.

A key may be *tracked* before its step is started: the search marks a step as planned, saves its
state, and only then starts it (see :mod:`quicktune.search.loop` for why that order matters).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from quicktune.backends.base import StepRequest, StepStatus, TrialBackend

K = TypeVar("K", bound=Hashable)


class StepPool(Generic[K]):
    """Steps in flight on ``backend``, each under a caller's key (insertion order is kept)."""

    def __init__(self, backend: TrialBackend) -> None:
        self.backend = backend
        self._steps: dict[K, StepRequest] = {}

    # --- what is in the pool ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._steps)

    def __contains__(self, key: object) -> bool:
        return key in self._steps

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._steps))

    def request(self, key: K) -> StepRequest:
        """The request tracked under ``key`` (KeyError if none)."""
        return self._steps[key]

    def track(self, key: K, request: StepRequest) -> None:
        """Count ``request`` as in flight under ``key`` without starting it (yet)."""
        self._steps[key] = request

    def forget(self, key: K) -> None:
        """Stop tracking ``key`` (its step, if any, is left as it is in the backend)."""
        self._steps.pop(key, None)

    # --- running steps ---------------------------------------------------------------------------
    def start(self, key: K, request: StepRequest | None = None) -> str:
        """Start (or re-adopt: the backend never duplicates an id) the step under ``key``; with no
        ``request``, the one already tracked. Returns the step id."""
        if request is not None:
            self._steps[key] = request
        return self.backend.start(self._steps[key])

    def rerun(self, key: K, request: StepRequest | None = None) -> str:
        """Run the step under ``key`` again although it finished (or never started): see
        :meth:`TrialBackend.rerun`. Returns the step id."""
        if request is not None:
            self._steps[key] = request
        return self.backend.rerun(self._steps[key])

    def poll(self, key: K) -> StepStatus:
        """The backend's state of the step under ``key`` (KeyError if the backend never saw it)."""
        return self.backend.poll(self._steps[key].id)

    def finished(self) -> list[tuple[K, StepStatus]]:
        """Poll every step in the pool; the ones that are done, with their status, in pool order."""
        done = []
        for key in list(self._steps):
            status = self.poll(key)
            if status.done:
                done.append((key, status))
        return done

    def result(self, key: K) -> dict[str, Any]:
        """The finished step's result; the key stays tracked (the caller may re-run it)."""
        return self.backend.result(self._steps[key].id)

    def collect(self, key: K) -> dict[str, Any]:
        """The finished step's result, and stop tracking it."""
        res = self.result(key)
        del self._steps[key]
        return res

    def logs(self, key: K) -> str:
        return self.backend.logs(self._steps[key].id)

    def adopt(self, candidates: Mapping[K, StepRequest]) -> list[K]:
        """Re-adopt the candidates the backend lists as still active (an earlier process of the
        caller started them and was killed): track and ``start`` each (which re-adopts, never
        duplicates). Returns their keys in the backend's order. A backend that cannot list its
        steps adopts nothing here; ``start`` re-adopts such a step later anyway."""
        by_id = {req.id: key for key, req in candidates.items()}
        try:
            active = self.backend.active()
        except Exception:  # noqa: BLE001 - see the docstring
            return []
        adopted = []
        for sid in active:
            key = by_id.get(sid)
            if key is not None and key not in adopted:
                self.start(key, candidates[key])
                adopted.append(key)
        return adopted

    def strays(self, prefix: str) -> list[str]:
        """Ids of active backend steps starting with ``prefix`` that this pool does not track."""
        known = {req.id for req in self._steps.values()}
        return [sid for sid in self.backend.active() if sid not in known and sid.startswith(prefix)]

    def cancel_all(self) -> None:
        """Cancel every tracked step (ones the backend never saw are skipped); they stay tracked."""
        for req in list(self._steps.values()):
            try:
                self.backend.cancel(req.id)
            except KeyError:
                pass
