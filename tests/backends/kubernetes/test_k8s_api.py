"""quicktune.backends.kubernetes.api: typed errors and retries, and the backend's step records.

Fast unit tests (no cluster, no network): answers are scripted as the ``kubernetes`` client
raises them (``ApiException`` with a Status body, urllib3 errors); the backend's bookkeeping is
driven through its informer interface (``replace``/``upsert``/``delete``) with a stub API.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, strategies as st
from kubernetes.client.rest import ApiException
from urllib3.exceptions import ProtocolError

from quicktune.backends.base import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, BackendError, StepRequest
from quicktune.backends.kubernetes import (
    ApiUnavailable,
    Conflict,
    Gone,
    KubernetesApi,
    KubernetesApiError,
    KubernetesBackend,
    NotFound,
    StepJobSettings,
)
from quicktune.backends.kubernetes.api import TRANSIENT_STATUSES, error_for


def _api(attempts: int = 4) -> tuple[KubernetesApi, list[float]]:
    from kubernetes import client

    slept: list[float] = []
    return KubernetesApi(client.ApiClient(), "ns", attempts=attempts, sleep=slept.append), slept


def _exc(status: int, message: str = "boom", reason: str = "Reason") -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return exc


class _Resp:
    def __init__(self, body: Any) -> None:
        self.data = json.dumps(body).encode()


def _script(*answers: Any):
    """A client call that raises or returns the given answers in turn; ``calls`` counts them."""
    answers_left = list(answers)

    def fn():
        fn.calls += 1
        answer = answers_left.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return _Resp(answer)

    fn.calls = 0
    return fn


@pytest.mark.parametrize(
    "status,kind", [(404, NotFound), (409, Conflict), (410, Gone), (422, KubernetesApiError), (403, KubernetesApiError)]
)
def test_final_answers_raise_their_type_at_once(status, kind):
    api, slept = _api()
    fn = _script(_exc(status, 'jobs.batch "x" says no'))
    with pytest.raises(KubernetesApiError) as err:
        api.call(fn, "read Job x")
    assert type(err.value) is kind and err.value.status == status and isinstance(err.value, BackendError)
    assert fn.calls == 1 and slept == [], "a final answer is not retried"
    expected = f'Kubernetes API: cannot read Job x in namespace ns: {status} Reason: jobs.batch "x" says no'
    assert str(err.value) == expected


def test_transient_answers_are_retried_then_unavailable():
    api, slept = _api(attempts=3)
    fn = _script(_exc(503), _exc(429), {"items": [], "metadata": {"resourceVersion": "7"}})
    assert api.call(fn, "list step Jobs") == {"items": [], "metadata": {"resourceVersion": "7"}}
    assert fn.calls == 3 and slept == [0.5, 1.0]
    api, slept = _api(attempts=3)
    with pytest.raises(ApiUnavailable, match="503"):
        api.call(_script(_exc(503), _exc(500), _exc(503)), "list step Jobs")
    with pytest.raises(ApiUnavailable, match="unreachable: cannot create Job y"):
        api.call(_script(ProtocolError("reset"), OSError("refused"), ConnectionResetError()), "create Job y")


@given(st.integers(100, 599))
def test_every_status_maps_to_exactly_one_type(status):
    err = error_for(status, "R", "m", "do it", "ns")
    expected = {404: NotFound, 409: Conflict, 410: Gone}.get(
        status, ApiUnavailable if status in TRANSIENT_STATUSES else KubernetesApiError
    )
    assert type(err) is expected and err.status == status and err.what == "do it"


def test_read_job_or_none_and_raw_bodies(monkeypatch):
    api, _ = _api()
    monkeypatch.setattr(api.batch, "read_namespaced_job", lambda *a, **k: (_ for _ in ()).throw(_exc(404)))
    assert api.read_job_or_none("gone") is None
    monkeypatch.setattr(api.batch, "read_namespaced_job", lambda *a, **k: (_ for _ in ()).throw(_exc(403)))
    with pytest.raises(KubernetesApiError):
        api.read_job_or_none("forbidden")
    monkeypatch.setattr(api.core, "read_namespaced_pod_log", lambda *a, **k: type("R", (), {"data": b"line\n"})())
    assert api.read_pod_log("p", "step", 10) == b"line\n"


# --------------------------------------------------------------------------------------------
# the backend's one record per step, driven through its informer interface
# --------------------------------------------------------------------------------------------
class _StubApi:
    """Jobs in a dict; create answers 409 for a name that exists, as the API server does."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []

    def read_job_or_none(self, name: str) -> dict[str, Any] | None:
        return self.jobs.get(name)

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise Conflict("exists", status=409)
        job = json.loads(json.dumps(body))
        job["metadata"].update(uid=f"uid-{name}-{len(self.created)}", resourceVersion=str(len(self.created) + 1))
        job["status"] = {}
        self.jobs[name] = job
        self.created.append(name)
        return job

    def delete_job(self, name: str, propagation: str = "Foreground") -> None:
        if name not in self.jobs:
            raise NotFound("no such Job", status=404)
        self.deleted.append(name)
        self.jobs[name]["metadata"]["deletionTimestamp"] = "now"

    def list_jobs(self, selector: str) -> tuple[list[dict[str, Any]], str]:
        return list(self.jobs.values()), "1"

    def list_pods(self, selector: str, what: str = "") -> list[dict[str, Any]]:
        return []


