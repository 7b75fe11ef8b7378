"""KubernetesBackend: fake-cluster tests (not end-to-end cluster tests).

The backend talks HTTP through the official ``kubernetes`` client to ``quicktune.testing.fake_k8s``,
a fake API server that validates every object strictly against the Kubernetes 1.30 schema (and
the newest one kubernetes-validate knows), plays the Job controller and runs each pod's command as
a local process: the steps are real ``quicktune step`` runs that read the dataset from the real
SeaweedFS fixture and write checkpoints and RESULT.json there, with credentials delivered only
through a Secret stored in the fake.

Cost, measured on 2 cores shared with other work (load average ~15, where each real step pays
~20-25 s of Python/torch/timm start-up): ~430 s for the whole module, of which ~170 s is the full search
(marked slow) and ~65 s the S3 + MLflow fixtures (not measured on an idle machine); the search on the
shipped defaults (builtin:cpu, shipped surrogate) with a controller kill adds ~2-3 min (slow).
The namespace is labelled Pod Security "restricted", so the fake API server checks every step pod.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import kubernetes_validate
import pytest

from quicktune.backends.base import FAILED, PENDING, RUNNING, SUCCEEDED, StepRequest
from quicktune.backends.kubernetes import (
    FAIL_FAST_EXIT_CODES,
    STEP_SCRIPT,
    KubernetesBackend,
    build_job,
    escape_kubelet_refs,
    looks_secret,
    sanitize_label_value,
)
from quicktune.backends.kubernetes.warm_backend import WarmKubernetesBackend
from quicktune.backends.testing import BackendConformance, RealStepRequests, wait_done, wait_state
from quicktune.testing.fake_k8s import FakeCluster

pytestmark = pytest.mark.fake_cluster

NAMESPACE = "default"
IMAGE = "registry.example.com/quicktune:test"
TESTS = Path(__file__).resolve().parents[2]
SCHEMAS = ("1.30", kubernetes_validate.latest_version())
S3_SECRET = "quicktune-s3"


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_digits(s3_server, tiny_image_folder) -> str:
    """The tiny digits folder mirrored to S3 (step pods share no filesystem with the controller)."""
    bucket = "qt-k8s-" + uuid.uuid4().hex[:6]
    s3_server.create_bucket(bucket)
    client = s3_server.client(max_attempts=8)
    for path in sorted(p for p in tiny_image_folder.rglob("*") if p.is_file()):
        key = "digits/" + path.relative_to(tiny_image_folder).as_posix()
        for attempt in range(6):  # a freshly started SeaweedFS on a loaded machine answers 500 while it grows volumes
            try:
                client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
                break
            except Exception:  # noqa: BLE001
                if attempt == 5:
                    raise
                time.sleep(2 * (attempt + 1))
    return f"s3://{bucket}/digits"


@pytest.fixture
def fake_cluster(tmp_path, s3_server):
    """A fresh fake cluster per test, with the S3 credentials stored as a Secret."""
    with FakeCluster(
        tmp_path / "cluster",
        versions=SCHEMAS,
        node_env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "AWS_EC2_METADATA_DISABLED": "true"},
    ) as fake:
        # as k8s/base/namespace.yaml: Pod Security Admission "restricted" checks every step pod
        fake.add_namespace(
            NAMESPACE,
            {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"},
        )
        fake.add_secret(
            S3_SECRET, {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
        )
        yield fake
    assert fake.admission_denials == [] and fake.warnings == [], (fake.admission_denials, fake.warnings)
    assert fake.rejected == [], f"the fake API server rejected objects: {fake.rejected}"
    assert fake.unsupported_requests == [], (
        f"the backend used endpoints the fake does not model: {fake.unsupported_requests}"
    )


@pytest.fixture
def backend_factory(fake_cluster, s3_env):
    """Builds backends over the same fake cluster (a new one = a restarted controller); closes them."""
    made: list[KubernetesBackend] = []

    def make(search_id: str | None = None, **kw) -> KubernetesBackend:
        kw.setdefault("max_concurrent", 2)
        kw.setdefault("backoff_limit", 1)
        kw.setdefault("memory", "2Gi")
        cls = KubernetesBackend
        if kw.get("warm_workers"):  # warm worker pods reach the fake API server through a kubeconfig
            cls = WarmKubernetesBackend
            if "KUBECONFIG" not in fake_cluster.node_env:
                kubeconfig = _kubeconfig(fake_cluster.workdir / "kubeconfig", fake_cluster.url)
                fake_cluster.node_env["KUBECONFIG"] = str(kubeconfig)
        b = cls(
            NAMESPACE,
            IMAGE,
            search_id,
            api_client=fake_cluster.api_client(),
            secret_names=[S3_SECRET],
            env={"AWS_ENDPOINT_URL": s3_env.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2"},
            watch_timeout_seconds=5,
            **kw,
        )
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def requests_factory(s3_digits):
    return RealStepRequests(
        data_uri=s3_digits, checkpoint_root=f"s3://{s3_digits[5:].split('/')[0]}/ckpt-" + uuid.uuid4().hex[:6]
    )


# --------------------------------------------------------------------------------------------
# the backend conformance suite, through the fake cluster
# --------------------------------------------------------------------------------------------
class TestKubernetesBackendConformance(BackendConformance):
    """Both modes: one Job per step (the default) and warm worker pods (``warm_workers=2``)."""

    # warm mode is slow-marked (test_k8s_warm.py has its fast tests); one Job per step, the default, runs in make test
    @pytest.fixture(params=["jobs", pytest.param("warm", marks=pytest.mark.slow)])
    def make_backend(self, request, backend_factory):
        if request.param == "warm":
            return lambda: backend_factory(None, warm_workers=2, warm_lease_seconds=8, warm_idle_seconds=600)
        return lambda: backend_factory(None)

    @pytest.fixture
    def make_request(self, requests_factory):
        return requests_factory


# --------------------------------------------------------------------------------------------
# the manifest (no cluster needed)
# --------------------------------------------------------------------------------------------
def _request(search_id: str = "s-1", **kw) -> StepRequest:
    base = dict(
        search_id=search_id,
        config_id="0123456789ab",
        config={"model": "test_vit", "lr": 0.01},
        data_uri="s3://data/digits",
        to_epoch=3,
        checkpoint_dir="s3://ckpt/s-1/0123456789ab",
    )
    return StepRequest(**{**base, **kw})


def test_full_job_manifest_is_valid_and_locked_down():
    owner = {"name": "quicktune-controller-abcde", "uid": "8c1d8a6e-0000-4000-8000-000000000001"}
    job = build_job(
        _request(),
        namespace="ml",
        image=IMAGE,
        gpu=1,
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        priority_class="quicktune-steps",
        kueue_queue="team-a",
        secret_names=["s3", "mlflow"],
        secret_env={"MLFLOW_TRACKING_PASSWORD": ("mlflow-auth", "password")},
        env={"AWS_ENDPOINT_URL": "http://minio:9000"},
        service_account="quicktune-step",
        owner=owner,
        active_deadline_seconds=3600,
        backoff_limit=2,
        ttl_seconds_after_finished=600,
    )
    for version in SCHEMAS:
        kubernetes_validate.validate(job, version, strict=True)
    meta, spec = job["metadata"], job["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert meta["name"] == _request().id and len(meta["name"]) <= 63
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "quicktune"
    assert meta["labels"]["quicktune.io/search-id"] == "s-1" and meta["labels"]["quicktune.io/epoch"] == "3"
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and spec["suspend"] is True
    assert meta["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", **owner, "blockOwnerDeletion": False, "controller": False}
    ]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--device=cuda" in c["args"] and "--to-epoch=3" in c["args"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["priorityClassName"] == "quicktune-steps"
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp", "/dev/shm"}
    assert spec["activeDeadlineSeconds"] == 3600 and spec["backoffLimit"] == 2
    assert spec["ttlSecondsAfterFinished"] == 600
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == list(FAIL_FAST_EXIT_CODES)
    # credentials only by reference
    assert c["envFrom"] == [{"secretRef": {"name": "s3"}}, {"secretRef": {"name": "mlflow"}}]
    by_name = {e["name"]: e for e in c["env"]}
    assert by_name["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-auth",
        "key": "password",
    }
    assert not [e for e in c["env"] if looks_secret(e["name"]) and "value" in e]
    assert json.loads(by_name["QUICKTUNE_STEP_CONFIG"]["value"]) == {"model": "test_vit", "lr": 0.01}
    assert meta["annotations"]["quicktune.io/result-uri"] == f"s3://ckpt/s-1/0123456789ab/results/{meta['name']}.json"


def test_inline_credentials_and_local_checkpoints_are_refused():
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY.*Secret"):
        build_job(_request(extra_env={"AWS_SECRET_ACCESS_KEY": "x"}), namespace="ml", image=IMAGE)
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_TOKEN"):
        build_job(_request(), namespace="ml", image=IMAGE, env={"MLFLOW_TRACKING_TOKEN": "x"})
    with pytest.raises(ValueError, match="s3:// checkpoint dir"):
        build_job(_request(checkpoint_dir="/tmp/ckpt"), namespace="ml", image=IMAGE)


def test_step_args_are_the_requests_argv_and_max_epochs_is_an_argument():
    """The Job runs ``StepRequest.argv()`` (the one step command line, shared by every backend);
    ``max_epochs`` travels as ``--max-epochs``, no longer as QUICKTUNE_MAX_EPOCHS in the env."""
    req = _request(max_epochs=7, image_size=48, seed=5)
    (c,) = build_job(req, namespace="ml", image=IMAGE)["spec"]["template"]["spec"]["containers"]
    assert c["args"] == req.argv(out=f"s3://ckpt/s-1/0123456789ab/results/{req.id}.json")
    assert "--max-epochs=7" in c["args"] and "--image-size=48" in c["args"] and "--seed=5" in c["args"]
    assert "QUICKTUNE_MAX_EPOCHS" not in {e["name"] for e in c["env"]}
    # (the spec holds the script $-escaped for the kubelet; the shell gets it as written)
    assert c["command"][-2:] == [escape_kubelet_refs(STEP_SCRIPT), "quicktune-step"] and "--config" in STEP_SCRIPT


def test_label_values_are_sanitized_and_stay_unique():
    long_a = "Team A / experiment " + "x" * 80
    long_b = "Team A / experiment " + "x" * 79 + "y"
    a, b = sanitize_label_value(long_a), sanitize_label_value(long_b)
    assert a != b and len(a) <= 63 and len(b) <= 63
    assert sanitize_label_value("plain-id_1.2") == "plain-id_1.2"
    job = build_job(_request(search_id=long_a), namespace="ml", image=IMAGE)
    for version in SCHEMAS:
        kubernetes_validate.validate(job, version, strict=True)
    from quicktune.testing.fake_k8s import semantic_checks

    semantic_checks(job)  # label syntax and the 63-char Job name limit (the schema does not check them)
    assert job["metadata"]["annotations"]["quicktune.io/search-id"] == long_a


def test_fake_api_server_rejects_invalid_jobs(fake_cluster):
    """The double is strict: an unknown field or a bad label is a 422, as on a real API server."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.BatchV1Api(fake_cluster.api_client())
    job = build_job(_request(), namespace=NAMESPACE, image=IMAGE)
    job["spec"]["template"]["spec"]["containers"][0]["gpu"] = 1  # not a field
    with pytest.raises(ApiException) as err:
        api.create_namespaced_job(NAMESPACE, job)
    assert err.value.status == 422 and "gpu" in json.loads(err.value.body)["message"]
    job = build_job(_request(), namespace=NAMESPACE, image=IMAGE)
    job["metadata"]["labels"]["quicktune.io/search-id"] = "-bad-"
    with pytest.raises(ApiException) as err:
        api.create_namespaced_job(NAMESPACE, job)
    assert err.value.status == 422
    assert fake_cluster.created_jobs == []
    fake_cluster.rejected.clear()  # expected here; the fixture asserts none elsewhere


