"""The step folder (:mod:`quicktune.backends.local.stepdir`): the records a backend decides state from.

Why: a restarted backend knows a step only through these files, so a record must read back as
written, a half-written one must read as absent (never raise), and a launch cut short must be
completed from the runner's own record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hypothesis import given, settings, strategies as st

from quicktune.backends.local import stepdir

_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=50, deadline=None)
@given(_json)
def test_atomic_write_reads_back_and_leaves_no_temporary_file(tmp_path_factory, obj):
    d = tmp_path_factory.mktemp("step")
    stepdir.write_json_atomic(d / "x.json", obj)
    assert stepdir.read_json(d / "x.json") == obj
    assert sorted(p.name for p in d.iterdir()) == ["x.json"]


def test_missing_or_half_written_records_read_as_absent(tmp_path):
    assert stepdir.read_json(tmp_path / "exit.json") is None
    (tmp_path / "exit.json").write_text('{"returncode": 0, "tim')
    assert stepdir.read_json(tmp_path / "exit.json") is None


def test_provisional_launch_is_completed_from_the_runner_record(tmp_path):
    assert stepdir.read_launch(tmp_path) is None
    stepdir.write_json_atomic(tmp_path / stepdir.LAUNCH, {"pid": None, "proc_start": None, "attempt": 0})
    assert stepdir.read_launch(tmp_path)["pid"] is None
    stepdir.record_runner(tmp_path)
    launch = stepdir.read_launch(tmp_path)
    assert launch["pid"] == os.getpid() and launch["proc_start"] == stepdir.process_start_time(os.getpid())
    assert launch["attempt"] == 0
    # a launch record with its pid is not overridden by the runner's
    stepdir.write_json_atomic(tmp_path / stepdir.LAUNCH, {"pid": 1, "proc_start": 5})
    assert stepdir.read_launch(tmp_path)["pid"] == 1


def test_exit_record(tmp_path):
    stepdir.record_exit(tmp_path, 3)
    rec = json.loads((tmp_path / stepdir.EXIT).read_text())
    assert rec["returncode"] == 3 and rec["timed_out"] is False and "by" not in rec
    stepdir.record_exit(tmp_path, None, timed_out=True, by="runner")
    rec = json.loads((tmp_path / stepdir.EXIT).read_text())
    assert rec["returncode"] is None and rec["timed_out"] is True and rec["by"] == "runner"


def test_log_tail_is_bounded_and_marked(tmp_path):
    assert stepdir.read_log_tail(tmp_path, 10) == ""
    (tmp_path / stepdir.LOG).write_bytes(b"short\n")
    assert stepdir.read_log_tail(tmp_path, 10) == "short\n"
    (tmp_path / stepdir.LOG).write_bytes(b"a" * 100 + b"\xff" + b"end")
    tail = stepdir.read_log_tail(tmp_path, 10)
    assert tail.startswith("[... log truncated ...]\n") and tail.endswith("end") and len(tail) < 40


def test_process_start_time_tells_a_finished_process(tmp_path):
    assert stepdir.process_start_time(os.getpid()) is not None
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert stepdir.process_start_time(p.pid) is None
