"""Search requests made in the MLflow UI: tags on a registered model (or an experiment).

A person creates a registered model named after the model they want and sets tags on it::

    quicktune.data     = s3://bucket/prefix        (dataset URI, required)
    quicktune.budget   = 2h                         (wall-clock budget, required; 90s, 20m, 1h30m)
    quicktune.space    = builtin:cpu                (optional search space)
    quicktune.workers  = 2                          (optional, steps at once)
    quicktune.max_epochs = 10                       (optional, epochs per configuration at most)
    quicktune.budget_epochs / quicktune.image_size  (optional, mainly for small demos and tests)
    quicktune.request  = start                      (``cancel`` stops it)

The same tags on an experiment work too: the search's runs then go into that experiment and the
winner is registered under ``quicktune.model_name`` (default: the experiment's name).

The watcher writes back, on the same object: ``quicktune.status`` (queued / running / succeeded /
failed / cancelled / ``rejected: <reason>``), ``quicktune.search_id``, ``quicktune.parent_run``
(a link to the search's parent run), ``quicktune.incumbent`` (best validation score so far),
``quicktune.champion_version``, ``quicktune.message``, and its bookkeeping ``quicktune.claim`` /
``quicktune.heartbeat`` / ``quicktune.searches_done``.

Everything here is hostile input (any MLflow user can set these tags and name these objects):
data and space must lie under the watcher's allowed roots (:mod:`quicktune.watch.roots`), names
that would break an argument list or a log line are refused, and a rejection message written back
to MLflow says what is wrong in general terms only: it never lists folders or echoes a file (the
details go to the watcher's own log, redacted).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quicktune.durations import DurationError, format_duration, parse_duration
from quicktune.tracking.schema import (  # noqa: F401
    TAG_BUDGET,
    TAG_BUDGET_EPOCHS,
    TAG_CHAMPION_VERSION,
    TAG_CLAIM,
    TAG_DATA,
    TAG_HEARTBEAT,
    TAG_IMAGE_SIZE,
    TAG_INCUMBENT,
    TAG_LAUNCHER,
    TAG_MAX_EPOCHS,
    TAG_MESSAGE,
    TAG_META_ARTIFACT,
    TAG_MODEL_NAME,
    TAG_PARENT_RUN,
    TAG_REQUEST,
    TAG_SEARCH_ID,
    TAG_SEARCHES_DONE,
    TAG_SPACE,
    TAG_STATUS,
    TAG_WORKERS,
)
from quicktune.watch.roots import AllowedRoots, RootError, has_control_chars

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
REJECTED = "rejected"
ACTIVE = (QUEUED, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

MODEL, EXPERIMENT = "model", "experiment"

# MLflow's own limits (registered_models.name is VARCHAR(256) in its SQL store;
# mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH is 500): a longer name could never be used
MAX_MODEL_NAME_LENGTH = 256
MAX_EXPERIMENT_NAME_LENGTH = 500
_BUILTIN_SPACE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class RequestError(ValueError):
    """A request that cannot run; the message is written back as ``rejected: <message>``."""


@dataclass
class Target:
    """The MLflow object carrying a request: a registered model or an experiment."""

    kind: str  # MODEL | EXPERIMENT
    key: str  # model name | experiment id
    name: str  # model name | experiment name
    created: int  # creation timestamp (ms), part of the request's identity
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r}"

    @property
    def model_name(self) -> str:
        """Where the winner will be registered."""
        if self.kind == MODEL:
            return self.name
        return self.tags.get(TAG_MODEL_NAME, "").strip() or self.name

    @property
    def status(self) -> str:
        return self.tags.get(TAG_STATUS, "").strip()

    @property
    def status_word(self) -> str:
        return self.status.split(":", 1)[0].strip()

    @property
    def request(self) -> str:
        return self.tags.get(TAG_REQUEST, "").strip().lower()

    @property
    def generation(self) -> int:
        try:
            return int(self.tags.get(TAG_SEARCHES_DONE, "0") or 0)
        except ValueError:
            return 0


@dataclass
class SearchRequest:
    """A validated request: everything the launcher needs to start the search."""

    target: Target
    search_id: str
    model_name: str
    data_uri: str
    budget_seconds: float
    space: str = "builtin:cpu"
    workers: int = 1
    max_epochs: int = 10
    budget_epochs: int | None = None
    image_size: int | None = None
    experiment: str = "quicktune"
    meta_artifact: str | None = None  # a checked models:/ URI (tag quicktune.meta_artifact)

    def search_args(self, tracking_uri: str) -> list[str]:
        """Arguments of ``quicktune search`` (after the subcommand) for this request."""
        # --flag=value: a value can never be taken for an option, whatever it starts with
        args = [
            f"--data={self.data_uri}",
            f"--budget={format_duration(self.budget_seconds)}",
            f"--space={self.space}",
            f"--workers={self.workers}",
            f"--max-epochs={self.max_epochs}",
            f"--search-id={self.search_id}",
            f"--model-name={self.model_name}",
            f"--tracking-uri={tracking_uri}",
            f"--experiment={self.experiment}",
            "--no-progress",
        ]
        if self.budget_epochs:
            args += [f"--budget-epochs={self.budget_epochs}"]
        if self.image_size:
            args += [f"--image-size={self.image_size}"]
        if self.meta_artifact:
            args += [f"--meta-artifact={self.meta_artifact}"]
        return args


def search_id_for(target: Target) -> str:
    """A deterministic search id: the same request always maps to the same search, so a duplicate
    start (two watchers, a restarted watcher) resumes the one search instead of starting another.
    Identity = (kind, key, creation time, number of searches this object already ran). The id is
    a valid Kubernetes name (the controller Job is named after it)."""
    raw = f"{target.kind}|{target.key}|{target.created}|{target.generation}"
    digest = hashlib.sha1(raw.encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", target.model_name.lower()).strip("-")[:30].strip("-") or "model"
    return f"ui-{slug}-{digest}"


def _positive_int(tags: Mapping[str, str], key: str, default: int | None, maximum: int | None = None) -> int | None:
    text = tags.get(key, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise RequestError(f"{key}={text!r} is not a whole number") from None
    if value < 1:
        raise RequestError(f"{key}={text!r} must be >= 1")
    if maximum is not None and value > maximum:
        raise RequestError(f"{key}={text!r} is more than this watcher allows ({maximum})")
    return value


def check_name(what: str, name: str, limit: int = MAX_MODEL_NAME_LENGTH) -> None:
    """Refuse a name that would be read as an option by the launched ``quicktune search`` (a leading
    ``-``), that carries control/format characters or line breaks (argument lists, logs, tags), or
    that is empty or longer than ``limit``. The message does not repeat the name."""
    if not name.strip():
        raise RequestError(f"{what} is empty")
    if len(name) > limit:
        raise RequestError(f"{what} is too long ({len(name)} characters; at most {limit})")
    if name.startswith("-"):
        raise RequestError(f"{what} must not start with '-'")
    if has_control_chars(name):
        raise RequestError(f"{what} contains control characters or line breaks")


def check_space(space: str, roots: AllowedRoots) -> str:
    """The space reference a search should use: ``builtin:NAME`` (a bare built-in name is read as
    one), or a YAML file under an allowed local root (resolved). Anything that does not load is
    refused as "not a valid search-space file": a YAML error would quote the file's first lines,
    which is how a credentials file would be read back through the MLflow UI."""
    from quicktune.space import load_space

    ref = space[len("builtin:") :] if space.startswith("builtin:") else space
    if _BUILTIN_SPACE.fullmatch(ref):
        space = f"builtin:{ref}"
    elif space.startswith("builtin:"):
        raise RequestError(f"{TAG_SPACE}: not a built-in space name (builtin:cpu, builtin:paper)")
    else:
        try:
            space = roots.check_local(space)
        except RootError as exc:
            raise RequestError(
                f"{TAG_SPACE}: {exc} (use builtin:cpu or builtin:paper, or ask the watcher's operator)"
            ) from None
    try:
        load_space(space)
    except Exception as exc:  # noqa: BLE001 - any failure to load is a bad request
        log.warning("%s=%s: %s", TAG_SPACE, space, _detail(exc))
        if space.startswith("builtin:"):
            raise RequestError(f"{TAG_SPACE}: no built-in space {ref!r} (builtin:cpu, builtin:paper)") from None
        raise RequestError(f"{TAG_SPACE}: not a valid search-space file (details in the watcher's log)") from None
    return space


def parse_request(
    target: Target,
    *,
    experiment: str = "quicktune",
    max_workers: int = 16,
    check_data: bool = True,
    roots: AllowedRoots | None = None,
) -> SearchRequest:
    """Validate a request's tags; raise :class:`RequestError` with a reason a person can act on.
    The dataset is opened (as the search would) so an unknown or unreadable one is rejected now,
    not minutes later inside a search. ``roots``: where data and space files may lie (default:
    :meth:`AllowedRoots.default`, S3 only)."""
    roots = roots if roots is not None else AllowedRoots.default()
    tags = target.tags
    if target.kind == EXPERIMENT:
        check_name("the experiment name", target.name, MAX_EXPERIMENT_NAME_LENGTH)
        if target.model_name != target.name:
            check_name(TAG_MODEL_NAME, target.model_name)
    else:
        check_name("the model name", target.name)
    data = tags.get(TAG_DATA, "").strip()
    if not data:
        raise RequestError(f"tag {TAG_DATA} (dataset URI) is missing")
    budget_text = tags.get(TAG_BUDGET, "").strip()
    if not budget_text:
        raise RequestError(f"tag {TAG_BUDGET} (e.g. 2h) is missing")
    try:
        budget = parse_duration(budget_text)
    except DurationError as exc:
        raise RequestError(f"{TAG_BUDGET}: {exc}") from None
    workers = _positive_int(tags, TAG_WORKERS, 1, max_workers)
    max_epochs = _positive_int(tags, TAG_MAX_EPOCHS, 10, 1000)
    budget_epochs = _positive_int(tags, TAG_BUDGET_EPOCHS, None)
    image_size = _positive_int(tags, TAG_IMAGE_SIZE, None, 1024)
    space = check_space(tags.get(TAG_SPACE, "").strip() or "builtin:cpu", roots)
    meta_artifact = check_meta_artifact(tags.get(TAG_META_ARTIFACT, "").strip())
    data = check_data_root(data, roots)
    if check_data:
        check_dataset(data)
    exp = target.name if target.kind == EXPERIMENT else experiment
    return SearchRequest(
        target=target,
        search_id=search_id_for(target),
        model_name=target.model_name,
        data_uri=data,
        budget_seconds=budget,
        space=space,
        workers=int(workers or 1),
        max_epochs=int(max_epochs or 10),
        budget_epochs=budget_epochs,
        image_size=image_size,
        experiment=exp,
        meta_artifact=meta_artifact,
    )


def check_meta_artifact(text: str) -> str | None:
    """The request's meta-artifact: only a registered version (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``, parsed strictly), never a folder or bucket path -- a request must not
    make the watcher read files the requester could not. Empty: the search's default."""
    from quicktune.tracking.registry import RegistryError, parse_models_uri

    if not text:
        return None
    if has_control_chars(text):
        raise RequestError(f"{TAG_META_ARTIFACT} contains control characters or line breaks")
    try:
        return parse_models_uri(text).uri
    except RegistryError as exc:
        raise RequestError(f"{TAG_META_ARTIFACT}: {exc} (only models:/NAME@ALIAS or models:/NAME/VERSION)") from None


