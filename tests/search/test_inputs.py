"""What a session checks before it writes anything: a resume's definition and data, the
checkpoint location for remote workers (in memory; the real MLflow versions are in
tests/search/test_guards.py)."""

from __future__ import annotations

import pytest
from search_doubles import MemoryTracker, ScriptedBackend, fast_spec

from quicktune.search import SearchError, SearchSpec, inputs, run_search

pytestmark = pytest.mark.usefixtures("fast_inputs", "no_plots")


def spec(**kw) -> SearchSpec:
    return fast_spec(**{"search_id": "inputs", "budget_epochs": 2, **kw})


@pytest.fixture
def finished() -> MemoryTracker:
    tracker = MemoryTracker()
    assert run_search(spec(), ScriptedBackend(), tracker, progress=False).status == "succeeded"
    return tracker


@pytest.mark.parametrize(
    "change", [{"max_epochs": 4}, {"seed": 1}, {"optimizer": "asha"}, {"image_size": 64}, {"space": "builtin:paper"}]
)
def test_a_resume_that_changes_what_is_searched_is_refused_before_any_write(finished, change):
    writes = finished.calls
    with pytest.raises(SearchError, match="already exists with a different definition"):
        run_search(spec(**change), ScriptedBackend(), finished, progress=False)
    assert finished.calls == writes


def test_a_resume_may_change_the_budget_and_the_workers(finished):
    result = run_search(spec(budget_epochs=4, workers=2), ScriptedBackend(workers=2), finished, progress=False)
    assert result.status == "succeeded" and result.resumed and result.epochs_done == 4


def test_a_resume_on_other_data_is_refused_with_both_fingerprints(finished, monkeypatch):
    monkeypatch.setattr(inputs, "dataset_identity", lambda uri: ({"num_classes": 3.0, "num_images": 10.0}, "fp-new"))
    writes = finished.calls
    with pytest.raises(SearchError, match=r"fp-tiny -> fp-new \(classes 2 -> 3\)"):
        run_search(spec(), ScriptedBackend(), finished, progress=False)
    assert finished.calls == writes


def test_remote_workers_need_s3_checkpoints():
    class Remote(ScriptedBackend):
        shares_filesystem = False

    with pytest.raises(SearchError, match="--checkpoint-uri s3://"):
        run_search(spec(), Remote(), MemoryTracker(artifact_location="/local/mlruns"), progress=False)
    for tracker, kw in (
        (MemoryTracker(artifact_location="s3://bucket/mlflow"), {}),
        (MemoryTracker(), {"checkpoint_uri": "s3://bucket/ckpt"}),
    ):
        assert run_search(spec(**kw), Remote(), tracker, progress=False).status == "succeeded"


def test_same_location_compares_resolved_paths(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    assert inputs.same_location(str(tmp_path / "data"), f"file://{tmp_path / 'link'}/")
    assert inputs.same_location("s3://b/p/", "s3://b/p")
    assert not inputs.same_location("s3://b/p", "s3://b/q")
