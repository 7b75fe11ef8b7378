"""A reusable conformance suite every :class:`~quicktune.backends.base.TrialBackend` must pass.

Like Optuna's reusable storage tests: a backend's test module subclasses
:class:`BackendConformance` and provides two fixtures::

    class TestLocalBackend(BackendConformance):
        @pytest.fixture
        def make_backend(self, tmp_path):
            # each call: a *new* backend instance over the same underlying state (workdir,
            # namespace, ...), as a restarted controller would build it
            return lambda: LocalBackend(tmp_path / "work", max_workers=2)

        @pytest.fixture
        def make_request(self, tiny_image_folder, tmp_path):
            return RealStepRequests(data_uri=str(tiny_image_folder), checkpoint_root=str(tmp_path / "ckpt"))

``make_request(kind, search_id)`` returns a real :class:`StepRequest` of one of the kinds in
:data:`KINDS`; :class:`RealStepRequests` builds them for real ``quicktune step`` runs on a tiny
dataset with the test-sized ``test_vit`` model. Nothing here is mocked: every step is a real
finetuning process (or a real crashing one).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from quicktune.backends.base import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, StepRequest, TrialBackend

KINDS = ("ok", "slow", "invalid", "crash")
DEFAULT_WAIT_SECONDS = 240.0


@dataclass
class RealStepRequests:
    """Real step requests on a tiny image folder (or s3:// prefix).

    - ``ok``: test_vit for one epoch at 16 px: a few seconds, mostly process start;
    - ``slow``: the same model for many epochs: runs long enough to be observed and cancelled;
    - ``invalid``: a model name timm does not know: the step reports status ``invalid``;
    - ``crash``: the step process dies before it can report (a fresh Python cannot start with a
      malformed PYTHONHASHSEED; a forked one fails on a malformed QUICKTUNE_MAX_EPOCHS, which the
      step still reads as a fallback for one version, see ``quicktune.finetune.entry``; when that
      fallback goes, this kind needs another trigger): non-zero exit, no RESULT.json, an
      explanation in the logs.
    """

    data_uri: str
    checkpoint_root: str
    image_size: int = 16
    slow_epochs: int = 400

    def __call__(self, kind: str, search_id: str) -> StepRequest:
        if kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r}; one of {KINDS}")
        config = {"model": "test_vit", "lr": 0.001, "opt": "adamw", "batch_size": 16, "sched": "cosine"}
        to_epoch, extra_env = 1, {}
        if kind == "slow":
            to_epoch = self.slow_epochs
        elif kind == "invalid":
            config = {**config, "model": "no_such_model_xyz"}
        elif kind == "crash":
            # dies before any result: a fresh interpreter refuses the hash seed, a forked one (the
            # local backend's fork server) fails parsing the schedule length
            extra_env = {"PYTHONHASHSEED": "not-a-number", "QUICKTUNE_MAX_EPOCHS": "not-a-number"}
        from quicktune.space import config_id

        cid = config_id(config)
        return StepRequest(
            search_id=search_id,
            config_id=cid,
            config=config,
            data_uri=self.data_uri,
            to_epoch=to_epoch,
            checkpoint_dir=f"{self.checkpoint_root.rstrip('/')}/{search_id}/{cid}",
            seed=0,
            device="cpu",
            image_size=self.image_size,
            extra_env=extra_env,
        )


def wait_done(
    backend: TrialBackend, step_id: str, timeout: float = DEFAULT_WAIT_SECONDS, check: Callable[[], None] | None = None
):
    """Poll until the step is terminal; ``check`` runs after every poll (e.g. a capacity check)."""
    deadline = time.monotonic() + timeout
    while True:
        status = backend.poll(step_id)
        if check is not None:
            check()
        if status.done:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(
                f"step {step_id} not done after {timeout} s (state {status.state}); "
                f"logs:\n{backend.logs(step_id)[-3000:]}"
            )
        time.sleep(0.2)


def wait_state(backend: TrialBackend, step_id: str, states: tuple[str, ...], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = backend.poll(step_id).state
        if state in states:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"step {step_id} never reached {states} (now {state})")
        time.sleep(0.1)


def local_attempts_started_and_rerun(step_dirs: Iterable[Path]) -> list[Path]:
    """For :class:`~quicktune.backends.local.LocalBackend` step folders: the logs of earlier
    attempts (``step.log.N``) that hold more than the backend's own ``[quicktune local backend]``
    lines, i.e. attempts that got a process and were run again anyway. The contract is an empty
    list: only a launch cut short before any process existed may run a second time."""
    bad = []
    for d in step_dirs:
        for log in sorted(Path(d).glob("step.log.*")):
            lines = log.read_text(errors="replace").splitlines()
            if not lines or not all(ln.startswith("[quicktune local backend]") for ln in lines):
                bad.append(log)
    return bad


def _sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


class BackendConformance:
    """The contract, as tests. Subclasses provide ``make_backend`` and ``make_request`` fixtures."""

    wait_seconds = DEFAULT_WAIT_SECONDS

    @pytest.fixture
    def make_backend(self) -> Callable[[], TrialBackend]:  # pragma: no cover - must be overridden
        raise NotImplementedError("a conformance test module must provide a make_backend fixture")

    @pytest.fixture
    def make_request(self) -> Callable[[str, str], StepRequest]:  # pragma: no cover - must be overridden
        raise NotImplementedError("a conformance test module must provide a make_request fixture")

    # --- a real step, start to result ----------------------------------------------------------
    def test_start_poll_result_logs_and_idempotent_restart(self, make_backend, make_request):
        backend = make_backend()
        req = make_request("ok", _sid("ok"))
        sid = backend.start(req)
        assert sid == req.id, "start() must return the deterministic step id"
        assert backend.poll(sid).state in (PENDING, RUNNING, SUCCEEDED)
        status = wait_done(backend, sid, self.wait_seconds)
        assert status.state == SUCCEEDED, f"{status}; logs:\n{backend.logs(sid)[-3000:]}"
        result = backend.result(sid)
        assert result["status"] == "ok"
        epochs = result["epochs"]
        assert [e["epoch"] for e in epochs] == [req.to_epoch]
        assert 0.0 <= float(epochs[-1]["score"]) <= 1.0 and float(epochs[-1]["cost"]) > 0
        assert isinstance(backend.logs(sid), str)
        assert sid not in backend.active()
        # starting a finished step again re-adopts it: same id, same result, nothing new running
        assert backend.start(req) == sid
        assert backend.poll(sid).state == SUCCEEDED
        assert sid not in backend.active()
        assert backend.result(sid)["epochs"] == epochs
        # a new backend instance sees the finished step too
        other = make_backend()
        assert other.poll(sid).state == SUCCEEDED
        assert other.result(sid)["epochs"] == epochs

    def test_unknown_step_raises_keyerror(self, make_backend):
        backend = make_backend()
        with pytest.raises(KeyError):
            backend.poll("qt-no-such-step-00000000-e1-00000000")

    # --- re-adoption, idempotent start, cancel -------------------------------------------------
    def test_running_step_is_readopted_not_duplicated_then_cancelled(self, make_backend, make_request):
        backend = make_backend()
        req = make_request("slow", _sid("slow"))
        sid = backend.start(req)
        wait_state(backend, sid, (RUNNING,))
        assert backend.start(req) == sid  # idempotent: no second process/Job
        assert backend.active().count(sid) == 1
        # a restarted controller builds a new backend: the running step is re-adopted
        restarted = make_backend()
        assert restarted.active().count(sid) == 1
        assert restarted.poll(sid).state == RUNNING
        assert restarted.start(req) == sid
        assert restarted.active().count(sid) == 1
        restarted.cancel(sid)
        restarted.cancel(sid)  # idempotent
        assert wait_state(restarted, sid, (CANCELLED,), timeout=60) == CANCELLED
        assert wait_state(backend, sid, (CANCELLED,), timeout=30) == CANCELLED
        assert sid not in restarted.active() and sid not in backend.active()
        assert restarted.result(sid)["status"] != "ok"
        # a cancelled step runs again when started again (the controller only does that on purpose)
        assert restarted.start(req) == sid
        assert restarted.poll(sid).state in (PENDING, RUNNING)
        restarted.cancel(sid)
        assert wait_state(restarted, sid, (CANCELLED,), timeout=60) == CANCELLED

    # --- failures ------------------------------------------------------------------------------
    def test_invalid_config_reports_invalid_and_rerun_runs_again(self, make_backend, make_request):
        backend = make_backend()
        req = make_request("invalid", _sid("inv"))
        sid = backend.start(req)
        status = wait_done(backend, sid, self.wait_seconds)
        assert status.state == FAILED
        result = backend.result(sid)
        assert result["status"] == "invalid", result
        assert result["message"] and result["epochs"] == []
        assert "invalid" in status.message
        # rerun() runs a finished step again under the same id (the controller's retry)
        assert backend.rerun(req) == sid
        assert backend.poll(sid).state in (PENDING, RUNNING)
        # an invalid step can finish between two calls (a warm worker takes it in milliseconds), so
        # the promise is: a re-run step is listed as active until it has finished, never neither
        assert sid in backend.active() or backend.poll(sid).state == FAILED
        assert wait_done(backend, sid, self.wait_seconds).state == FAILED
        assert backend.result(sid)["status"] == "invalid"
        # rerun() of a step never started starts it
        fresh = make_request("invalid", _sid("inv2"))
        assert backend.rerun(fresh) == fresh.id
        assert backend.poll(fresh.id).state in (PENDING, RUNNING, FAILED)
        backend.cancel(fresh.id)

    def test_crashing_process_fails_with_logs(self, make_backend, make_request):
        backend = make_backend()
        req = make_request("crash", _sid("crash"))
        sid = backend.start(req)
        status = wait_done(backend, sid, self.wait_seconds)
        assert status.state == FAILED
        assert status.message
        result = backend.result(sid)
        assert result["status"] == "failed" and result["epochs"] == [] and result["message"]
        logs = backend.logs(sid)
        assert "PYTHONHASHSEED" in logs or "QUICKTUNE_MAX_EPOCHS" in logs or "not-a-number" in logs, logs
        # a crash is a finished step: starting it again re-adopts it, it does not run again
        assert backend.start(req) == sid
        assert backend.poll(sid).state == FAILED
        assert make_backend().poll(sid).state == FAILED

    # --- capacity ------------------------------------------------------------------------------
    def test_never_runs_more_than_capacity(self, make_backend, make_request):
        backend = make_backend()
        cap = backend.capacity()
        assert cap >= 1
        search = _sid("cap")
        reqs = [make_request("invalid", f"{search}-{i}") for i in range(cap + 1)]
        ids = [backend.start(r) for r in reqs]
        assert len(set(ids)) == len(ids)

        def check() -> None:
            running = sum(backend.poll(i).state == RUNNING for i in ids)
            assert running <= cap, f"{running} steps running with capacity {cap}"

        for i in ids:
            assert wait_done(backend, i, self.wait_seconds, check=check).state == FAILED
            assert backend.result(i)["status"] == "invalid"