def _backend(max_concurrent: int = 2, results: dict[str, bytes] | None = None) -> tuple[KubernetesBackend, _StubApi]:
    from kubernetes import client

    results = {} if results is None else results
    backend = KubernetesBackend.from_settings(
        StepJobSettings(namespace="ns", image="img"),
        "s-1",
        max_concurrent=max_concurrent,
        api_client=client.ApiClient(),
        read_result=lambda uri: results[uri],
        result_exists=lambda uri: uri in results,
    )
    stub = _StubApi()
    backend._api = stub  # type: ignore[assignment]
    backend._informer.start = lambda: None  # type: ignore[method-assign]  # events come from the test
    backend._informer.synced.set()
    return backend, stub


def _req(config_id: str, to_epoch: int = 1) -> StepRequest:
    return StepRequest("s-1", config_id, {"model": "m"}, "s3://d/x", to_epoch, f"s3://c/{config_id}")


def _with_status(job: dict[str, Any], rv: int, **status: Any) -> dict[str, Any]:
    job = json.loads(json.dumps(job))
    job["metadata"]["resourceVersion"] = str(rv)
    job["status"] = status
    return job


def test_queue_is_fifo_within_max_concurrent_and_409_adopts():
    backend, stub = _backend(max_concurrent=1)
    a, b, c = (backend.start(_req(x)) for x in ("aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"))
    assert stub.created == [a] and backend.poll(b).state == PENDING and "queued" in backend.poll(c).message
    backend.upsert(
        _with_status(
            stub.jobs[a], 10, conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
        )
    )
    assert backend.poll(a).state == FAILED and stub.created == [a, b], "the next queued step, in order"
    stub.jobs[c] = {"metadata": {"name": c, "uid": "other", "resourceVersion": "3"}, "status": {"active": 1}}
    backend.upsert(_with_status(stub.jobs[b], 11, conditions=[{"type": "Failed", "status": "True"}]))
    assert backend.poll(c).state == RUNNING and stub.created == [a, b], "409: adopted, not created twice"
    assert sorted(backend.active()) == [c]


def test_ttl_deletion_after_success_keeps_the_result_and_early_deletion_fails():
    uri_ok = "s3://c/aaaaaaaaaaaa/results/{}.json"
    backend, stub = _backend()
    ok, lost = backend.start(_req("aaaaaaaaaaaa")), backend.start(_req("bbbbbbbbbbbb"))
    results = {uri_ok.format(ok): json.dumps({"status": "ok", "epochs": [{"epoch": 1}]}).encode()}
    backend._read_result = lambda uri: results[uri]  # type: ignore[method-assign]
    done = _with_status(stub.jobs[ok], 20, conditions=[{"type": "Complete", "status": "True"}])
    backend.upsert(done)
    backend.delete(done)  # TTL
    del stub.jobs[ok]
    assert backend.poll(ok).state == SUCCEEDED and backend.result(ok)["epochs"] == [{"epoch": 1}]
    running = _with_status(stub.jobs[lost], 21, active=1)
    backend.upsert(running)
    del stub.jobs[lost]
    backend.replace([])  # a re-list without it: it vanished before finishing
    status = backend.poll(lost)
    assert status.state == FAILED and "deleted before it finished" in status.message


def test_a_late_delete_of_an_older_job_does_not_drop_the_new_one():
    backend, stub = _backend()
    sid = backend.start(_req("aaaaaaaaaaaa"))
    old = _with_status(stub.jobs[sid], 5, active=1)
    old["metadata"]["uid"] = "older"
    backend.upsert(_with_status(stub.jobs[sid], 30, active=1))
    backend.delete(old)
    assert backend.poll(sid).state == RUNNING


def test_cancel_is_idempotent_and_a_queued_cancel_never_creates():
    backend, stub = _backend(max_concurrent=1)
    a, b = backend.start(_req("aaaaaaaaaaaa")), backend.start(_req("bbbbbbbbbbbb"))
    backend.cancel(b)
    backend.cancel(b)
    backend.cancel(a)
    backend.cancel(a)
    assert backend.poll(a).state == CANCELLED and backend.poll(b).state == CANCELLED
    assert stub.created == [a] and stub.deleted == [a, a] and backend.active() == []


def test_unknown_step_is_a_key_error():
    backend, _ = _backend()
    with pytest.raises(KeyError):
        backend.poll("qt-never-started")


def test_own_image_reads_the_pod_and_says_what_to_set(monkeypatch):
    from kubernetes import client

    from quicktune.backends.kubernetes import own_image

    answers: list[Any] = [
        _Resp({"spec": {"containers": [{"image": "ghcr.io/x/qt:1"}]}}),
        _exc(404),
        _Resp({"spec": {}}),
    ]

    def read(self, name, namespace, **kw):
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    monkeypatch.setattr(client.CoreV1Api, "read_namespaced_pod", read)
    assert own_image(client.ApiClient(), "ns", None) is None
    assert own_image(client.ApiClient(), "ns", "ctl") == "ghcr.io/x/qt:1"
    for _ in range(2):  # not found, then a pod without containers: both say what to set
        with pytest.raises(BackendError, match="ns/ctl.*set QUICKTUNE_STEP_IMAGE"):
            own_image(client.ApiClient(), "ns", "ctl")
