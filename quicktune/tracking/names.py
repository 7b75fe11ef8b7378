"""Search ids and MLflow filter strings: the two places where a name becomes syntax.

Why this module: a search id names a folder (``WORKDIR/checkpoints/<id>``), a Kubernetes Job and
its labels, and a value inside MLflow filter strings (``tags.`quicktune.search_id` = '<id>'``).
Unchecked, ``--search-id ../../x`` wrote checkpoints outside the workdir and an id with a quote
broke (or changed) the filter ``promote`` sent to MLflow. So:

- :func:`check_search_id` accepts only DNS-1123-label-like ids (what every id quicktune
  generates already is: ``s20261203-070000-ab12``, ``ui-<model>-<hash>``, ``kfp-<run>``);
- :func:`filter_string` is the one way to build a filter: keys are checked, values are quoted
  with a quote character they do not contain. MLflow's filter parser (``SearchUtils``) strips
  the quotes but never unescapes, so doubling or backslash-escaping a quote would change the
  value searched for; a value that cannot be quoted exactly (both quote kinds, a backslash, a
  control character) is refused instead of being searched for approximately.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "SEARCH_ID_RULE",
    "InvalidNameError",
    "check_search_id",
    "is_search_id",
    "filter_literal",
    "filter_string",
    "tag",
]

_SEARCH_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
SEARCH_ID_RULE = (
    "1 to 63 characters: lowercase letters, digits and '-', starting and ending with a letter or "
    "a digit (e.g. digits-2026-01)"
)
_KEY = re.compile(r"^(?:tags|params|attributes|metrics)\.`[A-Za-z0-9_.\-/ ]+`$|^(?:attributes\.)?[a-z_]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidNameError(ValueError):
    """A search id or filter value that quicktune refuses; the message says what is allowed."""


def is_search_id(text: object) -> bool:
    """True when ``text`` is a valid search id (see :data:`SEARCH_ID_RULE`)."""
    return isinstance(text, str) and bool(_SEARCH_ID.match(text))


def check_search_id(text: object) -> str:
    """``text`` if it is a valid search id, else :class:`InvalidNameError`. The message quotes at
    most 80 characters of the input (``repr``: control characters stay visible, not executed)."""
    if is_search_id(text):
        return str(text)
    shown = repr(text if not isinstance(text, str) else text[:80] + ("..." if len(text) > 80 else ""))
    raise InvalidNameError(f"search id {shown} is not valid: {SEARCH_ID_RULE}")


def search_id_for_run(run_id: str) -> str:
    """The search id of a pipeline run (the KFP component's default): ``kfp-<slug of the run id>``,
    so a retried task resumes the same search; a run id with nothing usable gives a hash instead.
    Always a valid search id (:func:`check_search_id`)."""
    import hashlib

    slug = re.sub(r"[^a-z0-9]+", "-", str(run_id).lower()).strip("-")[:40].strip("-")
    return f"kfp-{slug}" if slug else "kfp-" + hashlib.sha1(str(run_id).encode()).hexdigest()[:12]


def filter_literal(value: object) -> str:
    """``value`` as a quoted MLflow filter literal that the parser reads back exactly.

    Single quotes unless the value contains one, then double quotes; a value containing both, a
    backslash (the tokenizer treats ``\\'`` as an escaped quote, MLflow keeps the backslash) or a
    control character is refused with :class:`InvalidNameError`."""
    text = str(value)
    if "\\" in text or _CONTROL.search(text):
        raise InvalidNameError(f"cannot search MLflow for a value with a backslash or control character: {text[:80]!r}")
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise InvalidNameError(f"cannot search MLflow for a value with both quote characters: {text[:80]!r}")


def filter_string(conditions: Mapping[str, object]) -> str:
    """``{"tags.`quicktune.search_id`": sid, ...}`` -> ``"tags.`quicktune.search_id` = 'sid' and ..."``
    (equality only). Keys are written by quicktune, never by users, but are checked all the same."""
    if not conditions:
        raise InvalidNameError("an MLflow filter needs at least one condition")
    parts = []
    for key, value in conditions.items():
        if not _KEY.match(key):
            raise InvalidNameError(f"not a filter key quicktune writes: {key[:80]!r}")
        parts.append(f"{key} = {filter_literal(value)}")
    return " and ".join(parts)


def tag(key: str) -> str:
    """The filter key of tag ``key`` (``tags.`key```)."""
    return f"tags.`{key}`"
