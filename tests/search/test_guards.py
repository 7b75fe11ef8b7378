"""The search's guards against bad input and leftovers (issue 12: defects 5, 8, 9, 10), fast.

A scripted in-memory backend (steps "train" instantly, results made up from the config id) and a
sqlite MLflow store: the controller's real protocol without training. Covers: search ids (grammar,
CLI errors, every id the product generates, Hypothesis round trip through MLflow filters), the
dataset fingerprint on resume (changed data refused before anything is written; the same folder by
another path accepted), deterministic ``invalid`` steps (not retried; a data error stops at once;
all-invalid fails fast), an unreachable tracking server (seconds, URI without password),
``--budget -5m``, and no zero-epoch child runs left behind (also across a resume).
Cost: ~30-60 s on 2 busy cores (one sqlite store per module, a few searches of instant steps).
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from quicktune.backends.base import (
    CANCELLED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    StepRequest,
    StepStatus,
    TrialBackend,
)
from quicktune.search import SearchError, SearchSpec, run_search
from quicktune.tracking import InfrastructureError, RetryPolicy, SearchTracker
from quicktune.tracking.names import InvalidNameError, check_search_id, filter_literal, filter_string, tag

HERE = Path(__file__).parents[1]  # tests/: the shared spaces
TINY_SPACE = str(HERE / "tiny_space.yaml")
SEARCH_IDS = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


# --- a scripted backend -------------------------------------------------------------------------
def _score(config_id: str, epoch: int) -> float:
    h = int(hashlib.sha1(config_id.encode()).hexdigest()[:6], 16) / 0xFFFFFF
    return round(min(1.0, 0.2 + 0.5 * h + 0.05 * epoch), 4)


def ok_result(req: StepRequest) -> dict[str, Any]:
    e = {
        "epoch": req.to_epoch,
        "score": _score(req.config_id, req.to_epoch),
        "top5": 1.0,
        "val_loss": 1.0,
        "train_loss": 1.0,
        "train_seconds": 0.01,
        "eval_seconds": 0.01,
        "cost": 0.02,
    }
    return {"status": "ok", "message": "", "epochs": [e]}


class ScriptedBackend(TrialBackend):
    """Steps run ``seconds`` each, ``workers`` at a time (the rest wait PENDING, like a prefetched
    step); ``outcome(request)`` makes the RESULT. Keeps its steps across sessions, as a real
    backend's durable state does."""

    def __init__(
        self, workers: int = 1, seconds: float = 0.05, outcome: Callable[[StepRequest], dict[str, Any]] = ok_result
    ) -> None:
        self.workers, self.seconds, self.outcome = workers, seconds, outcome
        self.steps: dict[str, dict[str, Any]] = {}
        self.launches: Counter[str] = Counter()  # step id -> attempts started
        self.completions_left: int | None = None  # after this many, running steps never finish

    def capacity(self) -> int:
        return self.workers

    def _advance(self) -> None:
        now = time.monotonic()
        for s in self.steps.values():
            if s["state"] == RUNNING and now - s["since"] >= self.seconds and self.completions_left != 0:
                s["state"], s["result"] = SUCCEEDED, self.outcome(s["req"])
                if self.completions_left is not None:
                    self.completions_left -= 1
        running = sum(s["state"] == RUNNING for s in self.steps.values())
        for s in self.steps.values():
            if s["state"] == PENDING and running < self.workers:
                s["state"], s["since"] = RUNNING, now
                self.launches[s["req"].id] += 1
                running += 1

    def start(self, request: StepRequest) -> str:
        if request.id not in self.steps:
            self.steps[request.id] = {"req": request, "state": PENDING, "since": 0.0, "result": None}
        self._advance()
        return request.id

    def rerun(self, request: StepRequest) -> str:
        s = self.steps.get(request.id)
        if s is None or s["state"] in TERMINAL:
            self.steps[request.id] = {"req": request, "state": PENDING, "since": 0.0, "result": None}
        self._advance()
        return request.id

    def poll(self, step_id: str) -> StepStatus:
        self._advance()
        return StepStatus(self.steps[step_id]["state"])

    def result(self, step_id: str) -> dict[str, Any]:
        return self.steps[step_id]["result"] or {"status": "failed", "message": "cancelled", "epochs": []}

    def logs(self, step_id: str) -> str:
        return "scripted"

    def cancel(self, step_id: str) -> None:
        s = self.steps[step_id]
        if s["state"] not in TERMINAL:
            s["state"] = CANCELLED

    def active(self) -> list[str]:
        return [i for i, s in self.steps.items() if s["state"] not in TERMINAL]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def tracker_for(store: str, experiment: str | None = None) -> SearchTracker:
    artifacts = Path(store[len("sqlite:///") :]).parent / "artifacts"
    return SearchTracker(
        store,
        experiment=experiment or f"g-{uuid.uuid4().hex[:6]}",
        retry=RetryPolicy(base=0.1, max_delay=0.5, total=5),
        artifact_location=str(artifacts),
    )


