"""Model hub: which timm models exist for a search, and where their pretrained weights come from.

    from quicktune.hub import create_model, model_info, list_models
    model = create_model("tf_efficientnet_lite0", num_classes=10, in_chans=1)   # real ImageNet weights, offline
    model_info("resnet10t").pretrained_available_offline                       # False: random init on the CPU hub
    [m.name for m in list_models("paper")]                                      # the paper's 24 models
    describe("beit_large_patch16_512", 224).gmacs                               # what it is, without weights

This package must stay light: no mlflow, kubernetes, kfp or optimizer imports.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any

from quicktune.hub.catalog import HUBS, ModelInfo, catalog, hub_models
from quicktune.hub.descriptor import (
    ModelDescriptor,
    describe,
    describe_many,
    descriptor_features,
    known_descriptor_features,
)
from quicktune.hub.errors import HubError
from quicktune.hub.weights import (
    SOURCES,
    WEIGHTS_CONFIG_ENV,
    WeightSource,
    load_weights_config,
    package_weights_file,
    resolve_source,
    resolve_weights_file,
)

__all__ = [
    "create_model",
    "model_info",
    "list_models",
    "model_names",
    "weight_source",
    "ModelInfo",
    "ModelDescriptor",
    "describe",
    "describe_many",
    "descriptor_features",
    "known_descriptor_features",
    "HubError",
    "HUBS",
    "SOURCES",
    "WEIGHTS_CONFIG_ENV",
    "WeightSource",
    "load_weights_config",
    "package_weights_file",
]


def _timm_known(name: str) -> str | None:
    """The canonical timm name if timm knows ``name`` (including deprecated aliases)."""
    import timm
    from timm.models import _registry

    canonical = _registry._deprecated_models.get(name) or name
    arch = canonical.split(".", 1)[0]
    return canonical if timm.is_model(arch) else None


def model_info(name: str) -> ModelInfo:
    """The catalogue entry for ``name``; a timm model outside the catalogue gets an entry built
    from timm (weights from the HF hub, top-1 unknown). Unknown names raise HubError with close
    matches."""
    entries = catalog()
    if name in entries:
        return entries[name]
    canonical = _timm_known(name)
    if canonical is not None:
        from quicktune.hub.catalog import _timm_entry

        return _timm_entry(name, ())
    import timm

    pool = list(dict.fromkeys(list(entries) + timm.list_models()))
    close = difflib.get_close_matches(name, pool, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise HubError(
        f"unknown model {name!r}: not in the quicktune catalogue nor in timm{hint} "
        f"(catalogue: quicktune hub list --hub all)"
    )


def list_models(hub: str = "cpu") -> list[ModelInfo]:
    """Catalogue entries of ``hub`` (``cpu``, ``paper`` or ``all``), smallest first."""
    return sorted(hub_models(hub), key=lambda m: (m.params, m.name))


def model_names(hub: str = "cpu") -> list[str]:
    return [m.name for m in list_models(hub)]


def weight_source(name: str, weights_config: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> WeightSource:
    """Where ``create_model(name, pretrained=True)`` would take the weights from."""
    return resolve_source(model_info(name), load_weights_config(weights_config))


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = True,
    drop_rate: float = 0.0,
    weights_config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    image_size: int | None = None,
    **timm_kwargs: Any,
):
    """A timm model with a fresh ``num_classes`` head, ``in_chans`` input channels and pretrained
    weights from the configured source (see ``quicktune.hub.weights``).

    ``pretrained=False``, or a model whose source is ``none`` (the CPU hub's random-init
    entries), gives random initialisation. ``image_size`` is passed to timm as ``img_size`` for
    architectures built for one input size (ViT, Swin, BEiT, VOLO, XCiT ...); convolutional
    models accept any size and do not need it. Extra keyword arguments go to
    ``timm.create_model`` unchanged.
    """
    import timm

    if num_classes < 1:
        raise HubError(f"model {name!r}: num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise HubError(f"model {name!r}: in_chans must be >= 1, got {in_chans}")
    info = model_info(name)
    config = load_weights_config(weights_config)
    source = resolve_source(info, config) if pretrained else WeightSource("none")
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, **timm_kwargs)
    if image_size is not None and info.fixed_input_size and "img_size" not in kwargs:
        kwargs["img_size"] = int(image_size)
    target = info.timm_name
    if source.source == "none":
        return timm.create_model(info.arch, pretrained=False, **kwargs)
    path = resolve_weights_file(info, source, config)
    try:
        if path is None:  # hf: let timm download (network checked above)
            return timm.create_model(target, pretrained=True, **kwargs)
        return timm.create_model(target, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        where = path or f"Hugging Face hub ({source.uri or info.timm_name})"
        raise HubError(f"model {name!r}: cannot load weights from {where} ({source.source}): {exc}") from exc
