"""Backends by name, so ``quicktune search --backend NAME`` can pick one without importing all.

``make_backend(name, workers=..., workdir=..., search_id=..., step_timeout=..., **options)``.
A backend class may define ``from_options(cls, *, workers, workdir, search_id, step_timeout,
**options)`` to map these common settings (and string ``--backend-option KEY=VALUE`` pairs) onto
its constructor; otherwise the local backend's mapping is used.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from quicktune.backends.base import TrialBackend

_REGISTRY: dict[str, str] = {
    "local": "quicktune.backends.local.backend:LocalBackend",
    "kubernetes": "quicktune.backends.kubernetes:KubernetesBackend",
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def register_backend(name: str, target: str) -> None:
    """Add a backend: ``target`` is ``"module:Class"``."""
    _REGISTRY[name] = target


def backend_class(name: str) -> type[TrialBackend]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(available())}")
    module_name, cls_name = _REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"backend {name!r} is not available: {exc}") from exc
    return getattr(module, cls_name)


def make_backend(
    name: str,
    *,
    workers: int = 1,
    workdir: str | Path = ".quicktune",
    search_id: str | None = None,
    step_timeout: float | None = None,
    threads_per_worker: int = 1,
    **options: Any,
) -> TrialBackend:
    cls: Any = backend_class(name)  # constructors differ per backend; from_options maps the common settings
    from_options = getattr(cls, "from_options", None)
    if callable(from_options):
        return from_options(
            workers=workers,
            workdir=str(workdir),
            search_id=search_id,
            step_timeout=step_timeout,
            threads_per_worker=threads_per_worker,
            **options,
        )
    if name == "local":
        return cls(
            Path(workdir),
            max_workers=workers,
            threads_per_worker=threads_per_worker,
            step_timeout=step_timeout,
            **options,
        )
    return cls(max_concurrent=workers, search_id=search_id, **options)
