"""Which parameters train: ``pct_to_freeze`` and ``linear_probing``.

- The *head* is the model's classifier (``model.get_classifier()``, timm's API for every model);
  it is never frozen.
- ``pct_to_freeze = f``: the first ``floor(f * n)`` of the ``n`` backbone parameter tensors, in
  ``named_parameters()`` order (= from the input side for timm models), get
  ``requires_grad=False``. This is the contract of docs/search-space.md; the reference script
  freezes per module with a parameter-count threshold, which gives nearly the same split.
- ``linear_probing = true``: only the head trains (overrides ``pct_to_freeze``). The reference
  script switches from linear probing to finetuning halfway through the schedule (LP-FT); here
  linear probing means what the knob's documentation says: head only, for the whole run.

Frozen BatchNorm layers still update their running statistics in training mode, as in the
reference (freezing is about gradients, not about normalisation).
"""

from __future__ import annotations

import math

from torch import nn

__all__ = ["head_parameter_names", "apply_freezing"]


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names (in ``model.named_parameters()``) of the classifier head's parameters: the module
    ``get_classifier()`` returns plus every module timm lists as a classifier in the model's
    pretrained config (e.g. VOLO's ``aux_head``, distilled models' ``head_dist``), because timm
    re-initialises all of them for the new classes and none may stay frozen at random init."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    heads = list(head) if isinstance(head, (tuple, list)) else [head]  # distilled ViTs: (head, head_dist)
    if not heads or not all(isinstance(h, nn.Module) for h in heads):
        raise ValueError(f"{type(model).__name__}: cannot locate the classifier head (no get_classifier())")
    ids = {id(p) for h in heads for p in h.parameters()}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") if isinstance(cfg, dict) else getattr(cfg, "classifier", None)
    for name in [names] if isinstance(names, str) else list(names or []):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        ids.update(id(p) for p in module.parameters())
    return {n for n, p in model.named_parameters() if id(p) in ids}


def apply_freezing(model: nn.Module, pct_to_freeze: float, linear_probing: bool) -> dict[str, int]:
    """Set ``requires_grad`` in place; returns counts (tensors frozen / trainable, params trainable)."""
    head = head_parameter_names(model)
    backbone = [(n, p) for n, p in model.named_parameters() if n not in head]
    n_freeze = len(backbone) if linear_probing else int(math.floor(float(pct_to_freeze) * len(backbone) + 1e-9))
    for i, (_, p) in enumerate(backbone):
        p.requires_grad_(i >= n_freeze)
    for n, p in model.named_parameters():
        if n in head:
            p.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {
        "frozen_tensors": n_freeze,
        "trainable_tensors": len(trainable),
        "trainable_params": int(sum(p.numel() for p in trainable)),
    }
