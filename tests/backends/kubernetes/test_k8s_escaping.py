"""No Secret through ``$(VAR)``: the kubelet's expansion, modelled exactly, and every generated pod
spec escaped against it.

The kubelet expands ``$(NAME)`` in a container's ``command``, ``args`` and ``env[].value`` from the
container's env, which holds the S3 and MLflow Secrets (``envFrom``). quicktune puts strings chosen
by MLflow users (model and experiment names, dataset URIs, search-space values) into exactly those
fields, so each must arrive literally. Here:

* ``expand`` (the fake kubelet's) against the cases of the kubelet's own expansion tests
  (k8s.io/kubernetes ``third_party/forked/golang/expansion/expand_test.go``) and the env
  resolution order (envFrom, then env entries in order, each seeing only what came before);
* round trip (Hypothesis): any string, escaped, expands back to itself under any env;
* the step Job and the watcher's controller Job resolved by the fake kubelet: the container gets
  the literal text, never the secret, and the same specs *without* escaping do leak (so these
  tests fail on the old code);
* fake-cluster tests: the watcher's Kubernetes launcher for a model named
  ``clf-$(AWS_SECRET_ACCESS_KEY)`` (and an experiment with such a name and ``quicktune.model_name``
  tag), the S3 Secret in ``envFrom``: the controller process's argv holds the literal name; a step
  Job whose dataset URI and config carry a reference: its real shell wrapper writes the literal
  config and passes the literal URI;
* the launcher's name checks: control characters, over-long names and a leading ``-`` are refused
  before anything is launched;
* the whole way (slow, servers): the watcher's launcher -> a real controller pod in the fake cluster
  -> step Jobs -> MLflow, which then holds the experiment and the registered model under their
  literal ``$(AWS_SECRET_ACCESS_KEY)`` names.

Cost: ~15 s without the slow test (the fake-cluster tests start tiny Python processes, no servers);
the slow one ~4-5 min on 2 busy cores (MLflow + SeaweedFS, a controller and two step processes).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from quicktune.backends import kubernetes as K
from quicktune.backends.base import StepRequest
from quicktune.backends.kubernetes import manifests
from quicktune.testing.fake_k8s import FakeCluster, PodRuntime, expand
from quicktune.watch import launchers as L
from quicktune.watch.requests import (
    EXPERIMENT,
    MODEL,
    TAG_BUDGET,
    TAG_DATA,
    TAG_MODEL_NAME,
    RequestError,
    SearchRequest,
    Target,
    search_id_for,
)

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
LEAKY = "clf-$(AWS_SECRET_ACCESS_KEY)"
IMAGE = "registry.example.com/quicktune:test"


# --------------------------------------------------------------------------------------------
# the kubelet's expansion
# --------------------------------------------------------------------------------------------
# (input, expected) with VAR_A=A, VAR_B=B, VAR_C=C, VAR_REF="$(VAR_A)", VAR_EMPTY="" -- the cases of
# the kubelet's expand_test.go (TestMapping / TestMappingDual)
KUBELET_CASES = [
    ("$(VAR_A)", "A"),
    ("$(VAR_A)-$(VAR_A)", "A-A"),
    ("$(VAR_A)-1", "A-1"),
    ("___$(VAR_B)___", "___B___"),
    ("___$(VAR_C)", "___C"),
    ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
    ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
    ("$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
    ("f000-$$VAR_A", "f000-$VAR_A"),
    ("foo\\$(VAR_C)bar", "foo\\Cbar"),
    ("foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
    ("foo\\\\\\\\$(VAR_A)bar", "foo\\\\\\\\Abar"),
    ("$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
    ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
    ("$(VAR_REF)", "$(VAR_A)"),
    ("%%$(VAR_REF)--$(VAR_REF)%%", "%%$(VAR_A)--$(VAR_A)%%"),
    ("foo$(VAR_EMPTY)bar", "foobar"),
    ("foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"),
    ("f00__(VAR_A)__", "f00__(VAR_A)__"),
    ("$?_boo_$!", "$?_boo_$!"),
    ("$VAR_A", "$VAR_A"),
    ("$(VAR_DNE)", "$(VAR_DNE)"),
    ("$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
    ("$$$$$$(VAR_A)", "$$$(VAR_A)"),
    ("$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"),
    ("$$$$$$$(VAR_A)", "$$$A"),
    ("$VAR_A)", "$VAR_A)"),
    ("${VAR_A}", "${VAR_A}"),
    ("$(VAR_B)_______$(A", "B_______$(A"),
    ("$(VAR_C)_______$(", "C_______$("),
    ("$(VAR_A)foobarzab$", "Afoobarzab$"),
    ("foo-\\$(VAR_A", "foo-\\$(VAR_A"),
    ("--$($($($($--", "--$($($($($--"),
    ("$($($($($--foo$(", "$($($($($--foo$("),
    ("foo0--$($($($(", "foo0--$($($($("),
    ("$(foo$$var)", "$(foo$$var)"),
    ("\n", "\n"),
    # beyond the upstream table: names are whatever lies between "(" and the first ")"
    ("$(not a name)", "$(not a name)"),
    ("$()", "$()"),
    ("$é$(VAR_A)", "$éA"),
    ("$", "$"),
    ("", ""),
]
CONTEXT = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}


@pytest.mark.parametrize("value,expected", KUBELET_CASES)
def test_expansion_matches_the_kubelet(value, expected):
    assert expand(value, CONTEXT) == expected


def test_the_old_fake_expansion_was_not_the_kubelets():
    """What the fake did before (a regex): ``$$(VAR)`` was expanded and ``$$`` kept, so an escaped
    spec looked broken and an unescaped one could not be told from an escaped one."""
    import re

    def old(value, env):
        return re.sub(r"\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)

    wrong = [(v, e) for v, e in KUBELET_CASES if old(v, CONTEXT) != e]
    assert ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A") in wrong and ("f000-$$VAR_A", "f000-$VAR_A") in wrong


def _resolve(
    container: dict, secrets: dict | None = None, configmaps: dict | None = None, tmp_path: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """(argv, declared env) of a container as the fake kubelet resolves it (no process started)."""
    fake = FakeCluster(tmp_path or Path("/nonexistent"))
    for name, data in (secrets or {}).items():
        fake.add_secret(name, data)
    for name, data in (configmaps or {}).items():
        fake.add_configmap(name, data)
    pod = {
        "metadata": {"name": "p-1", "namespace": "default", "uid": "u-1", "labels": {}},
        "spec": {"containers": [{k: v for k, v in container.items() if k != "volumeMounts"}]},
    }
    rt = PodRuntime(Path("/nonexistent"))
    argv, _env, _cwd = fake._container_process(pod, rt)
    return argv, rt.declared_env


def test_env_entries_see_envfrom_and_earlier_entries_only():
    """The kubelet's order (TestMapReference and makeEnvironmentVariables): envFrom first, taken as
    is; each env value expanded against what is defined before it; valueFrom never expanded."""
    container = {
        "name": "c",
        "image": "img",
        "args": ["$(FOO)", "$(ZOO)", "$(BLU)", "$(LATE)", "$(S)", "$(CM)"],
        "envFrom": [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "s"}, "prefix": "P_"}],
        "env": [
            {"name": "EARLY", "value": "<$(LATE)>"},
            {"name": "FOO", "value": "bar"},
            {"name": "ZOO", "value": "$(FOO)-1"},
            {"name": "BLU", "value": "$(ZOO)-2"},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "K"}}},
            {"name": "LATE", "value": "late"},
            {"name": "FROM_CM", "value": "$(CM)+$(P_K)"},
        ],
    }
    argv, env = _resolve(container, secrets={"s": {"K": "$(FOO)"}}, configmaps={"cm": {"CM": "$(FOO)"}})
    assert argv[-6:] == ["bar", "bar-1", "bar-1-2", "late", "$(FOO)", "$(FOO)"]
    assert env["EARLY"] == "<$(LATE)>", "a reference to a later entry is not expanded"
    assert env["FROM_CM"] == "$(FOO)+$(FOO)", "substituted values are never expanded again"
    assert env["P_K"] == "$(FOO)" and env["S"] == "$(FOO)"


@settings(max_examples=300, deadline=None)
@given(
    value=st.text(alphabet=st.sampled_from("$()AB_-x\\é\n "), max_size=40) | st.text(max_size=40),
    env=st.dictionaries(
        st.text(alphabet=st.sampled_from("AB_x$("), max_size=4),
        st.text(alphabet=st.sampled_from("$()ABx"), max_size=6),
        max_size=5,
    ),
)
def test_escaped_strings_expand_to_themselves(value, env):
    """``escape_kubelet_refs`` is the inverse of the kubelet's expansion, for every string and env."""
    assert expand(K.escape_kubelet_refs(value), env) == value


