"""One table from several campaigns: how the shipped meta-dataset keeps every campaign's curves.

Why: the shipped table grows by campaigns (v1: 9 grey 32-px tasks; v2: 21 tasks with colour, 64 px
and pretrained/random twins), and a later campaign must never lose or overwrite what an earlier one
measured. Campaigns reuse task names for *different* data (v1's ``digits`` has 60 images per class,
v2's 30), and sometimes for the *same* data (``lfw`` at 32 px in both). So tasks are matched by
name **and** meta-features:

- same name, same meta-features: one dataset; its curves are the union of the campaigns' curves (a
  ``(dataset, config_id)`` measured by two campaigns keeps the earlier campaign's curve: the earlier
  table stays a subset, row for row);
- same name, other meta-features: a different dataset; the later campaign's task is renamed
  ``NAME-v{k}`` (``k`` = the campaign's 1-based position), so the earlier campaign's names never
  change;
- columns one campaign lacks (v1 recorded no ``cpu_cost``) are missing (NaN) in its rows.

The result depends only on the tables and their order; combining a single table returns it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from quicktune.lct import table_meta_features


def _same_meta(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if set(a) != set(b):
        return False
    for k, x in a.items():
        y = b[k]
        fx, fy = float(x), float(y)
        if not ((math.isnan(fx) and math.isnan(fy)) or math.isclose(fx, fy, rel_tol=1e-9, abs_tol=1e-12)):
            return False
    return True


def combine_tables(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The union of campaign tables (``tables[0]`` first), tasks matched as the module docstring says."""
    if not tables:
        raise ValueError("combine_tables: no table given")
    if len(tables) == 1:
        return tables[0]
    seen: dict[str, dict[str, Any]] = {}  # final dataset name -> its meta-features
    taken: set[tuple[str, str]] = set()  # (dataset, config_id) already present
    parts: list[pd.DataFrame] = []
    for k, df in enumerate(tables, start=1):
        rename: dict[str, str] = {}
        for name in pd.unique(df["dataset"]):
            name = str(name)
            meta = table_meta_features(df, name)
            target = name
            if name in seen and not _same_meta(seen[name], meta):
                target = f"{name}-v{k}"
                if target in seen and not _same_meta(seen[target], meta):
                    raise ValueError(f"combine_tables: {name!r} of table {k} clashes with an existing {target!r}")
            seen.setdefault(target, meta)
            rename[name] = target
        part = df.assign(dataset=df["dataset"].map(rename))
        keys = list(zip(part["dataset"].astype(str), part["config_id"].astype(str), strict=True))
        keep = [key not in taken for key in keys]
        part = part[keep]
        taken.update(k2 for k2, ok in zip(keys, keep, strict=True) if ok)
        parts.append(part)
    out = pd.concat(parts, ignore_index=True, sort=False)
    cols = list(tables[0].columns) + [c for c in out.columns if c not in tables[0].columns]
    return out[cols]
