"""A step's exact-resume state: what a checkpoint stores besides the weights, and how it is restored.

Why a module of its own: the checkpoint format is a contract with every checkpoint already on
disk or S3 (an old checkpoint must still resume). :class:`CheckpointMeta` names what the JSON
manifest records (it replaced a function of 15 positional arguments); :data:`MANIFEST_KEYS` is the
manifest's key set, fixed by a test. :func:`checkpoint_tensors` and :func:`restore_state` are the
two halves of exact resume: model, optimizer, scheduler and grad-scaler states plus the python,
numpy and torch RNG states (the data order needs none: it is drawn from ``(seed, epoch)``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from quicktune.finetune.checkpoint import Checkpoint, CheckpointError, optimizer_from_parts, optimizer_to_parts

if TYPE_CHECKING:  # pragma: no cover
    from quicktune.finetune.build import TrainingParts

__all__ = [
    "CheckpointMeta",
    "MANIFEST_KEYS",
    "checkpoint_tensors",
    "RngState",
    "rng_state",
    "set_rng_state",
    "restore_state",
    "scheduler_state",
    "load_scheduler_state",
]

#: the keys of a checkpoint manifest written by a step (checkpoint.save_checkpoint adds its own
#: format/epoch/checksum keys); older checkpoints have the same ones but ``precision`` (added with
#: the fp16/bf16 choice; a resumed step treats a missing one as unknown), and resume reads only these
MANIFEST_KEYS = (
    "config",
    "resolved_config",
    "model",
    "seed",
    "split_seed",
    "image_size",
    "in_chans",
    "num_classes",
    "classes",
    "mean",
    "std",
    "pretrained",
    "max_epochs",
    "data_uri",
    "data_fingerprint",
    "history",
    "best_epoch",
    "best_score",
    "optimizer",
    "scheduler",
    "scaler",
    "rng",
    "stoch_norm",
    "source_head",
    "versions",
    "precision",
)


@dataclass(frozen=True)
class CheckpointMeta:
    """What a config's checkpoints record about its run, besides the training states.

    The first step fixes ``seed``, ``split_seed``, ``image_size`` and ``max_epochs``; later steps
    read them back from the newest manifest so a config never sees them change."""

    config: Mapping[str, Any]  # as the search asked for it (a resumed step must ask for the same)
    resolved_config: Mapping[str, Any]  # with every default filled in
    classes: Sequence[str]
    in_chans: int
    image_size: int
    max_epochs: int
    seed: int
    split_seed: int
    mean: Sequence[float]
    std: Sequence[float]
    pretrained: bool
    data_uri: str
    data_fingerprint: str | None
    history: Sequence[Mapping[str, Any]] = ()
    best_epoch: int | None = None
    best_score: float | None = None

    def manifest(self, parts: TrainingParts, rng: RngState | None = None) -> dict[str, Any]:
        """The manifest dict (keys :data:`MANIFEST_KEYS`), with the optimizer, scheduler and
        scaler states of now and the RNG states ``rng`` (default: of now; a step passes the
        snapshot it gave :func:`checkpoint_tensors`, so both files record the same moment)."""
        import timm

        _, opt_meta = optimizer_to_parts(parts.optimizer.state_dict())
        rng = rng or rng_state(parts.device)
        np_state = rng.numpy
        py_state = rng.python
        cfg = self.resolved_config
        return {
            "config": dict(self.config),
            "resolved_config": dict(cfg),
            "model": cfg["model"],
            "seed": int(self.seed),
            "split_seed": int(self.split_seed),
            "image_size": int(self.image_size),
            "in_chans": int(self.in_chans),
            "num_classes": len(self.classes),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "pretrained": bool(self.pretrained),
            "max_epochs": int(self.max_epochs),
            "data_uri": str(self.data_uri),
            "data_fingerprint": self.data_fingerprint,
            "history": list(self.history),
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "optimizer": opt_meta,
            "scheduler": scheduler_state(parts.scheduler),
            "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
            "rng": {
                "python": [py_state[0], list(py_state[1]), py_state[2]],
                "numpy": {
                    "pos": int(np_state[2]),
                    "has_gauss": int(np_state[3]),
                    "cached_gaussian": float(np_state[4]),
                },
                "data_order": "torch.Generator seeded per epoch from sha256(seed, epoch) (loader.epoch_seed)",
            },
            "stoch_norm": bool(cfg["stoch_norm"]),
            "source_head": parts.regs.source_head is not None,
            "versions": {"torch": torch.__version__, "timm": timm.__version__},
            "precision": parts.precision,
        }


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """The scheduler's state as JSON (timm's own, or the full ReduceLROnPlateau state for plateau)."""
    from timm.scheduler.plateau_lr import PlateauLRScheduler

    if isinstance(scheduler, PlateauLRScheduler):
        # timm's own state_dict keeps only 'best' and 'last_epoch'; the patience counters matter too.
        return {"kind": "plateau", "torch": scheduler.lr_scheduler.state_dict(), "restore_lr": scheduler.restore_lr}
    return {"kind": "timm", "state": scheduler.state_dict()}


def load_scheduler_state(scheduler: Any, state: Mapping[str, Any]) -> None:
    if state["kind"] == "plateau":
        scheduler.lr_scheduler.load_state_dict(dict(state["torch"]))
        scheduler.restore_lr = state.get("restore_lr")
    else:
        scheduler.load_state_dict(dict(state["state"]))


@dataclass(frozen=True)
class RngState:
    """The python, numpy and torch (CPU and the step's CUDA device) RNG states at one moment."""

    python: tuple
    numpy: tuple
    torch: torch.Tensor
    cuda: torch.Tensor | None = None


def rng_state(device: torch.device) -> RngState:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return RngState(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)


def set_rng_state(state: RngState, device: torch.device) -> None:
    random.setstate(state.python)
    np.random.set_state(state.numpy)
    torch.set_rng_state(state.torch)
    if state.cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state.cuda, device)