def spec_for(data, tmp_path, **kw) -> SearchSpec:
    base = dict(
        data_uri=str(data),
        budget_seconds=120,
        space=TINY_SPACE,
        search_id=f"g-{uuid.uuid4().hex[:8]}",
        workers=1,
        max_epochs=3,
        optimizer="random",
        workdir=str(tmp_path / "work"),
        budget_epochs=3,
        poll_interval=0.01,
        step_retry_delay=0.01,
        checkpoint_uri="s3://never-used/ckpt",
    )  # the scripted steps write nothing
    base.update(kw)
    return SearchSpec(**base)


def child_runs(tracker: SearchTracker, parent_id: str) -> list[Any]:
    return list(
        tracker.client.search_runs(
            [tracker.experiment_id],
            filter_string({tag("mlflow.parentRunId"): parent_id, tag("quicktune.role"): "config"}),
        )
    )


def tell_seqs(tracker: SearchTracker, parent_id: str) -> list[int]:
    return sorted(
        int(m.value)
        for r in child_runs(tracker, parent_id)
        for m in tracker.client.get_metric_history(r.info.run_id, "tell_seq")
    )


# --- search ids -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad", ["../../x", "a'b", "A-upper", "-lead", "trail-", "", "a" * 64, "a b", "a/b", "x\ny", 'a"b', "ü"]
)
def test_bad_search_ids_are_refused_everywhere(bad, tmp_path):
    with pytest.raises(InvalidNameError, match="not valid: 1 to 63 characters"):
        check_search_id(bad)
    if bad:  # "" means "make one up"
        with pytest.raises(SearchError, match="search id"):
            SearchSpec(data_uri="x", budget_seconds=5, search_id=bad)


@given(SEARCH_IDS)
def test_valid_search_ids_are_accepted(sid):
    assert check_search_id(sid) == sid
    assert SearchSpec(data_uri="x", budget_seconds=5, search_id=sid).search_id == sid


@given(st.text(min_size=1, max_size=40), st.integers(0, 2**40), st.integers(0, 5))
def test_every_id_the_product_generates_is_valid(model_name, created, generation):
    """The default id, the watcher's ``search_id_for`` (any model name) and the KFP component's."""
    from quicktune.watch.requests import MODEL, Target, search_id_for

    assert check_search_id(SearchSpec(data_uri="x", budget_seconds=5).search_id)
    target = Target(
        kind=MODEL,
        key=model_name,
        name=model_name,
        created=created,
        tags={} if not generation else {"quicktune.searches": str(generation)},
    )
    assert check_search_id(search_id_for(target))
    from quicktune.tracking.names import search_id_for_run

    assert check_search_id(search_id_for_run(model_name))  # the KFP component's default, any run id
    assert search_id_for_run(model_name) == search_id_for_run(model_name)


