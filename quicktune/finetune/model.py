"""Build the timm network for a config through the model hub.

Channels: the model gets ``in_chans = dataset.num_channels`` (1 for grayscale datasets, else 3).
timm adapts a pretrained RGB stem to one channel itself (it sums the stem's filters over the
colour axis) when it loads pretrained weights, as the Quick-Tune reference script does with
``--in-chans 1``; the grayscale datasets are therefore trained as 1-channel inputs with the
first channel's mean/std, and exported models keep that input layout (see the preprocessing
dict of ``load_trained_model``).

Image size: ViT-like models with a fixed input size (timm ``fixed_input_size``) are built for
the step's image size (``img_size=...``); convolutional models need nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "UnknownModelError",
    "model_defaults",
    "build_network",
    "source_head_of",
    "apply_source_head",
    "forward_with_features",
]


class UnknownModelError(ValueError):
    """The config names a model that neither the hub nor timm knows."""


def model_defaults(name: str, weights_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """mean, std, input size, whether the input size is fixed, whether pretrained weights exist
    (per the hub's weight source for the model, which a weights config may change)."""
    from quicktune import hub

    try:
        info = hub.model_info(name)
    except hub.HubError as exc:
        raise UnknownModelError(f"knob 'model': {exc}") from None
    cfg = info.pretrained_cfg()
    try:
        pretrained = hub.weight_source(name, weights_config).source != "none"
    except hub.HubError:
        pretrained = bool(info.pretrained)
    return {
        "mean": tuple(cfg.get("mean") or (0.485, 0.456, 0.406)),
        "std": tuple(cfg.get("std") or (0.229, 0.224, 0.225)),
        "input_size": int((cfg.get("input_size") or (3, 224, 224))[-1]),
        "fixed_input_size": bool(cfg.get("fixed_input_size", False)),
        "pretrained": pretrained,
        "source_classes": int(cfg.get("num_classes") or 1000),
    }


def build_network(
    name: str,
    num_classes: int,
    in_chans: int,
    image_size: int,
    drop_rate: float,
    pretrained: bool,
    defaults: Mapping[str, Any],
    weights_config: Mapping[str, Any] | None = None,
    keep_source_head: bool = False,
) -> tuple[nn.Module, nn.Module | None]:
    """The network with a fresh ``num_classes`` head, and (with ``keep_source_head``) a copy of
    the pretrained classifier head (for co-tuning); the copy is None when there is none."""
    from quicktune import hub

    keep = keep_source_head and pretrained
    net = hub.create_model(
        name,
        num_classes=int(defaults.get("source_classes", 1000)) if keep else num_classes,
        in_chans=in_chans,
        pretrained=pretrained,
        drop_rate=drop_rate,
        weights_config=weights_config,
        image_size=int(image_size),
    )
    source_head = None
    if keep:
        source_head = source_head_of(net)
        net.reset_classifier(num_classes)
    return net, source_head


def source_head_of(net: nn.Module) -> nn.Module | None:
    head = net.get_classifier()
    if isinstance(head, (tuple, list)):  # distilled ViTs: (head, head_dist); the class token's head
        head = head[0]
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        return None
    return copy.deepcopy(head)


def apply_source_head(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Source-head logits from pre-logit features ([B, C]); a 1x1-conv classifier (DLA) gets them as
    [B, C, 1, 1] and returns [B, classes]."""
    if isinstance(head, nn.Conv2d):
        return head(features[:, :, None, None]).flatten(1)
    return head(features)


def forward_with_features(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, pre-logit features)`` in one backbone pass (timm's forward_features/forward_head)."""
    fmap = net.forward_features(x)
    features = net.forward_head(fmap, pre_logits=True)
    logits = net.forward_head(fmap)
    return logits, features