def check_data_root(uri: str, roots: AllowedRoots) -> str:
    """The data URI a search should use (local: resolved) if it lies under an allowed root."""
    from quicktune.tracking.secrets import safe_uri

    try:
        return roots.check_data(uri)
    except RootError as exc:
        shown = safe_uri(uri) if not has_control_chars(uri) else "the URI"
        log.warning("%s=%s refused (%s); allowed roots: %s", TAG_DATA, shown, exc, roots.describe())
        raise RequestError(f"{TAG_DATA}: {shown}: {exc}") from None


def check_dataset(uri: str) -> None:
    """Open the dataset the way a search does; unknown, empty or unreadable (S3 access denied) ->
    :class:`RequestError` naming the URI (never its credentials) and the kind of problem, never
    the exception text (it can list class folders or image names, or quote a labels.csv); that
    goes to the watcher's log, redacted. Call :func:`check_data_root` first: this reads whatever
    ``uri`` names."""
    import os

    from quicktune.data import open_dataset
    from quicktune.tracking.secrets import safe_uri

    shown = safe_uri(uri)
    if not uri.startswith("s3://"):  # the local checks open_dataset makes, in words of our own
        if not os.path.exists(uri):
            raise RequestError(f"dataset cannot be read: {shown}: not found")
        if not os.path.isdir(uri):
            raise RequestError(
                f"dataset cannot be read: {shown}: not a dataset: a dataset is a folder "
                f"(one sub-folder per class, or labels.csv + images/)"
            )
        if not os.access(uri, os.R_OK | os.X_OK):
            raise RequestError(f"dataset cannot be read: {shown}: access denied")
    try:
        ds = open_dataset(uri)
        n_classes = len(ds.classes)
    except Exception as exc:  # noqa: BLE001 - DatasetError, storage errors, OSError
        log.warning("dataset %s cannot be read: %s", shown, _detail(exc))
        raise RequestError(f"dataset cannot be read: {shown}: {_why_unreadable(exc)}") from None
    if n_classes < 2:
        raise RequestError(f"dataset {shown} has {n_classes} class(es); need at least 2")


