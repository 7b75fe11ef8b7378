"""Learning curves -> LCT rows, and an atomic, validated table writer.

Shared by the campaign (curves from RESULT.json files) and the harvester (curves from MLflow), so
both produce the same columns: ``dataset, config_id, epoch, score, cost``, ``hp.<knob>`` (missing =
inactive), ``meta.<name>`` and, where known, ``top5``, ``val_loss``, ``train_loss`` (extra columns
that LCT readers keep and ignore), and ``cpu_cost`` (the epoch's CPU seconds) for steps that report it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quicktune.lct import HP_PREFIX, META_PREFIX, write_lct

EXTRA_EPOCH_KEYS = ("top5", "val_loss", "train_loss")


def _num(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return x


def curve_rows(
    dataset: str,
    config_id: str,
    config: Mapping[str, Any],
    epochs: Sequence[Mapping[str, Any]],
    meta_features: Mapping[str, Any],
    status: str = "ok",
    max_epoch: int | None = None,
    failed_cost: float = 0.0,
) -> list[dict[str, Any]]:
    """The rows of one curve.

    ``epochs`` are per-epoch records (``epoch``, ``score``, ``cost``, ...); only the contiguous run
    from epoch 1 is kept (an LCT curve has no holes). A config whose ``status`` is not ``ok`` and
    that stopped before ``max_epoch`` gets one more row at the failing epoch with ``score`` NaN and
    ``cost`` = ``failed_cost`` (the time the failed attempt burned), so tables record failures."""
    by_epoch = {int(e["epoch"]): e for e in epochs if e.get("epoch") is not None}
    hp = {f"{HP_PREFIX}{k}": v for k, v in config.items() if v is not None}
    meta = {f"{META_PREFIX}{k}": _num(v) for k, v in meta_features.items()}
    rows: list[dict[str, Any]] = []
    e = 1
    while e in by_epoch:
        rec = by_epoch[e]
        score = _num(rec.get("score"))
        row = {
            "dataset": str(dataset),
            "config_id": str(config_id),
            "epoch": e,
            "score": score if math.isfinite(score) else float("nan"),
            "cost": max(0.0, _num(rec.get("cost"))) if math.isfinite(_num(rec.get("cost"))) else 0.0,
        }
        for k in EXTRA_EPOCH_KEYS:
            if k in rec:
                row[k] = _num(rec[k])
        if "train_cpu_seconds" in rec and "eval_cpu_seconds" in rec:
            # the same epoch in CPU seconds: comparable across loads of a shared machine (campaigns)
            row["cpu_cost"] = _num(rec["train_cpu_seconds"]) + _num(rec["eval_cpu_seconds"])
        row.update(hp)
        row.update(meta)
        rows.append(row)
        e += 1
    if status != "ok" and (max_epoch is None or e <= int(max_epoch)):
        c = _num(failed_cost)
        row = {
            "dataset": str(dataset),
            "config_id": str(config_id),
            "epoch": e,
            "score": float("nan"),
            "cost": c if math.isfinite(c) and c >= 0 else 0.0,
        }
        row.update(hp)
        row.update(meta)
        rows.append(row)
    return rows


def _column_dtype(values: Iterable[Any]) -> str | None:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return "float64"
    if all(isinstance(v, (bool, np.bool_)) for v in present):
        return "boolean"
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return "Int64"
    if all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return "float64"
    if all(isinstance(v, str) for v in present):
        return "str"
    return None


def frame_from_rows(rows: Sequence[Mapping[str, Any]], hp_names: Sequence[str] = ()) -> pd.DataFrame:
    """A DataFrame with the LCT columns in a stable order and typed hyperparameter columns
    (bool -> ``boolean``, int -> ``Int64``, float -> ``float64``, str -> ``str``; all nullable, a
    missing value = inactive). ``hp_names`` adds (all-missing) columns for knobs never active."""
    cols: dict[str, list[Any]] = {}
    keys: list[str] = ["dataset", "config_id", "epoch", "score", "cost"]
    seen = set(keys)
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    for name in hp_names:
        k = f"{HP_PREFIX}{name}"
        if k not in seen:
            seen.add(k)
            keys.append(k)
    extra = [k for k in keys[5:] if not k.startswith((HP_PREFIX, META_PREFIX))]
    hps = [k for k in keys if k.startswith(HP_PREFIX)]
    metas = sorted(k for k in keys if k.startswith(META_PREFIX))
    ordered = keys[:5] + extra + hps + metas
    for k in ordered:
        cols[k] = [r.get(k) for r in rows]
    df = pd.DataFrame({k: pd.Series(v, dtype="object") for k, v in cols.items()})
    df["dataset"] = df["dataset"].astype("str")
    df["config_id"] = df["config_id"].astype("str")
    df["epoch"] = df["epoch"].astype("int64")
    for k in ["score", "cost", *extra, *metas]:
        df[k] = pd.to_numeric(df[k].map(lambda v: np.nan if v is None else v), errors="coerce").astype("float64")
    for k in hps:
        dtype = _column_dtype(cols[k])
        if dtype is None:
            continue
        vals = [None if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in cols[k]]
        if dtype == "float64":
            df[k] = pd.Series([np.nan if v is None else float(v) for v in vals], dtype="float64")
        elif dtype == "Int64":
            df[k] = pd.Series([pd.NA if v is None else int(v) for v in vals], dtype="Int64")
        elif dtype == "boolean":
            df[k] = pd.Series([pd.NA if v is None else bool(v) for v in vals], dtype="boolean")
        else:
            df[k] = pd.Series(vals, dtype="str")
    return df


def write_table_atomic(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Validate (``quicktune.lct.write_lct``) and write next to ``path``, then rename over it, so a
    reader never sees a half-written table and a crash keeps the previous version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write_lct(df, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