@pytest.mark.parametrize("mutation", ["privileged", "no seccomp profile", "hostPath"])
def test_pod_security_admission_refuses_a_non_restricted_pod(fake_cluster, mutation):
    """In a namespace labelled restricted the Job is created (with a PodSecurity warning), but the
    Job controller's pod is refused, as on a real cluster: the Job stays without pods."""
    from kubernetes import client

    job = build_job(_request(), namespace=NAMESPACE, image=IMAGE)
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    if mutation == "privileged":
        c["securityContext"]["privileged"] = True
        c["securityContext"]["allowPrivilegeEscalation"] = True
    elif mutation == "no seccomp profile":
        del c["securityContext"]["seccompProfile"], pod["securityContext"]["seccompProfile"]
    else:
        pod["volumes"].append({"name": "host", "hostPath": {"path": "/var/run"}})
    client.BatchV1Api(fake_cluster.api_client()).create_namespaced_job(NAMESPACE, job)
    name = job["metadata"]["name"]
    fake_cluster.wait_for(lambda: fake_cluster.admission_denials, timeout=10, what="a pod refused by PodSecurity")
    time.sleep(0.3)
    assert fake_cluster.created_jobs == [name] and fake_cluster.pods_of(name) == []
    ((where, message),) = set(fake_cluster.admission_denials)
    assert where == f"{NAMESPACE}/{name}" and 'violates PodSecurity "restricted:latest"' in message
    assert fake_cluster.warnings and name in fake_cluster.warnings[0]
    assert (fake_cluster.job(name)["status"].get("active") or 0) == 0
    fake_cluster.admission_denials.clear()  # expected here; the fixture asserts none elsewhere
    fake_cluster.warnings.clear()


