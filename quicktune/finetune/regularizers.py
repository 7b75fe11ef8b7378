"""The finetuning regularizers of the search space, after the Transfer-Learning-Library (TLL)
implementations that the Quick-Tune reference finetuning script uses.

- :class:`SPRegularization` (L2-SP, Li et al. 2018): ``0.5 * sum ||w - w0||^2`` over the backbone
  parameters (the new classifier head has no starting point and is excluded), ``w0`` = the
  starting (pretrained) weights.
- :class:`DeltaRegularization` (DELTA, Li et al. 2019), the attention-free "behavioral
  regularization" variant the reference uses: ``0.5 * ||f(x) - f0(x)||^2`` between the pooled
  penultimate features of the model and of a frozen copy of the starting model (in eval mode),
  summed over the batch as in TLL.
- :class:`BatchSpectralShrinkage` (BSS, Chen et al. 2019): the squared smallest ``k`` (=1)
  singular values of the batch's penultimate feature matrix.
- Co-tuning (You et al. 2020): :func:`category_relationship` learns ``p(y_source | y_target)`` as
  the mean softmax of the pretrained source head over the training images of each target
  class; :func:`cotuning_loss` is the cross-entropy of the (trainable) source head's output
  against ``relationship[y]``. With mixup the soft target rows are mixed the same way
  (``targets @ relationship``), which equals the table lookup for hard labels.
- StochNorm (Kou et al. 2020): :func:`convert_to_stoch_norm` replaces every BatchNorm (timm's
  ``BatchNormAct2d`` included, keeping its activation and dropout) by a layer that, per channel
  and with probability ``p`` (0.5, TLL's default), normalizes a training batch with the moving
  statistics instead of the batch statistics. Its parameters and buffers keep BatchNorm's names,
  so a state dict loads into the plain model for inference (where both are the same).

Each weight (``sp_reg`` ...) multiplies its term; 0 switches it off.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SPRegularization",
    "DeltaRegularization",
    "BatchSpectralShrinkage",
    "category_relationship",
    "cotuning_loss",
    "convert_to_stoch_norm",
    "StochNorm2d",
    "StochNorm1d",
]


class SPRegularization:
    """L2-SP penalty toward the starting weights of the given (named) parameters."""

    def __init__(self, named_params: Iterable[tuple[str, nn.Parameter]], weight: float):
        self.weight = float(weight)
        self.params: list[nn.Parameter] = []
        self.starts: list[torch.Tensor] = []
        for _, p in named_params:
            if p.requires_grad:  # frozen parameters stay at w0: their term is 0
                self.params.append(p)
                self.starts.append(p.detach().clone())

    def penalty(self) -> torch.Tensor:
        """The unweighted ``0.5 * sum ||w - w0||^2``."""
        total = torch.zeros((), device=self.starts[0].device if self.starts else "cpu")
        for p, p0 in zip(self.params, self.starts, strict=True):
            total = total + 0.5 * torch.sum((p - p0) ** 2)
        return total

    def __call__(self) -> torch.Tensor:
        return self.weight * self.penalty()


class DeltaRegularization:
    """Feature distance to a frozen copy of the starting model (attention-free DELTA)."""

    def __init__(self, source_model: nn.Module, weight: float):
        self.weight = float(weight)
        self.source = source_model.eval()
        for p in self.source.parameters():
            p.requires_grad_(False)

    def source_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.source.forward_head(self.source.forward_features(x), pre_logits=True)

    def __call__(self, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        src = self.source_features(x)
        return self.weight * 0.5 * torch.sum((features.float() - src.float()) ** 2)


class BatchSpectralShrinkage:
    """Penalize the ``k`` smallest singular values of the (batch x features) matrix."""

    def __init__(self, weight: float, k: int = 1):
        self.weight = float(weight)
        self.k = int(k)

    def penalty(self, features: torch.Tensor) -> torch.Tensor:
        s = torch.linalg.svdvals(features.float().flatten(1).t())
        return torch.sum(s[-self.k :] ** 2)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return self.weight * self.penalty(features)


@torch.no_grad()
def category_relationship(source_probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``p(y_s | y_t)``: row ``c`` = mean source-class probabilities over target class ``c``
    (uniform for a class absent from the training split)."""
    rel = torch.full((num_classes, source_probs.shape[1]), 1.0 / source_probs.shape[1], dtype=torch.float32)
    for c in range(num_classes):
        mask = labels == c
        if bool(mask.any()):
            rel[c] = source_probs[mask].float().mean(0)
    return rel


def cotuning_loss(source_logits: torch.Tensor, source_targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the source head's output against soft source labels (TLL CoTuningLoss)."""
    return torch.mean(torch.sum(-source_targets * F.log_softmax(source_logits.float(), dim=-1), dim=-1))


# --------------------------------------------------------------------------------------------
# StochNorm
# --------------------------------------------------------------------------------------------
def _stoch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    if not bn.training:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    momentum = bn.momentum if bn.momentum is not None else 0.1
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    z_moving = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    z_batch = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, momentum, bn.eps)
    shape = [1, bn.num_features] + [1] * (x.dim() - 2)
    s = torch.bernoulli(torch.full(shape, float(bn.stoch_p), device=x.device)).to(z_batch.dtype)
    return (1 - s) * z_batch + s * z_moving


class StochNorm1d(nn.BatchNorm1d):
    stoch_p = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self._check_input_dim(x)
        return _stoch_norm(self, x)


class StochNorm2d(nn.BatchNorm2d):
    stoch_p = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self._check_input_dim(x)
        return _stoch_norm(self, x)


@functools.lru_cache(maxsize=1)
def _stoch_norm_act_class():
    from timm.layers.norm_act import BatchNormAct2d

    class StochNormAct2d(BatchNormAct2d):
        """timm's BatchNorm + activation (+ drop) block with StochNorm normalization."""

        stoch_p = 0.5

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
            x = _stoch_norm(self, x)
            x = self.drop(x)
            return self.act(x)

    return BatchNormAct2d, StochNormAct2d


def _swap_class(module: nn.Module, cls: type, p: float) -> None:
    # Re-class in place: same parameters, buffers, hooks and submodules (act/drop), new forward.
    module.__class__ = cls
    module.stoch_p = float(p)


def convert_to_stoch_norm(model: nn.Module, p: float = 0.5) -> int:
    """Replace BatchNorm layers in place; returns how many were converted."""
    bn_act, stoch_act = _stoch_norm_act_class()
    count = 0
    for m in model.modules():
        if type(m) is bn_act:
            _swap_class(m, stoch_act, p)
        elif type(m) is nn.BatchNorm2d:
            _swap_class(m, StochNorm2d, p)
        elif type(m) is nn.BatchNorm1d:
            _swap_class(m, StochNorm1d, p)
        else:
            continue
        count += 1
    return count
