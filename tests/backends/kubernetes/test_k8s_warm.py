"""The Kubernetes backend's warm mode: fake-cluster tests (not end-to-end cluster tests).

The protocol pieces in-process against the fake API server (claims by compare-and-set, lease
take-over and the fencing of the worker that lost its claim), then real warm worker pods (local
processes of the fake kubelet, running ``python -m quicktune.backends.kubernetes.worker`` with real
``quicktune step`` runs on the SeaweedFS fixture): a follow-up request prefers the warm pod, a pod
killed mid-epoch loses nothing and no epoch is trained twice, two workers never run one request.
The conformance suite runs in warm mode in ``test_k8s_backend.py``.
"""

from __future__ import annotations

import copy
import re
import time
import uuid
from dataclasses import replace

import pytest

# the fake cluster with S3 credentials, the backend factory and real step requests of the step
# backend's fake-cluster tests (imported: they are fixtures of that module)
from test_k8s_backend import backend_factory, fake_cluster, requests_factory, s3_digits  # noqa: F401, E402, I001

from quicktune.backends.base import RUNNING, SUCCEEDED, StepRequest
from quicktune.backends.kubernetes.api import KubernetesApi
from quicktune.backends.kubernetes.warm import (
    A_ATTEMPTS,
    A_CLAIM,
    A_STATE,
    A_WORKER,
    LABEL_PREFERRED,
    build_request_configmap,
    pool_selector,
)
from quicktune.backends.kubernetes.worker import Worker
from quicktune.backends.testing import wait_done, wait_state
from quicktune.testing.fake_k8s import FakeCluster

pytestmark = pytest.mark.fake_cluster

NS = "default"


def _request(search: str = "s-1", epoch: int = 1) -> StepRequest:
    return StepRequest(
        search_id=search,
        config_id="cfg00001",
        config={"model": "test_vit"},
        data_uri="s3://b/data",
        to_epoch=epoch,
        checkpoint_dir="s3://b/ckpt/cfg00001",
    )


@pytest.fixture
def bare_api(tmp_path):
    with FakeCluster(tmp_path / "cluster") as fake:
        yield fake, KubernetesApi(fake.api_client(), NS, attempts=1)
        assert fake.unsupported_requests == [] and fake.rejected == []


# --------------------------------------------------------------------------------------------
# the protocol, in-process
# --------------------------------------------------------------------------------------------
def test_two_workers_never_both_claim_one_request(bare_api):
    fake, api = bare_api
    api.create_configmap(build_request_configmap(_request(), namespace=NS, owner=None))
    sel = pool_selector(None)
    a, b = Worker(api, "pod-a", sel), Worker(api, "pod-b", sel)
    (seen_a,) = a._claimable(api.list_configmaps(sel))
    (seen_b,) = b._claimable(api.list_configmaps(sel))  # both read the same resourceVersion
    assert a._claim(copy.deepcopy(seen_a)) is not None
    assert b._claim(copy.deepcopy(seen_b)) is None  # 409 Conflict: pod-a was first
    assert fake.configmap_conflicts == 1
    ann = api.read_configmap(_request().id)["metadata"]["annotations"]
    assert (ann[A_STATE], ann[A_WORKER], ann[A_ATTEMPTS]) == ("running", "pod-a", "1")
    assert b._claimable(api.list_configmaps(sel)) == []  # claimed and within its lease


def test_an_unrenewed_claim_is_taken_over_after_the_lease_and_its_old_holder_stops(bare_api):
    _, api = bare_api
    api.create_configmap(build_request_configmap(_request(), namespace=NS, owner=None, max_attempts=2))
    sel = pool_selector(None)
    exits: list[int] = []
    a = Worker(api, "pod-a", sel, lease_seconds=3, exit_process=exits.append)
    b = Worker(api, "pod-b", sel, lease_seconds=3)
    view, token = a._claim(a._claimable(api.list_configmaps(sel))[0])
    assert b._claimable(api.list_configmaps(sel)) == []  # first sight of the claim: the lease starts now
    time.sleep(1.5)
    assert b._claimable(api.list_configmaps(sel)) == []  # not yet expired on pod-b's own clock
    time.sleep(1.7)
    (expired,) = b._claimable(api.list_configmaps(sel))
    taken = b._claim(expired)
    assert taken is not None and taken[1] != token
    assert taken[0].annotations[A_ATTEMPTS] == "2"
    # pod-a (alive but cut off, say) renews: its claim is gone, so it stops its step at once
    import threading

    stop = threading.Event()
    a._renew(view.name, token, stop, None)
    assert exits == [0]
    # a third take-over would exceed max_attempts=2: the request fails instead of running again
    c = Worker(api, "pod-c", sel, lease_seconds=3)
    c._claimable(api.list_configmaps(sel))
    time.sleep(3.2)
    (again,) = c._claimable(api.list_configmaps(sel))
    assert c._claim(again) is None
    ann = api.read_configmap(view.name)["metadata"]["annotations"]
    assert ann[A_STATE] == "failed" and "gave up after 2 attempts" in ann["quicktune.io/message"]
    assert A_CLAIM not in ann


