"""The one error type of ``quicktune.hub``."""

from __future__ import annotations


class HubError(ValueError):
    """A model or its weights cannot be provided; the message names the model and the source."""
