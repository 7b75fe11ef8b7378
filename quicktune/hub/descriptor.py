"""What a model *is*, in numbers the optimizer can compare: a descriptor every timm model gets without weights.

The optimizer must tell ``beit_large_patch16_512`` (305 M parameters) from ``mobilevit_xxs`` (1.3 M), also
for a model it never saw in meta-training, so it encodes a model by what it is, not by its name:

* ``params`` - parameters (1000-class ImageNet head, as the catalogue counts them),
* ``gmacs`` - multiply-accumulates of one forward pass of one image at a given training resolution, in
  billions (``torch.utils.flop_counter.FlopCounterMode`` over a forward pass on the *meta* device:
  no weights, no memory, no network; matmuls, convolutions and attention, elementwise ops not counted),
* ``input_size`` - the native (pretraining) input resolution, ``num_features`` - the feature width
  before the head,
* ``arch_type`` - ``cnn``, ``vit`` or ``hybrid`` (the catalogue's family; for a model outside it:
  ``cnn`` without attention, ``hybrid`` when convolutions still do at least ``HYBRID_CONV_SHARE`` of the
  MACs, else ``vit``),
* ``pretrained`` - whether the hub gives it pretrained weights (source != none), ``top1`` - ImageNet-1k
  top-1 (%) where known.

Building a model on the meta device takes a fraction of a second to a few seconds, so descriptors are
cached in memory and, for the catalogue's models at the usual resolutions (``CACHED_SIZES`` and the
native size), in ``descriptors.json`` beside this file: a search on the catalogue constructs no model.
``python -m quicktune.hub.descriptor`` rewrites that file (after a catalogue or timm change).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quicktune.hub.catalog import catalog
from quicktune.hub.errors import HubError

ARCH_TYPES = ("cnn", "vit", "hybrid")
#: a model with attention whose convolutions do at least this share of its MACs is a hybrid
HYBRID_CONV_SHARE = 0.2
#: resolutions cached for every catalogue model (besides its native one)
CACHED_SIZES = (32, 64, 128, 224)
CACHE_FILE = Path(__file__).with_name("descriptors.json")

_FAMILY_TYPE = {
    "efficientnet": "cnn",
    "resnet": "cnn",
    "mobilenet": "cnn",
    "regnet": "cnn",
    "convnext": "cnn",
    "dla": "cnn",
    "vit": "vit",
    "beit": "vit",
    "deit3": "vit",
    "swinv2": "vit",
    "volo": "vit",
    "xcit": "vit",
    "mobilevit": "hybrid",
    "edgenext": "hybrid",
}


@dataclass(frozen=True)
class ModelDescriptor:
    """One model at one training resolution (``image_size``)."""

    name: str
    timm_name: str
    image_size: int
    params: int
    gmacs: float
    input_size: int
    num_features: int
    arch_type: str
    pretrained: bool
    top1: float | None

    def features(self) -> dict[str, float]:
        """The numbers the optimizer encodes (logs of sizes; ``top1`` as a fraction, NaN when unknown)."""
        return {
            "log10_params": math.log10(max(self.params, 1)),
            "log10_gmacs": math.log10(max(self.gmacs, 1e-6)),
            "log2_input_size": math.log2(max(self.input_size, 1)),
            "log2_num_features": math.log2(max(self.num_features, 1)),
            "arch_cnn": float(self.arch_type == "cnn"),
            "arch_vit": float(self.arch_type == "vit"),
            "arch_hybrid": float(self.arch_type == "hybrid"),
            "pretrained": float(self.pretrained),
            "top1": self.top1 / 100.0 if self.top1 is not None else float("nan"),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _count(timm_name: str, arch: str, image_size: int, fixed: bool) -> tuple[int, float, int, float, bool]:
    """(params, GMACs, num_features, conv share of the MACs, has attention) from a meta-device forward."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    kwargs: dict[str, Any] = {"img_size": int(image_size)} if fixed else {}
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, **kwargs)
            model.eval()
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                model(torch.empty(1, 3, int(image_size), int(image_size)))
    except Exception as exc:  # timm raises many kinds for a size an architecture cannot take
        raise HubError(f"model {timm_name!r}: cannot describe it at {image_size} px: {exc}") from exc
    flops = counter.get_flop_counts().get("Global", {})
    total = float(sum(flops.values()))
    conv = float(sum(v for op, v in flops.items() if "convolution" in str(op)))
    attention = any(("attention" in str(op)) or ("bmm" in str(op)) for op in flops)
    params = sum(p.numel() for p in model.parameters())
    return params, total / 2e9, int(getattr(model, "num_features", 0) or 0), conv / max(total, 1.0), attention