def test_own_preferred_requests_first_others_only_after_the_grace(bare_api):
    _, api = bare_api
    sel = pool_selector(None)
    mine = build_request_configmap(_request(epoch=2), namespace=NS, owner=None, preferred_worker="pod-a")
    plain = build_request_configmap(replace(_request(), config_id="cfg00002"), namespace=NS, owner=None)
    api.create_configmap(plain)
    api.create_configmap(mine)
    a, b = Worker(api, "pod-a", sel, grace_seconds=1.0), Worker(api, "pod-b", sel, grace_seconds=1.0)
    names = lambda objs: [o["metadata"]["name"] for o in objs]  # noqa: E731
    assert names(a._claimable(api.list_configmaps(sel))) == [mine["metadata"]["name"], plain["metadata"]["name"]]
    assert names(b._claimable(api.list_configmaps(sel))) == [plain["metadata"]["name"]]
    time.sleep(1.1)
    assert names(b._claimable(api.list_configmaps(sel))) == [plain["metadata"]["name"], mine["metadata"]["name"]]


# --------------------------------------------------------------------------------------------
# real warm worker pods
# --------------------------------------------------------------------------------------------
def _epochs_logged(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"epoch (\d+): val top-1", text)]


@pytest.mark.slow
def test_a_warm_worker_killed_mid_epoch_loses_nothing_and_trains_no_epoch_twice(
    backend_factory,  # noqa: F811 - fixtures of test_k8s_backend
    requests_factory,  # noqa: F811
    fake_cluster,  # noqa: F811
    s3_env,
):
    """Epoch 1 on a warm pod; the follow-up (to epoch 30) prefers that pod; the pod is killed
    mid-run; its Job's next pod takes the request over once the lease ran out and resumes from the
    newest checkpoint: every epoch 1..30 trained exactly once (counted from both attempts' step
    logs and the final checkpoint's history)."""
    from quicktune.finetune import checkpoint as ck

    backend = backend_factory("kill", warm_workers=1, warm_lease_seconds=6, warm_idle_seconds=600)
    first = requests_factory("ok", "kill-" + uuid.uuid4().hex[:6])
    assert wait_done(backend, backend.start(first)).state == SUCCEEDED
    warm_pod = backend.preferred_worker_of(first.config_id)
    assert warm_pod and fake_cluster.pods.get((NS, warm_pod)) is not None
    follow = replace(first, to_epoch=30)
    sid = backend.start(follow)
    cm = fake_cluster.configmap_objects[(NS, sid)]
    assert cm["metadata"]["labels"][LABEL_PREFERRED] == warm_pod
    wait_state(backend, sid, (RUNNING,), timeout=60)
    fake_cluster.wait_for(
        lambda: (
            len(ck.list_checkpoints(follow.checkpoint_dir)) and ck.list_checkpoints(follow.checkpoint_dir)[-1][0] >= 3
        ),
        timeout=180,
        what="epoch 3's checkpoint",
    )
    assert backend.poll(sid).state == RUNNING
    ann = fake_cluster.configmap_objects[(NS, sid)]["metadata"]["annotations"]
    assert ann[A_WORKER] == warm_pod  # the pod that holds the config took its follow-up
    fake_cluster.delete_pod(warm_pod)  # returns once the process is dead
    killed_at = ck.list_checkpoints(follow.checkpoint_dir)[-1][0]
    assert killed_at < 30
    status = wait_done(backend, sid, 300)
    assert status.state == SUCCEEDED, backend.logs(sid)[-3000:]
    result = backend.result(sid)
    assert [e["epoch"] for e in result["epochs"]] == list(range(killed_at + 1, 31))
    ann = fake_cluster.configmap_objects[(NS, sid)]["metadata"]["annotations"]
    assert ann[A_ATTEMPTS] == "2" and ann[A_WORKER] != warm_pod
    newest, problems = ck.load_newest(follow.checkpoint_dir)
    assert problems == [] and [h["epoch"] for h in newest.manifest["history"]] == list(range(1, 31))
    # what each attempt really trained: the killed pod's captured step log, the second one's log
    killed_log = next((fake_cluster.workdir / "pods" / warm_pod).rglob(f"{sid}/step.log")).read_text()
    trained = _epochs_logged(killed_log) + _epochs_logged(backend.logs(sid))
    assert sorted(trained) == list(range(2, 31)), trained  # epoch 1 was the first step's


@pytest.mark.slow
def test_two_warm_workers_share_a_queue_and_never_run_one_request_twice(
    backend_factory,  # noqa: F811 - fixtures of test_k8s_backend
    requests_factory,  # noqa: F811
    fake_cluster,  # noqa: F811
    s3_env,
):
    backend = backend_factory("pair", warm_workers=2, warm_lease_seconds=8, warm_idle_seconds=600)
    search = "pair-" + uuid.uuid4().hex[:6]
    reqs = [requests_factory("ok", f"{search}-{i}") for i in range(4)]
    ids = [backend.start(r) for r in reqs]
    for sid in ids:
        assert wait_done(backend, sid, 300).state == SUCCEEDED, backend.logs(sid)[-2000:]
    workers = {fake_cluster.configmap_objects[(NS, s)]["metadata"]["annotations"][A_WORKER] for s in ids}
    assert len(backend.pool.created) <= 2
    for sid in ids:
        ran_in = [p for p in (fake_cluster.workdir / "pods").iterdir() if list(p.rglob(f"{sid}/step.log"))]
        assert len(ran_in) == 1, (sid, ran_in)  # one pod ran it (the claims' CAS)
        assert fake_cluster.configmap_objects[(NS, sid)]["metadata"]["annotations"][A_ATTEMPTS] == "1"
    assert workers <= {p.name for p in (fake_cluster.workdir / "pods").iterdir()}