@settings(max_examples=100, deadline=None)
@given(value=st.text(max_size=30))
def test_escaped_strings_have_no_reference_left(value):
    escaped = K.escape_kubelet_refs(value)
    # every "$" is doubled: scanning as the kubelet does never meets "$(" as an operator
    assert expand(escaped, {"": "X"}) == value and escaped.count("$") == 2 * value.count("$")


# --------------------------------------------------------------------------------------------
# generated pod specs, resolved by the fake kubelet
# --------------------------------------------------------------------------------------------
def _step_job(escape: bool = True, monkeypatch=None) -> dict:
    if not escape:
        monkeypatch.setattr(manifests, "kubelet_literal", lambda c: dict(c))
    req = StepRequest(
        search_id="s-1",
        config_id="0123456789ab",
        config={"model": f"m-{LEAKY}", "lr": 0.01, "note": "$$ and $(HOME)"},
        data_uri=f"s3://data/{LEAKY}/digits",
        to_epoch=2,
        checkpoint_dir="s3://ckpt/s-1/0123456789ab",
        extra_env={"QUICKTUNE_NOTE": LEAKY},
    )
    return K.build_job(
        req,
        namespace="default",
        image=IMAGE,
        secret_names=["quicktune-s3"],
        env={"AWS_ENDPOINT_URL": "http://s3:9000/$(AWS_SECRET_ACCESS_KEY)"},
    )


