"""A one-line summary of a learning-curve table (the shipped meta-dataset by default)."""

from __future__ import annotations

import os
from typing import Any

from quicktune.lct import load_lct


def table_info(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"datasets", "curves", "rows", "max_epoch", "path"}`` of a validated table; ``path`` None
    means the table shipped in the package."""
    from quicktune.metadataset import shipped_table_path

    p = str(path) if path is not None else str(shipped_table_path())
    df = load_lct(p)
    return {
        "datasets": int(df["dataset"].nunique()),
        "curves": int(df.groupby(["dataset", "config_id"]).ngroups),
        "rows": int(len(df)),
        "max_epoch": int(df["epoch"].max()),
        "path": os.path.abspath(p),
    }
