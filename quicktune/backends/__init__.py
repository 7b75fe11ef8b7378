"""Trial backends run finetuning steps: locally as subprocesses or on Kubernetes as Jobs."""

from quicktune.backends.base import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    BackendError,
    StepRequest,
    StepStatus,
    TrialBackend,
    step_id,
)

__all__ = [
    "CANCELLED",
    "FAILED",
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "BackendError",
    "StepRequest",
    "StepStatus",
    "TrialBackend",
    "step_id",
]