def test_step_job_delivers_every_string_literally():
    job = _step_job()
    (c,) = job["spec"]["template"]["spec"]["containers"]
    argv, env = _resolve(c, secrets={"quicktune-s3": {"AWS_SECRET_ACCESS_KEY": SECRET}})
    assert SECRET not in json.dumps([argv, _but_the_secret(env)])
    assert f"--data=s3://data/{LEAKY}/digits" in argv
    assert json.loads(env["QUICKTUNE_STEP_CONFIG"])["model"] == f"m-{LEAKY}"
    assert json.loads(env["QUICKTUNE_STEP_CONFIG"])["note"] == "$$ and $(HOME)"
    assert env["QUICKTUNE_NOTE"] == LEAKY and env["AWS_ENDPOINT_URL"].endswith("/$(AWS_SECRET_ACCESS_KEY)")
    assert argv[2] == K.STEP_SCRIPT, "the shell wrapper reaches /bin/sh unchanged"


def test_unescaped_step_job_would_leak(monkeypatch):
    """The same spec without escaping: the fake kubelet puts the Secret into argv and env, as a
    real one would. (Shows the test above can fail.)"""
    job = _step_job(escape=False, monkeypatch=monkeypatch)
    (c,) = job["spec"]["template"]["spec"]["containers"]
    argv, env = _resolve(c, secrets={"quicktune-s3": {"AWS_SECRET_ACCESS_KEY": SECRET}})
    assert any(SECRET in a for a in argv) and SECRET in env["QUICKTUNE_STEP_CONFIG"]


