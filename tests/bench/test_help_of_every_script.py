"""Every benchmark script answers ``--help`` (a stray ``%`` in an argparse help text made one of them
crash with a TypeError instead of printing its documentation)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from benchscripts import BENCHMARKS

SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def test_there_are_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_and_exits_zero(script):
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout
