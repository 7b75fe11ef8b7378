"""StepJobSettings: the Kubernetes backend's settings, parsed once (env vars, --backend-option).

Fast unit tests (no cluster, no network): every ``QUICKTUNE_*`` variable round-trips through
``from_env``, options override the env, bad values are refused naming the setting and never
echoing a value that might be a credential.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings, strategies as st

from quicktune.backends.base import StepRequest
from quicktune.backends.kubernetes import (
    ENV_SETTINGS,
    OPTION_ENV,
    OWNER_MODES,
    KubernetesBackend,
    StepJobSettings,
    build_job,
    controller_of,
    owner_from_env,
)

BASE = {"POD_NAMESPACE": "q", "QUICKTUNE_STEP_IMAGE": "img:1"}


def _env_of(s: StepJobSettings) -> dict[str, str]:
    """The ``QUICKTUNE_*`` env that stands for ``s`` (what a ConfigMap would hold)."""
    env = {
        "QUICKTUNE_K8S_NAMESPACE": s.namespace,
        "QUICKTUNE_STEP_IMAGE": s.image,
        "QUICKTUNE_STEP_GPU": str(s.gpu),
        "QUICKTUNE_STEP_CPU": s.cpu or "",
        "QUICKTUNE_STEP_MEMORY": s.memory or "",
        "QUICKTUNE_STEP_SECRETS": ",".join(s.secret_names),
        "QUICKTUNE_STEP_ENV": json.dumps(dict(s.env)),
        "QUICKTUNE_STEP_ACTIVE_DEADLINE_SECONDS": str(s.active_deadline_seconds),
        "QUICKTUNE_STEP_BACKOFF_LIMIT": str(s.backoff_limit),
        "QUICKTUNE_STEP_TTL_SECONDS": str(s.ttl_seconds_after_finished),
    }
    if s.node_selector:
        env["QUICKTUNE_STEP_NODE_SELECTOR"] = json.dumps(dict(s.node_selector))
    if s.tolerations:
        env["QUICKTUNE_STEP_TOLERATIONS"] = json.dumps([dict(t) for t in s.tolerations])
    for var, value in (
        ("QUICKTUNE_STEP_PRIORITY_CLASS", s.priority_class),
        ("QUICKTUNE_KUEUE_QUEUE", s.kueue_queue),
        ("QUICKTUNE_STEP_SERVICE_ACCOUNT", s.service_account),
        ("QUICKTUNE_STEP_CACHE_PVC", s.cache_pvc),
    ):
        if value:
            env[var] = value
    if s.owner_pod:
        env.update(POD_NAME=s.owner_pod["name"], POD_UID=s.owner_pod["uid"])
    env["QUICKTUNE_STEP_OWNER"] = s.owner_mode
    return env


names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
plain_keys = st.sampled_from(["AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "QUICKTUNE_NOTE", "HTTP_PROXY"])


@settings(max_examples=60, deadline=None)
@given(
    namespace=names,
    image=names,
    gpu=st.integers(0, 8),
    cpu=st.sampled_from(["1", "500m", "2"]),
    memory=st.sampled_from(["4Gi", "512Mi"]),
    selector=st.dictionaries(names, names, max_size=2),
    tolerations=st.lists(st.fixed_dictionaries({"key": names, "operator": st.just("Exists")}), max_size=2),
    priority=st.none() | names,
    queue=st.none() | names,
    secrets=st.lists(names, max_size=3, unique=True),
    env=st.dictionaries(plain_keys, st.text(max_size=20), max_size=3),
    sa=st.none() | names,
    owner=st.none() | st.fixed_dictionaries({"name": names, "uid": names}),
    owner_mode=st.sampled_from(OWNER_MODES),
    deadline=st.integers(1, 10**6),
    backoff=st.integers(0, 20),
    ttl=st.integers(0, 10**6),
    cache=st.none() | st.from_regex(r"[a-z]([a-z0-9-]{0,18}[a-z0-9])?", fullmatch=True),  # a valid claim name
)
def test_env_settings_round_trip(
    namespace,
    image,
    gpu,
    cpu,
    memory,
    selector,
    tolerations,
    priority,
    queue,
    secrets,
    env,
    sa,
    owner,
    owner_mode,
    deadline,
    backoff,
    ttl,
    cache,
):
    s = StepJobSettings(
        namespace=namespace,
        image=image,
        gpu=gpu,
        cpu=cpu,
        memory=memory,
        node_selector=selector or None,
        tolerations=tuple(tolerations) or None,
        priority_class=priority,
        kueue_queue=queue,
        secret_names=tuple(secrets),
        env=env,
        service_account=sa,
        owner_pod=owner,
        owner_mode=owner_mode,
        active_deadline_seconds=deadline,
        backoff_limit=backoff,
        ttl_seconds_after_finished=ttl,
        cache_pvc=cache,
    )
    assert StepJobSettings.from_env(_env_of(s)) == s


def test_every_documented_variable_is_read():
    """Each ENV_SETTINGS variable changes the parsed settings (none is documented but ignored)."""
    values = {
        "QUICKTUNE_K8S_NAMESPACE": "other",
        "QUICKTUNE_STEP_IMAGE": "img:2",
        "QUICKTUNE_STEP_GPU": "2",
        "QUICKTUNE_STEP_CPU": "3",
        "QUICKTUNE_STEP_MEMORY": "1Gi",
        "QUICKTUNE_STEP_NODE_SELECTOR": '{"a": "b"}',
        "QUICKTUNE_STEP_TOLERATIONS": '[{"key": "k"}]',
        "QUICKTUNE_STEP_PRIORITY_CLASS": "p",
        "QUICKTUNE_KUEUE_QUEUE": "team",
        "QUICKTUNE_STEP_SECRETS": "s1, s2",
        "QUICKTUNE_STEP_SERVICE_ACCOUNT": "sa",
        "QUICKTUNE_STEP_ENV": '{"AWS_ENDPOINT_URL": "http://s3"}',
        "QUICKTUNE_STEP_ACTIVE_DEADLINE_SECONDS": "60",
        "QUICKTUNE_STEP_BACKOFF_LIMIT": "0",
        "QUICKTUNE_STEP_TTL_SECONDS": "5",
        "QUICKTUNE_STEP_OWNER": "none",
        "QUICKTUNE_STEP_CACHE_PVC": "quicktune-cache",
        "QUICKTUNE_WARM_WORKERS": "3",
        "QUICKTUNE_WARM_LEASE_SECONDS": "20",
        "QUICKTUNE_WARM_IDLE_SECONDS": "30",
        "QUICKTUNE_WARM_SERVICE_ACCOUNT": "w",
    }
    assert set(values) == set(ENV_SETTINGS)
    default = StepJobSettings.from_env(BASE)
    for var, value in values.items():
        assert StepJobSettings.from_env({**BASE, var: value}) != default, var
    assert StepJobSettings.from_env({**BASE, "QUICKTUNE_STEP_SECRETS": "s1, s2"}).secret_names == ("s1", "s2")
    assert set(OPTION_ENV.values()) == set(ENV_SETTINGS)


@pytest.mark.parametrize(
    "var,value,words",
    [
        ("QUICKTUNE_STEP_NODE_SELECTOR", "gpu=true", "QUICKTUNE_STEP_NODE_SELECTOR: not valid JSON"),
        ("QUICKTUNE_STEP_TOLERATIONS", '{"key": "k"}', "QUICKTUNE_STEP_TOLERATIONS: expected a JSON list"),
        ("QUICKTUNE_STEP_GPU", "one", "QUICKTUNE_STEP_GPU: expected an integer"),
        ("QUICKTUNE_STEP_GPU", "-1", "gpu must be an integer >= 0"),
        ("QUICKTUNE_STEP_BACKOFF_LIMIT", "-2", "backoff_limit must be an integer >= 0"),
        ("QUICKTUNE_STEP_ACTIVE_DEADLINE_SECONDS", "0", "active_deadline_seconds must be an integer >= 1"),
        ("QUICKTUNE_STEP_TTL_SECONDS", "-1", "ttl_seconds_after_finished must be None or an integer >= 0"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(var, value, words):
    with pytest.raises(ValueError, match=words):
        StepJobSettings.from_env({**BASE, var: value})


def test_credentials_are_refused_without_echoing_them():
    secret = "hunter2-do-not-print"
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY.*Secret") as err:
        StepJobSettings.from_env({**BASE, "QUICKTUNE_STEP_ENV": json.dumps({"AWS_SECRET_ACCESS_KEY": secret})})
    assert secret not in str(err.value)
    with pytest.raises(ValueError) as err:  # broken JSON around a secret: the message quotes no content
        StepJobSettings.from_env({**BASE, "QUICKTUNE_STEP_ENV": '{"TOKEN": "' + secret})
    assert secret not in str(err.value)
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_TOKEN"):
        StepJobSettings(namespace="q", image="i", env={"MLFLOW_TRACKING_TOKEN": "x"})


def test_namespace_and_image_are_required_and_own_image_is_asked_only_when_needed():
    with pytest.raises(ValueError, match="no namespace"):
        StepJobSettings.from_env({"QUICKTUNE_STEP_IMAGE": "i", "KUBERNETES_SERVICE_HOST": ""})
    with pytest.raises(ValueError, match="QUICKTUNE_STEP_IMAGE"):
        StepJobSettings.from_env({"POD_NAMESPACE": "q"})
    asked = []

    def own(namespace, pod):
        asked.append((namespace, pod))
        return "ctl-image:3"

    assert StepJobSettings.from_env({"POD_NAMESPACE": "q", "POD_NAME": "ctl"}, own_image=own).image == "ctl-image:3"
    assert asked == [("q", "ctl")]
    StepJobSettings.from_env(BASE, own_image=own)
    assert len(asked) == 1, "an explicit image needs no API call"


def test_options_override_the_env_and_unknown_options_are_refused():
    s = StepJobSettings.from_options(
        {"gpu": "1", "secrets": "a,b", "namespace": "ns2"}, {**BASE, "QUICKTUNE_STEP_GPU": "0"}, step_timeout=90.5
    )
    assert (s.gpu, s.secret_names, s.namespace, s.active_deadline_seconds) == (1, ("a", "b"), "ns2", 90)
    with pytest.raises(ValueError, match=r"unknown Kubernetes backend option\(s\) \['gpus'\]"):
        StepJobSettings.from_options({"gpus": "1"}, BASE)
    with pytest.raises(ValueError, match="unknown Kubernetes backend option"):
        KubernetesBackend.from_options(workers=1, api_client=object(), gpus="1")


def test_settings_are_frozen_and_feed_build_job():
    s = StepJobSettings.from_env({**BASE, "QUICKTUNE_STEP_GPU": "1", "POD_NAME": "ctl", "POD_UID": "u-1"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.gpu = 2  # type: ignore[misc]
    assert s.owner_pod == owner_from_env({"POD_NAME": "ctl", "POD_UID": "u-1"})
    job = build_job(StepRequest("s", "abcdef123456", {"model": "m"}, "s3://d/x", 1, "s3://c/x"), **s.job_kwargs())
    assert job["metadata"]["namespace"] == "q" and job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_backend_constructor_and_settings_agree():
    from kubernetes import client

    b = KubernetesBackend(
        "q",
        "img:1",
        "s",
        gpu=1,
        secret_names=["x"],
        env={"AWS_REGION": "r"},
        owner_pod={"name": "p", "uid": "u"},
        api_client=client.ApiClient(),
    )
    same = StepJobSettings(
        namespace="q",
        image="img:1",
        gpu=1,
        secret_names=("x",),
        env={"AWS_REGION": "r"},
        owner_pod={"name": "p", "uid": "u"},
    )
    assert b.settings == same and b.namespace == "q" and b.owner_pod == {"name": "p", "uid": "u"}
    with pytest.raises(ValueError, match="max_concurrent"):
        KubernetesBackend("q", "img:1", max_concurrent=0, api_client=client.ApiClient())
    with pytest.raises(ValueError, match="gpu"):
        KubernetesBackend("q", "img:1", gpu=-1, api_client=client.ApiClient())


def test_step_owner_modes():
    """QUICKTUNE_STEP_OWNER: the controller pod's controller (default; the backend resolves it), the
    pod itself, or nothing; anything else is refused naming the variable."""
    env = {**BASE, "POD_NAME": "ctl", "POD_UID": "u-1"}
    pod_ref = {"apiVersion": "v1", "kind": "Pod", "name": "ctl", "uid": "u-1"}
    assert StepJobSettings.from_env(env).owner_mode == "controller"
    assert StepJobSettings.from_env(env).owner_reference() == pod_ref  # until the backend asks the API
    assert StepJobSettings.from_env({**env, "QUICKTUNE_STEP_OWNER": "Pod"}).owner_reference() == pod_ref
    none = StepJobSettings.from_env({**env, "QUICKTUNE_STEP_OWNER": "none"})
    req = StepRequest("s", "abcdef123456", {"model": "m"}, "s3://d/x", 1, "s3://c/x")
    assert none.owner_reference() is None and "ownerReferences" not in build_job(req, **none.job_kwargs())["metadata"]
    assert StepJobSettings.from_env(BASE).owner_reference() is None  # not in a pod
    with pytest.raises(ValueError, match="QUICKTUNE_STEP_OWNER"):
        StepJobSettings.from_env({**env, "QUICKTUNE_STEP_OWNER": "job"})
    assert StepJobSettings.from_options({"owner": "pod"}, env).owner_mode == "pod"


def test_controller_of_a_pod_is_its_controlling_owner():
    job_ref = {"apiVersion": "batch/v1", "kind": "Job", "name": "quicktune-search", "uid": "j-1"}
    pod = {
        "metadata": {
            "name": "quicktune-search-abcde",
            "uid": "p-1",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "c-1"},  # not its controller
                {**job_ref, "controller": True, "blockOwnerDeletion": True},
            ],
        }
    }
    assert controller_of(pod) == job_ref
    bare = {"metadata": {"name": "ctl", "uid": "p-2"}}
    assert controller_of(bare) == {"apiVersion": "v1", "kind": "Pod", "name": "ctl", "uid": "p-2"}
    with pytest.raises(ValueError, match="metadata.name/uid"):
        controller_of({"metadata": {"name": "ctl"}})


def test_job_wall_seconds_runs_from_start_to_completion():
    from quicktune.backends.kubernetes.status import job_wall_seconds

    job = {
        "metadata": {"creationTimestamp": "2026-12-01T10:00:00Z"},
        "status": {"startTime": "2026-12-01T10:05:00Z", "completionTime": "2026-12-01T10:06:30Z"},
    }
    assert job_wall_seconds(job) == 90.0  # a Kueue wait before startTime is not the step's cost
    del job["status"]["startTime"]
    assert job_wall_seconds(job) == 390.0
    assert job_wall_seconds({"metadata": job["metadata"], "status": {}}) is None  # not completed
    assert job_wall_seconds({"metadata": {}, "status": {"completionTime": "garbage"}}) is None


def test_warm_workers_option_builds_the_warm_backend_and_bad_values_are_refused():
    from quicktune.backends.kubernetes import KubernetesBackend
    from quicktune.backends.kubernetes.warm_backend import WarmKubernetesBackend

    settings = StepJobSettings.from_options({"warm_workers": "3", "warm_lease_seconds": "20"}, BASE)
    assert (settings.warm_workers, settings.warm_lease_seconds) == (3, 20)
    assert "warm" not in " ".join(settings.job_kwargs())  # not a Job setting
    backend = KubernetesBackend.from_settings(settings, "s", api_client=_FakeClient())
    assert isinstance(backend, WarmKubernetesBackend) and backend.capacity() == 3
    plain = KubernetesBackend.from_settings(StepJobSettings.from_env(BASE), "s", api_client=_FakeClient())
    assert type(plain) is KubernetesBackend  # one Job per step stays the default
    with pytest.raises(ValueError, match="warm_workers must be an integer >= 0"):
        StepJobSettings.from_options({"warm_workers": "-1"}, BASE)
    with pytest.raises(ValueError, match="warm_lease_seconds must be an integer >= 3"):
        StepJobSettings.from_options({"warm_lease_seconds": "1"}, BASE)


class _FakeClient:
    """Enough of an ApiClient for the kubernetes client's API classes to be built (no call is made)."""

    def __init__(self) -> None:
        from kubernetes import client

        self._real = client.ApiClient(client.Configuration())

    def __getattr__(self, name):
        return getattr(self._real, name)
