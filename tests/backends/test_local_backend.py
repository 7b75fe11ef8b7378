"""LocalBackend (:mod:`quicktune.backends.local.backend`) against the backend conformance suite,
with real ``quicktune step`` processes, in both modes (fork server and spawn), and its crash cases.

Cost: ~40-60 s on 2 busy cores (each real step pays ~4-8 s of Python/torch/timm start-up).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

import pytest

from quicktune.backends.base import FAILED, PENDING, RUNNING
from quicktune.backends.local import LocalBackend, process_start_time
from quicktune.backends.testing import (
    BackendConformance,
    RealStepRequests,
    local_attempts_started_and_rerun,
    wait_done,
    wait_state,
)


class TestLocalBackendConformance(BackendConformance):
    """The default: steps forked from the warm fork server."""

    @pytest.fixture
    def make_backend(self, tmp_path):
        backends = []

        def make():
            backends.append(LocalBackend(tmp_path / "work", max_workers=2))
            return backends[-1]

        yield make
        for b in backends:
            b.close()

    @pytest.fixture
    def make_request(self, tiny_image_folder, tmp_path):
        return RealStepRequests(data_uri=str(tiny_image_folder), checkpoint_root=str(tmp_path / "ckpt"))


@pytest.mark.slow
class TestLocalBackendSpawnConformance(TestLocalBackendConformance):
    """Fresh processes per step (QUICKTUNE_FORK_SERVER=0, or a custom step command). Slow (a fresh
    interpreter per step); the fork-server variant above, the default path, runs in ``make test``."""

    @pytest.fixture
    def make_backend(self, tmp_path):
        return lambda: LocalBackend(tmp_path / "work", max_workers=2, fork_server=False)


def test_files_state_and_no_secrets_on_disk(tmp_path, tiny_image_folder, monkeypatch):
    """The step's state lives in files; env secrets reach the step by inheritance, never on disk. The
    request's typed max_epochs reaches the step on its command line (StepRequest.argv) and sets the
    schedule length the step records."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-123")
    monkeypatch.delenv("QUICKTUNE_MAX_EPOCHS", raising=False)
    backend = LocalBackend(tmp_path / "work", max_workers=1, threads_per_worker=1)
    req = RealStepRequests(str(tiny_image_folder), str(tmp_path / "ckpt"))("ok", "files")
    req = dataclasses.replace(req, max_epochs=7)
    sid = backend.start(req)
    assert wait_done(backend, sid).state == "succeeded", backend.logs(sid)
    d = backend.step_dir(sid)
    launch = json.loads((d / "launch.json").read_text())
    assert launch["pid"] > 0
    assert launch["argv"] == [
        *backend.step_command,
        *req.argv(out=str(d / "RESULT.json"), config_path=str(d / "config.json")),
    ]
    assert "--max-epochs=7" in launch["argv"] and "QUICKTUNE_MAX_EPOCHS" not in json.dumps(launch)
    manifest = json.loads((tmp_path / "ckpt" / "files" / req.config_id / "epoch-0001.json").read_text())
    assert manifest["max_epochs"] == 7
    assert json.loads((d / "exit.json").read_text())["returncode"] == 0
    assert json.loads((d / ".runner.json").read_text())["env_overrides"]["OMP_NUM_THREADS"] == "1"
    for f in d.rglob("*"):
        if f.is_file():
            assert b"very-secret-value-123" not in f.read_bytes(), f


def test_dead_runner_without_result_is_lost_and_rerun_on_start(tmp_path, tiny_image_folder):
    """A runner killed from outside (no exit record, no result) polls FAILED as lost; start() runs it
    again, while a step that crashed by itself is re-adopted, not re-run (see the suite)."""
    backend = LocalBackend(tmp_path / "work", max_workers=1)
    req = RealStepRequests(str(tiny_image_folder), str(tmp_path / "ckpt"))("slow", "lost")
    sid = backend.start(req)
    wait_state(backend, sid, (RUNNING,))
    launch = json.loads((backend.step_dir(sid) / "launch.json").read_text())
    os.killpg(launch["pid"], signal.SIGKILL)  # the whole group, runner included: nothing records an exit
    status = wait_done(LocalBackend(tmp_path / "work"), sid, timeout=30)
    assert status.state == FAILED and status.message.startswith("lost")
    assert backend.start(req) == sid
    assert wait_state(backend, sid, (RUNNING,)) == RUNNING
    assert (backend.step_dir(sid) / "step.log.0").exists()  # the first attempt's log is kept
    backend.cancel(sid)


