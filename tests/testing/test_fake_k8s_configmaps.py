"""The fake API server's ConfigMaps behave like the kube-apiserver's: optimistic concurrency on
``resourceVersion`` (the warm mode's claims depend on it), 409 on a duplicate create, 404s, owner
garbage collection. Through the official client at the HTTP boundary (``KubernetesApi``)."""

from __future__ import annotations

import copy
import threading

import pytest

from quicktune.backends.kubernetes.api import Conflict, KubernetesApi, NotFound
from quicktune.testing.fake_k8s import FakeCluster

pytestmark = pytest.mark.fake_cluster


@pytest.fixture
def api(tmp_path):
    with FakeCluster(tmp_path / "cluster") as fake:
        yield fake, KubernetesApi(fake.api_client(), "default", attempts=1)
        assert fake.unsupported_requests == []


def _cm(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"k": "v"}}, "data": data}


def test_update_with_a_stale_resource_version_is_a_409_conflict(api):
    fake, k8s = api
    created = k8s.create_configmap(_cm("req", state="queued"))
    rv0 = created["metadata"]["resourceVersion"]
    mine, theirs = copy.deepcopy(created), copy.deepcopy(created)
    mine["data"]["state"] = "claimed-by-a"
    updated = k8s.replace_configmap(mine)
    assert int(updated["metadata"]["resourceVersion"]) > int(rv0)
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    theirs["data"]["state"] = "claimed-by-b"
    with pytest.raises(Conflict, match="the object has been modified"):
        k8s.replace_configmap(theirs)  # read the same version: the second writer loses
    assert k8s.read_configmap("req")["data"]["state"] == "claimed-by-a"
    assert fake.configmap_conflicts == 1
    # without a resourceVersion the update is unconditional (as for real ConfigMaps)
    blind = _cm("req", state="overwritten")
    assert k8s.replace_configmap(blind)["data"]["state"] == "overwritten"
    assert fake.configmaps[("default", "req")] == {"state": "overwritten"}  # what the kubelet would mount


def test_create_twice_get_missing_delete_and_list(api):
    _, k8s = api
    k8s.create_configmap(_cm("a"))
    with pytest.raises(Conflict):
        k8s.create_configmap(_cm("a"))
    with pytest.raises(NotFound):
        k8s.read_configmap("nope")
    with pytest.raises(NotFound):
        k8s.replace_configmap(_cm("nope"))
    k8s.create_configmap({**_cm("b"), "metadata": {"name": "b", "labels": {"k": "w"}}})
    assert [o["metadata"]["name"] for o in k8s.list_configmaps("k=v")] == ["a"]
    k8s.delete_configmap("a")
    with pytest.raises(NotFound):
        k8s.delete_configmap("a")
    assert k8s.read_configmap_or_none("a") is None


def test_concurrent_compare_and_set_has_exactly_one_winner(api):
    _, k8s = api
    read = k8s.create_configmap(_cm("race", owner=""))
    wins, losses = [], []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        obj = copy.deepcopy(read)
        obj["data"]["owner"] = f"w{i}"
        barrier.wait()
        try:
            k8s.replace_configmap(obj)
            wins.append(i)
        except Conflict:
            losses.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    assert k8s.read_configmap("race")["data"]["owner"] == f"w{wins[0]}"


def test_invalid_configmaps_are_rejected(api):
    fake, k8s = api
    from quicktune.backends.kubernetes.api import KubernetesApiError

    with pytest.raises(KubernetesApiError) as err:
        k8s.create_configmap({**_cm("bad"), "data": {"k": 1}})  # data values are strings
    assert err.value.status == 422
    fake.rejected.clear()


def test_configmaps_owned_by_a_deleted_pod_are_garbage_collected(api):
    fake, k8s = api
    uid = fake.add_pod("controller")
    owned = _cm("owned")
    owned["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": "controller", "uid": uid}]
    k8s.create_configmap(owned)
    k8s.create_configmap(_cm("free"))
    fake.delete_pod("controller")
    assert k8s.read_configmap_or_none("owned") is None
    assert k8s.read_configmap_or_none("free") is not None
