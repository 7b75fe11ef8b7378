"""The search controller against real parts: MLflow server + SeaweedFS S3, real ``quicktune step``
workers on tiny real images (test-sized timm models at 16 px).

Cost on 2 busy cores: ~3-5 min in all (each real step pays ~4-20 s of process start-up).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from quicktune.backends.local import LocalBackend
from quicktune.backends.testing import local_attempts_started_and_rerun
from quicktune.search import SearchError, SearchSpec, run_search
from quicktune.tracking import InfrastructureError, RetryPolicy, SearchTracker

HERE = Path(__file__).parents[1]  # tests/: the shared spaces
TINY_SPACE = str(HERE / "tiny_space.yaml")
DIVERGE_SPACE = str(HERE / "diverge_space.yaml")
SECRETS = {
    "MLFLOW_TRACKING_USERNAME": "qt-user",
    "MLFLOW_TRACKING_PASSWORD": "pw-" + uuid.uuid4().hex,
    "QT_TEST_API_TOKEN": "tok-" + uuid.uuid4().hex,
}

pytestmark = [pytest.mark.slow]


# --- helpers ------------------------------------------------------------------------------------
def child_runs(client, parent_id: str):
    runs = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`quicktune.role` = 'config'",
    )
    return list(runs)


def epochs_by_config(client, parent_id: str) -> dict[str, list[int]]:
    """config id -> the recorded epoch steps of metric ``score``, in logging order (duplicates kept)."""
    out = {}
    for run in child_runs(client, parent_id):
        hist = client.get_metric_history(run.info.run_id, "score")
        out[run.data.tags["quicktune.config_id"]] = [m.step for m in sorted(hist, key=lambda m: (m.step, m.timestamp))]
    return out


def assert_exact_epochs(client, parent_id: str) -> dict[str, list[int]]:
    """Each config's epochs are exactly 1..k (none missing, none twice); tell_seq is unique."""
    by_config = epochs_by_config(client, parent_id)
    seqs = []
    for run in child_runs(client, parent_id):
        cid = run.data.tags["quicktune.config_id"]
        steps = by_config[cid]
        assert steps == list(range(1, len(steps) + 1)), f"config {cid}: recorded epochs {steps}"
        seq_hist = client.get_metric_history(run.info.run_id, "tell_seq")
        assert sorted(m.step for m in seq_hist) == steps
        seqs += [int(m.value) for m in seq_hist]
        if run.data.tags.get("quicktune.failed_seq"):
            seqs.append(int(run.data.tags["quicktune.failed_seq"]))
    assert len(seqs) == len(set(seqs)), f"duplicate tell_seq numbers: {sorted(seqs)}"
    return by_config


def trained_epochs(workdir: Path) -> list[tuple[str, int]]:
    """Every (config, epoch) some step process actually trained, from the steps' own RESULT.json."""
    out = []
    for res in sorted((workdir / "steps").glob("*/RESULT.json*")):
        request = json.loads((res.parent / "request.json").read_text())
        doc = json.loads(res.read_text())
        out += [(request["config_id"], int(e["epoch"])) for e in doc.get("epochs", [])]
    return out


def make_spec(data, tmp_path, **kw) -> SearchSpec:
    base = dict(
        data_uri=str(data),
        budget_seconds=240,
        space=TINY_SPACE,
        search_id=f"t-{uuid.uuid4().hex[:8]}",
        workers=2,
        max_epochs=3,
        image_size=16,
        workdir=str(tmp_path / "work"),
        step_retry_delay=2.0,
    )
    base.update(kw)
    return SearchSpec(**base)


