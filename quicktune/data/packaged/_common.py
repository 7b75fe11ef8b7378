"""What every packaged source shares: the :class:`PackagedData` contract and the helpers that turn
files of a package (PNGs with alpha, of any size) into small RGB arrays, the same way each time."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quicktune.data.errors import DatasetError

#: the fixed background that transparent pixels of icons and clip art are composited on
BACKGROUND = (255, 255, 255)
#: source files larger than this (either side, read from the PNG header) are left out: a few clip
#: art posters are 16,000 px wide and would cost gigabytes to decode for a 128 px image
MAX_SOURCE_SIDE = 4096


@dataclass
class PackagedData:
    """Images (uint8 arrays, HxW or HxWx3, or callables that render one) with labels."""

    name: str
    class_names: list[str]
    labels: np.ndarray
    images: Sequence[Any] | np.ndarray  # a list of PIL images, or an (N, H, W[, C]) uint8 array
    source: str

    def image(self, i: int) -> np.ndarray:
        img = self.images[i]
        return img() if callable(img) else img


def require_dir(folder: Path, name: str, package: str) -> Path:
    """``folder`` if it holds files, else a :class:`DatasetError` naming the package to install."""
    if not folder.is_dir() or not any(folder.iterdir()):
        raise DatasetError(f"{name}: {folder} is missing or empty; install it with `apt-get install {package}`")
    return folder


def to_rgb(data: bytes, max_side: int | None = None, crop: bool = False) -> np.ndarray:
    """Decode a PNG (any mode), composite its alpha on :data:`BACKGROUND` and return an RGB array.

    ``crop``: cut to the bounding box of the visible pixels and pad to a square on the background
    (clip art has wide transparent margins and any aspect ratio). ``max_side``: shrink (never
    enlarge) so that neither side exceeds it, with a Lanczos filter.
    """
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    rgba = img.convert("RGBA")
    if crop:
        bbox = rgba.getchannel("A").getbbox()
        if bbox:
            rgba = rgba.crop(bbox)
        side = max(rgba.size)
        square = Image.new("RGBA", (side, side), (*BACKGROUND, 0))
        square.paste(rgba, ((side - rgba.size[0]) // 2, (side - rgba.size[1]) // 2))
        rgba = square
    if max_side is not None and max(rgba.size) > max_side:
        w, h = rgba.size
        scale = max_side / max(w, h)
        # premultiplied resampling, so that transparent pixels' colours do not bleed into the edges
        rgba = (
            rgba.convert("RGBa")
            .resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
            .convert("RGBA")
        )
    out = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    out.alpha_composite(rgba)
    return np.asarray(out.convert("RGB"))


def png_side(path: Path) -> int:
    """The larger side of a PNG from its header (no decoding); 0 when it is not a readable PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return 0
    return max(int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))


def lazy_image(data: bytes, max_side: int | None = None, crop: bool = False) -> Callable[[], np.ndarray]:
    def render() -> np.ndarray:
        return to_rgb(data, max_side, crop)

    return render


def lazy_file(path: Path, max_side: int | None = None, crop: bool = False) -> Callable[[], np.ndarray]:
    def render() -> np.ndarray:
        return to_rgb(path.read_bytes(), max_side, crop)

    return render


def build(
    name: str,
    items: Iterable[tuple[str, Any]],
    source: str,
    min_per_class: int,
    classes: Sequence[str] | None = None,
) -> PackagedData:
    """PackagedData from (class name, image or callable) pairs in source order; classes with fewer
    than ``min_per_class`` images are dropped; labels follow ``classes`` or the sorted class names."""
    items = list(items)
    counts: dict[str, int] = {}
    for c, _ in items:
        counts[c] = counts.get(c, 0) + 1
    names = [c for c in (classes if classes is not None else sorted(counts)) if counts.get(c, 0) >= min_per_class]
    if len(names) < 2:
        raise DatasetError(f"{name}: fewer than 2 classes with >= {min_per_class} images found in {source}")
    index = {c: i for i, c in enumerate(names)}
    kept = [(index[c], img) for c, img in items if c in index]
    return PackagedData(name, names, np.array([y for y, _ in kept], np.int64), [img for _, img in kept], source)


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()
