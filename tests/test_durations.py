"""The one duration grammar (quicktune.durations), shared by the CLI and the watcher."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given, settings, strategies as st

from quicktune.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90s", 90),
        ("20m", 1200),
        ("4h", 14400),
        ("1h30m", 5400),
        ("1h 30m 15s", 5415),
        ("45", 45),
        ("2.5", 2.5),
        ("1.5h", 5400),
        ("  10M ", 600),
        ("1H", 3600),
        ("0.5s", 0.5),
    ],
)
def test_accepted(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "1h30",
        "1m30",
        "",
        " ",
        "abc",
        "-5m",
        "0",
        "0s",
        "0h0m",
        "5x",
        "m",
        "1s2m",
        "1h1h",
        "nan",
        "inf",
        "1e3",
        "--5",
        "5 5",
    ],
)
def test_refused_with_examples(text):
    with pytest.raises(DurationError) as err:
        parse_duration(text)
    assert "90s" in str(err.value)  # the message shows what a duration looks like


def test_a_number_after_a_unit_is_not_seconds():
    """Regression: '1h30' used to mean 1 h 30 s; now it is an error that says how to write it."""
    with pytest.raises(DurationError, match="1h30m"):
        parse_duration("1h30")


def test_cli_and_watcher_read_the_same_grammar():
    from quicktune.cli.search_cmd import parse_duration as cli_parse
    from quicktune.watch.requests import RequestError, Target, parse_request

    assert cli_parse("1h30m") == parse_duration("1h30m")
    with pytest.raises(argparse.ArgumentTypeError):
        cli_parse("1h30")
    target = Target("model", "m", "m", 0, {"quicktune.data": "s3://b/p", "quicktune.budget": "1h30"})
    with pytest.raises(RequestError, match="quicktune.budget"):
        parse_request(target, check_data=False)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-3, max_value=1e7, allow_nan=False, allow_infinity=False))
def test_format_then_parse_is_exact(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99))
def test_terms_add_up(h, m, s):
    parts = [f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v]
    if not parts:
        return
    assert parse_duration("".join(parts)) == h * 3600 + m * 60 + s


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_any_text_is_a_positive_duration_or_a_clear_error(text):
    try:
        value = parse_duration(text)
    except DurationError as exc:
        assert repr(text) in str(exc)
    else:
        assert value > 0
