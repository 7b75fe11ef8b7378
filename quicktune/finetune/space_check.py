"""Check that a search space only proposes configs the finetuning step can train.

``quicktune.space`` checks that a space is well formed (any knob names, any values). A search runs
its configs through ``quicktune step``, which rejects an unknown knob, a value of the wrong type or
out of range, and an unknown model with status ``invalid`` -- one wasted step per config, found
only after the search has started. :func:`check_space_for_step` finds all of these before the
first step, from the same source of truth as the step: every value a space can produce is run
through the step's own knob validators (``quicktune.finetune.config.KNOBS``), and every model
choice through the model hub (``quicktune.hub.model_info``: the curated catalogue and every timm
architecture, deprecated aliases included; no weight download, no network).

A categorical or boolean knob is checked value by value. A numeric range is checked at both
ends (the step's limits are intervals, so the ends passing means every value between passes);
a ``float`` range for an integer knob is refused, since it samples non-integers.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any

from quicktune.finetune.config import KNOBS, InvalidConfigError
from quicktune.space import Param, SearchSpace, SpaceError, _short

__all__ = ["MODEL_KNOB", "check_space_for_step", "space_problems"]

MODEL_KNOB = "model"  # the knob the step builds the network from (resolve_config requires it)


def _knob_kind(name: str) -> str:
    """``int``, ``float``, ``bool`` or ``str``: the JSON type the step expects, from the knob's
    default (every knob but ``model`` has one)."""
    default = KNOBS[name][1]
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return "str"


def _step_says(check: Callable[[str, Any], Any], name: str, value: Any) -> str | None:
    """The step validator's complaint about ``value`` (without its ``knob 'x': `` prefix), or None."""
    try:
        check(name, value)
    except InvalidConfigError as exc:
        text = str(exc)
        prefix = f"knob {name!r}: "
        return text[len(prefix) :] if text.startswith(prefix) else text
    return None


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _type_problem(kind: str, value: Any) -> str | None:
    """Stricter than the step's coercion: an integer knob wants ints (``16.0`` is a typo-prone
    float), a float knob numbers, a bool knob booleans, a string knob strings."""
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{_short(value)} is not an integer"
    if kind in ("int", "float") and isinstance(value, str) and _looks_numeric(value):
        return (
            f"{_short(value)} is a string, not a number (YAML reads 1e-3 as a string: write 1.0e-3, "
            f"or {value.strip()} without quotes if it has a dot)"
        )
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"{_short(value)} is not a number"
    if kind == "bool" and not isinstance(value, bool):
        return f"{_short(value)} is not true/false"
    if kind == "str" and not isinstance(value, str):
        return f"{_short(value)} is not a string"
    return None


def _knob_problems(p: Param) -> Iterator[str]:
    check = KNOBS[p.name][0]
    kind = _knob_kind(p.name)
    if p.type == "bool" and kind != "bool":
        yield f"type bool, but the step expects {'a string' if kind == 'str' else 'a number'}"
        return
    if p.type in ("categorical", "bool"):
        values = p.choices if p.type == "categorical" else (False, True)
        for v in values:
            why = _type_problem(kind, v) or _step_says(check, p.name, v)  # both start with the value
            if why:
                yield why if len(why) <= 200 else why[:197] + "..."
        return
    if kind not in ("int", "float"):
        yield f"a {p.type} range, but the step expects {'true/false' if kind == 'bool' else 'a string'}"
        return
    if kind == "int" and p.type == "float":
        yield "a float range for an integer knob (use type int or a list of choices)"
        return
    for end, v in (("low", p.low), ("high", p.high)):
        if v is None:  # a numeric Param always has both ends (SearchSpace.from_dict); typed as optional
            continue
        why = _step_says(check, p.name, int(v) if p.type == "int" else float(v))
        if why:
            yield f"'{end}' {why}"


def _model_problems(p: Param, check_models: bool) -> Iterator[str]:
    if p.only_active_with:
        yield "the model knob cannot be conditional (every config needs a model)"
    if p.type != "categorical":
        yield f"must be a list of timm model names (type categorical), not type {p.type}"
        return
    for v in p.choices:
        why = _step_says(KNOBS[MODEL_KNOB][0], MODEL_KNOB, v)
        if why:
            yield why
        elif check_models:
            from quicktune import hub

            try:
                hub.model_info(v)
            except hub.HubError as exc:
                yield str(exc)


def space_problems(space: SearchSpace, *, check_models: bool = True) -> list[str]:
    """Every reason the finetuning step would refuse configs of ``space``, one line each
    (naming the parameter and the offending value), in parameter order; empty when none."""
    problems: list[str] = []
    names = set(space.names)
    if MODEL_KNOB not in names:
        problems.append(f"no parameter {MODEL_KNOB!r}: the step needs a timm model name in every config")
    elif space.model_param != MODEL_KNOB:
        problems.append(f"model_param is {_short(space.model_param)}, but the step reads the model from {MODEL_KNOB!r}")
    for p in space.params:
        if p.name not in KNOBS:
            close = difflib.get_close_matches(p.name, list(KNOBS), n=3, cutoff=0.7)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            problems.append(
                f"parameter {_short(p.name)}: not a knob of the finetuning step ({hint}knobs: docs/search-space.md)"
            )
            continue
        found = _model_problems(p, check_models) if p.name == MODEL_KNOB else _knob_problems(p)
        problems.extend(f"parameter {p.name!r}: {why}" for why in found)
    return problems


def check_space_for_step(space: SearchSpace, source: str | None = None, *, check_models: bool = True) -> None:
    """Raise :class:`~quicktune.space.SpaceError` listing every problem of :func:`space_problems`
    (prefixed with ``source``, e.g. the file name); return None when the step accepts every
    config the space can produce. ``check_models=False`` skips the model lookup (which imports
    timm, a few seconds)."""
    problems = space_problems(space, check_models=check_models)
    if problems:
        where = source or f"space {space.name!r}"
        listed = "\n".join(f"  - {why}" for why in problems)
        raise SpaceError(f"{where}: {len(problems)} problem(s) for the finetuning step:\n{listed}")
