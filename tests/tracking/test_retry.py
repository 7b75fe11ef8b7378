"""Riding out MLflow and S3 outages: transient errors told from bad requests, write races
repeated, backoff that ends in a clear InfrastructureError."""

from __future__ import annotations

import pytest

from quicktune.tracking import (
    InfrastructureError,
    RetryPolicy,
    is_tag_write_race,
    is_transient,
)


def _upload_failing_with(tmp_path, code: str, status: int) -> BaseException:
    """What boto3's ``upload_file`` (MLflow's S3 artifact store) raises when S3 answers ``code``."""
    import boto3
    from botocore.stub import Stubber

    client = boto3.session.Session().client(
        "s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    (tmp_path / "f.json").write_text("{}")
    with Stubber(client) as stub:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
        with pytest.raises(Exception) as err:
            client.upload_file(str(tmp_path / "f.json"), "bkt", "f.json")
    return err.value


def test_transient_errors_are_told_from_bad_requests():
    from mlflow.exceptions import MlflowException

    assert is_transient(ConnectionError("refused"))
    assert is_transient(MlflowException("API request failed: Max retries exceeded with url"))
    assert not is_transient(MlflowException.invalid_parameter_value("bad"))
    assert not is_transient(ValueError("a bug"))


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
            raise ValueError("the answer made no sense")  # noqa: B904 - the implicit __context__ is the point
    except ValueError as exc:
        assert not is_transient(exc)


def test_tag_write_races_are_told_from_other_bad_requests():
    from mlflow.exceptions import RestException

    def rest(message: str) -> RestException:
        return RestException({"error_code": "BAD_REQUEST", "message": message})

    # the text the MLflow server (sqlite store) answered in a CI run where two watchers raced
    assert is_tag_write_race(
        rest(
            "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_tags"
            ".workspace, registered_model_tags.key, registered_model_tags.name"
        )
    )
    assert is_tag_write_race(rest("(pymysql.err.IntegrityError) (1062, \"Duplicate entry 'x' for key 'PRIMARY'\")"))
    assert not is_tag_write_race(rest("Registered Model with name=x not found"))
    assert not is_tag_write_race(ConnectionError("refused"))


def test_promotions_alias_write_is_repeated_after_a_lost_first_write_race():
    from mlflow.exceptions import RestException

    from quicktune.tracking import SearchTracker

    race = RestException(
        {
            "error_code": "BAD_REQUEST",
            "message": "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_aliases.alias",
        }
    )
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
        tracker._upsert(
            "set alias",
            lambda *a: (_ for _ in ()).throw(
                RestException({"error_code": "BAD_REQUEST", "message": "Model version 3 not found"})
            ),
            "m",
            "c",
            "3",
        )


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