# --------------------------------------------------------------------------------------------
# cluster behaviour, with real steps
# --------------------------------------------------------------------------------------------
def test_preempted_pod_is_retried_without_counting_and_watch_survives_410(
    backend_factory, requests_factory, fake_cluster
):
    """A preempted pod is replaced without counting against backoffLimit and the step resumes. Meanwhile
    every watch expires (410 Gone): the backend re-lists and still sees the step finish through its
    watch (the Job is cached, so poll() only learns of completion from watch events)."""
    backend = backend_factory("preempt")
    req = requests_factory("ok", "preempt")
    req = StepRequest(**{**req.to_dict(), "to_epoch": 2})
    sid = backend.start(req)
    wait_state(backend, sid, (RUNNING,), timeout=60)
    fake_cluster.wait_for(lambda: fake_cluster.running_pods(), timeout=30, what="a running pod")
    first = fake_cluster.preempt(sid)
    relists = backend.relists
    fake_cluster.expire_watches()
    status = wait_done(backend, sid)
    assert status.state == SUCCEEDED, backend.logs(sid)[-3000:]
    assert backend.relists > relists, "the backend must re-list after 410 Gone"
    assert any("watch=True" in path and "resourceVersion=" in path for _, path, _ in fake_cluster.requests)
    job = fake_cluster.job(sid)
    assert job["status"].get("failed", 0) == 0, "a disruption must not count against backoffLimit"
    pods = fake_cluster.pods_of(sid)
    assert len(pods) == 2 and first in {p["metadata"]["name"] for p in pods}
    assert [e["epoch"] for e in backend.result(sid)["epochs"]] in ([1, 2], [2])
    logs = backend.logs(sid)
    assert "disrupted: retried without counting" in logs and logs.count("===== pod") == 2
    assert fake_cluster.created_jobs.count(sid) == 1


def test_oom_killed_pod_fails_fast_as_oom(backend_factory, requests_factory, fake_cluster):
    backend = backend_factory("oom", backoff_limit=3)
    sid = backend.start(requests_factory("slow", "oom"))
    wait_state(backend, sid, (RUNNING,), timeout=60)
    fake_cluster.wait_for(lambda: fake_cluster.running_pods(), timeout=30, what="a running pod")
    fake_cluster.oom_kill(sid)
    status = wait_done(backend, sid, timeout=60)
    assert status.state == FAILED and "PodFailurePolicy" in status.message
    assert len(fake_cluster.pods_of(sid)) == 1, "fail-fast: no retry after an OOM kill"
    result = backend.result(sid)
    assert result["status"] == "oom" and "OOMKilled" in result["message"] and result["epochs"] == []


