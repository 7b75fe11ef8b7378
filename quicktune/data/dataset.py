"""``ImageDataset``: a labelled image folder on local disk, with splits and meta-features.

Two layouts are understood (see ``docs/data.md``):

* **image folder** - one sub-folder per class, images anywhere below it
  (``root/cat/001.png``); class names are the folder names, sorted.
* **Meta-Album** - ``root/labels.csv`` with columns ``FILE_NAME`` and ``CATEGORY`` and the
  images in ``root/images/``; class names are the CATEGORY values, sorted.

Paths are kept relative to the root with ``/`` separators and sorted, so indices, splits and the
fingerprint do not depend on the file system's listing order, on where the data was cached or on
how the folder was named (relative or absolute path, trailing slash, a symlink to it).

Names that come from inside the data (``labels.csv`` entries) are confined to the dataset root
(``quicktune.data.paths``). Error messages name the dataset and at most the offending file relative
to its root: they may be shown to other users (the watcher), so they never list a folder and never
echo file contents. Deterministic problems raise ``InvalidDatasetError`` subclasses.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from quicktune.data import images
from quicktune.data.errors import BadImageError, DatasetError, InvalidDatasetError, UnsafePathError
from quicktune.data.images import is_image_file
from quicktune.data.paths import path_problem, safe_form, shown
from quicktune.data.splits import SPLIT_NAMES, read_split_files, stratified_split

_T = TypeVar("_T")

META_FILE = ".quicktune-meta.json"
META_VERSION = 2  # 2: bad files reported without Pillow's text; full-decode verification recorded
_GRAY_MODES = images.GRAY_MODES
MAX_LISTED = 10  # offending files named in one message, at most


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def discover(root: Path, where: str) -> tuple[str, list[str], list[str], np.ndarray]:
    """(layout, classes, relative paths, labels) of the dataset at ``root``."""
    if (root / "labels.csv").is_file():
        return _discover_meta_album(root, where)
    return _discover_image_folder(root, where)


def _discover_image_folder(root: Path, where: str) -> tuple[str, list[str], list[str], np.ndarray]:
    class_dirs = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")) and p.name != "splits"
    )
    entries: list[tuple[str, str]] = []
    empty: list[str] = []
    for d in class_dirs:
        found = [
            f"{d.name}/{p.relative_to(d).as_posix()}"
            for p in d.rglob("*")
            if p.is_file() and is_image_file(p.name) and not _hidden(p.relative_to(d).as_posix())
        ]
        if not found:
            empty.append(d.name)
        entries += [(rel, d.name) for rel in found]
    if not entries:
        loose = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p.name)]
        hint = (
            f" ({len(loose)} images lie directly in the folder; put them in one sub-folder per class)" if loose else ""
        )
        raise InvalidDatasetError(
            f"{where}: dataset is empty: no images found (expected one sub-folder "
            f"per class with images, or labels.csv + images/){hint}"
        )
    if empty:
        # Name one offending folder, never the list: the message may reach other users.
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise InvalidDatasetError(
            f"{where}: class folder {safe_form(empty[0])} has no images{more}; "
            f"every class folder needs at least one image"
        )
    entries.sort()
    classes = sorted({c for _, c in entries})
    index = {c: i for i, c in enumerate(classes)}
    return ("image_folder", classes, [r for r, _ in entries], np.array([index[c] for _, c in entries], dtype=np.int64))


def _discover_meta_album(root: Path, where: str) -> tuple[str, list[str], list[str], np.ndarray]:
    import pandas as pd

    csv = root / "labels.csv"
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for a malformed CSV; its text may quote the file
        raise InvalidDatasetError(
            f"{where}: cannot read labels.csv: not a comma-separated table with a header row ({type(exc).__name__})"
        ) from None
    missing_cols = {"FILE_NAME", "CATEGORY"} - set(table.columns)
    if missing_cols:
        raise InvalidDatasetError(
            f"{where}: labels.csv lacks column(s) {sorted(missing_cols)} (needs FILE_NAME and CATEGORY)"
        )
    if len(table) == 0:
        raise InvalidDatasetError(f"{where}: dataset is empty: labels.csv has no rows")
    rels: list[str] = []
    for row, name in enumerate(table["FILE_NAME"], start=2):  # row 1 is the header
        name = str(name).replace("\\", "/")  # written on Windows
        why = path_problem(name)
        if why is not None:
            # Refused, not repaired: '../x' or '/etc/x' would read outside the dataset root.
            raise UnsafePathError(
                f"{where}: labels.csv row {row}: FILE_NAME {why}; it must name a "
                f"file inside images/ by a clean relative path"
            )
        rels.append("images/" + name)
    cats = [str(c) for c in table["CATEGORY"]]
    absent = [(row, r) for row, r in enumerate(rels, start=2) if not (root / r).is_file()]
    if absent:
        row, first = absent[0]
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise InvalidDatasetError(
            f"{where}: labels.csv names image(s) missing from images/: {safe_form(first)} (row {row}){more}"
        )
    dup = len(rels) - len(set(rels))
    if dup:
        raise InvalidDatasetError(f"{where}: labels.csv lists {dup} file name(s) more than once")
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


def _bad_files_message(where: str, bad: list[str], reasons: list[str]) -> str:
    more = f" (the first {MAX_LISTED} below)" if len(bad) > MAX_LISTED else ""
    return f"{where}: {len(bad)} unreadable image(s){more}:\n" + "\n".join(reasons[:MAX_LISTED])


class ImageDataset:
    """A labelled image dataset on local disk (an S3 dataset is read from its local cache).

    Attributes: ``uri`` (as given), ``root`` (local folder), ``layout``, ``classes``, ``paths``
    (relative, sorted), ``labels`` (int64 array aligned with ``paths``), ``fingerprint``,
    ``split_source`` (``"files"`` or ``"stratified"``), ``split_seed``, ``sync_stats`` (S3 only).
    """

    def __init__(
        self,
        uri: str,
        root: Path,
        split_seed: int = 0,
        versions: Mapping[str, str] | None = None,
        meta_cache_dir: Path | None = None,
        sync_stats: Mapping[str, Any] | None = None,
    ) -> None:
        self.uri = uri
        self.root = Path(root)
        self.split_seed = int(split_seed)
        self.sync_stats = dict(sync_stats) if sync_stats else None
        self._meta_cache_dir = meta_cache_dir
        self.layout, self.classes, self.paths, self.labels = discover(self.root, uri)
        if len(self.classes) < 2:
            raise InvalidDatasetError(
                f"{uri}: dataset has a single class {safe_form(self.classes[0])} "
                f"({len(self.paths)} images); classification needs at least 2 classes"
            )
        tracked = self.paths + _extra_files(self.root)
        if versions is None:
            versions = _local_versions(self.root, tracked)
        # Only paths relative to the root and their versions: the same folder reached by another
        # name (relative/absolute, trailing slash, symlink) has the same fingerprint.
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
        return (
            f"ImageDataset({self.uri!r}, {len(self.classes)} classes, {len(self.paths)} images, "
            f"layout={self.layout}, splits={self.split_source})"
        )

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
        """Image ``i`` as an 8-bit PIL image in ``self.mode``, fully decoded.

        Transparency is composited on white; 16-bit and other high-bit-depth images are scaled by
        their real range, never clipped (``quicktune.data.images``). A file that is not a fully
        decodable image raises :class:`BadImageError` naming it relative to the root.
        """
        return self._decoded(i, lambda im: images.to_model_mode(im, self.mode))

    def load_array(self, i: int) -> np.ndarray:
        """Image ``i`` as float32 ``[H, W, num_channels]`` in [0, 1], without 8-bit quantisation
        (16-bit data keep their precision); same conversion rules as :meth:`load_image`."""
        return self._decoded(i, lambda im: images.to_float(im, self.num_channels))

    def _decoded(self, i: int, convert: Callable[[Any], _T]) -> _T:
        """``convert`` applied to image ``i`` opened and fully decoded; a mode ``convert`` cannot
        handle is a :class:`BadImageError` naming the file relative to the root."""
        im = images.open_full(self.local_path(i), self.paths[i], self.uri)
        try:
            return convert(im)
        except images.DECODE_ERRORS as exc:
            raise BadImageError(
                f"{self.uri}: image {shown(self.paths[i])} has an unsupported mode {im.mode!r} ({type(exc).__name__})",
                [self.paths[i]],
            ) from None
        finally:
            im.close()

    def verify(self, indices: np.ndarray | None = None, force: bool = False) -> dict[str, Any]:
        """Fully decode the images (all by default) the way training does, after Pillow's
        structural check (PNG CRCs, ...); truncated or corrupt files fail.

        Raises :class:`BadImageError` with the count and the first offending files (relative
        paths; ``exc.files`` has them all). Returns ``{"images": n, "modes": {mode: count}}``.
        A successful check of the whole dataset is recorded with the meta-features (per
        fingerprint), so calling it again on unchanged data is free unless ``force``.
        """
        whole = indices is None
        if whole and not force:
            done = self._meta_record().get("verified")
            if isinstance(done, dict):
                return dict(done)
        bad: list[str] = []
        reasons: list[str] = []
        modes: dict[str, int] = {}
        for i in range(len(self)) if indices is None else indices:
            rel = self.paths[int(i)]
            try:
                mode = images.check_image(self.root / rel, rel, self.uri)
            except BadImageError as exc:
                bad.append(rel)
                reasons.append(str(exc).removeprefix(f"{self.uri}: "))
                continue
            modes[mode] = modes.get(mode, 0) + 1
        if bad:
            raise BadImageError(_bad_files_message(self.uri, bad, reasons), bad)
        summary = {"images": int(sum(modes.values())), "modes": dict(sorted(modes.items()))}
        if whole:
            rec = self._meta_record()
            rec["verified"] = summary
            self._save_meta(rec)
        return summary

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
        rec = {
            "version": META_VERSION,
            "fingerprint": self.fingerprint,
            "uri": self.uri,
            "features": self._compute_features(),
        }
        self._meta = rec
        self._save_meta(rec)
        return rec

    def _save_meta(self, rec: dict[str, Any]) -> None:
        from quicktune.storage import StorageError, write_bytes

        blob = json.dumps(rec, indent=1, sort_keys=True).encode()
        for loc in self._meta_locations():
            try:
                write_bytes(loc, blob)
                break
            except StorageError:
                continue

    def _compute_features(self) -> dict[str, float]:
        from PIL import Image

        heights = np.zeros(len(self), dtype=np.int64)
        widths = np.zeros(len(self), dtype=np.int64)
        gray = True
        bad: list[str] = []
        reasons: list[str] = []
        images.no_truncated_loads()
        for i, rel in enumerate(self.paths):
            path = self.root / rel
            try:
                if path.stat().st_size == 0:
                    raise BadImageError(f"image {shown(rel)} is an empty file (0 bytes)", [rel])
                with Image.open(path) as im:  # header only: cheap; verify() decodes fully
                    widths[i], heights[i] = im.size
                    gray = gray and im.mode in _GRAY_MODES
            except BadImageError as exc:
                bad.append(rel)
                reasons.append(str(exc))
            except FileNotFoundError:
                raise DatasetError(
                    f"{self.uri}: image {shown(rel)} is missing (the dataset changed while in use?)"
                ) from None
            except (*images.DECODE_ERRORS, Image.DecompressionBombError) as exc:
                bad.append(rel)
                reasons.append(f"image {shown(rel)} is {images.describe_error(exc)}")
        if bad:
            raise BadImageError(_bad_files_message(self.uri, bad, reasons), bad)
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
            "uri": self.uri,
            "root": str(self.root),
            "layout": self.layout,
            "fingerprint": self.fingerprint,
            "classes": list(self.classes),
            "class_counts": {c: int(n) for c, n in zip(self.classes, counts, strict=False)},
            "num_images": len(self),
            "split_source": self.split_source,
            "split_seed": self.split_seed,
            "splits": {k: int(len(v)) for k, v in self._splits.items()},
            "mode": self.mode,
            "meta_features": self.meta_features(),
            **({"sync": self.sync_stats} if self.sync_stats else {}),
        }
