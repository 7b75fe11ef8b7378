"""The scripts under ``benchmarks/`` are not a package: benchmark tests load them by path with this
one loader (not one copy per test file). Imported by the tests of this folder as ``benchscripts``
(pytest puts the folder of a test file without ``__init__.py`` on ``sys.path``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """The module of ``benchmarks/<name>.py``, freshly executed."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None, name
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
