"""Fast checks of the search's small parts: durations, retries, secret redaction, spec validation,
the backend factory and the search CLI's errors. Cost: ~5 s (plus one CLI process)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from quicktune.cli.search_cmd import parse_duration
from quicktune.search import SearchError, SearchSpec
from quicktune.tracking import (InfrastructureError, RetryPolicy, flatten, is_tag_write_race, is_transient, redact,
                                secret_values)


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("20m", 1200), ("4h", 14400), ("1h30m", 5400), ("45", 45),
                                          ("2m30s", 150), ("0.5h", 1800), (" 10 m ", 600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "m", "-5s", "0s", "1d"])
def test_bad_durations_are_refused_with_examples(text):
    with pytest.raises(argparse.ArgumentTypeError, match="duration|longer than 0"):
        parse_duration(text)


def test_search_cli_bad_budget_is_a_clear_error():
    out = subprocess.run([sys.executable, "-m", "quicktune.cli", "search", "--data", "x", "--budget", "ten minutes"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "'ten minutes' is not a duration (examples: 90s, 20m, 4h" in out.stderr


def test_redaction_masks_secret_env_values_and_uri_passwords(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-pw")
    monkeypatch.setenv("HARMLESS", "s3cr3t-value-not-a-secret-name")
    assert "s3cr3t-value" in secret_values() and "hunter2-pw" in secret_values()
    text = redact("key=s3cr3t-value pw=hunter2-pw uri=https://bob:pa55@host/x")
    assert "s3cr3t-value" not in text and "hunter2-pw" not in text and "pa55" not in text
    assert "https://bob:***@host/x" in text


def test_transient_errors_are_told_from_bad_requests():
    from mlflow.exceptions import MlflowException

    assert is_transient(ConnectionError("refused"))
    assert is_transient(MlflowException("API request failed: Max retries exceeded with url"))
    assert not is_transient(MlflowException.invalid_parameter_value("bad"))
    assert not is_transient(ValueError("a bug"))


def _upload_failing_with(tmp_path, code: str, status: int) -> BaseException:
    """What boto3's ``upload_file`` (MLflow's S3 artifact store) raises when S3 answers ``code``."""
    import boto3
    from botocore.stub import Stubber

    client = boto3.session.Session().client("s3", region_name="us-east-1", aws_access_key_id="k",
                                            aws_secret_access_key="s")
    (tmp_path / "f.json").write_text("{}")
    with Stubber(client) as stub:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
        with pytest.raises(Exception) as err:
            client.upload_file(str(tmp_path / "f.json"), "bkt", "f.json")
    return err.value


def test_an_s3_upload_answered_with_500_is_transient_even_wrapped(tmp_path):
    """An S3 gateway whose backend is going down answers PutObject with 500 InternalError (seen with
    SeaweedFS while it stops: filer gone, gateway still up). boto3 reports that as
    ``S3UploadFailedError`` raised while handling the ``ClientError``; a search once died on it
    instead of retrying. The error's own status decides, wherever it sits in the chain."""
    from boto3.exceptions import S3UploadFailedError

    internal = _upload_failing_with(tmp_path, "InternalError", 500)
    assert isinstance(internal, S3UploadFailedError) and internal.__cause__ is None  # only in __context__
    assert is_transient(internal)
    assert not is_transient(_upload_failing_with(tmp_path, "AccessDenied", 403))
    assert not is_transient(_upload_failing_with(tmp_path, "NoSuchBucket", 404))
    try:  # an error of our own raised while handling a network error is not a network error
        try:
            raise ConnectionError("refused")
        except ConnectionError:
            raise ValueError("the answer made no sense")
    except ValueError as exc:
        assert not is_transient(exc)


def test_tag_write_races_are_told_from_other_bad_requests():
    from mlflow.exceptions import RestException

    def rest(message: str) -> RestException:
        return RestException({"error_code": "BAD_REQUEST", "message": message})

    # the text the MLflow server (sqlite store) answered in a CI run where two watchers raced
    assert is_tag_write_race(rest("(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_tags"
                                  ".workspace, registered_model_tags.key, registered_model_tags.name"))
    assert is_tag_write_race(rest("(pymysql.err.IntegrityError) (1062, \"Duplicate entry 'x' for key 'PRIMARY'\")"))
    assert not is_tag_write_race(rest("Registered Model with name=x not found"))
    assert not is_tag_write_race(ConnectionError("refused"))


def test_promotions_alias_write_is_repeated_after_a_lost_first_write_race():
    from mlflow.exceptions import RestException

    from quicktune.tracking import SearchTracker

    race = RestException({"error_code": "BAD_REQUEST", "message": "(sqlite3.IntegrityError) UNIQUE constraint "
                                                                  "failed: registered_model_aliases.alias"})
    tracker = SearchTracker("http://127.0.0.1:9", retry=RetryPolicy(total=0.1))  # never contacted
    answers: list[object] = [race, race, "set"]

    def set_alias(name, alias, version):
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return (name, alias, version, a)

    assert tracker._upsert("set alias", set_alias, "m", "champion", "3") == ("m", "champion", "3", "set")
    assert answers == [] and tracker.calls == 3
    with pytest.raises(RestException, match="not found"):
        tracker._upsert("set alias", lambda *a: (_ for _ in ()).throw(
            RestException({"error_code": "BAD_REQUEST", "message": "Model version 3 not found"})), "m", "c", "3")


def test_retry_backs_off_then_succeeds_or_reports():
    sleeps: list[float] = []
    policy = RetryPolicy(base=1, max_delay=4, total=1000, sleep=sleeps.append)
    calls = iter([ConnectionError("a"), ConnectionError("b"), ConnectionError("c"), "ok"])

    def flaky():
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return v

    assert policy.call(flaky, what="flaky") == "ok"
    assert len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2] <= 4 * 1.25
    with pytest.raises(ValueError):
        policy.call(lambda: (_ for _ in ()).throw(ValueError("not transient")))
    quick = RetryPolicy(base=0.01, max_delay=0.02, total=0.1)
    with pytest.raises(InfrastructureError, match=r"S3 unreachable: upload kept failing .*ConnectionError: down"):
        quick.call(lambda: (_ for _ in ()).throw(ConnectionError("down")), what="upload", service="S3")


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
