"""quicktune.testing.servers: real SeaweedFS S3 and MLflow servers.

Cost: ~2 s for S3 (shared session server) + ~20-45 s for the MLflow server start (shared with
every other test that uses ``mlflow_server``).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

import pytest
from botocore.exceptions import ClientError

from quicktune.testing import MlflowServer, SeaweedS3, ServerError, servers


def test_s3_requires_the_configured_credentials(s3_server):
    s3_server.create_bucket("auth-check")
    s3_server.create_bucket("auth-check")  # idempotent
    client = s3_server.client()
    etag = client.put_object(Bucket="auth-check", Key="a.txt", Body=b"abc")["ETag"]
    assert etag.strip('"') == "900150983cd24fb0d6963f7d28e17f72"  # MD5 of b"abc"
    with pytest.raises(ClientError) as err:
        s3_server.client(secret_key="not-the-secret", max_attempts=1).get_object(Bucket="auth-check", Key="a.txt")
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as err:
        s3_server.client(access_key="unknown-key", max_attempts=1).list_objects_v2(Bucket="auth-check")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_s3_multipart_upload_roundtrip(s3_server, tmp_path):
    s3_server.create_bucket("big")
    data = os.urandom(12 * 1024 * 1024)
    (tmp_path / "blob").write_bytes(data)
    client = s3_server.client()
    from boto3.s3.transfer import TransferConfig

    client.upload_file(
        str(tmp_path / "blob"), "big", "blob", Config=TransferConfig(multipart_threshold=5 * 1024 * 1024)
    )
    head = client.head_object(Bucket="big", Key="blob")
    assert head["ContentLength"] == len(data) and "-" in head["ETag"]  # a multipart ETag
    assert client.get_object(Bucket="big", Key="blob")["Body"].read() == data


def test_s3_capacity_does_not_depend_on_free_disk(s3_server):
    """Every bucket is a SeaweedFS collection that grows its own volumes on the first write; with
    the volume count derived from free disk (the default) a CI run on a machine with ~12 GiB free
    got "No writable volumes" (HTTP 500) on its third bucket. The test server sets the capacity."""
    client = s3_server.client(max_attempts=1)
    for i in range(16):  # more collections than a 12 GiB disk's auto-configured 12 volume slots
        bucket = f"cap-{i}"
        s3_server.create_bucket(bucket)
        client.put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)
        assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x" * 1000


@pytest.mark.slow
def test_a_server_whose_volumes_are_read_only_fails_to_start_and_says_why(tmp_path, monkeypatch):
    """Below ``min_free_space`` of free disk SeaweedFS turns every volume read-only: it still answers
    ``ListBuckets`` but fails each write with HTTP 500 (a CI run on a nearly full disk failed every
    later S3 test that way, under ``weed mini``'s fixed 1 %). Asking for 99 % free, more than this
    disk has, recreates that state: the start must fail at once (no retries on other ports) with
    the disk named, instead of handing out a server that cannot store anything."""
    usage = shutil.disk_usage(tmp_path)
    if usage.free / usage.total >= 0.99:
        pytest.skip("this disk is over 99 % free: it cannot be made too full for SeaweedFS this way")
    attempts = []
    start_once = SeaweedS3._start_once
    monkeypatch.setattr(SeaweedS3, "_start_once", lambda self: (attempts.append(1), start_once(self)))
    server = SeaweedS3(tmp_path / "ro", "k", "s", start_timeout=15, min_free_space="99")
    with pytest.raises(
        ServerError,
        match=r"(?s)answered but could not store an object.*GiB free on the disk of "
        r".*min_free_space=99\)",
    ) as err:
        server.start()
    assert not err.value.exited_at_once and len(attempts) == 1  # other ports would not help
    assert not server._process.alive()


def _socks() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "seaweedfs-*.sock")))


def test_a_second_server_stops_cleanly_and_leaves_the_first_alone(s3_server, tmp_path):
    first = _socks()
    with SeaweedS3(tmp_path / "s3b", "k2", "secret-two") as s3:
        s3.create_bucket("xyz")
        proc = s3._process.proc
        assert s3.client().list_buckets()["Buckets"][0]["Name"] == "xyz"
        assert (tmp_path / "s3b" / "seaweedfs.log").exists()
        own = {p for p in _socks() - first if any(str(port) in p for port in s3.ports.values())}
        assert own  # it made socket files named after its ports
    assert proc.poll() is not None  # stopped
    assert not own & _socks()  # its socket files were removed
    assert {p for p in first if str(s3_server.ports["master"] + 10000) in p} <= _socks()  # not the session server's
    s3_server.create_bucket("still-works")
    s3_server.client().put_object(Bucket="still-works", Key="k", Body=b"v")


def test_a_server_that_cannot_start_reports_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(servers, "_executable", lambda name: "/bin/ls")  # exits at once: "no such option"
    with pytest.raises(
        ServerError, match="(?s)seaweedfs did not start \\(exited with code 2\\); log .*seaweedfs.log:\n.*"
    ):
        SeaweedS3(tmp_path / "bad", "k", "s").start()
    with pytest.raises(ServerError, match="(?s)mlflow did not start .*mlflow.log"):
        MlflowServer(tmp_path / "badm").start()


def test_mlflow_server_tracks_runs_with_artifacts_in_s3(mlflow_server, s3_server, tmp_path, monkeypatch):
    import mlflow

    for k, v in mlflow_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # fail in seconds, not minutes of backoff
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    exp = client.create_experiment(f"servers-{os.urandom(3).hex()}")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "score", 0.5, step=1)
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    assert client.get_metric_history(run.info.run_id, "score")[0].value == 0.5
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys), keys
    assert (mlflow_server.workdir / "mlflow.log").exists()