def test_cli_refuses_bad_search_ids_and_negative_durations(capsys):
    from quicktune.cli import main

    for argv, needle in (
        (
            ["search", "--data", "x", "--budget", "5m", "--search-id", "../../x"],
            "argument --search-id: search id '../../x' is not valid",
        ),
        (["promote", "it's"], 'argument SEARCH_ID: search id "it\'s" is not valid'),
        (["search", "--data", "x", "--budget", "-5m"], "argument --budget: '-5m': a duration must be positive"),
        (
            ["search", "--data", "x", "--budget", "5m", "--step-timeout", "-1h30m"],
            "argument --step-timeout: '-1h30m': a duration must be positive",
        ),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert needle in err and "expected one argument" not in err


def test_promote_refuses_a_quote_in_the_id_without_asking_mlflow():
    from quicktune.search import PromotionError, promote

    tracker = SearchTracker("http://127.0.0.1:9", retry=RetryPolicy(total=0.1))  # never contacted
    with pytest.raises(PromotionError, match="not valid"):
        promote("x' or tags.`a` = 'b", tracker=tracker)
    assert tracker.calls == 0


# --- MLflow filter strings ------------------------------------------------------------------------
QUOTABLE = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\"), max_size=30).filter(
    lambda t: not ("'" in t and '"' in t)
)


@given(QUOTABLE)
def test_filter_literals_parse_back_exactly(value):
    """MLflow's own filter parser reads back the exact value, whatever quotes it holds."""
    from mlflow.utils.search_utils import SearchUtils

    parsed = SearchUtils.parse_search_filter(
        filter_string({tag("quicktune.search_id"): value, tag("quicktune.role"): "search"})
    )
    assert [(p["key"], p["value"]) for p in parsed] == [("quicktune.search_id", value), ("quicktune.role", "search")]


@pytest.mark.parametrize("value", ["both ' and \"", "back\\slash", "nul\x00", "new\nline"])
def test_values_that_cannot_be_quoted_exactly_are_refused(value):
    with pytest.raises(InvalidNameError):
        filter_literal(value)
    with pytest.raises(InvalidNameError):
        filter_string({"tags.`x` = 'y' or tags.`z`": "v"})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sid=SEARCH_IDS, other=QUOTABLE)
def test_search_ids_and_tag_values_round_trip_through_a_real_store(store, sid, other):
    """Generated ids and arbitrary tag values: written as tags, found by the filters we build."""
    tracker = tracker_for(store, "roundtrip")
    marker = uuid.uuid4().hex
    run = tracker.client.create_run(
        tracker.experiment_id,
        tags={"quicktune.search_id": sid, "quicktune.role": "search", "qt.other": other, "qt.marker": marker},
    )
    found = tracker.find_search(sid)
    assert found is not None and found.data.tags["quicktune.search_id"] == sid
    hits = tracker._search(filter_string({tag("qt.other"): other, tag("qt.marker"): marker}))
    assert [r.info.run_id for r in hits] == [run.info.run_id]


# --- an unreachable tracking server ---------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_fails_fast_and_clearly(tiny_image_folder, tmp_path):
    """It took 2 min 10 s (every call retried for 2 min); the probe answers in seconds, names the
    server and hides its password. (Outages *during* a search are still ridden out: the retry
    policy is unchanged, see test_search_e2e.py's S3 outage and the MLflow restart tests.)"""
    uri = f"http://user:pw-{uuid.uuid4().hex[:6]}@127.0.0.1:{_closed_port()}"
    tracker = SearchTracker(uri, experiment="down")  # the default 120 s retry policy
    t0 = time.monotonic()
    with pytest.raises(InfrastructureError) as err:
        run_search(spec_for(tiny_image_folder, tmp_path), ScriptedBackend(), tracker, progress=False)
    assert time.monotonic() - t0 < 60  # about 10 s; the bound only separates it from 2 min
    msg = str(err.value)
    assert "is not reachable" in msg and "127.0.0.1" in msg and "Connection refused" in msg
    assert "pw-" not in msg and "user:***@" in msg


# --- the dataset on resume ------------------------------------------------------------------------
def test_resume_refuses_changed_data_before_writing_anything(store, tiny_image_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_image_folder, data)
    tracker = tracker_for(store)
    spec = spec_for(data, tmp_path, budget_epochs=2)
    backend = ScriptedBackend()
    first = run_search(spec, backend, tracker, progress=False)
    assert first.status == "succeeded", first.message
    before = tracker.client.get_run(first.parent_run_id)
    # one class removed, another (smaller) added: same path, other data
    shutil.rmtree(data / "0")
    (data / "ten").mkdir()
    for png in sorted((data / "1").glob("*.png"))[:10]:
        shutil.copy(png, data / "ten" / png.name)
    again = spec_for(data, tmp_path, search_id=spec.search_id, budget_epochs=4)
    with pytest.raises(
        SearchError,
        match=r"was started on other data: dataset fingerprint \w+ -> \w+ "
        r"\(images 300 -> 280\)",
    ):
        run_search(again, backend, tracker, progress=False)
    after = tracker.client.get_run(first.parent_run_id)
    assert after.data.tags == before.data.tags and after.info.status == before.info.status
    assert len(backend.steps) == 2  # nothing launched


