"""Fixtures of the fast search tests; the doubles themselves are in search_doubles.py (a unique
module name: ``conftest`` is taken by tests/conftest.py)."""

from __future__ import annotations

import pytest
from search_doubles import MemoryTracker, ScriptedBackend

from quicktune.search import inputs, report


@pytest.fixture
def fast_inputs(monkeypatch):
    """No dataset to open and no model catalogue to check: the loop is under test, not the inputs."""
    monkeypatch.setattr(
        inputs,
        "dataset_identity",
        lambda uri: (
            {"num_classes": 2.0, "num_images": 10.0, "num_channels": 3.0, "image_size": 32.0},
            "fp-" + uri.rsplit("/", 1)[-1],
        ),
    )
    monkeypatch.setattr(inputs, "check_space", lambda space: None)


@pytest.fixture
def no_plots(monkeypatch):
    """Drawing two figures costs more than a whole scripted search (plots: tests/search/test_search_e2e.py)."""
    monkeypatch.setattr(report, "plots", lambda session: None)


@pytest.fixture
def tracker_factory():
    return MemoryTracker


@pytest.fixture
def backend_factory():
    return ScriptedBackend
