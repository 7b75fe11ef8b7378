"""Where a request made in the MLflow UI may point the watcher: its allowed data roots.

Every MLflow user can tag a registered model, so ``quicktune.data`` and ``quicktune.space`` are
hostile input: without a limit, anyone could make the watcher (and the searches it launches, with
its credentials) read any folder or bucket it can reach, and learn from the answer whether a path
exists. The operator therefore lists the roots a request may use
(``quicktune watch --allowed-data-root PREFIX``, repeatable, or ``$QUICKTUNE_ALLOWED_DATA_ROOTS``,
comma-separated):

- ``s3://`` allows every bucket the watcher's credentials can read; ``s3://bucket`` one bucket;
  ``s3://bucket/prefix`` keys under that prefix, on ``/`` boundaries (``s3://b/team`` allows
  ``s3://b/team/x`` and ``s3://b/team`` itself, not ``s3://b/team-b``).
- An absolute local folder allows the files under it, compared after resolving ``..`` and
  symbolic links on both sides (a symlink inside a root that points outside it is refused).

The default is ``s3://`` alone: local paths are refused unless a root allows them (a watcher pod
has nothing local worth training on, and a local watcher's file system is where the secrets
are). ``quicktune.space`` takes ``builtin:NAME`` always and a YAML file only under a local root.

A URI that is refused is refused before anything touches the file system or S3, so the answer
says nothing about what exists outside the roots.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ENV_ALLOWED_ROOTS = "QUICKTUNE_ALLOWED_DATA_ROOTS"
DEFAULT_ALLOWED_ROOTS: tuple[str, ...] = ("s3://",)

# S3 bucket names (AWS rules, also what SeaweedFS and MinIO accept)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class RootError(ValueError):
    """A URI outside the allowed roots, or one that cannot be compared safely; the message never
    says whether the thing exists."""


def has_control_chars(text: str) -> bool:
    """Control, format (bidi overrides, zero-width) and line/paragraph separators: characters that
    break argument lists, log lines and tag values or disguise what a person reads."""
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in text)


def _s3_parts(uri: str) -> tuple[str, str]:
    """``(bucket, key prefix without trailing /)`` of an ``s3://`` URI, refusing anything whose
    meaning could differ between this check and the S3 client: empty, ``.`` or ``..`` segments,
    backslashes, ``?``/``#``, control characters, a bucket name S3 would not accept."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    key = key.rstrip("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise RootError("not a valid S3 bucket name")
    if has_control_chars(key) or any(c in key for c in "\\?#"):
        raise RootError("the S3 key has characters that are not allowed here")
    if key and any(seg in ("", ".", "..") for seg in key.split("/")):
        raise RootError("the S3 key has an empty, '.' or '..' segment")
    return bucket, key


@dataclass(frozen=True)
class AllowedRoots:
    """The roots a request may use (see the module docstring). Build with :meth:`parse`."""

    s3: tuple[tuple[str, str], ...] = ()  # (bucket, key prefix); bucket "" = every bucket
    local: tuple[str, ...] = ()  # resolved absolute folders

    @classmethod
    def parse(cls, roots: Iterable[str]) -> AllowedRoots:
        """Roots as an operator writes them; :class:`ValueError` for one that is not a root."""
        s3: list[tuple[str, str]] = []
        local: list[str] = []
        for raw in roots:
            root = raw.strip()
            if not root:
                continue
            if has_control_chars(root):
                raise ValueError(f"allowed data root {root!r}: control characters")
            if root.startswith("s3://"):
                if root.rstrip("/") == "s3:":
                    s3.append(("", ""))
                    continue
                try:
                    s3.append(_s3_parts(root))
                except RootError as exc:
                    raise ValueError(f"allowed data root {root!r}: {exc}") from None
            elif "://" in root:
                raise ValueError(f"allowed data root {root!r}: only s3:// URIs and absolute local folders")
            elif not os.path.isabs(root):
                raise ValueError(f"allowed data root {root!r}: a local root must be an absolute path")
            else:
                local.append(os.path.realpath(root))
        return cls(tuple(dict.fromkeys(s3)), tuple(dict.fromkeys(local)))

    @classmethod
    def default(cls) -> AllowedRoots:
        return cls.parse(DEFAULT_ALLOWED_ROOTS)

    @classmethod
    def from_settings(cls, flags: Iterable[str] | None = None, env: Mapping[str, str] | None = None) -> AllowedRoots:
        """``--allowed-data-root`` values if any, else ``$QUICKTUNE_ALLOWED_DATA_ROOTS`` if set, else
        the default. Giving roots replaces the default (``s3://`` is then allowed only if listed)."""
        flags = [f for f in (flags or []) if f.strip()]
        if flags:
            return cls.parse(flags)
        text = (os.environ if env is None else env).get(ENV_ALLOWED_ROOTS, "")
        if text.strip():
            return cls.parse(text.split(","))
        return cls.default()

    def describe(self) -> str:
        """The roots, for the operator's own log (never written to MLflow)."""
        out = ["s3:// (every bucket)" if not b else f"s3://{b}/{p}".rstrip("/") for b, p in self.s3]
        return ", ".join(out + list(self.local)) or "none"

    # --- checks -----------------------------------------------------------------------------
    def check_data(self, uri: str) -> str:
        """The URI a search should use (a local path resolved) if ``uri`` lies under a root, else
        :class:`RootError`. Reads nothing (S3: no request at all; local: only the path's own
        components are resolved), and the answer for a path outside the roots is the same whether
        or not it exists."""
        if has_control_chars(uri):
            raise RootError("control characters in the URI")
        if uri.startswith("s3://"):
            bucket, key = _s3_parts(uri)
            for rb, rp in self.s3:
                if rb == "" or (rb == bucket and (not rp or key == rp or key.startswith(rp + "/"))):
                    return uri
            raise RootError("not under a data root this watcher allows")
        return self.check_local(uri)

    def check_local(self, path: str) -> str:
        """The resolved path if it lies under a local root, else :class:`RootError`."""
        if has_control_chars(path):
            raise RootError("control characters in the path")
        if "://" in path:
            raise RootError("only s3:// URIs and absolute local paths")
        if not os.path.isabs(path):
            raise RootError("a local path must be absolute")
        if not self.local:
            raise RootError("local paths are not allowed by this watcher")
        # realpath: '..' and every symlink resolved (only under the prefix the path itself names)
        real = os.path.realpath(path)
        for root in self.local:
            if real == root or real.startswith(root.rstrip("/") + "/"):
                return real
        raise RootError("not under a data root this watcher allows")
