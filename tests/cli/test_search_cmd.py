"""The search CLI's own parsing: budgets as durations, and a clear error for a bad one."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from quicktune.cli.search_cmd import parse_duration


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("90s", 90),
        ("20m", 1200),
        ("4h", 14400),
        ("1h30m", 5400),
        ("45", 45),
        ("2m30s", 150),
        ("0.5h", 1800),
        (" 10 m ", 600),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "m", "-5s", "0s", "1d"])
def test_bad_durations_are_refused_with_examples(text):
    with pytest.raises(argparse.ArgumentTypeError, match="duration|longer than 0"):
        parse_duration(text)


def test_search_cli_bad_budget_is_a_clear_error():
    out = subprocess.run(
        [sys.executable, "-m", "quicktune.cli", "search", "--data", "x", "--budget", "ten minutes"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "'ten minutes' is not a duration (examples: 90s, 20m, 4h" in out.stderr