def _but_the_secret(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "AWS_SECRET_ACCESS_KEY"}


def _model_target(name: str = LEAKY) -> Target:
    return Target(MODEL, name, name, 1_700_000_000_000, {TAG_DATA: "s3://data/digits", TAG_BUDGET: "1h"})


def parse_request(target: Target, check_data: bool = False) -> SearchRequest:
    """The request the watcher would launch, built directly: the launcher must be safe on its own,
    whatever the request parser (quicktune.watch.requests) accepts or refuses."""
    return SearchRequest(
        target=target,
        search_id=search_id_for(target),
        model_name=target.model_name,
        data_uri=target.tags[TAG_DATA],
        budget_seconds=3600.0,
        space="builtin:cpu",
        experiment=target.name if target.kind == EXPERIMENT else "quicktune",
    )


def _experiment_target() -> Target:
    return Target(
        EXPERIMENT,
        "17",
        f"exp-{LEAKY}",
        1_700_000_000_000,
        {TAG_DATA: "s3://data/digits", TAG_BUDGET: "1h", TAG_MODEL_NAME: f"m-{LEAKY}"},
    )


@pytest.mark.parametrize("target", [_model_target(), _experiment_target()], ids=["model", "experiment"])
def test_controller_job_delivers_names_literally(target):
    from quicktune.cli import build_parser

    req = parse_request(target, check_data=False)
    job = L.controller_job(
        req,
        tracking_uri="http://mlflow:5000",
        namespace="default",
        image=IMAGE,
        checkpoint_uri="s3://ckpt/$(AWS_SECRET_ACCESS_KEY)",
        backend_options={"env": '{"X": "$(AWS_SECRET_ACCESS_KEY)"}'},
    )
    (c,) = job["spec"]["template"]["spec"]["containers"]
    argv, env = _resolve(
        c,
        secrets={"quicktune-s3": {"AWS_SECRET_ACCESS_KEY": SECRET}},
        configmaps={"quicktune-config": {"QUICKTUNE_DATA": "s3://x"}},
    )
    assert SECRET not in json.dumps([argv, _but_the_secret(env)])
    parsed = build_parser().parse_args(argv[len(argv) - len(c["args"]) :])
    assert parsed.model_name == req.model_name and LEAKY in parsed.model_name
    assert parsed.experiment == req.experiment
    assert parsed.checkpoint_uri == "s3://ckpt/$(AWS_SECRET_ACCESS_KEY)"


def test_unescaped_controller_job_would_leak(monkeypatch):
    monkeypatch.setattr(manifests, "kubelet_literal", lambda c: dict(c))
    job = L.controller_job(
        parse_request(_model_target(), check_data=False),
        tracking_uri="http://mlflow:5000",
        namespace="default",
        image=IMAGE,
    )
    (c,) = job["spec"]["template"]["spec"]["containers"]
    argv, _ = _resolve(
        c, secrets={"quicktune-s3": {"AWS_SECRET_ACCESS_KEY": SECRET}}, configmaps={"quicktune-config": {}}
    )
    assert f"--model-name=clf-{SECRET}" in argv


def _all_strings(container: dict) -> list[str]:
    return [
        *container.get("command", []),
        *container.get("args", []),
        *(e["value"] for e in container.get("env", []) if "value" in e),
    ]


