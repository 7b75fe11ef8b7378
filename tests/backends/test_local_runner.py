"""The spawned runner (:mod:`quicktune.backends.local.runner`): records its pid, the step's exit
code, and a timeout after killing its own process group -- without any backend alive."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from quicktune.backends.local import stepdir


def _runner(d, argv, timeout=None, env=None):
    stepdir.write_json_atomic(d / stepdir.RUNNER_SPEC, {"argv": argv, "env_overrides": env or {}, "timeout": timeout})
    with open(d / stepdir.LOG, "ab") as log:
        p = subprocess.run(
            [sys.executable, "-m", "quicktune.backends.local.runner", str(d)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(d),
            start_new_session=True,
            timeout=120,
        )
    return p.returncode, json.loads((d / stepdir.EXIT).read_text())


def test_records_the_step_exit_code_and_its_own_pid(tmp_path):
    code = "import os, sys; sys.exit(int(os.environ['QT_TEST_RC']))"
    rc, exit_info = _runner(tmp_path, [sys.executable, "-c", code], env={"QT_TEST_RC": "3"})
    assert rc == 0 and exit_info["returncode"] == 3 and exit_info["timed_out"] is False
    assert json.loads((tmp_path / stepdir.RUNNER).read_text())["pid"] > 0


def test_a_step_that_cannot_start_exits_127(tmp_path):
    rc, exit_info = _runner(tmp_path, [str(tmp_path / "no-such-program")])
    assert rc == 0 and exit_info["returncode"] == 127
    assert "cannot start the step" in (tmp_path / stepdir.LOG).read_text()


def test_timeout_kills_the_group_and_says_so(tmp_path):
    rc, exit_info = _runner(tmp_path, [sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    assert rc == -9  # the runner killed its own process group, itself included
    assert exit_info["timed_out"] is True and exit_info["by"] == "runner" and exit_info["returncode"] is None
    assert "exceeded its timeout" in (tmp_path / stepdir.LOG).read_text()


def test_usage():
    p = subprocess.run(
        [sys.executable, "-m", "quicktune.backends.local.runner"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "usage" in p.stderr


@pytest.fixture(autouse=True)
def _no_inherited_step_env(monkeypatch):
    monkeypatch.delenv("QT_TEST_RC", raising=False)
