"""A step keeps the niceness of the search that started it, although it runs in a session of its
own (:mod:`quicktune.backends.local.niceness`): with autogroup scheduling a new session is a new
scheduling group at nice 0, which made ``nice -n 19 quicktune ...`` take half of a 2-core machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

AUTOGROUP = Path("/proc/self/autogroup")
#: the niceness pytest runs at (``nice -n N`` adds to it: a suite started under ``nice`` is not at 0)
BASE = os.nice(0)
CALL = "import sys, pathlib; from quicktune.backends.local.niceness import inherit_niceness as f; "


def _python(code: str, *args: str, nice: int = 0, new_session: bool = False) -> str:
    cmd = [sys.executable, "-c", code, *args]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, start_new_session=new_session).stdout


def test_a_positive_nice_value_is_written_to_the_autogroup(tmp_path):
    target = tmp_path / "autogroup"
    target.write_text("untouched")
    out = _python(CALL + "print(f(pathlib.Path(sys.argv[1])))", str(target), nice=7)
    assert out.strip() == "True" and target.read_text() == str(min(BASE + 7, 19))


def test_nice_zero_leaves_the_autogroup_alone_and_errors_are_ignored(tmp_path, monkeypatch):
    from quicktune.backends.local import niceness

    target = tmp_path / "autogroup"
    target.write_text("untouched")
    monkeypatch.setattr(niceness.os, "nice", lambda inc: 0)  # a process at nice 0, whatever runs the suite
    assert niceness.inherit_niceness(target) is False
    assert target.read_text() == "untouched"
    missing = tmp_path / "no" / "such" / "file"
    assert _python(CALL + "print(f(pathlib.Path(sys.argv[1])))", str(missing), nice=5).strip() == "False"


def _autogroups_writable() -> bool:
    """Autogroup scheduling is on and a process in a new session may raise its own group's nice
    (some containers mount /proc read-only: there the runner's write is skipped, by design)."""
    flag = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if not AUTOGROUP.exists() or not flag.exists() or flag.read_text().strip() != "1":
        return False
    probe = f"open({str(AUTOGROUP)!r}, 'w').write('1')"
    return (
        subprocess.run(
            ["nice", "-n", "1", sys.executable, "-c", probe], capture_output=True, start_new_session=True
        ).returncode
        == 0
    )


autogroups = pytest.mark.skipif(not _autogroups_writable(), reason="no writable autogroup scheduling on this machine")


@autogroups
def test_a_step_started_by_the_runner_in_a_new_session_keeps_the_searchs_niceness(tmp_path):
    """The real runner, started like the local backend starts it (its own session, here under
    nice 9): the step it runs is in an autogroup at nice 9, not at the new session's nice 0."""
    (tmp_path / ".runner.json").write_text(json.dumps({"argv": ["cat", str(AUTOGROUP)], "timeout": 30}))
    out = subprocess.run(
        ["nice", "-n", "9", sys.executable, "-m", "quicktune.backends.local.runner", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    ).stdout
    assert out.strip().endswith(f"nice {min(BASE + 9, 19)}"), out
    # without the fix a new session's group is at nice 0 (what the runner corrects)
    plain = _python(f"print(open({str(AUTOGROUP)!r}).read())", nice=9, new_session=True)
    assert plain.strip().endswith("nice 0"), plain


FORKED = """
import json, sys, time
from pathlib import Path
from quicktune.backends.local import LocalBackend
from quicktune.backends.testing import RealStepRequests

work, data = Path(sys.argv[1]), sys.argv[2]
backend = LocalBackend(work / "work", max_workers=1)  # the default: steps forked by the fork server
try:
    sid = backend.start(RealStepRequests(data, str(work / "ckpt"))("slow", "nice"))
    launch = json.loads((backend.step_dir(sid) / "launch.json").read_text())
    print(launch["via"], open(f"/proc/{launch['pid']}/autogroup").read().strip(), flush=True)
    backend.cancel(sid)
finally:
    backend.close()
"""


@autogroups
def test_a_step_forked_by_the_default_local_backend_keeps_the_searchs_niceness(tmp_path, tiny_image_folder):
    """Where users stand: ``nice -n 9`` on a process that runs the default local backend (fork
    server); the forked step's own session is in an autogroup at nice 9."""
    out = subprocess.run(
        ["nice", "-n", "9", sys.executable, "-c", FORKED, str(tmp_path), str(tiny_image_folder)],
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    via, group = out.stdout.split(maxsplit=1)
    assert via == "fork-server" and group.strip().endswith(f"nice {min(BASE + 9, 19)}"), out.stdout