def _detail(exc: BaseException) -> str:
    """An exception for the watcher's own log: secrets masked, one bounded line."""
    from quicktune.tracking.secrets import redact

    return redact(f"{type(exc).__name__}: {exc}").replace("\n", " | ")[:2000]


def _why_unreadable(exc: BaseException) -> str:
    """What a person may be told about a dataset that did not open: the kind of problem only."""
    from quicktune import storage
    from quicktune.data import DatasetError

    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__
    for e in chain:
        if isinstance(e, PermissionError):  # storage.AccessDeniedError is one
            return "access denied"
        if isinstance(e, FileNotFoundError):  # storage.NotFoundError / NoSuchBucketError are
            return "not found"
        if isinstance(e, storage.EndpointError):
            return "the storage service is unreachable"
        if isinstance(e, storage.CredentialsError):
            return "the watcher has no credentials for it"
        if isinstance(e, storage.StorageError):
            return "the storage service refused the request"
    if isinstance(exc, DatasetError):
        return "not a dataset: expected one sub-folder per class (or labels.csv + images/), with readable images"
    return "it cannot be opened"


def target_from_model(model: Any) -> Target:
    return Target(MODEL, model.name, model.name, int(model.creation_timestamp or 0), dict(model.tags or {}))


def target_from_experiment(exp: Any) -> Target:
    return Target(EXPERIMENT, exp.experiment_id, exp.name, int(exp.creation_time or 0), dict(exp.tags or {}))