@pytest.fixture(scope="module")
def server_env(mlflow_server):
    """S3 + MLflow env for the module, plus secret-looking variables that must never be logged."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**mlflow_server.env, **SECRETS}.items():
            mp.setenv(k, v)
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        yield mlflow_server


@pytest.fixture(scope="module")
def e2e(server_env, tiny_image_folder, tmp_path_factory):
    """One small real search: 2 workers, checkpoints on S3, 4 epochs in all."""
    tmp = tmp_path_factory.mktemp("e2e")
    server_env.s3.create_bucket("qt-ckpt")
    spec = make_spec(tiny_image_folder, tmp, budget_epochs=4, checkpoint_uri=f"s3://qt-ckpt/{uuid.uuid4().hex[:6]}")
    tracker = SearchTracker(server_env.tracking_uri, experiment=f"e2e-{uuid.uuid4().hex[:6]}")
    backend = LocalBackend(spec.workdir, max_workers=2)
    t0 = time.monotonic()
    result = run_search(spec, backend, tracker, progress=False)
    return dict(spec=spec, tracker=tracker, result=result, wall=time.monotonic() - t0, workdir=Path(spec.workdir))


# --- end to end -----------------------------------------------------------------------------------
@pytest.mark.servers
def test_search_end_to_end_layout(e2e):
    res, tracker, spec = e2e["result"], e2e["tracker"], e2e["spec"]
    assert res.status == "succeeded", res.message
    assert "epoch budget" in res.message
    assert res.epochs_done == 4 and res.best_score is not None and 0 <= res.best_score <= 1
    client = tracker.client
    parent = client.get_run(res.parent_run_id)
    tags, params = parent.data.tags, parent.data.params
    assert tags["quicktune.search_id"] == spec.search_id and tags["quicktune.status"] == "succeeded"
    assert parent.info.status == "FINISHED"
    assert params["data_uri"] == str(spec.data_uri) and params["max_epochs"] == "3"
    assert tags["quicktune.checkpoint_uri"] == spec.checkpoint_uri
    incumbent = client.get_metric_history(parent.info.run_id, "incumbent")
    assert incumbent and all(b.value >= a.value for a, b in itertools.pairwise(incumbent))
    assert max(m.value for m in incumbent) == pytest.approx(res.best_score)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.json", "summary.json", "plots", "optimizer"} <= arts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/incumbent.png"}
    summary = json.loads(tracker.read_text(parent.info.run_id, "summary.json"))
    assert summary["best_config_id"] == res.best_config_id and summary["epochs_done"] == 4
    by_config = assert_exact_epochs(client, res.parent_run_id)
    assert sum(map(len, by_config.values())) == 4
    for run in child_runs(client, res.parent_run_id):
        config = json.loads(run.data.tags["quicktune.config"])
        assert run.data.params == {k: str(v) for k, v in config.items()}  # config as params, once
        assert run.info.status == "FINISHED" and run.data.tags["quicktune.status"] == "finished"
        for key in ("score", "top5", "val_loss", "train_loss", "cost"):
            assert key in run.data.metrics
        ckpt = run.data.tags["quicktune.checkpoint_dir"]
        assert ckpt.startswith(spec.checkpoint_uri + "/" + spec.search_id + "/")
    # the checkpoints really are in S3
    from quicktune import storage

    best_run = client.get_run(res.best_run_id)
    assert storage.list_uris(best_run.data.tags["quicktune.checkpoint_dir"])
    # no epoch was trained twice
    trained = trained_epochs(e2e["workdir"])
    assert len(trained) == len(set(trained)) == 4


@pytest.mark.servers
def test_no_secret_is_ever_logged(e2e):
    """Scan every param, tag and text artifact of the search for the values of secret env vars."""
    tracker, res = e2e["tracker"], e2e["result"]
    client = tracker.client
    secrets = [os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"], *SECRETS.values()]
    secrets.remove("qt-user")
    runs = [client.get_run(res.parent_run_id), *child_runs(client, res.parent_run_id)]
    assert len(runs) >= 3
    for run in runs:
        blob = json.dumps({"params": run.data.params, "tags": run.data.tags})
        for s in secrets:
            assert s not in blob, f"a secret leaked into run {run.info.run_id}"
    for path in ("spec.json", "summary.json"):
        text = tracker.read_text(res.parent_run_id, path)
        assert text and not any(s in text for s in secrets)


@pytest.mark.servers
def test_resume_of_a_finished_search_refuses_another_definition(e2e, tiny_image_folder):
    spec = make_spec(tiny_image_folder, e2e["workdir"].parent, search_id=e2e["spec"].search_id, max_epochs=5)
    with pytest.raises(SearchError, match="max_epochs: recorded 3, given 5"):
        run_search(spec, LocalBackend(spec.workdir), e2e["tracker"], progress=False)


# --- kill -9 and resume ---------------------------------------------------------------------------
def _running_steps(workdir: Path) -> list[Path]:
    """Steps whose runner has started (the backend recorded its pid, or the runner recorded itself)
    and not yet ended. A launch record with neither is a launch the killed controller never finished:
    no process exists, and the next backend runs it again."""

    def started(d: Path) -> bool:
        launch = json.loads((d / "launch.json").read_text()) if (d / "launch.json").exists() else {}
        return bool(launch.get("pid")) or (d / "runner.json").exists()

    return [d for d in (workdir / "steps").glob("*") if started(d) and not (d / "exit.json").exists()]


@pytest.mark.servers
def test_kill_9_mid_search_then_resume_loses_and_repeats_no_epoch(server_env, tiny_image_folder, tmp_path):
    """kill -9 twice: once with steps running (the next controller re-adopts them), once after which
    the running steps finish while no controller is alive (their results are collected on resume,
    not retrained). Every recorded epoch survives, none is recorded or trained twice."""
    search_id = f"kill-{uuid.uuid4().hex[:6]}"
    experiment = f"kill-{uuid.uuid4().hex[:6]}"
    workdir = tmp_path / "work"
    cmd = [
        sys.executable,
        "-m",
        "quicktune.cli",
        "search",
        "--data",
        str(tiny_image_folder),
        "--budget",
        "10m",
        "--space",
        TINY_SPACE,
        "--workers",
        "2",
        "--max-epochs",
        "3",
        "--image-size",
        "16",
        "--budget-epochs",
        "5",
        "--search-id",
        search_id,
        "--experiment",
        experiment,
        "--tracking-uri",
        server_env.tracking_uri,
        "--workdir",
        str(workdir),
        "--no-progress",
    ]
    tracker = SearchTracker(server_env.tracking_uri, experiment=experiment)

    def recorded() -> dict[str, list[int]]:
        parent = tracker.find_search(search_id)
        return epochs_by_config(tracker.client, parent.info.run_id) if parent else {}

    def run_and_kill(min_epochs: int) -> dict[str, list[int]]:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + 300
        try:
            while time.monotonic() < deadline:
                assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
                seen = recorded()
                if sum(map(len, seen.values())) >= min_epochs and _running_steps(workdir):
                    return seen
                time.sleep(0.3)
            pytest.fail(f"no {min_epochs} epochs recorded with a step running in time")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            assert proc.returncode == -signal.SIGKILL

    first = run_and_kill(1)  # steps still running: the next controller must re-adopt them
    second = run_and_kill(sum(map(len, first.values())) + 1)
    orphans = _running_steps(workdir)
    deadline = time.monotonic() + 240
    while _running_steps(workdir) and time.monotonic() < deadline:  # they finish with no controller alive
        time.sleep(0.3)
    assert orphans and not _running_steps(workdir)
    parent = tracker.find_search(search_id)
    assert parent.info.status == "RUNNING" and parent.data.tags["quicktune.status"] == "running"

    spec = SearchSpec(
        data_uri=str(tiny_image_folder),
        budget_seconds=600,
        space=TINY_SPACE,
        search_id=search_id,
        workers=2,
        max_epochs=3,
        image_size=16,
        workdir=str(workdir.resolve()),
        budget_epochs=5,
    )
    result = run_search(spec, LocalBackend(workdir, max_workers=2), tracker, progress=False)
    assert result.status == "succeeded", result.message
    assert result.resumed
    after = assert_exact_epochs(tracker.client, parent.info.run_id)
    for before in (first, second):  # nothing recorded before a kill was lost
        for cid, steps in before.items():
            # a config whose run existed with no epoch yet (a step in flight at the kill) may end the
            # search untrained; its empty run is then deleted by design (SearchTracker.delete_untrained)
            assert after.get(cid, [])[: len(steps)] == steps, f"config {cid} lost epochs"
    assert sum(map(len, after.values())) == 5
    for d in orphans:  # finished while no controller was alive: collected, not retrained
        req = json.loads((d / "request.json").read_text())
        assert req["to_epoch"] in after[req["config_id"]]
    trained = trained_epochs(workdir)  # no epoch was trained twice
    assert len(trained) == len(set(trained)), sorted(trained)
    assert sorted(trained) == sorted((c, e) for c, es in after.items() for e in es)
    assert not local_attempts_started_and_rerun(workdir.glob("steps/*"))  # no step that started ran twice
    assert tracker.client.get_run(parent.info.run_id).data.tags["quicktune.resumes"] == "2"


@pytest.mark.servers
def test_kill_9_then_resume_on_the_shipped_defaults(server_env, tiny_image_folder, tmp_path):
    """What users run: ``quicktune search`` with the default space (builtin:cpu, which has
    conditional knobs) and the shipped meta-artifact, SIGKILLed once an epoch is recorded while
    steps run, then the same command again. Resuming failed here with ``SpaceError ... not defined
    before it`` (spec.json's space read back in sorted key order). It must finish with every
    pre-kill epoch kept, tell_seq 1..N with no gap or repeat, no epoch trained twice and no run
    left RUNNING."""
    search_id = f"kill-defaults-{uuid.uuid4().hex[:6]}"
    experiment = f"kill-defaults-{uuid.uuid4().hex[:6]}"
    workdir = tmp_path / "work"
    cmd = [
        sys.executable,
        "-m",
        "quicktune.cli",
        "search",
        "--data",
        str(tiny_image_folder),
        "--budget",
        "10m",
        "--workers",
        "2",
        "--max-epochs",
        "2",
        "--image-size",
        "32",
        "--budget-epochs",
        "5",
        "--search-id",
        search_id,
        "--experiment",
        experiment,
        "--tracking-uri",
        server_env.tracking_uri,
        "--workdir",
        str(workdir),
        "--no-progress",
    ]
    tracker = SearchTracker(server_env.tracking_uri, experiment=experiment)

    def recorded() -> dict[str, list[int]]:
        parent = tracker.find_search(search_id)
        return epochs_by_config(tracker.client, parent.info.run_id) if parent else {}

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.monotonic() + 300
    try:
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no epoch recorded with a step running in time"
            before = recorded()
            if sum(map(len, before.values())) >= 1 and _running_steps(workdir):
                break
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    parent = tracker.find_search(search_id)
    assert tracker.client.get_run(parent.info.run_id).data.tags.get("quicktune.meta_artifact") == "shipped"
    spec_json = json.loads(tracker.read_text(parent.info.run_id, "spec.json"))
    assert spec_json["space"] == "builtin:cpu" and spec_json["meta_artifact"] is None

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=dict(os.environ))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = tracker.client
    after = assert_exact_epochs(client, parent.info.run_id)
    for cid, steps in before.items():  # nothing recorded before the kill was lost (an empty run may go)
        assert after.get(cid, [])[: len(steps)] == steps, f"config {cid} lost epochs"
    assert sum(map(len, after.values())) == 5
    seqs = sorted(
        int(m.value)
        for r in child_runs(client, parent.info.run_id)
        for m in client.get_metric_history(r.info.run_id, "tell_seq")
    )
    seqs += [
        int(r.data.tags["quicktune.failed_seq"])
        for r in child_runs(client, parent.info.run_id)
        if r.data.tags.get("quicktune.failed_seq")
    ]
    assert sorted(seqs) == list(range(1, len(seqs) + 1))  # no gap, no repeat
    trained = trained_epochs(workdir)
    assert len(trained) == len(set(trained)), sorted(trained)  # no epoch trained twice
    runs = [client.get_run(parent.info.run_id), *child_runs(client, parent.info.run_id)]
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    assert runs[0].data.tags["quicktune.status"] == "succeeded" and runs[0].data.tags["quicktune.resumes"] == "1"


# --- failures -----------------------------------------------------------------------------------
@pytest.mark.servers
def test_diverging_config_is_recorded_and_never_proposed_again(server_env, tiny_image_folder, tmp_path):
    spec = make_spec(tiny_image_folder, tmp_path, space=DIVERGE_SPACE, max_epochs=2, budget_epochs=3)
    tracker = SearchTracker(server_env.tracking_uri, experiment=f"div-{uuid.uuid4().hex[:6]}")
    result = run_search(spec, LocalBackend(spec.workdir, max_workers=2), tracker, progress=False)
    assert result.status == "succeeded", result.message
    runs = {
        json.loads(r.data.tags["quicktune.config"])["lr"]: r for r in child_runs(tracker.client, result.parent_run_id)
    }
    bad, good = runs[100000.0], runs[0.001]
    assert bad.data.tags["quicktune.status"] == "diverged" and bad.info.status == "FAILED"
    assert bad.data.tags["quicktune.failed_epoch"] == "1" and "nan" in bad.data.tags["quicktune.message"].lower()
    assert "score" not in bad.data.metrics
    assert {a.path for a in tracker.client.list_artifacts(bad.info.run_id, "logs")} == {"logs/epoch-1.log"}
    assert [m.step for m in tracker.client.get_metric_history(good.info.run_id, "score")] == [1, 2]
    bad_id = bad.data.tags["quicktune.config_id"]
    assert [e for c, e in trained_epochs(Path(spec.workdir)) if c == bad_id] == []
    started = [json.loads(p.read_text()) for p in Path(spec.workdir).glob("steps/*/request.json")]
    assert [r["to_epoch"] for r in started if r["config_id"] == bad_id] == [1]  # never proposed again
    assert result.summary["failed_configs"] == {"diverged": 1}


def test_bad_dataset_fails_before_anything_is_created(tmp_path):
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'm.db'}", experiment="bad")
    spec = SearchSpec(data_uri=str(tmp_path / "nope"), budget_seconds=10, workdir=str(tmp_path / "w"))
    with pytest.raises(SearchError, match="cannot open dataset .*nope"):
        run_search(spec, LocalBackend(tmp_path / "w"), tracker, progress=False)
    assert tracker.find_search(spec.search_id) is None


def test_a_truncated_image_fails_the_search_at_start_naming_the_file(tmp_path, tiny_image_folder):
    """A corrupt image is found by one full decode before anything is created, not after many steps."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_image_folder, data)
    victim = sorted((data / sorted(p.name for p in data.iterdir() if p.is_dir())[0]).glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 2])
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'm.db'}", experiment="bad")
    spec = SearchSpec(data_uri=str(data), budget_seconds=10, workdir=str(tmp_path / "w"))
    with pytest.raises(SearchError, match=f"(?s)cannot open dataset .*{victim.name}"):
        run_search(spec, LocalBackend(tmp_path / "w"), tracker, progress=False)
    assert tracker.find_search(spec.search_id) is None