def test_resume_accepts_the_same_folder_by_another_path(store, tiny_image_folder, tmp_path, monkeypatch):
    """Relative vs absolute, a trailing slash, a symlink: the same data (it was refused as a
    different ``data_uri``)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_image_folder, data)
    (tmp_path / "link").symlink_to(data)
    tracker = tracker_for(store)
    backend = ScriptedBackend()
    spec = spec_for(data, tmp_path, budget_epochs=1)
    assert run_search(spec, backend, tracker, progress=False).status == "succeeded"
    monkeypatch.chdir(tmp_path)
    for n, other in enumerate(("data", str(data) + "/", str(tmp_path / "link")), start=2):
        result = run_search(
            spec_for(other, tmp_path, search_id=spec.search_id, budget_epochs=n), backend, tracker, progress=False
        )
        assert result.status == "succeeded" and result.resumed and result.epochs_done == n, result.message
    assert tell_seqs(tracker, result.parent_run_id) == [1, 2, 3, 4]


# --- deterministic failures -----------------------------------------------------------------------
def invalid(kind: str) -> Callable[[StepRequest], dict[str, Any]]:
    return lambda req: {"status": "invalid", "message": f"{kind} says no", "epochs": [], "invalid_kind": kind}


def test_invalid_steps_are_recorded_not_retried_and_fail_fast(store, tiny_image_folder, tmp_path):
    tracker = tracker_for(store)
    backend = ScriptedBackend(outcome=invalid("config"))
    result = run_search(
        spec_for(tiny_image_folder, tmp_path, budget_epochs=None, step_retries=3, fail_fast_steps=3),
        backend,
        tracker,
        progress=False,
    )
    assert result.status == "failed"
    assert "were all invalid and none succeeded" in result.message and "config says no" in result.message
    assert set(backend.launches.values()) == {1}  # none retried (was step_retries + 1 attempts each)
    runs = child_runs(tracker, result.parent_run_id)
    assert runs and {r.data.tags["quicktune.status"] for r in runs} == {"invalid"}
    assert {r.info.status for r in runs} == {"FAILED"}


def test_a_data_error_stops_the_search_at_the_first_step(store, tiny_image_folder, tmp_path):
    tracker = tracker_for(store)
    backend = ScriptedBackend(outcome=invalid("data"))
    result = run_search(spec_for(tiny_image_folder, tmp_path, budget_epochs=None), backend, tracker, progress=False)
    assert result.status == "failed" and "the dataset cannot be used" in result.message
    assert sum(backend.launches.values()) <= 2  # the first, and at most the one asked ahead
    runs = child_runs(tracker, result.parent_run_id)
    assert [r.data.tags["quicktune.status"] for r in runs] == ["invalid"]  # told once, then stopped


def test_a_failed_step_is_still_retried(store, tiny_image_folder, tmp_path):
    """``failed`` (maybe transient) keeps its retries: only ``invalid`` is final at once."""
    attempts: Counter[str] = Counter()

    def flaky(req: StepRequest) -> dict[str, Any]:
        attempts[req.id] += 1
        return ok_result(req) if attempts[req.id] > 1 else {"status": "failed", "message": "S3 hiccup", "epochs": []}

    tracker = tracker_for(store)
    result = run_search(
        spec_for(tiny_image_folder, tmp_path, budget_epochs=2), ScriptedBackend(outcome=flaky), tracker, progress=False
    )
    assert result.status == "succeeded" and result.epochs_done == 2, result.message
    assert set(attempts.values()) == {2}


# --- no zero-epoch child runs -----------------------------------------------------------------------
def test_no_untrained_child_run_is_left_behind_and_resume_recreates_it(store, tiny_image_folder, tmp_path):
    """Steps asked but cut by the budget never trained: their runs are deleted at the end (they
    showed as FINISHED runs with 0 epochs). The optimizer's snapshot still lists them, so a resume
    with more budget recreates their runs and runs them; tell_seq stays 1..N. Deterministic: the
    backend lets exactly one step finish, and the compute budget is used up by that one epoch."""
    tracker = tracker_for(store)
    backend = ScriptedBackend(workers=4, seconds=0.0)
    backend.completions_left = 1
    spec = spec_for(tiny_image_folder, tmp_path, budget_epochs=None, budget_gpu_seconds=0.01, workers=4, prefetch=0)
    first = run_search(spec, backend, tracker, progress=False)
    assert first.status == "succeeded" and first.epochs_done == 1, first.message
    cancelled = [s["req"] for s in backend.steps.values() if s["state"] == CANCELLED]
    assert cancelled and all(r.to_epoch == 1 for r in cancelled)
    runs = child_runs(tracker, first.parent_run_id)
    assert len(runs) == 1 and "score" in runs[0].data.metrics and runs[0].info.status == "FINISHED"
    deleted = tracker.client.search_runs(
        [tracker.experiment_id], filter_string({tag("mlflow.parentRunId"): first.parent_run_id}), run_view_type=2
    )  # ViewType.DELETED_ONLY
    assert {r.data.tags["quicktune.config_id"] for r in deleted} == {r.config_id for r in cancelled}
    assert first.summary["configs_tried"] == 1

    backend.completions_left = None
    more = spec_for(
        tiny_image_folder, tmp_path, search_id=spec.search_id, budget_epochs=1 + len(cancelled), workers=4, prefetch=0
    )
    second = run_search(more, backend, tracker, progress=False)
    assert second.status == "succeeded" and second.resumed and second.epochs_done == 1 + len(cancelled), second.message
    runs = child_runs(tracker, first.parent_run_id)
    assert len(runs) == 1 + len(cancelled) and all("score" in r.data.metrics for r in runs)
    assert {r.config_id for r in cancelled} <= {r.data.tags["quicktune.config_id"] for r in runs}
    assert tell_seqs(tracker, first.parent_run_id) == list(range(1, second.epochs_done + 1))


# --- an outage during a search is still ridden out ------------------------------------------------
@pytest.mark.slow
@pytest.mark.servers
def test_an_mlflow_restart_mid_search_is_still_ridden_out(tiny_image_folder, tmp_path, monkeypatch, caplog):
    """The fast start-up probe must not make the search impatient later: the MLflow server stops
    for ~16 s plus its restart while steps run; the search continues, every epoch is recorded
    once (tell_seq 1..N) and no run is left RUNNING. Own server (the shared one must not go down)."""
    import threading

    import quicktune.testing.servers as servers
    from quicktune.testing import MlflowServer

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        tracker = SearchTracker(
            server.tracking_uri, experiment="restart", retry=RetryPolicy(base=0.5, max_delay=4, total=120)
        )
        backend = ScriptedBackend(workers=1, seconds=0.5)
        spec = spec_for(tiny_image_folder, tmp_path, budget_epochs=10, budget_seconds=600)
        caplog.set_level("WARNING", logger="quicktune.tracking.retry")
        box: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: box.update(r=run_search(spec, backend, tracker, progress=False)))
        thread.start()
        deadline = time.monotonic() + 120
        while sum(s["state"] == SUCCEEDED for s in backend.steps.values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert thread.is_alive(), box
        server.stop()
        time.sleep(16)
        port = server.port
        with monkeypatch.context() as m:
            m.setattr(servers, "free_port_pair", lambda *a, **k: [port])
            server.start()
        thread.join(300)
        result = box["r"]
        assert result.status == "succeeded" and result.epochs_done == 10, result.message
        assert any("retrying in" in r.getMessage() for r in caplog.records), "the outage went unnoticed"
        assert tell_seqs(tracker, result.parent_run_id) == list(range(1, 11))
        runs = [tracker.client.get_run(result.parent_run_id), *child_runs(tracker, result.parent_run_id)]
        assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    finally:
        server.stop()
