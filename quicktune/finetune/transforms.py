"""Image preprocessing and the training-augmentation policies of the search space.

Pipeline (train and eval alike): decode -> RGB -> resize to ``image_size`` x ``image_size``
(bilinear; images are tiny here and the paper's datasets are square Meta-Album 128 px crops)
-> [train only: the augmentation policy, on the RGB PIL image] -> grayscale if the model has
one input channel -> tensor -> normalize with the model's mean/std.

Decoding and resizing happen once per step (cached in memory as small PIL images), because the
same few thousand images are seen every epoch; only the random policy runs per sample.

Policies (knob ``data_augmentation``), as in the Quick-Tune reference finetuning script:
- ``none``: no augmentation at all (no random crop/flip either; a deliberate choice so that the
  knob is the only source of augmentation and digits are not mirrored).
- ``trivial_augment``: torchvision ``TrivialAugmentWide``.
- ``random_augment``: torchvision ``RandAugment(num_ops=ra_num_ops, magnitude=ra_magnitude,
  num_magnitude_bins=31)`` -- the reference's flags (``ra_num_magnitude_bins=31``) and the grid's
  magnitude 17 only make sense on torchvision's 31-bin scale (timm's ``rand-m17`` would clip to 10).
- ``auto_augment``: timm ``auto_augment_transform(policy)`` with policy ``v0`` or ``original``
  (what the reference passes to timm's loader), with timm's ``img_mean`` fill and translate hparams.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image

__all__ = ["build_policy", "resize_rgb", "to_tensor", "to_uint8", "normalize", "Preprocessing"]


def resize_rgb(img: Image.Image, image_size: int) -> Image.Image:
    """The deterministic part of preprocessing: RGB, square, ``image_size`` px."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    return img


def to_uint8(img: Image.Image, in_chans: int) -> torch.Tensor:
    """PIL RGB -> uint8 tensor [C, H, W] with ``in_chans`` channels (1 = luminance)."""
    if in_chans == 1:
        img = img.convert("L")
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return x.view(img.size[1], img.size[0], in_chans).permute(2, 0, 1).contiguous()


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., C, H, W] -> float, scaled to [0, 1], then standardized with the model's mean/std."""
    c = x.shape[-3]
    m = torch.tensor(mean[:c], dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std[:c], dtype=torch.float32).view(-1, 1, 1)
    return (x.float().div_(255.0) - m) / s


def to_tensor(img: Image.Image, in_chans: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """PIL RGB -> normalized float tensor with ``in_chans`` channels (1 = luminance)."""
    return normalize(to_uint8(img, in_chans), mean, std)


def build_policy(
    cfg: Mapping[str, Any], image_size: int, mean: Sequence[float]
) -> Callable[[Image.Image], Image.Image] | None:
    """The training augmentation for a resolved config (None for ``none``)."""
    kind = cfg["data_augmentation"]
    if kind == "none":
        return None
    if kind == "trivial_augment":
        from torchvision.transforms import TrivialAugmentWide

        return TrivialAugmentWide()
    if kind == "random_augment":
        from torchvision.transforms import RandAugment

        return RandAugment(num_ops=int(cfg["ra_num_ops"]), magnitude=int(cfg["ra_magnitude"]), num_magnitude_bins=31)
    if kind == "auto_augment":
        from timm.data.auto_augment import auto_augment_transform

        hparams = {"translate_const": int(image_size * 0.45), "img_mean": tuple(round(255 * m) for m in mean[:3])}
        return _pillow_safe(auto_augment_transform(str(cfg["auto_augment"]), hparams))
    raise ValueError(f"unknown data_augmentation {kind!r}")


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    # timm's posterize passes bits_to_keep=0 (AutoAugment 'original'/'v0' at high magnitudes), which
    # Pillow >= 10 rejects; Pillow used to turn it into an all-black image, which we keep.
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size, 0)
    return ImageOps.posterize(img, int(bits_to_keep))


def _pillow_safe(transform: Any) -> Any:
    from timm.data import auto_augment as aa

    for sub_policy in getattr(transform, "policy", []):
        for op in sub_policy:
            if getattr(op, "aug_fn", None) is aa.posterize:
                op.aug_fn = _posterize
    return transform


class Preprocessing(dict):
    """What is needed to feed the trained model: ``image_size``, ``in_chans``, ``mean``, ``std``,
    ``interpolation`` and ``classes`` (a plain dict, JSON-serialisable, for model export)."""

    def transform(self, img: Image.Image) -> torch.Tensor:
        return to_tensor(resize_rgb(img, int(self["image_size"])), int(self["in_chans"]), self["mean"], self["std"])
