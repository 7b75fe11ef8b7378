"""The trial-backend contract: run one finetuning step somewhere and report how it went.

A *step* advances one configuration to ``to_epoch`` (resuming from its checkpoint directory)
and produces a RESULT.json (see ``quicktune.finetune.result``). Backends only run steps; the
controller decides which. Every backend must pass ``quicktune.backends.testing``'s conformance
suite.

Identity: a step's id is deterministic (``step_id(search_id, config_id, to_epoch)``). Starting a
step whose id is already known to the backend (running or finished) must *re-adopt* it, never
start a duplicate; this is what lets a restarted controller continue without repeating work.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "pending", "running", "succeeded", "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
#: the values of ``quicktune step --precision`` (``quicktune.finetune.precision.PRECISIONS``; the
#: backends do not import the step's training code, a test keeps the two equal)
STEP_PRECISIONS = ("fp32", "fp16", "bf16", "auto")


def step_id(search_id: str, config_id: str, to_epoch: int) -> str:
    """A DNS-1123-safe, deterministic id (<= 63 chars) for one step of one search."""
    base = re.sub(r"[^a-z0-9-]", "-", f"qt-{search_id}".lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha1(f"{search_id}/{config_id}/{to_epoch}".encode()).hexdigest()[:8]
    return f"{base}-{config_id[:8]}-e{to_epoch}-{digest}"[:63].strip("-")


@dataclass(frozen=True)
class StepRequest:
    """Everything a worker needs to run ``quicktune step``."""

    search_id: str
    config_id: str
    config: Mapping[str, Any]
    data_uri: str
    to_epoch: int
    checkpoint_dir: str  # local path or s3://bucket/prefix, one per config
    seed: int = 0
    device: str = "cpu"
    image_size: int | None = None  # None: the step's default for the dataset
    extra_env: Mapping[str, str] = field(default_factory=dict)  # non-secret env only
    # Length of the lr schedule (the search's epoch budget); None: the step's default. A typed field
    # since issue 13; before, it travelled as QUICKTUNE_MAX_EPOCHS in extra_env (the step still
    # reads that variable as a fallback, for requests recorded by the older version).
    max_epochs: int | None = None
    # Training precision (one of STEP_PRECISIONS); None: the step's own default (``auto``). Emitted
    # as --precision only when set, so a request of an older version reads and runs as before.
    precision: str | None = None

    def __post_init__(self) -> None:
        if self.max_epochs is not None and (
            isinstance(self.max_epochs, bool) or not isinstance(self.max_epochs, int) or self.max_epochs < 1
        ):
            raise ValueError(f"max_epochs must be a positive integer or None, got {self.max_epochs!r}")
        if self.precision is not None and self.precision not in STEP_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(STEP_PRECISIONS)} or None, got {self.precision!r}")

    @property
    def id(self) -> str:
        return step_id(self.search_id, self.config_id, self.to_epoch)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = dict(self.config)
        d["extra_env"] = dict(self.extra_env)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StepRequest:
        """The inverse of :meth:`to_dict`. Keys that are not fields (e.g. a backend's own
        bookkeeping such as ``queued_at``) are ignored, and fields added later take their defaults,
        so a request recorded by an older version still reads."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["config"] = dict(kw.get("config") or {})
        kw["extra_env"] = {str(k): str(v) for k, v in (kw.get("extra_env") or {}).items()}
        return cls(**kw)

    def argv(self, *, out: str, config_path: str | None = None, device: str | None = None) -> list[str]:
        """The arguments that follow ``quicktune step`` to run this request: the one place the
        step's command line is built, for every backend.

        ``out`` is where the step writes RESULT.json; ``config_path`` the file holding
        :attr:`config` (omitted when the caller's wrapper adds ``--config`` itself); ``device``
        overrides :attr:`device` (e.g. a backend that gives the pod a GPU). Every option is one
        ``--flag=value`` token, so a value that starts with ``-`` (a data URI, a path) is never
        read as an option.
        """
        args = [] if config_path is None else [f"--config={config_path}"]
        args += [
            f"--data={self.data_uri}",
            f"--to-epoch={int(self.to_epoch)}",
            f"--checkpoint-dir={self.checkpoint_dir}",
            f"--out={out}",
            f"--device={device or self.device or 'cpu'}",
            f"--seed={int(self.seed or 0)}",
        ]
        if self.image_size:
            args.append(f"--image-size={int(self.image_size)}")
        if self.max_epochs is not None:
            args.append(f"--max-epochs={int(self.max_epochs)}")
        if self.precision is not None:
            args.append(f"--precision={self.precision}")
        return args


@dataclass
class StepStatus:
    state: str  # PENDING | RUNNING | SUCCEEDED | FAILED | CANCELLED
    message: str = ""

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


class BackendError(RuntimeError):
    """The backend itself failed (not the step): e.g. the cluster API is unreachable."""


class TrialBackend(ABC):
    """Runs steps. Implementations: ``LocalBackend`` (subprocesses), ``KubernetesBackend`` (Jobs)."""

    #: True when steps run on the caller's own filesystem, so a local checkpoint folder written by a
    #: step is visible to the caller (the local backend). False (the default) when steps run
    #: elsewhere (pods, other machines) and checkpoints must go to shared storage (s3://). Callers
    #: ask this instead of testing a backend's class.
    shares_filesystem: ClassVar[bool] = False

    @abstractmethod
    def start(self, request: StepRequest) -> str:
        """Start (or re-adopt, if its id is known) a step; returns its id. Never duplicates."""

    @abstractmethod
    def poll(self, step_id: str) -> StepStatus:
        """Current state of a step. Unknown ids raise KeyError."""

    @abstractmethod
    def result(self, step_id: str) -> dict[str, Any]:
        """The step's RESULT.json as a dict (only once ``poll`` says it is done). A step that died
        without writing one yields ``{"status": "failed", "message": ..., "epochs": []}``."""

    @abstractmethod
    def logs(self, step_id: str) -> str:
        """Combined stdout/stderr of the step so far (possibly truncated to the tail)."""

    @abstractmethod
    def cancel(self, step_id: str) -> None:
        """Stop a step; idempotent; a cancelled step polls as CANCELLED."""

    @abstractmethod
    def active(self) -> list[str]:
        """Ids of steps not yet terminal (pending or running), including ones started by an
        earlier controller process for the same search where the backend can see them."""

    def rerun(self, request: StepRequest) -> str:
        """Run a step again under its id although it already finished or was never started (the
        controller retries a step that failed for a possibly transient reason, or starts one a
        killed controller had planned). The old attempt's record is discarded; a step still
        pending or running is re-adopted, not duplicated. Returns the step id."""
        raise NotImplementedError(f"{type(self).__name__} cannot re-run a finished step")

    def capacity(self) -> int:
        """How many steps may run at once."""
        return 1

    def warm_up(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Begin, without waiting, whatever the first step will need (a warm process, a client),
        so that it overlaps the caller's own start-up. Optional; a failure here must not raise
        (the first ``start`` then does the work, or reports the error)."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release resources; running steps keep running where the backend allows."""
