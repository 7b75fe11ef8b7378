"""The fork server (:mod:`quicktune.backends.local.forkserver`): warm, shared, with a fallback to
spawning; and the step it forks runs through the step's own entry point, never the command line.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from quicktune.backends.local import LocalBackend
from quicktune.backends.testing import RealStepRequests, wait_done


def test_steps_are_forked_from_one_warm_server(tmp_path, tiny_image_folder):
    """Two steps go through the same fork server (torch imported once); each is still its own
    process group with its own exit record."""
    backend = LocalBackend(tmp_path / "work", max_workers=1)
    try:
        backend.warm_up()  # returns at once; the server imports torch while the caller goes on
        warmed = backend._fork._proc
        assert warmed is not None and warmed.poll() is None and not backend._fork._ready
        reqs = RealStepRequests(str(tiny_image_folder), str(tmp_path / "ckpt"))
        pids = []
        for name in ("fork-a", "fork-b"):
            sid = backend.start(reqs("ok", name))
            assert wait_done(backend, sid).state == "succeeded", backend.logs(sid)
            launch = json.loads((backend.step_dir(sid) / "launch.json").read_text())
            assert launch["via"] == "fork-server"
            assert json.loads((backend.step_dir(sid) / "exit.json").read_text())["returncode"] == 0
            pids.append(launch["pid"])
        assert pids[0] != pids[1]
        server = backend._fork._proc
        assert server is warmed and server.poll() is None  # the warmed-up server, not a second one
        # `python -m quicktune.backends.local.forkserver` runs a module the package did not load first
        assert "RuntimeWarning" not in backend._fork._log_tail()
    finally:
        backend.close()
    assert server.poll() is not None  # close() stops the server


@pytest.mark.slow
@pytest.mark.parametrize("warm_up", [False, True])
def test_fork_server_failure_falls_back_to_spawning(tmp_path, tiny_image_folder, warm_up):
    backend = LocalBackend(tmp_path / "work", max_workers=1)
    backend._fork.python = "/nonexistent/python"  # the server cannot start; the fallback spawn works
    if warm_up:
        backend.warm_up()  # does not raise
    sid = backend.start(RealStepRequests(str(tiny_image_folder), str(tmp_path / "ckpt"))("ok", "fallback"))
    assert wait_done(backend, sid).state == "succeeded", backend.logs(sid)
    assert json.loads((backend.step_dir(sid) / "launch.json").read_text())["via"] == "spawn"
    assert backend._fork is None


def test_the_forked_step_runs_the_step_entry_point_not_the_command_line():
    """The fork server preloads the step's own entry point (in ``quicktune.finetune``) and calls it;
    the ``quicktune`` command line (every subcommand's parser) is never imported, and the local
    package's leaf modules load without the backend (no import circle)."""
    code = (
        "import importlib, sys\n"
        "import quicktune.backends.local.forkserver as f\n"
        "assert 'quicktune.backends.local.backend' not in sys.modules, 'forkserver imports the backend'\n"
        "for name in f._PRELOAD:\n"
        "    if name.startswith('quicktune'): importlib.import_module(name)\n"
        "rc = f._step_entry()(['--config=/nonexistent/c.json', '--data=/nonexistent', '--to-epoch=1',\n"
        "                      '--checkpoint-dir=/nonexistent/ck'])\n"
        "assert rc == 2, rc  # --out missing: a usage error, returned (not raised)\n"
        "bad = sorted(m for m in sys.modules if m == 'quicktune.cli' or m.startswith('quicktune.cli.'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_runner_and_stepdir_load_without_the_backend():
    code = (
        "import sys, quicktune.backends.local.runner, quicktune.backends.local.stepdir\n"
        "bad = [m for m in ('quicktune.backends.local.backend', 'quicktune.backends.local.forkserver') "
        "if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_run_step_main_returns_usage_errors():
    from quicktune.finetune.entry import run_step_main

    assert run_step_main(["--to-epoch=notanint"]) == 2
    assert run_step_main(["--data=/d", "--checkpoint-dir=/c"]) == 2  # --out missing
