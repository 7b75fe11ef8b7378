"""``ImageDataset``: a labelled image folder on local disk, with splits and meta-features.

Two layouts are understood (see ``docs/data.md``):

* **image folder** - one sub-folder per class, images anywhere below it
  (``root/cat/001.png``); class names are the folder names, sorted.
* **Meta-Album** - ``root/labels.csv`` with columns ``FILE_NAME`` and ``CATEGORY`` and the
  images in ``root/images/``; class names are the CATEGORY values, sorted.

Paths are kept relative to the root with ``/`` separators and sorted, so indices, splits and the
fingerprint do not depend on the file system's listing order or on where the data was cached.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from quicktune.data.errors import DatasetError
from quicktune.data.splits import SPLIT_NAMES, read_split_files, stratified_split

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm"})
META_FILE = ".quicktune-meta.json"
META_VERSION = 1
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def discover(root: Path, where: str) -> tuple[str, list[str], list[str], np.ndarray]:
    """(layout, classes, relative paths, labels) of the dataset at ``root``."""
    if (root / "labels.csv").is_file():
        return _discover_meta_album(root, where)
    return _discover_image_folder(root, where)


def _discover_image_folder(root: Path, where: str) -> tuple[str, list[str], list[str], np.ndarray]:
    class_dirs = sorted(p for p in root.iterdir()
                        if p.is_dir() and not p.name.startswith((".", "_")) and p.name != "splits")
    entries: list[tuple[str, str]] = []
    empty: list[str] = []
    for d in class_dirs:
        found = [f"{d.name}/{p.relative_to(d).as_posix()}" for p in d.rglob("*")
                 if p.is_file() and is_image_file(p.name) and not _hidden(p.relative_to(d).as_posix())]
        if not found:
            empty.append(d.name)
        entries += [(rel, d.name) for rel in found]
    if not entries:
        loose = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p.name)]
        hint = (f" ({len(loose)} images lie directly in the folder; put them in one sub-folder per class)"
                if loose else "")
        raise DatasetError(f"{where}: dataset is empty: no images found (expected one sub-folder per "
                           f"class with images, or labels.csv + images/){hint}")
    if empty:
        raise DatasetError(f"{where}: class folder(s) without images: {empty[:10]}")
    entries.sort()
    classes = sorted({c for _, c in entries})
    index = {c: i for i, c in enumerate(classes)}
    return ("image_folder", classes, [r for r, _ in entries],
            np.array([index[c] for _, c in entries], dtype=np.int64))


def _discover_meta_album(root: Path, where: str) -> tuple[str, list[str], list[str], np.ndarray]:
    import pandas as pd

    csv = root / "labels.csv"
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for a malformed CSV
        raise DatasetError(f"{where}: cannot read labels.csv: {exc}") from None
    missing_cols = {"FILE_NAME", "CATEGORY"} - set(table.columns)
    if missing_cols:
        raise DatasetError(f"{where}: labels.csv lacks column(s) {sorted(missing_cols)} "
                           f"(has {list(table.columns)[:10]})")
    if len(table) == 0:
        raise DatasetError(f"{where}: dataset is empty: labels.csv has no rows")
    rels = ["images/" + str(f).replace("\\", "/") for f in table["FILE_NAME"]]
    cats = [str(c) for c in table["CATEGORY"]]
    absent = [r for r in rels if not (root / r).is_file()]
    if absent:
        raise DatasetError(f"{where}: labels.csv names {len(absent)} image(s) missing from images/, "
                           f"e.g. {absent[:5]}")
    dup = len(rels) - len(set(rels))
    if dup:
        raise DatasetError(f"{where}: labels.csv lists {dup} file name(s) more than once")
    order = np.argsort(np.array(rels, dtype=object), kind="stable")
    rels = [rels[i] for i in order]
    cats = [cats[i] for i in order]
    classes = sorted(set(cats))
    index = {c: i for i, c in enumerate(classes)}
    return "meta_album", classes, rels, np.array([index[c] for c in cats], dtype=np.int64)


def _local_versions(root: Path, rels: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for rel in rels:
        st = (root / rel).stat()
        out[rel] = f"{st.st_size}:{st.st_mtime_ns}"
    return out


def _extra_files(root: Path) -> list[str]:
    extra = ["labels.csv"] if (root / "labels.csv").is_file() else []
    if (root / "splits").is_dir():
        extra += sorted(f"splits/{p.name}" for p in (root / "splits").glob("*.txt"))
    return extra


class ImageDataset:
    """A labelled image dataset on local disk (an S3 dataset is read from its local cache).

    Attributes: ``uri`` (as given), ``root`` (local folder), ``layout``, ``classes``, ``paths``
    (relative, sorted), ``labels`` (int64 array aligned with ``paths``), ``fingerprint``,
    ``split_source`` (``"files"`` or ``"stratified"``), ``split_seed``, ``sync_stats`` (S3 only).
    """

    def __init__(self, uri: str, root: Path, split_seed: int = 0, versions: Mapping[str, str] | None = None,
                 meta_cache_dir: Path | None = None, sync_stats: Mapping[str, Any] | None = None) -> None:
        self.uri = uri
        self.root = Path(root)
        self.split_seed = int(split_seed)
        self.sync_stats = dict(sync_stats) if sync_stats else None
        self._meta_cache_dir = meta_cache_dir
        self.layout, self.classes, self.paths, self.labels = discover(self.root, uri)
        if len(self.classes) < 2:
            raise DatasetError(f"{uri}: dataset has a single class {self.classes[0]!r} "
                               f"({len(self.paths)} images); classification needs at least 2 classes")
        tracked = self.paths + _extra_files(self.root)
        if versions is None:
            versions = _local_versions(self.root, tracked)
        h = hashlib.sha256()
        for rel in sorted(tracked):
            h.update(f"{rel}\0{versions.get(rel, '')}\n".encode())
        self.fingerprint = h.hexdigest()[:16]
        files = read_split_files(self.root, self.paths, uri)
        if files is not None:
            self._splits, self.split_source = files, "files"
        else:
            self._splits, self.split_source = stratified_split(self.labels, self.split_seed), "stratified"
        self._meta: dict[str, Any] | None = None

    # --- basic access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (f"ImageDataset({self.uri!r}, {len(self.classes)} classes, {len(self.paths)} images, "
                f"layout={self.layout}, splits={self.split_source})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def splits(self) -> dict[str, np.ndarray]:
        """``{"train": idx, "val": idx, "test": idx}`` (copies)."""
        return {k: v.copy() for k, v in self._splits.items()}

    def split(self, name: str) -> np.ndarray:
        """Sorted indices of the ``train``, ``val`` or ``test`` split."""
        if name not in SPLIT_NAMES:
            raise DatasetError(f"{self.uri}: unknown split {name!r}; choose from {list(SPLIT_NAMES)}")
        return self._splits[name].copy()

    def local_path(self, i: int) -> Path:
        return self.root / self.paths[i]

    @property
    def num_channels(self) -> int:
        """1 when every image is grayscale, else 3 (from the cached header scan)."""
        return int(self._meta_record()["features"]["num_channels"])

    @property
    def mode(self) -> str:
        """The PIL mode ``load_image`` returns: ``"L"`` or ``"RGB"``."""
        return "L" if self.num_channels == 1 else "RGB"

    def load_image(self, i: int):
        """Image ``i`` as a PIL image in ``self.mode``; transparency is composited on white."""
        from PIL import Image

        mode = self.mode
        path = self.local_path(i)
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")
                    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    im2 = Image.alpha_composite(bg, rgba)
                    return im2.convert(mode)
                return im.convert(mode)
        except FileNotFoundError:
            raise DatasetError(f"{self.uri}: image {self.paths[i]} is missing ({path})") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"{self.uri}: cannot read image {self.paths[i]} ({path}): {exc}") from None

    def verify(self, indices: np.ndarray | None = None) -> None:
        """Fully decode the images (all by default); raise DatasetError naming every bad file."""
        bad: list[str] = []
        for i in range(len(self)) if indices is None else indices:
            try:
                self.load_image(int(i))
            except DatasetError as exc:
                bad.append(str(exc))
        if bad:
            more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
            raise DatasetError(f"{self.uri}: {len(bad)} unreadable image(s){more}:\n" + "\n".join(bad[:10]))

    # --- meta-features --------------------------------------------------------------------------
    def meta_features(self) -> dict[str, float]:
        """Dataset descriptors for the optimizer (all floats).

        ``num_classes, num_images, num_channels, median_height, median_width, min_side, max_side,
        min_images_per_class, max_images_per_class, mean_images_per_class, class_imbalance``
        (largest class / smallest class), ``class_entropy`` (normalised to [0, 1]), and the split
        sizes ``num_train, num_val, num_test``. The image-header scan is done once per
        fingerprint and cached in ``.quicktune-meta.json`` beside the data (or in the cache dir
        when the data folder is read-only).
        """
        feats = dict(self._meta_record()["features"])
        for name in SPLIT_NAMES:
            feats[f"num_{name}"] = float(len(self._splits[name]))
        return feats

    def _meta_locations(self) -> list[Path]:
        locs = [self.root / META_FILE]
        if self._meta_cache_dir is not None:
            locs.append(self._meta_cache_dir / f"{self.fingerprint}.json")
        return locs

    def _meta_record(self) -> dict[str, Any]:
        if self._meta is not None:
            return self._meta
        for loc in self._meta_locations():
            try:
                rec = json.loads(loc.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("version") == META_VERSION and rec.get("fingerprint") == self.fingerprint:
                self._meta = rec
                return rec
        rec = {"version": META_VERSION, "fingerprint": self.fingerprint, "uri": self.uri,
               "features": self._compute_features()}
        self._meta = rec
        from quicktune.storage import StorageError, write_bytes

        blob = json.dumps(rec, indent=1, sort_keys=True).encode()
        for loc in self._meta_locations():
            try:
                write_bytes(loc, blob)
                break
            except StorageError:
                continue
        return rec

    def _compute_features(self) -> dict[str, float]:
        from PIL import Image

        heights = np.zeros(len(self), dtype=np.int64)
        widths = np.zeros(len(self), dtype=np.int64)
        gray = True
        bad: list[str] = []
        for i, rel in enumerate(self.paths):
            try:
                with Image.open(self.root / rel) as im:
                    widths[i], heights[i] = im.size
                    gray = gray and im.mode in _GRAY_MODES
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                bad.append(f"{rel}: {exc}")
        if bad:
            raise DatasetError(f"{self.uri}: {len(bad)} unreadable image(s): " + "; ".join(bad[:5]))
        counts = np.bincount(self.labels, minlength=len(self.classes)).astype(float)
        p = counts / counts.sum()
        entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum() / math.log(len(self.classes)))
        sides = np.minimum(heights, widths)
        return {
            "num_classes": float(len(self.classes)),
            "num_images": float(len(self)),
            "num_channels": 1.0 if gray else 3.0,
            "median_height": float(np.median(heights)),
            "median_width": float(np.median(widths)),
            "min_side": float(sides.min()),
            "max_side": float(np.maximum(heights, widths).max()),
            "min_images_per_class": float(counts.min()),
            "max_images_per_class": float(counts.max()),
            "mean_images_per_class": float(counts.mean()),
            "class_imbalance": float(counts.max() / counts.min()),
            "class_entropy": round(entropy, 6),
        }

    def describe(self) -> dict[str, Any]:
        """Everything ``quicktune data info`` prints, as plain JSON-able values."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {
            "uri": self.uri, "root": str(self.root), "layout": self.layout, "fingerprint": self.fingerprint,
            "classes": list(self.classes), "class_counts": {c: int(n) for c, n in zip(self.classes, counts)},
            "num_images": len(self), "split_source": self.split_source, "split_seed": self.split_seed,
            "splits": {k: int(len(v)) for k, v in self._splits.items()}, "mode": self.mode,
            "meta_features": self.meta_features(),
            **({"sync": self.sync_stats} if self.sync_stats else {}),
        }