def test_deleting_a_bare_controller_pod_garbage_collects_its_steps(backend_factory, requests_factory, fake_cluster):
    """A controller pod that nothing controls (no Job to bring it back) owns its steps itself, and
    they are garbage-collected with it."""
    uid = fake_cluster.add_pod("quicktune-controller-x1")
    backend = backend_factory("gc", owner_pod={"name": "quicktune-controller-x1", "uid": uid})
    sid = backend.start(requests_factory("slow", "gc"))
    wait_state(backend, sid, (RUNNING,), timeout=60)
    assert fake_cluster.job(sid)["metadata"]["ownerReferences"][0]["uid"] == uid
    fake_cluster.delete_pod("quicktune-controller-x1")
    fake_cluster.wait_for(
        lambda: fake_cluster.job(sid) is None and not fake_cluster.running_pods(),
        timeout=30,
        what="the step Job to be garbage-collected",
    )
    assert wait_state(backend, sid, (FAILED,), timeout=30) == FAILED
    assert "deleted" in backend.poll(sid).message


def _controller_job(fake: FakeCluster, name: str = "quicktune-search", command=("sleep", "900")) -> dict:
    """A controller Job in the fake (as k8s/base/controller-job.yaml, reduced to what ownership needs:
    restricted pod, DisruptionTarget ignored, retries); its pod runs ``command``."""
    from quicktune.backends.kubernetes import RESTRICTED_CONTAINER_SECURITY, RESTRICTED_POD_SECURITY

    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "controller"}},
        "spec": {
            "backoffLimit": 4,
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
            },
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/component": "controller"}},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": RESTRICTED_POD_SECURITY,
                    "containers": [
                        {
                            "name": "controller",
                            "image": IMAGE,
                            "command": list(command),
                            "securityContext": RESTRICTED_CONTAINER_SECURITY,
                        }
                    ],
                },
            },
        },
    }
    return fake.create_job(NAMESPACE, body)


def _running_pod_of(fake: FakeCluster, job: str, other_than: str | None = None) -> dict:
    found: list[dict] = []

    def running() -> bool:
        found[:] = [
            p
            for p in fake.pods_of(job)
            if p["status"].get("phase") == "Running" and p["metadata"]["name"] != other_than
        ]
        return bool(found)

    fake.wait_for(running, timeout=30, what=f"a running pod of Job {job}")
    return found[0]


def test_step_jobs_outlive_an_evicted_or_deleted_controller_pod(backend_factory, requests_factory, fake_cluster):
    """The step Jobs are owned by the controller *Job* (found from the controller pod's own
    ownerReferences), so a drained (evicted) or deleted controller pod garbage-collects nothing: the
    Job controller starts a new controller pod, whose backend re-adopts the running step."""
    ctl = _controller_job(fake_cluster)
    pod1 = _running_pod_of(fake_cluster, "quicktune-search")
    meta1 = pod1["metadata"]
    backend = backend_factory("own", owner_pod={"name": meta1["name"], "uid": meta1["uid"]})
    req = requests_factory("slow", "own")
    sid = backend.start(req)
    wait_state(backend, sid, (RUNNING,), timeout=60)
    fake_cluster.wait_for(lambda: fake_cluster.running_pods(), timeout=60, what="the step pod running")
    (step_pod,) = [p["metadata"]["uid"] for p in fake_cluster.pods_of(sid)]
    (ref,) = fake_cluster.job(sid)["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "quicktune-search",
        "uid": ctl["metadata"]["uid"],
        "blockOwnerDeletion": False,
        "controller": False,
    }

    fake_cluster.evict_pod(meta1["name"])  # kubectl drain: DisruptionTarget, then deletion
    pod2 = _running_pod_of(fake_cluster, "quicktune-search", other_than=meta1["name"])
    fake_cluster.delete_pod(pod2["metadata"]["name"])  # kubectl delete pod: counts as a failure, still replaced
    pod3 = _running_pod_of(fake_cluster, "quicktune-search", other_than=pod2["metadata"]["name"])
    time.sleep(1.0)  # a garbage collection would have happened by now
    assert fake_cluster.job("quicktune-search")["status"].get("failed") == 1  # the eviction did not count
    job = fake_cluster.job(sid)
    assert job is not None, "the step Job was garbage-collected with the controller pod"
    assert [p["metadata"]["uid"] for p in fake_cluster.pods_of(sid)] == [step_pod], "the step pod was not touched"
    assert backend.poll(sid).state == RUNNING

    # the controller in the new pod (a new backend) re-adopts the running step; nothing is created twice
    backend.close()
    again = backend_factory("own", owner_pod={"name": pod3["metadata"]["name"], "uid": pod3["metadata"]["uid"]})
    assert again.start(req) == sid and again.active() == [sid]
    assert again.poll(sid).state == RUNNING
    assert (
        fake_cluster.created_jobs.count(sid) == 1 and fake_cluster.job(sid)["metadata"]["uid"] == job["metadata"]["uid"]
    )
    again.cancel(sid)


