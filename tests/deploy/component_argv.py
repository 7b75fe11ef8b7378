"""The search component's command line, without running a search: ``subprocess.run`` is replaced
by a double that records the command and answers with a failed search, which the component raises."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest


def search_component_argv(qp, monkeypatch) -> Callable[..., list[str]]:
    """A function: the search component's keyword arguments -> the ``quicktune`` argv it runs."""
    seen: list[list[str]] = []

    def fake_run(cmd, **kw):
        seen.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 1, stdout='{"status": "failed", "message": "stop here"}')

    monkeypatch.setattr(subprocess, "run", fake_run)
    search = qp.qc.search.python_func

    def run(**kw) -> list[str]:
        with pytest.raises(RuntimeError, match="stop here"):
            search(data_uri="s3://d/x", budget="1m", tracking_uri="http://m", **kw)
        return seen.pop()

    return run
