"""The MLflow layout of a search (see ``quicktune.tracking.layout``), retries, secret redaction."""

from quicktune.tracking.layout import ConfigRecord, Observation, SearchRun, SearchTracker, default_tracking_uri, flatten
from quicktune.tracking.names import InvalidNameError, check_search_id, filter_literal, filter_string
from quicktune.tracking.retry import InfrastructureError, RetryPolicy, check_reachable, is_tag_write_race, is_transient
from quicktune.tracking.secrets import redact, safe_uri, secret_values

__all__ = [
    "ConfigRecord",
    "Observation",
    "SearchRun",
    "SearchTracker",
    "default_tracking_uri",
    "flatten",
    "InfrastructureError",
    "RetryPolicy",
    "is_tag_write_race",
    "is_transient",
    "redact",
    "safe_uri",
    "secret_values",
    "InvalidNameError",
    "check_search_id",
    "filter_literal",
    "filter_string",
    "check_reachable",
    "search_id_for_run",
]
