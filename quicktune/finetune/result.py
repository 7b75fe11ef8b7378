"""RESULT.json: what one finetuning step reports (schema, validation, atomic write).

Schema (docs/architecture.md)::

    {"status": "ok|diverged|oom|invalid|failed",
     "message": str,                        # "" when ok; human-readable reason otherwise
     "epochs": [{"epoch": int,              # only the epochs trained by *this* step
                 "score": float,            # validation top-1 accuracy in [0, 1]
                 "top5": float, "val_loss": float, "train_loss": float,
                 "train_seconds": float, "eval_seconds": float,
                 "cost": float}],           # train_seconds + eval_seconds
     "peak_memory_mb": float,               # CUDA: max allocated; CPU: process peak RSS
     "meta_features": {...},                # the dataset's meta-features
     "num_params": int,                     # parameters of the model
     "checkpoint": str | null,              # URI of the newest checkpoint's manifest
     "best_checkpoint": str | null,         # URI of the best epoch's manifest
     "history": [...],                      # every epoch recorded for this config so far
     "step_seconds": float,                 # wall time of the whole step (includes overhead)
     "warnings": [str],
     "invalid_kind": "config|image_size|data"}  # only with status invalid: what was invalid

``invalid`` means deterministic: the same step would fail the same way again, so the search
records it without retrying (``failed`` may be transient and is retried); ``invalid_kind`` =
``data`` says the dataset itself is unusable, for every config.

Consumers must ignore unknown keys; the first four keys are the stable contract.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

STATUSES = ("ok", "diverged", "oom", "invalid", "failed")
INVALID_KINDS = ("config", "image_size", "data")
EPOCH_KEYS = ("epoch", "score", "top5", "val_loss", "train_loss", "train_seconds", "eval_seconds", "cost")

__all__ = ["STATUSES", "INVALID_KINDS", "EPOCH_KEYS", "make_result", "validate_result", "write_result", "read_result"]


def make_result(
    status: str, message: str = "", epochs: list[Mapping[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": status,
        "message": message,
        "epochs": [dict(e) for e in (epochs or [])],
        "peak_memory_mb": None,
        "meta_features": {},
        "num_params": None,
        "checkpoint": None,
    }
    out.update(extra)
    validate_result(out)
    return out


def validate_result(result: Mapping[str, Any]) -> None:
    """Raise ValueError when ``result`` does not follow the schema (used by tests and readers)."""
    if result.get("status") not in STATUSES:
        raise ValueError(f"RESULT: status {result.get('status')!r} is not one of {STATUSES}")
    if not isinstance(result.get("message"), str):
        raise ValueError("RESULT: message must be a string")
    epochs = result.get("epochs")
    if not isinstance(epochs, list):
        raise ValueError("RESULT: epochs must be a list")
    for e in epochs:
        missing = [k for k in EPOCH_KEYS if k not in e]
        if missing:
            raise ValueError(f"RESULT: epoch entry {e} lacks {missing}")
        if not (0.0 <= float(e["score"]) <= 1.0):
            raise ValueError(f"RESULT: epoch {e['epoch']} score {e['score']} outside [0, 1]")
        if not math.isclose(
            float(e["cost"]), float(e["train_seconds"]) + float(e["eval_seconds"]), rel_tol=1e-6, abs_tol=1e-6
        ):
            raise ValueError(f"RESULT: epoch {e['epoch']} cost != train_seconds + eval_seconds")
    kind = result.get("invalid_kind")
    if kind is not None and (result.get("status") != "invalid" or kind not in INVALID_KINDS):
        raise ValueError(f"RESULT: invalid_kind {kind!r} needs status invalid and one of {INVALID_KINDS}")
    nums = [int(e["epoch"]) for e in epochs]
    if nums != sorted(set(nums)):
        raise ValueError(f"RESULT: epochs {nums} are not strictly increasing")


def _clean(obj: Any) -> Any:
    # Strict JSON for other languages/tools: non-finite floats become null.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_result(uri: str, result: Mapping[str, Any]) -> None:
    """Atomic write (temp file + rename locally; a single PUT on S3)."""
    from quicktune import storage

    validate_result(result)
    storage.write_bytes(uri, json.dumps(_clean(result), indent=1, allow_nan=False).encode())


def read_result(uri: str) -> dict[str, Any]:
    from quicktune import storage

    data = json.loads(storage.read_bytes(uri))
    validate_result(data)
    return data
