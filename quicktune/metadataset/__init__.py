"""The meta-dataset: learning curves Quick-Tune meta-learns from.

- :mod:`quicktune.metadataset.plan`: a campaign's plan (dataset specs, config pool, assignments,
  run order); pure, no backend;
- :mod:`quicktune.metadataset.records`: its per-(task, config) results, the table and progress
  made from them (``export``), resumable and idempotent;
- :mod:`quicktune.metadataset.campaign`: the run loop (datasets x configs x epochs through any
  trial backend, writing a learning-curve table (LCT) as results arrive);
- :mod:`quicktune.metadataset.archive`: the shipped campaign's state as one archive
  (``data/campaign-v1.tar.gz``), to resume or extend it;
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