def test_timeout_fails_the_step_with_status_timeout(tmp_path, tiny_image_folder):
    backend = LocalBackend(tmp_path / "work", max_workers=1, step_timeout=2.0)
    req = RealStepRequests(str(tiny_image_folder), str(tmp_path / "ckpt"))("slow", "timeout")
    sid = backend.start(req)
    status = wait_done(backend, sid, timeout=60)
    assert status.state == FAILED and "timeout" in status.message
    result = backend.result(sid)
    assert result["status"] == "failed" and result.get("timeout") is True
    assert "timeout" in backend.logs(sid)
    launch = json.loads((backend.step_dir(sid) / "launch.json").read_text())
    assert process_start_time(launch["pid"]) is None  # the process group is gone


def test_recycled_pid_is_not_mistaken_for_the_step(tmp_path):
    """Re-adoption checks the start time, not just the pid."""
    assert process_start_time(os.getpid()) is not None
    backend = LocalBackend(tmp_path / "work")
    assert not backend._alive("x", {"pid": os.getpid(), "proc_start": -1})
    assert backend._alive("x", {"pid": os.getpid(), "proc_start": process_start_time(os.getpid())})


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="max_workers"):
        LocalBackend(tmp_path, max_workers=0)
    with pytest.raises(KeyError):
        LocalBackend(tmp_path).logs("../etc")


@pytest.mark.slow
@pytest.mark.parametrize("fork_server", [True, False])
def test_backend_killed_mid_launch_never_launches_twice(tmp_path, tiny_image_folder, fork_server):
    """The launching backend dies after the fork but before recording the pid (only the provisional
    launch record exists): a new backend adopts the runner from its own runner.json instead of
    launching the step again; a provisional record with no runner at all is a launch that never got
    a process: after the grace period the next poll queues it again and it runs (not a failure)."""
    backend = LocalBackend(tmp_path / "work", max_workers=1, fork_server=fork_server)
    reqs = RealStepRequests(str(tiny_image_folder), str(tmp_path / "ckpt"))
    sid = backend.start(reqs("slow", "midlaunch"))
    try:
        wait_state(backend, sid, (RUNNING,))
        d = backend.step_dir(sid)
        launch = json.loads((d / "launch.json").read_text())
        deadline = time.monotonic() + 30  # a spawned runner writes it once its interpreter is up
        while not (d / "runner.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads((d / "runner.json").read_text())["pid"] == launch["pid"]
        (d / "launch.json").write_text(json.dumps({**launch, "pid": None, "proc_start": None}))
        again = LocalBackend(tmp_path / "work", max_workers=1, fork_server=fork_server)
        assert again.poll(sid).state == RUNNING
        assert again.start(reqs("slow", "midlaunch")) == sid
        assert (d / "step.log").read_text().count("[quicktune local backend]") == 1
        again.cancel(sid)
        assert wait_done(again, sid, timeout=60).state == "cancelled"
        assert process_start_time(launch["pid"]) is None  # cancel found the runner through runner.json
    finally:
        backend.close()

    sid2 = backend.start(reqs("ok", "never-forked"))
    assert wait_done(backend, sid2).state == "succeeded"
    d2 = backend.step_dir(sid2)
    (d2 / "exit.json").unlink()
    (d2 / "RESULT.json").unlink()
    (d2 / "runner.json").unlink()
    stale = json.loads((d2 / "launch.json").read_text())
    (d2 / "launch.json").write_text(
        json.dumps({**stale, "pid": None, "proc_start": None, "started_at": time.time() - 3600})
    )
    (d2 / "step.log").write_text("[quicktune local backend] the launch line, and nothing else\n")
    fresh = LocalBackend(tmp_path / "work", max_workers=1, fork_server=fork_server)
    try:
        assert fresh.poll(sid2).state in (PENDING, RUNNING)  # queued again and launched, not "lost"
        assert wait_done(fresh, sid2).state == "succeeded"
        assert json.loads((d2 / "launch.json").read_text())["attempt"] == 1
        assert (d2 / "step.log.0").read_text().startswith("[quicktune local backend] the launch line")
        assert local_attempts_started_and_rerun([d2]) == []  # the re-run attempt never had a process
        (d2 / "step.log.7").write_text("[quicktune local backend] launch\nepoch 1: loss 0.3\n")
        assert local_attempts_started_and_rerun([d2]) == [d2 / "step.log.7"]  # one that had is reported
        (d2 / "step.log.7").unlink()
        assert fresh.start(reqs("ok", "never-forked")) == sid2  # finished now: re-adopted, not run again
        assert not (d2 / "step.log.1").exists()
    finally:
        fresh.close()
