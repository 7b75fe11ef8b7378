"""Datasets for finetuning: local image folders or ``s3://`` prefixes, with splits and meta-features.

    from quicktune.data import open_dataset
    ds = open_dataset("s3://datasets/digits")       # or a local folder
    ds.classes, ds.split("train"), ds.load_image(0), ds.meta_features()

See ``quicktune.data.dataset`` for the layouts and ``quicktune.data.splits`` for split files.
This package must stay light: no mlflow, kubernetes, kfp or optimizer imports.
"""

from __future__ import annotations

import os
from pathlib import Path

from quicktune import storage
from quicktune.data.dataset import ImageDataset
from quicktune.data.errors import DatasetError
from quicktune.data.images import IMAGE_EXTENSIONS, is_image_file
from quicktune.data.splits import SPLIT_NAMES

__all__ = ["open_dataset", "ImageDataset", "DatasetError", "IMAGE_EXTENSIONS", "SPLIT_NAMES", "is_image_file"]


def open_dataset(
    uri: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None, split_seed: int = 0
) -> ImageDataset:
    """Open the dataset at a local folder or ``s3://bucket/prefix``.

    ``cache_dir`` (default ``$QUICKTUNE_CACHE/datasets`` or ``~/.cache/quicktune/datasets``)
    holds S3 mirrors and, for read-only local folders, the meta-feature cache. ``split_seed``
    seeds the stratified 60/20/20 split used when the dataset has no ``splits/`` files.
    Raises ``DatasetError`` (naming the path or object) for anything that makes the data unusable.
    """
    cache_root = Path(cache_dir) if cache_dir is not None else storage.cache_dir("datasets")
    meta_cache = cache_root / "meta"
    uri = str(uri)
    if storage.is_s3(uri):
        root, etags, stats = _sync(uri, cache_root)
        return ImageDataset(
            uri, root, split_seed=split_seed, versions=etags, meta_cache_dir=meta_cache, sync_stats=stats
        )
    root = Path(uri).expanduser()
    if not root.exists():
        raise DatasetError(f"{uri}: no such dataset folder")
    if not root.is_dir():
        raise DatasetError(
            f"{uri}: is a file; a dataset is a folder (one sub-folder per class, or labels.csv + images/)"
        )
    if not os.access(root, os.R_OK | os.X_OK):
        raise DatasetError(f"{uri}: permission denied")
    return ImageDataset(uri, root, split_seed=split_seed, meta_cache_dir=meta_cache)


def _sync(uri: str, cache_root: Path):
    from quicktune.data.s3 import sync_prefix

    return sync_prefix(uri, cache_root)
