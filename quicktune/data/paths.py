"""Confine names given by others (S3 keys, ``labels.csv`` entries) to the folder they must stay in.

Why: an S3 key ``prefix//abs/x.png`` leaves ``rel = "/abs/x.png"`` and ``root / rel`` is then
``/abs/x.png`` (pathlib drops ``root`` before an absolute part); a key or a label with ``..``
climbs out. A mirror that writes - and later deletes - such paths, or a dataset that reads them,
touches files outside its root. Every place where an outside name becomes a local path goes
through :func:`confined`, which either returns a path inside ``root`` or raises
:class:`UnsafePathError`; there is no third outcome (``tests/data/test_data_paths.py`` fuzzes it).

The rule is strict rather than clever: a name must be a *clean* relative POSIX path - no leading
``/``, no empty, ``.`` or ``..`` segment, no backslash, no NUL or other control character, at most
255 bytes a segment and 4096 in all. Such a name maps to exactly one file and two different
names never map to the same file, so a mirror stays one-to-one with its bucket. Names that are
not clean are refused, never "repaired" (``a//b`` and ``a/b`` would otherwise collide).

Messages show a name only in its escaped, shortened form (:func:`safe_form`).
"""

from __future__ import annotations

import os
from pathlib import Path

from quicktune.data.errors import UnsafePathError

__all__ = ["path_problem", "clean_relpath", "confined", "safe_form", "shown", "is_inside", "canonical_uri"]

MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096


def safe_form(name: str, limit: int = 120) -> str:
    """``name`` as a quoted, ASCII-escaped string of bounded length (safe to put in a message)."""
    text = ascii(str(name))
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def shown(name: str, limit: int = 200) -> str:
    """``name`` as it may appear in a message: unchanged when short and printable (the usual
    file name), else its escaped form - a file name with a newline cannot forge message lines."""
    text = str(name)
    return text if len(text) <= limit and text.isprintable() else safe_form(text, limit)


def path_problem(rel: str) -> str | None:
    """Why ``rel`` is not a clean relative POSIX path, or None when it is."""
    if not isinstance(rel, str):
        return "is not a string"
    if not rel:
        return "is empty"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in rel):
        return "contains a control character (NUL, newline, ...)"
    if "\\" in rel:
        return "contains a backslash"
    if rel.startswith("/"):
        return "is an absolute path"
    try:
        encoded = rel.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if len(encoded) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    for part in rel.split("/"):
        if part == "":
            return "has an empty path segment ('//' or a trailing '/')"
        if part in (".", ".."):
            return f"has a {part!r} path segment"
        if len(part.encode("utf-8")) > MAX_SEGMENT_BYTES:
            return f"has a path segment longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def clean_relpath(rel: str, what: str = "path") -> str:
    """``rel`` unchanged when it is a clean relative POSIX path (see the module docstring),
    else :class:`UnsafePathError` saying why, with ``rel`` in its escaped form."""
    why = path_problem(rel)
    if why is not None:
        raise UnsafePathError(f"{what} {safe_form(rel)} {why}; only clean relative paths are accepted")
    return rel


def is_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``root`` or below it, comparing real paths (symlinks resolved)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def confined(root: str | os.PathLike[str], rel: str, *, resolve: bool = False, what: str = "path") -> Path:
    """``root / rel``, guaranteed to lie inside ``root``; else :class:`UnsafePathError`.

    ``rel`` must be a clean relative path (:func:`clean_relpath`), which keeps the result inside
    ``root`` lexically. With ``resolve=True`` symlinks are followed too: a path whose real location
    (or whose nearest existing parent's real location) is outside ``root``'s is refused - use it
    where quicktune itself owns the folder (the S3 mirror), so nothing is written or deleted
    through a link. Datasets are checked lexically only: a dataset may be assembled from symlinked
    class folders, and following the user's own links is what they asked for.
    """
    rel = clean_relpath(rel, what)
    path = Path(root).joinpath(*rel.split("/"))
    if resolve and not is_inside(path, root):
        raise UnsafePathError(f"{what} {safe_form(rel)} leads outside its folder through a symbolic link")
    return path


def canonical_uri(uri: str | os.PathLike[str]) -> str:
    """One spelling per dataset location, for comparing data URIs (e.g. on resume).

    Local: the absolute real path (``~`` expanded, symlinks resolved, no trailing slash), so
    ``./data/x``, ``/abs/data/x/`` and a symlink to it compare equal. S3: ``s3://bucket/prefix``
    without a trailing slash. The dataset *contents* are compared by ``ImageDataset.fingerprint``,
    which never depends on how the folder was named.
    """
    text = os.fspath(uri)
    if isinstance(text, str) and text.startswith("s3://"):
        return text.rstrip("/") if text.count("/") > 2 else text
    return os.path.realpath(os.path.expanduser(text))