@functools.cache
def _cache_file() -> dict[str, Any]:
    try:
        doc = json.loads(CACHE_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return dict(doc.get("models", {}))


@functools.lru_cache(maxsize=4096)
def describe(name: str, image_size: int | None = None) -> ModelDescriptor:
    """The descriptor of ``name`` (a catalogue name, or any timm model: ``model_info`` decides, an
    unknown name is a HubError) at ``image_size`` px (default: its native input size)."""
    from quicktune.hub import model_info

    info = model_info(name)
    size = int(image_size) if image_size else info.input_size
    if size < 8:
        raise HubError(f"model {name!r}: image size {size} px is too small to describe (>= 8)")
    cached = _cache_file().get(name)
    if cached is not None and cached.get("timm_name") == info.timm_name and str(size) in cached.get("gmacs", {}):
        gmacs = float(cached["gmacs"][str(size)])
        num_features, arch_type = int(cached["num_features"]), str(cached["arch_type"])
    else:
        _, gmacs, num_features, conv_share, attention = _count(info.timm_name, info.arch, size, info.fixed_input_size)
        arch_type = _FAMILY_TYPE.get(info.family) or (
            "cnn" if not attention else "hybrid" if conv_share >= HYBRID_CONV_SHARE else "vit"
        )
    return ModelDescriptor(
        name=name,
        timm_name=info.timm_name,
        image_size=size,
        params=info.params,  # at the native size (a ViT's position table grows with the input size)
        gmacs=gmacs,
        input_size=info.input_size,
        num_features=num_features,
        arch_type=arch_type,
        pretrained=info.pretrained,
        top1=info.top1,
    )


def describe_many(names: Iterable[str], image_size: int | None = None) -> dict[str, ModelDescriptor]:
    """Descriptors by name (each at ``image_size``, or at its native size when None)."""
    return {str(n): describe(str(n), image_size) for n in dict.fromkeys(names)}


def descriptor_features(names: Iterable[str], image_size: int | None = None) -> dict[str, dict[str, float]]:
    """``{name: ModelDescriptor.features()}``: the plain numbers handed to the optimizer."""
    return {n: d.features() for n, d in describe_many(names, image_size).items()}


def known_descriptor_features(names: Iterable[Any], image_size: int | None = None) -> dict[str, dict[str, float]]:
    """Like ``descriptor_features`` but skipping names neither the catalogue nor timm knows (a
    foreign table's made-up model names): the optimizer then falls back to a one-hot encoding."""
    out: dict[str, dict[str, float]] = {}
    for n in dict.fromkeys(str(x) for x in names if x is not None):
        try:
            out[n] = describe(n, image_size).features()
        except HubError:
            continue
    return out


def build_cache(names: Iterable[str] | None = None) -> dict[str, Any]:
    """Compute the cache document (every catalogue model at ``CACHED_SIZES`` and its native size)."""
    import timm

    entries = catalog()
    models: dict[str, Any] = {}
    for name in names if names is not None else entries:
        info = entries[name]
        sizes = sorted({*CACHED_SIZES, info.input_size})
        gmacs: dict[str, float] = {}
        row: dict[str, Any] = {}
        for s in sizes:
            _, g, num_features, conv_share, attention = _count(info.timm_name, info.arch, s, info.fixed_input_size)
            gmacs[str(s)] = round(g, 6)  # 1e-6 GMACs = 1,000 MACs
            arch_type = _FAMILY_TYPE.get(info.family) or (
                "cnn" if not attention else "hybrid" if conv_share >= HYBRID_CONV_SHARE else "vit"
            )
            row = {"timm_name": info.timm_name, "num_features": num_features, "arch_type": arch_type}
        models[name] = {**row, "gmacs": gmacs}
    return {"timm_version": timm.__version__, "models": models}


def main(argv: list[str] | None = None) -> int:
    """Rewrite ``descriptors.json`` for the whole catalogue (``python -m quicktune.hub.descriptor``)."""
    import torch

    torch.set_num_threads(1)
    doc = build_cache()
    CACHE_FILE.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    _cache_file.cache_clear()
    describe.cache_clear()
    print(f"wrote {CACHE_FILE} ({len(doc['models'])} models)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