@pytest.mark.parametrize("propagation", ["Background", "Foreground"])
def test_deleting_the_controller_job_garbage_collects_its_steps(
    backend_factory, requests_factory, fake_cluster, propagation
):
    """Deleting the controller Job (``kubectl delete job quicktune-search``) still deletes the search:
    its pods go, and the garbage collector deletes the step Jobs it owns, and their pods."""
    _controller_job(fake_cluster)
    meta = _running_pod_of(fake_cluster, "quicktune-search")["metadata"]
    backend = backend_factory(f"gcjob-{propagation.lower()}", owner_pod={"name": meta["name"], "uid": meta["uid"]})
    sid = backend.start(requests_factory("slow", f"gcjob-{propagation.lower()}"))
    wait_state(backend, sid, (RUNNING,), timeout=60)
    fake_cluster.wait_for(lambda: fake_cluster.pods_of(sid), timeout=30, what="the step pod")
    assert fake_cluster.job(sid)["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert fake_cluster._delete_job((NAMESPACE, "quicktune-search"), propagation) is not None
    fake_cluster.wait_for(
        lambda: fake_cluster.job(sid) is None and not fake_cluster.pods_of(sid) and not fake_cluster.running_pods(),
        timeout=30,
        what="the step Job and its pod to be garbage-collected",
    )
    assert fake_cluster.job("quicktune-search") is None
    assert wait_state(backend, sid, (FAILED,), timeout=30) == FAILED


@pytest.mark.slow
def test_kueue_admission_then_ttl_cleanup_keeps_the_result(backend_factory, requests_factory, fake_cluster):
    """A Kueue Job waits suspended until admitted; after its TTL deletes it, the step still reads as
    succeeded, and a restarted controller finds the result in S3 instead of running it again."""
    backend = backend_factory("kueue", kueue_queue="team-a", ttl_seconds_after_finished=1)
    req = requests_factory("ok", "kueue")
    sid = backend.start(req)
    assert wait_state(backend, sid, (PENDING,), timeout=10) == PENDING
    assert "suspended" in backend.poll(sid).message
    assert fake_cluster.pods_of(sid) == []
    assert backend.active() == [sid]
    fake_cluster.admit_suspended = True  # Kueue admits the workload
    assert wait_done(backend, sid).state == SUCCEEDED, backend.logs(sid)[-3000:]
    fake_cluster.wait_for(lambda: fake_cluster.job(sid) is None, timeout=30, what="the TTL to delete the Job")
    time.sleep(0.5)  # let the DELETED event arrive
    assert backend.poll(sid).state == SUCCEEDED and backend.result(sid)["status"] == "ok"
    restarted = backend_factory("kueue", kueue_queue="team-a")
    assert restarted.start(req) == sid
    assert restarted.poll(sid).state == SUCCEEDED
    assert [e["epoch"] for e in restarted.result(sid)["epochs"]] == [1]
    assert fake_cluster.created_jobs.count(sid) == 1 and fake_cluster.job(sid) is None


# --------------------------------------------------------------------------------------------
# a whole search through the Kubernetes backend, with a controller restart, a preemption and an OOM
# --------------------------------------------------------------------------------------------
def _kubeconfig(path, url: str):
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "fake", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}],
            }
        )
    )
    return path