def test_generated_specs_reference_no_variable():
    """No generated string holds an unescaped ``$``: scanning it as the kubelet does finds no
    reference (every ``$`` is half of a ``$$``). Values meant as references exist only in the
    shipped static manifest (k8s/base/controller-job.yaml, checked in test_k8s_manifests.py)."""
    for job in (
        _step_job(),
        L.controller_job(
            parse_request(_experiment_target(), check_data=False),
            tracking_uri="http://m:5000",
            namespace="q",
            image=IMAGE,
        ),
    ):
        for c in job["spec"]["template"]["spec"]["containers"]:
            for s in _all_strings(c):
                assert expand(s, _Everything()) == s.replace("$$", "$"), s


class _Everything(dict):
    """An env in which every name is defined: any reference left would change the string."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return "<SECRET>"


# --------------------------------------------------------------------------------------------
# the launcher refuses names it cannot launch safely
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value,words",
    [
        ("model_name", "clf\nrejected: ok", "control character (U+000A)"),
        ("model_name", "clf\x00", "control character (U+0000)"),
        ("model_name", "clf\u202eevil", "invisible format character (U+202E)"),
        ("model_name", "x" * 257, "at most 256"),
        ("experiment", "e" * 501, "at most 500"),
        ("model_name", "-h", "starts with '-'"),
        ("model_name", "--data=/etc", "starts with '-'"),
        ("experiment", "--help", "starts with '-'"),
        ("data_uri", "-x", "starts with '-'"),
        ("space", "--version", "starts with '-'"),
        ("model_name", "   ", "empty"),
    ],
)
def test_launcher_refuses_unsafe_names_before_launching(field, value, words, tmp_path):
    req = parse_request(_model_target("digits-clf"), check_data=False)
    setattr(req, field, value)
    with pytest.raises(RequestError, match=re.escape(words)) as err:
        L.check_launchable(req)
    assert value.strip() == "" or value not in str(err.value), "the message must not repeat the value"
    local = L.LocalLauncher(tmp_path / "state", "http://mlflow:5000")
    with pytest.raises(RequestError):
        local.launch(req)
    assert not (tmp_path / "state").exists(), "nothing may be launched or written"
    with pytest.raises(RequestError):
        L.controller_job(req, tracking_uri="http://mlflow:5000", namespace="q", image=IMAGE)


def test_kfp_launcher_refuses_dollar_in_values(tmp_path):
    class NoClient:
        def create_run_from_pipeline_package(self, *a, **k):  # pragma: no cover - must not be reached
            raise AssertionError("launched")

    launcher = L.KfpLauncher("http://mlflow:5000", tmp_path, "pipeline.yaml", client=NoClient())
    with pytest.raises(RequestError, match=r"model name contains '\$'"):
        launcher.launch(parse_request(_model_target(), check_data=False))
    assert not (tmp_path / "kfp").exists()


# --------------------------------------------------------------------------------------------
# fake cluster: real processes get the literal text
# --------------------------------------------------------------------------------------------
ARGV_DUMP = "import json, sys; json.dump(sys.argv[1:], open('argv.json', 'w'))"


@pytest.mark.fake_cluster
@pytest.mark.parametrize("target", [_model_target(), _experiment_target()], ids=["model", "experiment"])
def test_watcher_launcher_on_fake_cluster_never_expands_a_secret(target, tmp_path):
    """The watcher's Kubernetes launcher, the S3 Secret and the ConfigMap in the controller's
    envFrom, a restricted namespace: the controller process receives the literal names."""
    with FakeCluster(
        tmp_path / "cluster", versions=("1.30",), entrypoints={IMAGE: [sys.executable, "-c", ARGV_DUMP]}
    ) as fake:
        fake.add_namespace(
            "quicktune",
            {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"},
        )
        fake.add_secret(
            "quicktune-s3", {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET}, namespace="quicktune"
        )
        fake.add_configmap("quicktune-config", {"MLFLOW_S3_ENDPOINT_URL": "http://s3:9000"}, namespace="quicktune")
        launcher = L.KubernetesLauncher("http://mlflow:5000", "quicktune", IMAGE, api_client=fake.api_client())
        req = parse_request(target, check_data=False)
        launcher.launch(req)
        fake.wait_for(
            lambda: launcher.state(req.search_id).state == L.LAUNCH_DONE,
            timeout=60,
            what="the controller Job to finish",
        )
        (pod,) = fake.pods_of(req.search_id, "quicktune")
        argv = fake.container_argv(pod["metadata"]["name"], "quicktune")
        seen = json.loads((fake.workdir / "pods" / pod["metadata"]["name"] / "argv.json").read_text())
        assert argv[-len(seen) :] == seen
        assert SECRET not in json.dumps(seen)
        assert f"--model-name={req.model_name}" in seen and LEAKY in req.model_name
        assert f"--experiment={req.experiment}" in seen
        assert fake.admission_denials == [] and fake.warnings == [] and fake.rejected == []


@pytest.mark.fake_cluster
def test_step_job_on_fake_cluster_runs_its_shell_wrapper_with_literal_values(tmp_path):
    """A real step Job (its ``/bin/sh`` wrapper, escaped ``$$VAR`` shell references included) with a
    stand-in ``quicktune`` on PATH that records what it got: the literal URI and config."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "quicktune").write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'config': open(sys.argv[sys.argv.index('--config') + 1]).read()},"
        " open('seen.json', 'w'))\n"
    )
    os.chmod(bindir / "quicktune", 0o755)
    job = _step_job()
    with FakeCluster(tmp_path / "cluster", versions=("1.30",), bin_dirs=[bindir]) as fake:
        fake.add_namespace("default", {"pod-security.kubernetes.io/enforce": "restricted"})
        fake.add_secret("quicktune-s3", {"AWS_SECRET_ACCESS_KEY": SECRET})
        from kubernetes import client

        client.BatchV1Api(fake.api_client()).create_namespaced_job("default", job)
        name = job["metadata"]["name"]
        fake.wait_for(
            lambda: any(
                c["type"] in ("Complete", "Failed") and c["status"] == "True"
                for c in (fake.job(name) or {}).get("status", {}).get("conditions", [])
            ),
            timeout=60,
            what="the step Job to finish",
        )
        (pod,) = fake.pods_of(name)
        folder = fake.workdir / "pods" / pod["metadata"]["name"]
        assert pod["status"]["phase"] == "Succeeded", (folder / "container.log").read_text()[-2000:]
        seen = json.loads((folder / "seen.json").read_text())
        assert SECRET not in json.dumps(seen)
        assert seen["argv"][0] == "step" and f"--data=s3://data/{LEAKY}/digits" in seen["argv"]
        assert json.loads(seen["config"])["model"] == f"m-{LEAKY}"
        assert fake.admission_denials == [] and fake.rejected == []


