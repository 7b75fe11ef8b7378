"""``quicktune watch --retrain-every N`` (quicktune/watch/retrain.py): when a retrain is launched,
that it runs as its own process (its own session: a signal to the watcher's group does not reach it,
and the watcher never waits on it), and that a failing retrain is logged, not raised. The process is
a stand-in command, not a real meta-training (that is tested in tests/metadataset/)."""

from __future__ import annotations

import logging
import os
import sys
import time

from quicktune.watch.retrain import Retrainer
from quicktune.watch.watcher import Watcher, WatcherConfig


class _Stub(Retrainer):
    def __init__(self, *a, code: str = "import time; time.sleep(0.5)", **kw):
        super().__init__(*a, **kw)
        self.code = code

    def argv(self):
        return [sys.executable, "-c", self.code]


def _wait(r: Retrainer, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while r.proc is not None and time.monotonic() < deadline:
        rc = r.poll()
        if rc is not None:
            return rc
        time.sleep(0.05)
    raise AssertionError("the retrain process did not end")


def test_launch_after_every_n_searches_one_at_a_time(tmp_path):
    r = _Stub("http://mlflow:5000", 2, tmp_path)
    assert not r.search_finished() and r.proc is None  # 1 of 2
    t0 = time.monotonic()
    assert r.search_finished()  # 2 of 2: launched, and the call did not wait for it
    assert time.monotonic() - t0 < 0.4 and r.proc is not None
    assert r.proc.pid != os.getpid() and os.getsid(r.proc.pid) != os.getsid(0)  # its own process and session
    assert not r.search_finished() and not r.search_finished()  # due again, but one is still running
    assert _wait(r) == 0
    assert r.should_launch() and r.search_finished() and r.launches == 2  # the due retrain starts next time
    _wait(r)


def test_a_failing_retrain_is_logged_not_raised(tmp_path, caplog):
    r = _Stub("http://mlflow:5000", 1, tmp_path, code="import sys; print('boom'); sys.exit(3)")
    with caplog.at_level(logging.ERROR):
        assert r.search_finished()
        assert _wait(r) == 3
    assert "exit 3" in caplog.text and "boom" in caplog.text
    missing = _Stub("http://mlflow:5000", 1, tmp_path)
    missing.argv = lambda: [str(tmp_path / "no-such-program")]
    with caplog.at_level(logging.ERROR):
        assert not missing.search_finished()  # could not start: logged, the watcher goes on
    assert "could not start" in caplog.text


def test_the_real_command_line():
    r = Retrainer("http://user@mlflow:5000", 5, "/tmp/x", with_shipped=True)
    assert r.argv()[1:] == [
        "-m",
        "quicktune.cli",
        "metatrain",
        "--from-mlflow=http://user@mlflow:5000",
        "--min-new=5",
        "--with-shipped",
    ]


def test_the_watcher_retrains_only_when_asked(tmp_path):
    class Launcher:
        name = "none"

    off = Watcher(WatcherConfig(tracking_uri="http://x"), Launcher(), client=object())
    on = Watcher(
        WatcherConfig(tracking_uri="http://x", retrain_every=3, state_dir=str(tmp_path)), Launcher(), client=object()
    )
    assert off.retrainer is None and on.retrainer is not None and on.retrainer.every == 3
