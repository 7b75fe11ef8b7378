"""One training epoch and one evaluation pass (the inner loops of timm's ``train.py``, with the
Quick-Tune regularizers added to the loss as in the reference finetuning script)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quicktune.finetune.model import apply_source_head, forward_with_features

__all__ = ["DivergedError", "Regularizers", "train_one_epoch", "evaluate"]


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class Regularizers:
    """The active regularizers of a config (None = off)."""

    sp: Any = None  # SPRegularization
    delta: Any = None  # DeltaRegularization
    bss: Any = None  # BatchSpectralShrinkage
    cotuning_weight: float = 0.0
    source_head: nn.Module | None = None
    relationship: torch.Tensor | None = None  # [num_classes, num_source_classes]
    last_terms: dict[str, float] = field(default_factory=dict)

    @property
    def needs_features(self) -> bool:
        return self.delta is not None or self.bss is not None or self.cotuning_active

    @property
    def cotuning_active(self) -> bool:
        return self.cotuning_weight > 0 and self.source_head is not None and self.relationship is not None


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def train_one_epoch(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    regs: Regularizers,
    mixup: Callable | None = None,
    num_classes: int = 0,
    clip_grad: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
) -> dict[str, float]:
    """Train over ``batches``; returns mean loss and image count. Raises DivergedError on NaN/inf."""
    net.train()
    if regs.source_head is not None:
        regs.source_head.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    total, count, steps = 0.0, 0, 0
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if mixup is not None:
            x, target = mixup(x, y)
        else:
            target = y
        with _autocast(device, amp):
            if regs.needs_features:
                logits, features = forward_with_features(net, x)
            else:
                logits, features = net(x), None
            loss = loss_fn(logits, target)
            if regs.sp is not None:
                loss = loss + regs.sp()
            if regs.bss is not None:
                loss = loss + regs.bss(features)
            if regs.delta is not None:
                loss = loss + regs.delta(features, x)
            if regs.cotuning_active:
                soft = target if target.dim() == 2 else F.one_hot(target, num_classes).float()
                source_target = soft.float() @ regs.relationship
                loss = loss + regs.cotuning_weight * _cotuning(
                    apply_source_head(regs.source_head, features), source_target
                )
        # One host sync per batch, as in timm's loop: stop at the first non-finite loss.
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise DivergedError(
                f"training loss became {loss_value} at batch {steps + 1} of the epoch "
                f"(lr={optimizer.param_groups[0]['lr']:.3g})"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            optimizer.step()
        total += loss_value * x.shape[0]
        count += x.shape[0]
        steps += 1
    return {"train_loss": total / max(count, 1), "train_images": count, "train_steps": steps}


def _cotuning(source_logits: torch.Tensor, source_targets: torch.Tensor) -> torch.Tensor:
    from quicktune.finetune.regularizers import cotuning_loss

    return cotuning_loss(source_logits, source_targets)


@torch.no_grad()
def evaluate(
    net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, amp: bool = False
) -> dict[str, float]:
    """Top-1 (in [0, 1]), top-5 (top-k with k = min(5, classes)) and mean cross-entropy."""
    net.eval()
    correct1 = correct5 = 0
    loss_sum, n = 0.0, 0
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = net(x)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        n += x.shape[0]
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "loss": float("nan"), "n": 0}
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss_sum / n, "n": n}
