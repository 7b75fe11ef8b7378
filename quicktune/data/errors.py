"""The one error type of ``quicktune.data``."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset cannot be used as given; the message names the dataset, file or object at fault.

    Raised for: an empty or single-class dataset, an unreadable or corrupt image, a split file
    that is missing or lists an absent image, and S3 problems (access denied, no such bucket,
    unreachable endpoint, no credentials). S3 failures keep the ``quicktune.storage`` error as
    ``__cause__`` so callers can tell them apart if they need to.
    """
