"""Learning-curve tables (LCT): load, validate and write them.

An LCT is one Parquet or CSV file in long format, one row per (dataset, config, epoch):

- ``dataset`` (str), ``config_id`` (str, unique within its dataset), ``epoch`` (int >= 1,
  contiguous from 1 per curve), ``score`` (float, higher is better; NaN marks a failed or diverged
  epoch), ``cost`` (float >= 0, seconds spent on that epoch);
- ``hp.<name>``: hyperparameters (numeric, bool or string; a missing value = inactive), constant
  along a curve;
- ``meta.<name>``: numeric dataset meta-features, constant within a dataset;
- optional ``test_score``. Other columns are kept and ignored.

The validator is strict because a silently wrong table poisons meta-training: every error is an
``LCTError`` whose message names the file, the column and the (0-based, positional) row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

REQUIRED = ("dataset", "config_id", "epoch", "score", "cost")
HP_PREFIX = "hp."
META_PREFIX = "meta."


class LCTError(ValueError):
    """A learning-curve table is malformed; the message names file, column and row."""


def _err(source: str, column: str | None, row: int | None, msg: str) -> LCTError:
    where = source
    if column is not None:
        where += f": column {column!r}"
    if row is not None:
        where += f", row {row}"
    return LCTError(f"{where}: {msg}")


def hp_columns(df: pd.DataFrame) -> list[str]:
    """The ``hp.<name>`` columns, in table order."""
    return [c for c in df.columns if str(c).startswith(HP_PREFIX)]


def meta_columns(df: pd.DataFrame) -> list[str]:
    """The ``meta.<name>`` columns, in table order."""
    return [c for c in df.columns if str(c).startswith(META_PREFIX)]


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(isinstance(v, float) and math.isnan(v)) or (isinstance(v, np.floating) and np.isnan(v))
    except TypeError:
        return False


def _numeric(df: pd.DataFrame, col: str, source: str, allow_nan: bool) -> np.ndarray:
    """The column as float64, or an error naming the first row that is not a number."""
    s = df[col]
    if pd.api.types.is_bool_dtype(s.dtype):
        raise _err(source, col, 0, "expected numbers, got booleans")
    if pd.api.types.is_numeric_dtype(s.dtype):
        out = s.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        out = np.empty(len(s))
        for i, v in enumerate(s.tolist()):
            if _is_missing(v):
                out[i] = np.nan
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
                raise _err(source, col, i, f"expected a number, got {v!r}")
            out[i] = float(v)
    if not allow_nan:
        bad = np.flatnonzero(np.isnan(out))
        if bad.size:
            raise _err(source, col, int(bad[0]), "missing value (NaN) not allowed here")
    return out


def _labels(df: pd.DataFrame, col: str, source: str) -> list[str]:
    out = []
    for i, v in enumerate(df[col].tolist()):
        if _is_missing(v) or (isinstance(v, str) and not v.strip()):
            raise _err(source, col, i, "missing or empty value")
        if isinstance(v, float) and not float(v).is_integer():
            raise _err(source, col, i, f"expected a string id, got {v!r}")
        out.append(str(int(v)) if isinstance(v, (float, np.floating)) else str(v))
    return out


def validate_lct(df: pd.DataFrame, source: str = "<frame>") -> pd.DataFrame:
    """Check a table and return a normalized copy (``dataset``/``config_id`` as str, ``epoch`` as
    int64, ``score``/``cost`` as float64, rows sorted by dataset, config_id, epoch). Raises
    ``LCTError`` on the first problem, naming ``source``, the column and the row."""
    if not isinstance(df, pd.DataFrame):
        raise LCTError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    for col in REQUIRED:
        if col not in df.columns:
            raise _err(source, col, None, f"required column missing (have {list(map(str, df.columns))})")
    if len(df) == 0:
        raise LCTError(f"{source}: the table has no rows")
    df = df.reset_index(drop=True)
    datasets = _labels(df, "dataset", source)
    cids = _labels(df, "config_id", source)

    epochs_f = _numeric(df, "epoch", source, allow_nan=False)
    for i, e in enumerate(epochs_f):
        if not float(e).is_integer() or e < 1:
            raise _err(source, "epoch", i, f"epoch must be an integer >= 1, got {e!r}")
    epochs = epochs_f.astype(np.int64)

    score = _numeric(df, "score", source, allow_nan=True)
    bad = np.flatnonzero(np.isinf(score))
    if bad.size:
        raise _err(source, "score", int(bad[0]), f"score must be finite or NaN, got {score[bad[0]]}")
    cost = _numeric(df, "cost", source, allow_nan=False)
    bad = np.flatnonzero(~np.isfinite(cost) | (cost < 0))
    if bad.size:
        raise _err(source, "cost", int(bad[0]), f"cost must be a finite number >= 0, got {cost[bad[0]]}")
    if "test_score" in df.columns:
        ts = _numeric(df, "test_score", source, allow_nan=True)
        bad = np.flatnonzero(np.isinf(ts))
        if bad.size:
            raise _err(source, "test_score", int(bad[0]), "test_score must be finite or NaN")

    # duplicates and gaps, per curve
    keys = pd.DataFrame({"d": datasets, "c": cids, "e": epochs})
    dup = keys.duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise _err(
            source, "epoch", i, f"duplicate row for dataset {datasets[i]!r}, config_id {cids[i]!r}, epoch {epochs[i]}"
        )
    for key, positions in keys.groupby(["d", "c"], sort=False).indices.items():
        d, c = cast("tuple[str, str]", key)  # pandas-stubs type group keys as Hashable
        idx = np.asarray(positions)
        got = np.sort(epochs[idx])
        expected = np.arange(1, len(idx) + 1)
        if not np.array_equal(got, expected):
            missing = sorted(set(range(1, int(got.max()) + 1)) - set(got.tolist()))
            first_row = int(idx[np.argmax(epochs[idx])])
            raise _err(
                source,
                "epoch",
                first_row,
                f"curve of dataset {d!r}, config_id {c!r} has a gap: "
                f"epochs must run 1..n without holes, missing {missing[:5]}",
            )

    out = df.copy()
    out["dataset"] = pd.Series(datasets, dtype="str")
    out["config_id"] = pd.Series(cids, dtype="str")
    out["epoch"] = epochs
    out["score"] = score
    out["cost"] = cost

    # hyperparameters: numeric, bool or string, constant along a curve
    curve_of = keys["d"] + "\x00" + keys["c"]
    for col in hp_columns(df):
        vals = df[col].tolist()
        kinds = set()
        for i, v in enumerate(vals):
            if _is_missing(v):
                continue
            if isinstance(v, (bool, np.bool_)):
                kinds.add("bool")
            elif isinstance(v, (int, float, np.number)):
                if isinstance(v, (float, np.floating)) and math.isinf(v):
                    raise _err(source, col, i, "infinite hyperparameter value")
                kinds.add("number")
            elif isinstance(v, str):
                kinds.add("str")
            else:
                raise _err(source, col, i, f"hyperparameters must be numbers, bools or strings, got {v!r}")
            if len(kinds) > 1:
                raise _err(source, col, i, f"mixed value types {sorted(kinds)} in one hyperparameter column")
        first: dict[str, Any] = {}
        for i, (k, v) in enumerate(zip(curve_of, vals, strict=True)):
            v = None if _is_missing(v) else v
            if k not in first:
                first[k] = v
            elif first[k] != v:
                raise _err(
                    source,
                    col,
                    i,
                    f"hyperparameter changes along the curve of config_id {cids[i]!r} ({first[k]!r} -> {v!r})",
                )

    # meta-features: numeric, constant per dataset
    for col in meta_columns(df):
        mvals = _numeric(df, col, source, allow_nan=True)
        first_m: dict[str, float] = {}
        for i, (d, v) in enumerate(zip(datasets, mvals, strict=True)):
            if d not in first_m:
                first_m[d] = v
            elif not (first_m[d] == v or (np.isnan(first_m[d]) and np.isnan(v))):
                raise _err(source, col, i, f"meta-feature not constant within dataset {d!r} ({first_m[d]!r} vs {v!r})")
        out[col] = mvals

    return out.sort_values(["dataset", "config_id", "epoch"], kind="stable").reset_index(drop=True)


def load_lct(path: str | Path) -> pd.DataFrame:
    """Read and validate a table (``.parquet`` / ``.pq`` or ``.csv``)."""
    path = Path(path)
    if not path.exists():
        raise LCTError(f"{path}: no such learning-curve table")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix == ".csv":
            df = pd.read_csv(path, dtype={"dataset": str, "config_id": str})
        else:
            raise LCTError(f"{path}: unknown table format {suffix!r} (use .parquet or .csv)")
    except LCTError:
        raise
    except Exception as exc:  # pyarrow / csv parser errors, re-raised with the file name
        raise LCTError(f"{path}: cannot read table: {exc}") from None
    return validate_lct(df, source=str(path))


def write_lct(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate and write a table; the format follows the suffix (``.parquet`` or ``.csv``)."""
    path = Path(path)
    table = validate_lct(df, source=str(path))
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".parquet", ".pq"):
        table.to_parquet(path, index=False)
    elif suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        raise LCTError(f"{path}: unknown table format {suffix!r} (use .parquet or .csv)")
    return path


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def table_configs(df: pd.DataFrame, dataset: str) -> list[tuple[str, dict[str, Any]]]:
    """The configs of one dataset as ``(config_id, {name: value})`` (inactive = key absent), in
    order of first appearance."""
    sub = df[df["dataset"] == dataset]
    if sub.empty:
        raise LCTError(f"no dataset {dataset!r} in table (have {sorted(df['dataset'].unique().tolist())})")
    firsts = sub.drop_duplicates("config_id", keep="first")
    cols = hp_columns(df)
    out = []
    for cid, row in zip(firsts["config_id"].tolist(), firsts[cols].itertuples(index=False, name=None), strict=True):
        cfg = {c[len(HP_PREFIX) :]: _py(v) for c, v in zip(cols, row, strict=True) if not _is_missing(v)}
        out.append((str(cid), cfg))
    return out


def table_meta_features(df: pd.DataFrame, dataset: str) -> dict[str, float]:
    """The meta-features of one dataset (``meta.`` prefix removed); NaN ones are left out."""
    sub = df[df["dataset"] == dataset]
    if sub.empty:
        raise LCTError(f"no dataset {dataset!r} in table")
    row = sub.iloc[0]
    return {c[len(META_PREFIX) :]: float(row[c]) for c in meta_columns(df) if not _is_missing(row[c])}


def table_hash(df: pd.DataFrame) -> str:
    """A content hash of a table (order-independent over rows), recorded in meta-artifacts."""
    import hashlib

    cols = sorted(map(str, df.columns))
    t = df[cols].sort_values(["dataset", "config_id", "epoch"]).reset_index(drop=True)
    h = hashlib.sha256(",".join(cols).encode())
    h.update(pd.util.hash_pandas_object(t.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]
