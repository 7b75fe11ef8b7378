"""Train/validation/test splits: explicit split files, or a stratified seeded 60/20/20 split.

Split files (optional) live in ``splits/`` at the dataset root: ``train.txt``, ``val.txt`` and
optionally ``test.txt``. Each line is the path of one image relative to the dataset root, with
``/`` separators, exactly as listed by ``ImageDataset.paths`` (for a Meta-Album dataset that is
``images/FILE_NAME``). Blank lines and lines starting with ``#`` are ignored. An image may appear
in at most one split; images listed in none are not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from quicktune.data.errors import InvalidDatasetError

SPLIT_NAMES = ("train", "val", "test")
FRACTIONS = (0.6, 0.2, 0.2)


def stratified_split(labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Per class, shuffle with ``seed`` and cut 60/20/20; every class with >= 2 images gets at
    least one validation image, and with >= 3 at least one test image. Depends only on the
    labels (in path order) and the seed, so it is the same on every machine."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_val = int(round(FRACTIONS[1] * n))
        n_test = int(round(FRACTIONS[2] * n))
        if n >= 2 and n_val == 0:
            n_val = 1
        if n >= 3 and n_test == 0:
            n_test = 1
        n_train = n - n_val - n_test
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {
        name: np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for name, p in parts.items()
    }


def _shown(entry: str) -> str:
    """A split-file entry as it may appear in a message: quoted when it looks like an image path
    (the offending file), else only as "an entry" - the line could be anything (file contents)."""
    from quicktune.data.images import is_image_file
    from quicktune.data.paths import path_problem, safe_form

    if len(entry) <= 200 and path_problem(entry) is None and is_image_file(entry.rsplit("/", 1)[-1]):
        return safe_form(entry, limit=220)
    return "an entry that is not an image path"


def read_split_files(root: Path, paths: Sequence[str], where: str) -> dict[str, np.ndarray] | None:
    """Splits from ``root/splits/*.txt``, or None when the folder has no split files."""
    folder = root / "splits"
    if not folder.is_dir() or not any((folder / f"{n}.txt").exists() for n in SPLIT_NAMES):
        return None
    index = {p: i for i, p in enumerate(paths)}
    owner: dict[int, str] = {}
    out: dict[str, np.ndarray] = {}
    for name in SPLIT_NAMES:
        f = folder / f"{name}.txt"
        if not f.exists():
            if name == "test":
                out[name] = np.zeros(0, np.int64)
                continue
            raise InvalidDatasetError(
                f"{where}: split file splits/{name}.txt is missing (splits/ needs "
                f"train.txt and val.txt, optionally test.txt)"
            )
        chosen: list[int] = []
        for lineno, line in enumerate(f.read_text().splitlines(), 1):
            rel = line.strip()
            if not rel or rel.startswith("#"):
                continue
            rel = rel.replace("\\", "/")
            if rel.startswith("./"):
                rel = rel[2:]
            i = index.get(rel)
            if i is None:
                raise InvalidDatasetError(
                    f"{where}: splits/{name}.txt line {lineno} names {_shown(rel)}, "
                    f"which is not an image of the dataset"
                )
            if i in owner:
                raise InvalidDatasetError(
                    f"{where}: {_shown(rel)} is listed in both splits/{owner[i]}.txt and splits/{name}.txt"
                )
            owner[i] = name
            chosen.append(i)
        out[name] = np.array(sorted(chosen), dtype=np.int64)
    for name in ("train", "val"):
        if len(out[name]) == 0:
            raise InvalidDatasetError(f"{where}: splits/{name}.txt lists no images")
    return out
