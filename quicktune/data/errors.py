"""The error types of ``quicktune.data``.

``DatasetError`` is the base: anything that makes a dataset unusable as given. Its subclass
``InvalidDatasetError`` marks the *deterministic* cases - the data themselves are wrong (an empty
or single-class dataset, a file that is not an image, a truncated image, a bad ``labels.csv`` or
split file, a path that leaves the dataset root) - so retrying the same step on the same data
can only fail the same way: a search reports such a step as ``invalid`` and does not retry it.
A plain ``DatasetError`` may be transient or environmental (S3 endpoint unreachable, access
denied, a folder not mounted yet) and keeps the ``quicktune.storage`` error as ``__cause__``.

Messages are safe to show to other users (the watcher posts them to MLflow): they name the
dataset and at most the offending file relative to the dataset root; they never echo file
contents, never list a folder, never hold credentials.
"""

from __future__ import annotations

__all__ = ["DatasetError", "InvalidDatasetError", "BadImageError", "UnsafePathError"]


class DatasetError(ValueError):
    """A dataset cannot be used as given; the message names the dataset, file or object at fault.

    Raised for: an empty or single-class dataset, an unreadable or corrupt image, a split file
    that is missing or lists an absent image, and S3 problems (access denied, no such bucket,
    unreachable endpoint, no credentials). S3 failures keep the ``quicktune.storage`` error as
    ``__cause__`` so callers can tell them apart if they need to.
    """


class InvalidDatasetError(DatasetError):
    """The data are wrong in a way no retry can fix (deterministic): report ``invalid``, do not retry."""


class BadImageError(InvalidDatasetError):
    """One or more files are not fully decodable images (not an image, empty, truncated, corrupt,
    unsupported mode). ``files`` holds the offending paths relative to the dataset root."""

    def __init__(self, message: str, files: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.files = list(files)


class UnsafePathError(InvalidDatasetError):
    """A name given by someone else (an S3 key, a ``labels.csv`` entry) does not map to a path
    inside the folder it must stay in (absolute, ``..``, empty segment, NUL, backslash, ...)."""
