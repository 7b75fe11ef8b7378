"""SearchSpec validation, the backend factory the CLI uses, and the checkpoint rule for remote
workers on a real (sqlite) MLflow store."""

from __future__ import annotations

import pytest

from quicktune.search import SearchError, SearchSpec
from quicktune.tracking import (
    flatten,
)


def test_spec_validation_and_flatten():
    with pytest.raises(SearchError, match="budget_seconds"):
        SearchSpec(data_uri="x", budget_seconds=0)
    with pytest.raises(SearchError, match="workers"):
        SearchSpec(data_uri="x", budget_seconds=1, workers=0)
    spec = SearchSpec(data_uri="s3://u:pw@b/p", budget_seconds=5)
    assert spec.search_id and spec.to_dict()["data_uri"] == "s3://u:***@b/p"
    assert flatten({"a": {"b": 1, "c": "x"}, "d": [1, 2]}) == {"a.b": "1", "a.c": "x", "d": "[1, 2]"}


def test_backend_factory(tmp_path):
    from quicktune.backends.local import LocalBackend
    from quicktune.backends.registry import available, make_backend

    assert {"local", "kubernetes"} <= set(available())
    b = make_backend("local", workers=3, workdir=tmp_path, step_timeout=5)
    assert isinstance(b, LocalBackend) and b.capacity() == 3 and b.step_timeout == 5
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        make_backend("nope")


def test_remote_backend_needs_s3_checkpoints(tmp_path, tiny_image_folder):
    """A backend whose workers run elsewhere cannot use this machine's folders for checkpoints."""
    from quicktune.backends.base import TrialBackend
    from quicktune.search import run_search
    from quicktune.tracking import SearchTracker

    class Remote(TrialBackend):
        start = poll = result = logs = cancel = active = lambda *a: None

    tracker = SearchTracker(f"sqlite:///{tmp_path / 'm.db'}", experiment="remote", artifact_location=str(tmp_path))
    with pytest.raises(SearchError, match="Remote runs steps on other machines: give --checkpoint-uri s3://"):
        run_search(SearchSpec(data_uri=str(tiny_image_folder), budget_seconds=5), Remote(), tracker, progress=False)
    assert tracker.find_search("x") is None