# --- S3 outage ----------------------------------------------------------------------------------
class _Retries(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def own_s3(tmp_path, monkeypatch):
    """A SeaweedFS of this test's own (the shared one must not go down), restartable on its ports."""
    from quicktune.testing import SeaweedS3

    s3 = SeaweedS3(tmp_path / "s3", "own-key", "own-secret-" + uuid.uuid4().hex[:8])
    s3.start()
    s3.create_bucket("art")
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    yield s3
    s3.stop()


def _restart_on_same_ports(s3, monkeypatch) -> None:
    import quicktune.testing.servers as servers

    ports = list(s3.ports.values())  # in the order free_port_pair handed them out
    with monkeypatch.context() as m:
        m.setattr(servers, "free_port_pair", lambda *a, **k: ports)
        s3.start()


@pytest.mark.servers
def test_s3_outage_mid_search_is_ridden_out(own_s3, tiny_image_folder, tmp_path, monkeypatch):
    """Checkpoints and MLflow artifacts on S3; S3 stops during the search and comes back: steps that
    failed on it are retried, artifact writes back off, and the search finishes with every epoch."""
    one = tmp_path / "one.yaml"
    one.write_text(
        "name: one\nparams:\n  model: {type: categorical, choices: [test_vit]}\n"
        "  lr: {type: categorical, choices: [0.001]}\n  batch_size: {type: categorical, choices: [16]}\n"
    )
    spec = make_spec(
        tiny_image_folder,
        tmp_path,
        workers=1,
        budget_epochs=2,
        checkpoint_uri="s3://art/ckpt",
        space=str(one),
        max_epochs=2,
        step_retry_delay=2.0,
        step_retries=4,
    )
    tracker = SearchTracker(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        experiment="outage",
        artifact_location="s3://art/mlflow",
        retry=RetryPolicy(base=0.5, max_delay=4, total=120),
    )
    handler = _Retries()
    logging.getLogger("quicktune").addHandler(handler)
    box: dict = {}
    thread = threading.Thread(
        target=lambda: box.update(r=run_search(spec, LocalBackend(spec.workdir), tracker, progress=False))
    )
    try:
        thread.start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            parent = tracker.find_search(spec.search_id)
            if parent and sum(map(len, epochs_by_config(tracker.client, parent.info.run_id).values())) >= 1:
                break
            time.sleep(0.5)
        own_s3.stop()  # S3 is down: the running step cannot save its checkpoint, artifacts cannot be written
        down_until = time.monotonic() + 90
        while time.monotonic() < down_until and not any("retry" in m for m in handler.messages):
            time.sleep(0.5)
        assert any("retry" in m for m in handler.messages), "the outage went unnoticed"
        _restart_on_same_ports(own_s3, monkeypatch)
        thread.join(300)
    finally:
        logging.getLogger("quicktune").removeHandler(handler)
    result = box["r"]
    assert result.status == "succeeded", result.message
    assert assert_exact_epochs(tracker.client, result.parent_run_id) == {result.best_config_id: [1, 2]}
    assert tracker.read_text(result.parent_run_id, "summary.json")


def test_tracking_store_down_is_reported_clearly(tmp_path, tiny_image_folder, monkeypatch):
    """MLflow artifacts on an S3 endpoint nobody answers: after the retries, a clear error."""
    from quicktune.testing.servers import free_port_pair

    port = free_port_pair(1, offset=0)[0]
    for k, v in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(k, v)
    tracker = SearchTracker(
        f"sqlite:///{tmp_path / 'm.db'}",
        experiment="down",
        artifact_location="s3://gone/x",
        retry=RetryPolicy(base=0.2, max_delay=1, total=3),
    )
    spec = make_spec(tiny_image_folder, tmp_path, budget_seconds=30)
    t0 = time.monotonic()
    with pytest.raises(InfrastructureError, match=r"unreachable: log spec kept failing .*127\.0\.0\.1"):
        run_search(spec, LocalBackend(spec.workdir), tracker, progress=False)
    assert time.monotonic() - t0 < 60


# --- meta-artifact by URI -------------------------------------------------------------------------
@pytest.mark.servers
def test_meta_artifact_from_s3_is_used_and_recorded(server_env, tiny_image_folder, tmp_path):
    """``meta_artifact=s3://...`` (``quicktune search --meta-artifact``): the artifact is fetched,
    the optimizer starts from it, and the search records which one (URI + training-table hash);
    a missing one or a non-meta optimizer is refused before anything is created."""
    from quicktune import storage
    from quicktune.bench.synthetic import make_synthetic_table
    from quicktune.optimizer.metatrain import meta_train

    art = meta_train(
        make_synthetic_table(n_datasets=2, n_configs=12, max_epochs=3, seed=0), epochs=1, steps_per_epoch=3, seed=0
    )
    art.save(tmp_path / "art")
    server_env.s3.create_bucket("qt-arts")
    uri = f"s3://qt-arts/{uuid.uuid4().hex[:6]}/art"
    for f in (tmp_path / "art").iterdir():
        storage.upload_file(f, f"{uri}/{f.name}")
    tracker = SearchTracker(server_env.tracking_uri, experiment=f"meta-art-{uuid.uuid4().hex[:6]}")

    for bad, match in (
        ({"meta_artifact": uri + "-missing"}, "cannot fetch the meta-artifact"),
        ({"meta_artifact": uri, "optimizer": "random"}, "meta-learned optimizers"),
    ):
        spec = make_spec(tiny_image_folder, tmp_path, workers=1, budget_epochs=1, **bad)
        with pytest.raises(SearchError, match=match):
            run_search(spec, LocalBackend(spec.workdir), tracker, progress=False)
        assert tracker.find_search(spec.search_id) is None

    spec = make_spec(tiny_image_folder, tmp_path, workers=1, budget_epochs=2, meta_artifact=uri)
    backend = LocalBackend(spec.workdir)
    try:
        result = run_search(spec, backend, tracker, progress=False)
    finally:
        backend.close()
    assert result.status == "succeeded", result.message
    tags = tracker.client.get_run(result.parent_run_id).data.tags
    assert tags["quicktune.meta_artifact"] == uri
    assert tags["quicktune.meta_artifact_table_hash"] == art.table_hash
    fetched = list((Path(spec.workdir) / "meta-artifacts").glob("*/artifact.json"))
    assert len(fetched) == 1 and json.loads(fetched[0].read_text())["table_hash"] == art.table_hash
