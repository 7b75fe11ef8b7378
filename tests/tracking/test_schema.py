"""tracking/schema.py is the one place MLflow names are spelled (see its docstring)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import quicktune
from quicktune.tracking import schema

PACKAGE = Path(quicktune.__file__).parent
NAME = re.compile(r"quicktune\.[a-z_]+")


def _names() -> dict[str, str]:
    return {k: v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str)}


def _is_module(dotted: str) -> bool:
    rest = dotted.split(".", 1)[1]
    return (PACKAGE / f"{rest}.py").exists() or (PACKAGE / rest).is_dir()


def test_no_mlflow_name_is_spelled_outside_the_schema():
    """Every string literal ``quicktune.<word>`` in the package is a module name or lives in
    schema.py: a tag spelled inline can drift from its writer without any test noticing."""
    inline = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(schema.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and NAME.fullmatch(node.value)
                and not _is_module(node.value)
            ):
                inline.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value}")
    assert inline == []


def test_tag_names_are_distinct_and_in_the_quicktune_namespace():
    tags = {k: v for k, v in _names().items() if k.startswith("TAG_")}
    assert len(set(tags.values())) == len(tags), "two TAG_* constants share a name"
    assert all(NAME.fullmatch(v) and len(v) <= 250 for v in tags.values())


def test_the_watcher_and_the_layout_use_the_schema_constants():
    from quicktune.metadataset import harvest
    from quicktune.tracking import layout
    from quicktune.watch import requests

    for module in (layout, requests):
        for key, value in vars(module).items():
            if key.startswith("TAG_"):
                assert value is getattr(schema, key), f"{module.__name__}.{key} is not schema.{key}"
    assert schema.TAG_FINGERPRINT in harvest.FINGERPRINT_KEYS  # harvest reads what the search writes
