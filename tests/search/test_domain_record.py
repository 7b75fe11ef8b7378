"""A meta-learned search records the artifact's domain report (quicktune.optimizer.domain) on its
parent run: the score, verdict and flags as tags and the whole report as ``domain_report.json``, once,
and a line in the log every session; a non-meta optimizer records none."""

from __future__ import annotations

import json
import logging

import pytest
from search_doubles import MemoryTracker, ScriptedBackend, fast_spec

from quicktune.optimizer.domain import DomainReport
from quicktune.search import run_search
from quicktune.tracking.schema import ARTIFACT_DOMAIN_REPORT, TAG_DOMAIN_FLAGS, TAG_DOMAIN_SCORE, TAG_DOMAIN_VERDICT

pytestmark = pytest.mark.usefixtures("fast_inputs", "no_plots")

SMALL = {"refit_steps": 2, "first_fit_steps": 2, "cost_steps": 2, "n_candidates": 16}


def test_a_meta_search_records_its_domain_report_once(caplog):
    tracker, backend = MemoryTracker(), ScriptedBackend(workers=1)
    spec = fast_spec("dom", 2, optimizer="quicktune", optimizer_options=SMALL)
    with caplog.at_level(logging.INFO, logger="quicktune.search.resume"):
        result = run_search(spec, backend, tracker, progress=False)
    assert result.status == "succeeded", result.message
    parent = tracker.parent("dom")
    report = DomainReport.from_json(json.loads(parent.artifacts[ARTIFACT_DOMAIN_REPORT]))
    assert parent.tags[TAG_DOMAIN_SCORE] == f"{report.score:.3f}"
    assert parent.tags[TAG_DOMAIN_VERDICT] == report.verdict
    assert parent.tags[TAG_DOMAIN_FLAGS] == ",".join(report.flags())
    # builtin:cpu's six models are the shipped artifact's; the fake 10-image RGB dataset is not like its tasks
    assert report.model_score == 1.0 and any(f.startswith("meta:") for f in report.flags())
    assert any("domain score" in r.getMessage() for r in caplog.records)

    tracker.runs[parent.run_id].artifacts[ARTIFACT_DOMAIN_REPORT] = "kept"  # a resume does not rewrite it
    more = fast_spec("dom", 3, optimizer="quicktune", optimizer_options=SMALL)
    assert run_search(more, backend, tracker, progress=False).resumed
    assert tracker.parent("dom").artifacts[ARTIFACT_DOMAIN_REPORT] == "kept"


def test_a_non_meta_search_records_no_domain_report():
    tracker = MemoryTracker()
    result = run_search(fast_spec("plain", 2, optimizer="quicktune-nometa", optimizer_options=SMALL),
                        ScriptedBackend(workers=1), tracker, progress=False)  # fmt: skip
    assert result.status == "succeeded", result.message
    parent = tracker.parent("plain")
    assert ARTIFACT_DOMAIN_REPORT not in parent.artifacts and TAG_DOMAIN_SCORE not in parent.tags
