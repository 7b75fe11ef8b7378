"""The one duration grammar of quicktune: CLI flags, MLflow-UI request tags and pipeline parameters.

Why a module of its own: the CLI (``--budget``), the watcher (``quicktune.budget`` tags) and the
KFP component all read durations; they must agree, and ``watch`` must not import ``cli``.

Grammar (case-insensitive, spaces between terms allowed)::

    duration := number              seconds, e.g. "45" or "2.5"
              | term+               each unit at most once, in the order h, m, s
    term     := number unit         unit: h, m or s
    number   := digits [ "." digits ]

So ``90s``, ``20m``, ``4h``, ``1h30m``, ``1h 30m 15s``, ``45``. A unitless number after a term
(``1h30``) is an error, not "30 seconds": the reader cannot know which unit was meant. Zero,
negative and non-finite durations are errors. :func:`format_duration` writes the canonical form
that :func:`parse_duration` reads back exactly.
"""

from __future__ import annotations

import math
import re

__all__ = ["DurationError", "parse_duration", "format_duration", "EXAMPLES"]

EXAMPLES = "90s, 20m, 4h, 1h30m, or a number of seconds"
_NUMBER = r"\d+(?:\.\d+)?"
_TERMS = re.compile(
    rf"^(?:(?P<h>{_NUMBER})\s*h)?\s*(?:(?P<m>{_NUMBER})\s*m)?\s*(?:(?P<s>{_NUMBER})\s*s)?$", re.IGNORECASE
)
_BARE = re.compile(rf"^{_NUMBER}$")


class DurationError(ValueError):
    """Text that is not a duration; the message quotes it and gives examples."""


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (see the module docstring); raises :class:`DurationError`."""
    raw = str(text)
    s = raw.strip()
    if s.startswith("-"):
        raise DurationError(f"{raw!r}: a duration must be positive (examples: {EXAMPLES})")
    if _BARE.match(s):
        seconds = float(s)
    else:
        m = _TERMS.match(s)
        if not s or m is None or not any(m.groupdict().values()):
            hint = ""
            if re.match(rf"^.*[hm]\s*{_NUMBER}$", s, re.IGNORECASE):
                hint = " (a number after a unit needs its own unit, e.g. 1h30m)"
            raise DurationError(f"{raw!r} is not a duration{hint} (examples: {EXAMPLES})")
        g = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
        seconds = g["h"] * 3600 + g["m"] * 60 + g["s"]
    if not math.isfinite(seconds) or seconds <= 0:
        raise DurationError(f"{raw!r}: a duration must be longer than 0 s (examples: {EXAMPLES})")
    return seconds


def format_duration(seconds: float) -> str:
    """The canonical text of ``seconds`` (``"5400s"``), read back exactly by :func:`parse_duration`."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise DurationError(f"{seconds!r}: a duration must be longer than 0 s")
    return f"{float(seconds)!r}s" if not float(seconds).is_integer() else f"{int(seconds)}s"