def _controller_env(tmp_path, fake_cluster, mlflow_server) -> tuple[dict[str, str], str]:
    """The environment of a controller process talking to the fake API server (a kubeconfig, not the
    in-cluster token), and the ``--step-env`` JSON its step pods get (S3 endpoint, no secrets)."""
    import os

    env = {
        **os.environ,
        **mlflow_server.env,
        "KUBECONFIG": str(_kubeconfig(tmp_path / "kubeconfig", fake_cluster.url)),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    step_env = json.dumps(
        {"AWS_ENDPOINT_URL": mlflow_server.s3.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "3"}
    )
    return env, step_env


def _k8s_search_args(search_id, experiment, mlflow_server, checkpoint_uri: str, tmp_path, step_env: str) -> list[str]:
    """The part of a ``quicktune search --backend kubernetes`` command line every fake-cluster search shares."""
    return [
        "--search-id",
        search_id,
        "--experiment",
        experiment,
        "--tracking-uri",
        mlflow_server.tracking_uri,
        "--checkpoint-uri",
        checkpoint_uri,
        "--workdir",
        str(tmp_path / "work"),
        "--no-progress",
        "--backend",
        "kubernetes",
        "--backend-option",
        f"namespace={NAMESPACE}",
        "--backend-option",
        f"image={IMAGE}",
        "--backend-option",
        f"secrets={S3_SECRET}",
        "--backend-option",
        f"env={step_env}",
        "--backend-option",
        "memory=2Gi",
    ]


def _start_controller(fake_cluster, cmd: list[str], env: dict[str, str], log: Path, pod: str):
    """Start ``cmd`` as the process of controller pod ``pod`` (registered with the fake cluster, so
    its uid can own step Jobs), its output in ``log``."""
    import subprocess

    uid = fake_cluster.add_pod(pod)
    return subprocess.Popen(
        cmd,
        env={**env, "POD_NAME": pod, "POD_UID": uid, "POD_NAMESPACE": NAMESPACE},
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
@pytest.mark.servers
def test_full_search_with_controller_restart_preemption_and_oom(fake_cluster, mlflow_server, s3_digits, tmp_path):
    """``quicktune search --backend kubernetes`` (a real controller process, via a kubeconfig that
    points at the fake API server) is killed with SIGKILL mid-search and restarted with the same
    search id; meanwhile one step pod is preempted and another is OOM-killed. The search must
    finish, every step Job must have been created exactly once (running ones re-adopted), the
    preempted Job must have succeeded without counting a failure, and the OOM-killed step's logs
    must be on its configuration's MLflow run."""
    import collections
    import signal
    import subprocess
    import sys

    from mlflow import MlflowClient

    search_id = f"k8s-{uuid.uuid4().hex[:6]}"
    experiment = f"k8s-{uuid.uuid4().hex[:6]}"
    bucket = s3_digits[5:].split("/")[0]
    env, step_env = _controller_env(tmp_path, fake_cluster, mlflow_server)
    cmd = [
        sys.executable,
        "-m",
        "quicktune.cli",
        "-v",
        "search",
        "--data",
        s3_digits,
        "--budget",
        "10m",
        "--space",
        str(TESTS / "tiny_space.yaml"),
        "--workers",
        "2",
        "--max-epochs",
        "2",
        "--image-size",
        "16",
        "--budget-epochs",
        "6",
        *_k8s_search_args(search_id, experiment, mlflow_server, f"s3://{bucket}/search-ckpt", tmp_path, step_env),
        "--backend-option",
        "backoff_limit=2",
    ]

    def controller(pod: str, log_name: str) -> subprocess.Popen:
        return _start_controller(fake_cluster, cmd, env, tmp_path / log_name, pod)

    def alive(proc: subprocess.Popen, log_name: str) -> None:
        if proc.poll() is not None:
            pytest.fail(
                f"the controller exited early ({proc.returncode}):\n" + (tmp_path / log_name).read_text()[-4000:]
            )

    first = controller("controller-1", "controller-1.log")
    try:
        fake_cluster.wait_for(
            lambda: (
                alive(first, "controller-1.log")
                or (len(fake_cluster.created_jobs) >= 3 and fake_cluster.running_pods())
            ),
            timeout=300,
            what="3 step Jobs created, one running",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    running_at_kill = set(fake_cluster.running_pods())
    second = controller("controller-2", "controller-2.log")
    try:
        fake_cluster.wait_for(
            lambda: alive(second, "controller-2.log") or fake_cluster.running_pods(),
            timeout=120,
            what="a running step pod",
        )
        preempted_pod = fake_cluster.preempt(fake_cluster.running_pods()[0].rsplit("-", 1)[0])
        preempted_job = preempted_pod.rsplit("-", 1)[0]
        fake_cluster.wait_for(
            lambda: [p for p in fake_cluster.running_pods() if not p.startswith(preempted_job)],
            timeout=180,
            what="another running step pod",
        )
        victim_pod = [p for p in fake_cluster.running_pods() if not p.startswith(preempted_job)][0]
        oom_job = victim_pod.rsplit("-", 1)[0]
        fake_cluster.oom_kill(oom_job)
        assert second.wait(timeout=480) == 0, (tmp_path / "controller-2.log").read_text()[-4000:]
    finally:
        if second.poll() is None:
            second.kill()
    log2 = (tmp_path / "controller-2.log").read_text()

    # every step Job was created once: the restarted controller re-adopted, never duplicated
    counts = collections.Counter(fake_cluster.created_jobs)
    assert counts and max(counts.values()) == 1, counts
    if running_at_kill:
        assert "re-adopted" in log2
    # the preempted step was retried by the Job controller without counting a failure
    job = fake_cluster.job(preempted_job)
    if job is not None:  # (it may be gone if the search cancelled it at the very end)
        assert job["status"].get("failed", 0) == 0
        assert any(c["type"] == "Complete" for c in job["status"].get("conditions", [])), job["status"]
    # the OOM-killed step is recorded as oom on its config's run, with the pod logs attached
    client = MlflowClient(mlflow_server.tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`quicktune.search_id` = '{search_id}'")
    oom_config = fake_cluster.job(oom_job)["metadata"]["labels"]["quicktune.io/config-id"]
    child = [r for r in runs if r.data.tags.get("quicktune.config_id") == oom_config]
    assert child, f"no MLflow run for config {oom_config}"
    assert child[0].data.tags.get("quicktune.status") == "oom", child[0].data.tags
    logs = [a.path for a in client.list_artifacts(child[0].info.run_id, "logs")]
    assert logs, "the failed step's logs must be attached to its run"
    text = Path(client.download_artifacts(child[0].info.run_id, logs[0], str(tmp_path))).read_text()
    assert "OOMKilled" in text and "===== pod" in text
    parents = [r for r in runs if r.data.tags.get("quicktune.role") == "search"]
    assert len(parents) == 1 and parents[0].data.tags.get("quicktune.status") == "succeeded", parents[0].data.tags


@pytest.mark.slow
@pytest.mark.servers
def test_default_space_search_survives_a_controller_kill(fake_cluster, mlflow_server, s3_digits, tmp_path):
    """The configuration users run: ``quicktune search --backend kubernetes`` with the shipped
    defaults -- no ``--space`` (``builtin:cpu``, which has conditional knobs) and no
    ``--meta-artifact`` (the shipped surrogate) -- small images and budget. The controller process
    is SIGKILLed once an epoch is recorded and a step pod runs, then started again with the same
    search id: the search finishes, every step Job was created once, no (config, epoch) is logged
    twice (``tell_seq`` unique), and no run is left RUNNING."""
    import collections
    import signal
    import subprocess
    import sys

    from mlflow import MlflowClient

    search_id = f"k8s-cpu-{uuid.uuid4().hex[:6]}"
    experiment = f"k8s-cpu-{uuid.uuid4().hex[:6]}"
    bucket = s3_digits[5:].split("/")[0]
    env, step_env = _controller_env(tmp_path, fake_cluster, mlflow_server)
    cmd = [
        sys.executable,
        "-m",
        "quicktune.cli",
        "search",
        "--data",
        s3_digits,
        "--budget",
        "10m",
        "--workers",
        "2",
        "--max-epochs",
        "2",
        "--image-size",
        "32",
        "--budget-epochs",
        "4",
        *_k8s_search_args(search_id, experiment, mlflow_server, f"s3://{bucket}/cpu-ckpt", tmp_path, step_env),
    ]
    client = MlflowClient(mlflow_server.tracking_uri)

    def runs():
        exp = client.get_experiment_by_name(experiment)
        return (
            []
            if exp is None
            else client.search_runs([exp.experiment_id], filter_string=f"tags.`quicktune.search_id` = '{search_id}'")
        )

    def epochs_recorded() -> int:
        return sum(
            len(client.get_metric_history(r.info.run_id, "score"))
            for r in runs()
            if r.data.tags.get("quicktune.role") == "config"
        )

    def controller(pod: str, log_name: str) -> subprocess.Popen:
        return _start_controller(fake_cluster, cmd, env, tmp_path / log_name, pod)

    first = controller("controller-1", "controller-1.log")
    try:

        def ready() -> bool:
            if first.poll() is not None:
                pytest.fail(
                    f"the controller exited early ({first.returncode}):\n"
                    + (tmp_path / "controller-1.log").read_text()[-4000:]
                )
            return bool(fake_cluster.running_pods()) and epochs_recorded() >= 1

        fake_cluster.wait_for(ready, timeout=300, what="an epoch recorded and a step pod running")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    second = controller("controller-2", "controller-2.log")
    try:
        rc = second.wait(timeout=480)
    finally:
        if second.poll() is None:
            second.kill()
    log2 = (tmp_path / "controller-2.log").read_text()
    assert rc == 0, log2[-4000:]

    counts = collections.Counter(fake_cluster.created_jobs)
    assert counts and max(counts.values()) == 1, counts
    all_runs = runs()
    assert [r.info.run_name for r in all_runs if r.info.status == "RUNNING"] == []
    (parent,) = [r for r in all_runs if r.data.tags.get("quicktune.role") == "search"]
    assert parent.data.tags.get("quicktune.status") == "succeeded", parent.data.tags
    assert parent.data.tags.get("quicktune.resumes") == "1"
    seqs = []
    for run in (r for r in all_runs if r.data.tags.get("quicktune.role") == "config"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "score"))
        assert steps == list(range(1, len(steps) + 1)), (run.data.tags.get("quicktune.config_id"), steps)
        seqs += [int(m.value) for m in client.get_metric_history(run.info.run_id, "tell_seq")]
    assert len(seqs) == len(set(seqs)) == 4, sorted(seqs)


def test_unreadable_result_is_retried_then_reported(fake_cluster):
    """A RESULT.json that S3 cannot serve for a moment keeps the step running; a missing one fails it."""
    calls = {"n": 0}

    def flaky_read(uri: str) -> bytes:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("S3 endpoint unreachable")
        return json.dumps({"status": "ok", "message": "", "epochs": [{"epoch": 3, "score": 0.5, "cost": 1.0}]}).encode()

    backend = KubernetesBackend(
        NAMESPACE,
        IMAGE,
        "s-1",
        api_client=fake_cluster.api_client(),
        read_result=flaky_read,
        result_exists=lambda uri: True,
    )
    try:
        sid = backend.start(_request())  # its result already exists: no Job is created
        assert fake_cluster.created_jobs == []
        assert backend.poll(sid).state == RUNNING and "retrying" in backend.poll(sid).message
        assert backend.poll(sid).state == SUCCEEDED
        assert backend.result(sid)["epochs"][0]["epoch"] == 3
    finally:
        backend.close()
    missing = KubernetesBackend(
        NAMESPACE,
        IMAGE,
        "s-2",
        api_client=fake_cluster.api_client(),
        read_result=lambda uri: (_ for _ in ()).throw(FileNotFoundError(uri)),
        result_exists=lambda uri: True,
    )
    try:
        sid = missing.start(_request(search_id="s-2"))
        status = missing.poll(sid)
        assert status.state == FAILED and "could not be read" in status.message
    finally:
        missing.close()


@pytest.mark.slow
@pytest.mark.servers
def test_controller_pod_deleted_mid_search_is_recreated_by_its_job_and_readopts_its_steps(
    fake_cluster, mlflow_server, s3_digits, tmp_path
):
    """The controller runs as it does on a cluster: the pod of a controller Job (``k8s/base``'s shape:
    downward-API pod name/uid/namespace, Secrets as env, an emptyDir workdir), whose container is a
    real ``quicktune search --backend kubernetes`` process talking to the fake API server. Once an
    epoch is recorded and step pods run, the controller pod is deleted (``kubectl delete pod``); the
    Job controller starts a new pod, which resumes the search. Every step Job that was running
    survives (owned by the Job, not the pod: none garbage-collected, its pod untouched) and is
    re-adopted, no step Job is created twice, and every (config, epoch) is recorded once."""
    import collections

    from mlflow import MlflowClient

    from quicktune.backends.kubernetes import RESTRICTED_CONTAINER_SECURITY, RESTRICTED_POD_SECURITY

    search_id = f"k8s-own-{uuid.uuid4().hex[:6]}"
    experiment = f"k8s-own-{uuid.uuid4().hex[:6]}"
    bucket = s3_digits[5:].split("/")[0]
    # what the cluster gives every pod here: the API server (a kubeconfig instead of a token mount)
    fake_cluster.node_env["KUBECONFIG"] = str(_kubeconfig(tmp_path / "kubeconfig", fake_cluster.url))
    fake_cluster.add_secret("quicktune-controller-env", {**mlflow_server.env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"})
    step_env = json.dumps({"AWS_MAX_ATTEMPTS": "3"})
    args = [
        "-v",
        "search",
        f"--data={s3_digits}",
        "--budget=10m",
        f"--space={TESTS / 'tiny_space.yaml'}",
        "--workers=2",
        "--max-epochs=2",
        "--image-size=16",
        "--budget-epochs=4",
        f"--search-id={search_id}",
        f"--experiment={experiment}",
        f"--tracking-uri={mlflow_server.tracking_uri}",
        f"--checkpoint-uri=s3://{bucket}/own-ckpt",
        "--workdir=work",  # relative: inside the pod's own folder, lost with the pod like an emptyDir
        "--no-progress",
        "--backend=kubernetes",
        f"--backend-option=image={IMAGE}",
        f"--backend-option=secrets={S3_SECRET}",
        f"--backend-option=env={step_env}",
        "--backend-option=memory=2Gi",
    ]
    fields = {"POD_NAME": "metadata.name", "POD_UID": "metadata.uid", "POD_NAMESPACE": "metadata.namespace"}
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "quicktune-search", "labels": {"app.kubernetes.io/component": "controller"}},
        "spec": {
            "backoffLimit": 4,
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
            },
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/component": "controller"}},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": RESTRICTED_POD_SECURITY,
                    "containers": [
                        {
                            "name": "controller",
                            "image": IMAGE,
                            "command": ["quicktune"],
                            "args": [escape_kubelet_refs(a) for a in args],
                            "envFrom": [{"secretRef": {"name": "quicktune-controller-env"}}],
                            "env": [
                                *({"name": k, "valueFrom": {"fieldRef": {"fieldPath": f}}} for k, f in fields.items()),
                                {"name": "HOME", "value": "/tmp/home"},
                                {"name": "OMP_NUM_THREADS", "value": "1"},
                                {"name": "PYTHONUNBUFFERED", "value": "1"},
                            ],
                            "securityContext": RESTRICTED_CONTAINER_SECURITY,
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    ctl = fake_cluster.create_job(NAMESPACE, body)
    client = MlflowClient(mlflow_server.tracking_uri)

    def runs():
        exp = client.get_experiment_by_name(experiment)
        return (
            []
            if exp is None
            else client.search_runs([exp.experiment_id], filter_string=f"tags.`quicktune.search_id` = '{search_id}'")
        )

    def controller_log(pod: str) -> str:
        return fake_cluster.pod_log(NAMESPACE, pod, {}).decode(errors="replace")

    first = _running_pod_of(fake_cluster, "quicktune-search")["metadata"]["name"]

    def steps_running() -> list[str]:
        return [p.rsplit("-", 1)[0] for p in fake_cluster.running_pods() if not p.startswith("quicktune-search")]

    def ready() -> bool:
        job = fake_cluster.job("quicktune-search")
        if job["status"].get("failed") or job["status"].get("succeeded"):
            pytest.fail("the controller pod ended before it was deleted:\n" + controller_log(first)[-4000:])
        scores = sum(
            len(client.get_metric_history(r.info.run_id, "score"))
            for r in runs()
            if r.data.tags.get("quicktune.role") == "config"
        )
        return scores >= 1 and bool(steps_running())

    fake_cluster.wait_for(ready, timeout=400, what="an epoch recorded and a step pod running")
    running = {name: [p["metadata"]["uid"] for p in fake_cluster.pods_of(name)] for name in steps_running()}
    fake_cluster.delete_pod(first)
    second = _running_pod_of(fake_cluster, "quicktune-search", other_than=first)["metadata"]["name"]
    time.sleep(1.0)
    for name, pods in running.items():  # owned by the Job: not garbage-collected with the pod
        assert fake_cluster.job(name) is not None, f"step Job {name} was garbage-collected with the controller pod"
        assert [p["metadata"]["uid"] for p in fake_cluster.pods_of(name)] == pods, f"the pod of {name} was replaced"

    fake_cluster.wait_for(
        lambda: any(
            c["type"] in ("Complete", "Failed")
            for c in fake_cluster.job("quicktune-search")["status"].get("conditions", [])
        ),
        timeout=480,
        what="the controller Job to finish",
    )
    log2 = controller_log(second)
    status = fake_cluster.job("quicktune-search")["status"]
    assert status.get("succeeded") == 1 and status.get("failed") == 1, (status, log2[-4000:])
    assert fake_cluster.job("quicktune-search")["metadata"]["uid"] == ctl["metadata"]["uid"]
    for name in running:  # the new controller found each running step and adopted it
        assert any(name in line and "re-adopted" in line for line in log2.splitlines()), (name, log2[-4000:])
    counts = collections.Counter(fake_cluster.created_jobs)
    del counts["quicktune-search"]
    assert counts and max(counts.values()) == 1, counts  # no step started twice
    all_runs = runs()
    (parent,) = [r for r in all_runs if r.data.tags.get("quicktune.role") == "search"]
    assert parent.data.tags.get("quicktune.status") == "succeeded", parent.data.tags
    assert parent.data.tags.get("quicktune.resumes") == "1"
    seqs = []
    for run in (r for r in all_runs if r.data.tags.get("quicktune.role") == "config"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "score"))
        assert steps == list(range(1, len(steps) + 1)), (run.data.tags.get("quicktune.config_id"), steps)
        seqs += [int(m.value) for m in client.get_metric_history(run.info.run_id, "tell_seq")]
    assert len(seqs) == len(set(seqs)) == 4, sorted(seqs)  # every epoch of the budget recorded once


def test_a_steps_result_carries_its_wall_time_from_launch_to_result(backend_factory, requests_factory, fake_cluster):
    """What the optimizer is told a step cost on a cluster: the Job's start to its completion (pod
    start, imports, data sync, load, train, eval, checkpoint), beside the epochs' train/eval seconds."""
    from quicktune.backends.kubernetes.status import job_wall_seconds

    backend = backend_factory("wall")
    sid = backend.start(requests_factory("ok", "wall"))
    assert wait_done(backend, sid).state == SUCCEEDED, backend.logs(sid)[-3000:]
    result = backend.result(sid)
    job = fake_cluster.job(sid)
    assert result["wall_seconds"] == job_wall_seconds(job) and job["status"].get("completionTime")
    (epoch,) = result["epochs"]
    # second-precision timestamps: at least the train + eval time, minus a second of rounding
    assert result["wall_seconds"] >= epoch["train_seconds"] + epoch["eval_seconds"] - 1.0
    assert result["wall_seconds"] > 0
