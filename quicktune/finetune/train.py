"""One training epoch and one evaluation pass (the inner loops of timm's ``train.py``, with the
Quick-Tune regularizers added to the loss as in the reference finetuning script)."""

from __future__ import annotations

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
    """The config diverged (:mod:`quicktune.finetune.divergence`): a non-finite loss (that
    persisted after the GradScaler's skips, in fp16) or an exploded loss. Final for the config."""


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
    precision: str = "fp32",
) -> dict[str, float]:
    """Train over ``batches`` in ``precision`` (fp32/fp16/bf16; fp16 wants ``scaler``).

    Returns the mean loss (``train_loss``, regularizers included), the mean task loss
    (``train_task_loss``: the classification loss alone), image and step counts, and how many
    optimizer steps the GradScaler skipped. Raises DivergedError when non-finite losses mean
    divergence (:class:`quicktune.finetune.divergence.NonFiniteGuard`: at once without a scaler;
    with one, only when they persist after its skips); batches with a non-finite loss are left
    out of the means."""
    from quicktune.finetune.divergence import NonFiniteGuard
    from quicktune.finetune.precision import autocast

    net.train()
    if regs.source_head is not None:
        regs.source_head.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    guard = NonFiniteGuard(scaled=scaler is not None)
    total = task_total = 0.0
    count = steps = 0
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if mixup is not None:
            x, target = mixup(x, y)
        else:
            target = y
        with autocast(device, precision):
            if regs.needs_features:
                logits, features = forward_with_features(net, x)
            else:
                logits, features = net(x), None
            task = loss_fn(logits, target)
            loss = task
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
        # One host sync per batch, as in timm's loop (both losses in one transfer).
        loss_value, task_value = torch.stack([loss.detach().float(), task.detach().float()]).tolist()
        finite = math.isfinite(loss_value)
        steps += 1
        if scaler is None:
            if not finite:
                guard.observe(False)
                raise DivergedError(
                    f"training loss became {loss_value} at batch {steps} of the epoch "
                    f"(lr={optimizer.param_groups[0]['lr']:.3g}, {precision})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            optimizer.step()
        else:
            # fp16: a non-finite loss gives non-finite gradients, so the scaler skips the step
            # (weights untouched) and halves its scale, exactly as for overflowed gradients.
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            after = scaler.get_scale()
            reason = guard.observe(finite, step_skipped=after < before, scale=after)
            if reason is not None:
                raise DivergedError(
                    f"{reason} (last loss {loss_value}, batch {steps} of the epoch, "
                    f"lr={optimizer.param_groups[0]['lr']:.3g}, fp16)"
                )
        if finite:
            total += loss_value * x.shape[0]
            task_total += task_value * x.shape[0]
            count += x.shape[0]
    nan = float("nan")
    return {
        "train_loss": total / count if count else (nan if steps else 0.0),
        "train_task_loss": task_total / count if count else (nan if steps else 0.0),
        "train_images": count,
        "train_steps": steps,
        "scaler_skipped_steps": guard.skipped,
        "nonfinite_losses": guard.nonfinite,
    }


def _cotuning(source_logits: torch.Tensor, source_targets: torch.Tensor) -> torch.Tensor:
    from quicktune.finetune.regularizers import cotuning_loss

    return cotuning_loss(source_logits, source_targets)


@torch.no_grad()
def evaluate(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, float]:
    """Top-1 (in [0, 1]), top-5 (top-k with k = min(5, classes)) and mean cross-entropy, the
    forward pass autocast to ``precision`` (the loss in float32)."""
    from quicktune.finetune.precision import autocast

    net.eval()
    correct1 = correct5 = 0
    loss_sum, n = 0.0, 0
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast(device, precision):
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
