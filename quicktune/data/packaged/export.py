"""Selecting a class subset of a packaged source and writing it out as an image folder."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from quicktune import storage
from quicktune.data.errors import DatasetError
from quicktune.data.packaged._common import PackagedData


def select(data: PackagedData, classes: Sequence[int] | None = None, max_per_class: int | None = None) -> np.ndarray:
    """Indices of the images to export (source order), after the class subset and per-class cap."""
    n_classes = len(data.class_names)
    if classes is not None:
        bad = [c for c in classes if not 0 <= int(c) < n_classes]
        if bad:
            raise DatasetError(
                f"{data.name}: classes {bad} out of range 0..{n_classes - 1} "
                f"({', '.join(f'{i}={n}' for i, n in enumerate(data.class_names))})"
            )
        if len(set(classes)) < 2:
            raise DatasetError(f"{data.name}: choose at least 2 distinct classes, got {list(classes)}")
    if max_per_class is not None and max_per_class < 1:
        raise DatasetError(f"{data.name}: max_per_class must be >= 1, got {max_per_class}")
    keep = set(int(c) for c in classes) if classes is not None else set(range(n_classes))
    taken = dict.fromkeys(keep, 0)
    chosen = []
    for i, y in enumerate(data.labels):
        y = int(y)
        if y in keep and (max_per_class is None or taken[y] < max_per_class):
            taken[y] += 1
            chosen.append(i)
    return np.array(chosen, dtype=np.int64)


def _png(array: np.ndarray, size: int | None) -> bytes:
    from PIL import Image

    img = Image.fromarray(array)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC if size > max(img.size) else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _dest_is_empty(dest: str) -> bool:
    if storage.is_s3(dest):
        bucket, prefix = storage.parse_s3_uri(dest)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        try:
            return not storage.list_s3_objects(f"s3://{bucket}/{prefix}")
        except storage.StorageError as exc:
            raise DatasetError(f"{dest}: {exc}") from exc
    path = Path(dest)
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def import_dataset(
    name: str,
    dest: str,
    classes: Sequence[int] | None = None,
    max_per_class: int | None = None,
    size: int | None = None,
    force: bool = False,
    workers: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write packaged dataset ``name`` as PNG files under ``dest`` (a folder or ``s3://`` prefix).

    Refuses a non-empty destination unless ``force`` (then files are overwritten, nothing else is
    deleted). Returns a summary: name, dest, classes, counts, size, source.
    """
    if size is not None and not 1 <= int(size) <= 4096:
        raise DatasetError(f"{name}: size must be in 1..4096 pixels, got {size}")
    from quicktune.data.packaged import load_packaged

    data = load_packaged(name)
    chosen = select(data, classes, max_per_class)
    if not force and not _dest_is_empty(dest):
        raise DatasetError(f"{dest}: destination is not empty; choose an empty folder/prefix or pass --force")
    folder_of = {i: f"{i}_{n}" if not n.isdigit() else n for i, n in enumerate(data.class_names)}

    def items() -> Iterator[tuple[str, int]]:
        for i in chosen:
            yield f"{folder_of[int(data.labels[i])]}/{name}_{int(i):05d}.png", int(i)

    def write(item: tuple[str, int]) -> None:
        rel, i = item
        storage.write_bytes(storage.join(dest, rel), _png(data.image(i), size))

    todo = list(items())
    done = 0
    try:
        if storage.is_s3(dest):
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(write, todo):
                    done += 1
                    if progress and done % 200 == 0:
                        progress(done, len(todo))
        else:
            for item in todo:
                write(item)
                done += 1
                if progress and done % 500 == 0:
                    progress(done, len(todo))
    except storage.StorageError as exc:
        raise DatasetError(f"{dest}: writing {name} failed after {done} of {len(todo)} images: {exc}") from exc
    counts: dict[str, int] = {}
    for rel, _ in todo:
        counts[rel.split("/", 1)[0]] = counts.get(rel.split("/", 1)[0], 0) + 1
    summary = {
        "name": name,
        "dest": dest,
        "source": data.source,
        "num_images": len(todo),
        "classes": sorted(counts),
        "counts": counts,
        "size": size,
        "selected_classes": list(classes) if classes is not None else None,
        "max_per_class": max_per_class,
    }
    storage.write_bytes(storage.join(dest, ".quicktune-source.json"), json.dumps(summary, indent=1).encode())
    return summary