# --------------------------------------------------------------------------------------------
# the whole way: watcher launcher -> controller pod -> step pods -> MLflow
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.fake_cluster
def test_names_with_a_secret_reference_reach_mlflow_literally(mlflow_server, tiny_image_folder, tmp_path, monkeypatch):
    """The watcher's Kubernetes launcher starts a controller Job for a model named
    ``clf-$(AWS_SECRET_ACCESS_KEY)-…`` in an experiment named likewise; the fake cluster runs the
    controller pod (a real ``quicktune search``, S3 Secret and ConfigMap in its ``envFrom``, the
    kubelet's expansion on), which runs its step Jobs there and registers the winner. MLflow then
    holds the experiment and the registered model under their literal names, and no experiment or
    model name anywhere contains the secret."""
    import uuid

    from mlflow import MlflowClient

    s3 = mlflow_server.s3
    bucket = "qt-esc-" + uuid.uuid4().hex[:6]
    s3.create_bucket(bucket)
    client_s3 = s3.client(max_attempts=8)
    for path in sorted(p for p in tiny_image_folder.rglob("*") if p.is_file()):
        client_s3.put_object(
            Bucket=bucket, Key="digits/" + path.relative_to(tiny_image_folder).as_posix(), Body=path.read_bytes()
        )
    tag = uuid.uuid4().hex[:6]
    name = f"{LEAKY}-{tag}"
    target = Target(MODEL, name, name, 1_700_000_000_000, {TAG_DATA: f"s3://{bucket}/digits", TAG_BUDGET: "10m"})
    req = SearchRequest(
        target=target,
        search_id=search_id_for(target),
        model_name=name,
        data_uri=f"s3://{bucket}/digits",
        budget_seconds=600.0,
        space=str(Path(__file__).resolve().parents[2] / "tiny_space.yaml"),
        workers=2,
        max_epochs=1,
        budget_epochs=2,
        image_size=16,
        experiment=f"exp-$(AWS_SECRET_ACCESS_KEY)-{tag}",
    )
    workdir = tmp_path / "controller-work"
    make_job = L.controller_job

    def controller_job(*a, **kw):  # the fake has no mount namespace: the workdir arg goes to tmp_path
        job = make_job(*a, **kw)
        c = job["spec"]["template"]["spec"]["containers"][0]
        c["args"] = [str(workdir) if x == "/tmp/quicktune" else x for x in c["args"]]
        return job

    monkeypatch.setattr(L, "controller_job", controller_job)
    ns = "quicktune"
    with FakeCluster(
        tmp_path / "cluster",
        versions=("1.30",),
        node_env={
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        },
    ) as fake:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                    "users": [{"name": "fake", "user": {}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": ns}}],
                }
            )
        )
        fake.node_env["KUBECONFIG"] = str(kubeconfig)  # the pod's "in-cluster" configuration
        fake.add_namespace(
            ns, {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}
        )
        fake.add_secret(
            "quicktune-s3", {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}, namespace=ns
        )
        fake.add_configmap(
            "quicktune-config",
            {
                "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
                "AWS_ENDPOINT_URL": s3.endpoint_url,
                "AWS_DEFAULT_REGION": "us-east-1",
                "QUICKTUNE_STEP_SECRETS": "quicktune-s3",
                "QUICKTUNE_STEP_MEMORY": "2Gi",
                "QUICKTUNE_STEP_BACKOFF_LIMIT": "1",
            },
            namespace=ns,
        )
        launcher = L.KubernetesLauncher(
            mlflow_server.tracking_uri, ns, IMAGE, api_client=fake.api_client(), checkpoint_uri=f"s3://{bucket}/ckpt"
        )
        launcher.launch(req)
        fake.wait_for(
            lambda: launcher.state(req.search_id).state == L.LAUNCH_DONE,
            timeout=600,
            what="the controller Job to finish",
        )
        (pod,) = fake.pods_of(req.search_id, ns)
        log = (fake.workdir / "pods" / pod["metadata"]["name"] / "container.log").read_text()
        assert pod["status"]["phase"] == "Succeeded", log[-4000:]
        argv = fake.container_argv(pod["metadata"]["name"], ns)
        assert f"--model-name={name}" in argv and f"--experiment={req.experiment}" in argv  # one token each
        assert len(fake.created_jobs) >= 2, "the controller ran its steps as Jobs in the fake cluster"
        assert fake.admission_denials == [] and fake.rejected == []

    client = MlflowClient(mlflow_server.tracking_uri)
    exp = client.get_experiment_by_name(req.experiment)
    assert exp is not None and exp.name == f"exp-$(AWS_SECRET_ACCESS_KEY)-{tag}"
    model = client.get_registered_model(name)
    assert model.name == f"clf-$(AWS_SECRET_ACCESS_KEY)-{tag}"
    assert client.get_model_version_by_alias(name, "champion").name == name
    secret = s3.secret_key
    assert not [e.name for e in client.search_experiments() if secret in e.name]
    assert not [m.name for m in client.search_registered_models() if secret in m.name]
    assert secret not in log