def checkpoint_tensors(parts: TrainingParts, rng: RngState | None = None) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint saves: model, co-tuning head and relationship, optimizer state,
    RNG states (``rng``, default: of now)."""
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in parts.net.state_dict().items()}
    regs = parts.regs
    if regs.source_head is not None:
        tensors.update({f"source_head/{k}": v for k, v in regs.source_head.state_dict().items()})
    if regs.relationship is not None:
        tensors["cotuning/relationship"] = regs.relationship
    opt_tensors, _ = optimizer_to_parts(parts.optimizer.state_dict())
    tensors.update(opt_tensors)
    rng = rng or rng_state(parts.device)
    tensors["rng/torch"] = rng.torch
    if rng.cuda is not None:  # the step's own device (cuda:N), not device 0
        tensors["rng/cuda"] = rng.cuda
    np_state = rng.numpy
    tensors["rng/numpy_keys"] = torch.from_numpy(np.ascontiguousarray(np_state[1]).view(np.uint8).copy())
    return tensors


def restore_state(ckpt: Checkpoint, parts: TrainingParts) -> None:
    """Load a checkpoint's states into freshly built parts and restore the RNGs (exact resume)."""
    t, m = ckpt.tensors, ckpt.manifest
    model_sd = {k[len("model/") :]: v for k, v in t.items() if k.startswith("model/")}
    try:
        parts.net.load_state_dict(model_sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt.uri}: model weights do not fit the config's model: {exc}") from exc
    regs = parts.regs
    if regs.source_head is not None:
        regs.source_head.load_state_dict(
            {k[len("source_head/") :]: v for k, v in t.items() if k.startswith("source_head/")}
        )
    if "cotuning/relationship" in t:
        regs.relationship = t["cotuning/relationship"]
    elif regs.cotuning_weight > 0 and regs.source_head is not None:
        raise CheckpointError(f"{ckpt.uri}: co-tuning relationship missing")
    parts.optimizer.load_state_dict(optimizer_from_parts(t, m["optimizer"]))
    load_scheduler_state(parts.scheduler, m["scheduler"])
    if parts.scaler is not None and m.get("scaler"):
        parts.scaler.load_state_dict(m["scaler"])
    torch.set_rng_state(t["rng/torch"])
    if "rng/cuda" in t and parts.device.type == "cuda":
        torch.cuda.set_rng_state(t["rng/cuda"], parts.device)
    py = m["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npm = m["rng"]["numpy"]
    keys = t["rng/numpy_keys"].numpy().view(np.uint32)
    np.random.set_state(("MT19937", keys, npm["pos"], npm["has_gauss"], npm["cached_gaussian"]))
