"""The meta-dataset: learning curves Quick-Tune meta-learns from.

- :mod:`quicktune.metadataset.campaign`: run a resumable campaign (datasets x configs x epochs)
  through any trial backend and write a learning-curve table (LCT) as results arrive;
- :mod:`quicktune.metadataset.harvest`: turn the searches recorded on an MLflow server into an LCT;
- :mod:`quicktune.metadataset.info`: summary of a table (the shipped one by default).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped_table_path() -> Path:
    """Path of the meta-dataset shipped with the package (``quicktune/metadataset/data/metadataset.parquet``)."""
    return Path(str(resources.files("quicktune.metadataset").joinpath("data", "metadataset.parquet")))


__all__ = ["shipped_table_path"]
