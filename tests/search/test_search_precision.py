"""The search's training precision (``SearchSpec.precision``, ``quicktune search --precision``)
reaches every step request, is recorded with the spec, and is kept by a resume: one
configuration's curve is never continued in another precision (an identity field)."""

from __future__ import annotations

import json

import pytest
from search_doubles import MemoryTracker, ScriptedBackend, fast_spec

from quicktune.search import SearchError, SearchSpec, run_search

pytestmark = pytest.mark.usefixtures("fast_inputs", "no_plots")


def spec(**kw) -> SearchSpec:
    return fast_spec(**{"search_id": "prec", "budget_epochs": 3, **kw})


class Recording(ScriptedBackend):
    """The scripted backend, keeping every request it was asked to start."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.requests = []

    def _launch(self, request) -> None:
        self.requests.append(request)
        super()._launch(request)


@pytest.mark.parametrize("precision", ["bf16", "fp32", None])
def test_the_specs_precision_reaches_every_step_request(precision):
    backend, tracker = Recording(), MemoryTracker()
    result = run_search(spec(precision=precision), backend, tracker, progress=False)
    assert result.status == "succeeded", result.message
    assert len(backend.requests) == 3
    assert {r.precision for r in backend.requests} == {precision}
    flags = [a for r in backend.requests for a in r.argv(out="/o") if a.startswith("--precision")]
    assert flags == ([] if precision is None else [f"--precision={precision}"] * 3)
    assert tracker.spec(tracker.parent("prec").run_id)["precision"] == precision


def test_a_resume_keeps_the_precision_and_refuses_another_before_any_write():
    tracker = MemoryTracker()
    assert run_search(spec(precision="fp16"), Recording(), tracker, progress=False).status == "succeeded"
    writes = tracker.calls
    for other in (None, "bf16"):
        with pytest.raises(SearchError, match=r"precision: recorded 'fp16', given"):
            run_search(spec(precision=other, budget_epochs=5), Recording(), tracker, progress=False)
    assert tracker.calls == writes
    again = Recording()
    result = run_search(spec(precision="fp16", budget_epochs=5), again, tracker, progress=False)
    assert result.status == "succeeded" and result.resumed and result.epochs_done == 5
    assert again.requests and {r.precision for r in again.requests} == {"fp16"}


def test_a_search_recorded_before_precision_existed_resumes_without_it():
    tracker = MemoryTracker()
    assert run_search(spec(), Recording(), tracker, progress=False).status == "succeeded"
    run = tracker.parent("prec")
    stored = dict(tracker.spec(run.run_id))
    del stored["precision"]  # spec.json of an older version
    tracker.runs[run.run_id].artifacts["spec.json"] = json.dumps(stored)
    result = run_search(spec(budget_epochs=4), Recording(), tracker, progress=False)
    assert result.status == "succeeded" and result.resumed


def test_precision_is_validated_and_the_cli_carries_it():
    with pytest.raises(SearchError, match="precision must be one of fp32, fp16, bf16, auto"):
        SearchSpec(data_uri="x", budget_seconds=1, precision="half")
    from quicktune.cli import build_parser

    base = ["search", "--data", "/d", "--budget", "1m"]
    assert build_parser().parse_args(base).precision is None
    assert build_parser().parse_args([*base, "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--precision", "fp8"])
