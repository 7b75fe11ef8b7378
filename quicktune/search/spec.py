"""What a search is asked to do (``SearchSpec``), what it reports (``SearchResult``), and why it
stopped when it cannot go on (``SearchError``).

The spec is recorded on the search's parent run (params and ``spec.json``). A resumed search must
keep the fields that define *what* is searched (:data:`IDENTITY_FIELDS`); the budget, the number
of workers and the retry settings may change from one session to the next.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from quicktune.backends.base import STEP_PRECISIONS
from quicktune.tracking.names import InvalidNameError, check_search_id
from quicktune.tracking.registry import RegistryError, is_models_uri, parse_models_uri
from quicktune.tracking.secrets import safe_uri

# Spec fields that define *what* is searched: a resumed search must keep them. The data is
# compared by its fingerprint (the same folder by another path is the same data; another dataset
# under the same path is not), see quicktune.search.resume; data_uri is compared here only for
# searches that recorded no fingerprint.
IDENTITY_FIELDS = (
    "data_uri",
    "space",
    "max_epochs",
    "seed",
    "optimizer",
    "image_size",
    "device",
    "precision",
    "checkpoint_uri",
    "meta_artifact",
)


class SearchError(RuntimeError):
    """The search cannot start or continue; the message says why."""


@dataclass
class SearchSpec:
    """What to search and within which budget. ``budget_seconds`` is wall-clock time for the whole
    search (summed over resumed sessions); ``budget_epochs`` / ``budget_gpu_seconds`` optionally
    cap the number of epochs trained / the summed step cost in seconds (GPU-seconds on GPUs)."""

    data_uri: str
    budget_seconds: float
    space: str = "builtin:cpu"
    search_id: str = ""
    workers: int = 1
    max_epochs: int = 10
    seed: int = 0
    optimizer: str = "quicktune"
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    # folder or s3:// prefix of a `quicktune metatrain` artifact, or models:/NAME@ALIAS | models:/NAME/VERSION;
    # None: quicktune-surrogate@champion on the tracking server when it exists, else the shipped one
    meta_artifact: str | None = None
    image_size: int | None = None
    device: str = "cpu"
    # training precision of every step (fp32, fp16, bf16, auto); None: the step's default (auto).
    # An identity field: one configuration's curve is never continued in another precision.
    precision: str | None = None
    checkpoint_uri: str | None = None
    workdir: str = ".quicktune"
    budget_epochs: int | None = None
    budget_gpu_seconds: float | None = None
    step_retries: int = 2
    step_retry_delay: float = 5.0
    fail_fast_steps: int = 6  # stop when this many first steps all fail and none succeeded
    prefetch: int = 1  # steps asked ahead and queued in the backend, so a freed worker starts at once
    poll_interval: float = 0.25

    def __post_init__(self) -> None:
        if not self.search_id:
            self.search_id = time.strftime("s%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
        try:  # it names folders, Jobs and MLflow filter values: never a path or a quote
            check_search_id(self.search_id)
        except InvalidNameError as exc:
            raise SearchError(str(exc)) from None
        if not (self.budget_seconds and self.budget_seconds > 0):
            raise SearchError(f"budget_seconds must be > 0, got {self.budget_seconds!r}")
        if self.workers < 1:
            raise SearchError(f"workers must be >= 1, got {self.workers}")
        if self.max_epochs < 1:
            raise SearchError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.precision is not None and self.precision not in STEP_PRECISIONS:
            raise SearchError(f"precision must be one of {', '.join(STEP_PRECISIONS)}, got {self.precision!r}")
        if is_models_uri(self.meta_artifact):  # it names a cache folder: strict, before anything else
            try:
                parse_models_uri(str(self.meta_artifact))
            except RegistryError as exc:
                raise SearchError(f"meta_artifact: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data_uri"] = safe_uri(d["data_uri"])
        if d.get("meta_artifact"):
            d["meta_artifact"] = safe_uri(d["meta_artifact"])
        return d


@dataclass
class SearchResult:
    search_id: str
    parent_run_id: str
    status: str  # succeeded | failed
    message: str
    best_config_id: str | None
    best_config: dict[str, Any] | None
    best_score: float | None
    best_epoch: int | None
    best_run_id: str | None
    configs_tried: int
    epochs_done: int
    elapsed_seconds: float
    session_seconds: float
    controller_busy_seconds: float
    step_seconds: float
    resumed: bool
    tracking_uri: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
