"""Harvest: every search recorded on an MLflow server becomes meta-data for the next one.

Reads the layout written by :mod:`quicktune.tracking.layout` (a parent run per search tagged
``quicktune.search_id`` / ``quicktune.role=search`` whose params hold the search spec, incl.
``data_uri``, ``max_epochs`` and ``meta_features.<name>``; a child run per config tagged
``quicktune.config_id`` with the exact config JSON in ``quicktune.config`` and per-epoch metrics
``score``/``cost``/... with step = epoch; a failed config tagged ``quicktune.failed_epoch`` and
``quicktune.failed_cost``) and writes an LCT.

Datasets are identified by their fingerprint when the search recorded one (tag or param
``quicktune.dataset_fingerprint`` / ``dataset_fingerprint``), else by the data URI together with
its meta-features; the table's ``dataset`` column is the URI's base name (made unique with a short
key when two datasets share a name). The same (dataset, config_id) seen in several searches keeps
its longest curve, so re-running or resuming searches never duplicates rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quicktune.metadataset.table import curve_rows, frame_from_rows, write_table_atomic
from quicktune.tracking.schema import (
    METRIC_SCORE,
    PARAM_DATA_URI,
    PARAM_FINGERPRINT,
    PARAM_MAX_EPOCHS,
    PARAM_META_FEATURES_PREFIX,
    TAG_FINGERPRINT,
    TAG_SEARCH_ID,
)

META_PARAM_PREFIX = PARAM_META_FEATURES_PREFIX
FINGERPRINT_KEYS = (TAG_FINGERPRINT, PARAM_FINGERPRINT)


class HarvestError(RuntimeError):
    """The server cannot be read or holds no usable search; the message says what."""


@dataclass
class _Curve:
    dataset_key: str
    config_id: str
    config: dict[str, Any]
    epochs: list[dict[str, Any]]
    status: str
    failed_cost: float
    max_epoch: int | None
    search_id: str

    @property
    def length(self) -> int:
        n = 0
        by = {int(e["epoch"]) for e in self.epochs}
        while n + 1 in by:
            n += 1
        return n


@dataclass
class _Dataset:
    key: str
    uri: str
    meta: dict[str, float]
    searches: list[str] = field(default_factory=list)


def _parse_float(text: Any) -> float | None:
    try:
        v = float(json.loads(text)) if isinstance(text, str) else float(text)
    except (TypeError, ValueError, json.JSONDecodeError):
        return None
    return v if math.isfinite(v) else None


def _dataset_of(run: Any) -> tuple[str, str, dict[str, float]]:
    """(key, data uri, meta-features) of a parent run."""
    params, tags = run.data.params, run.data.tags
    uri = params.get(PARAM_DATA_URI, "")
    try:
        uri = json.loads(uri) if uri.startswith('"') else uri
    except json.JSONDecodeError:
        pass
    meta = {}
    for k, v in params.items():
        if k.startswith(META_PARAM_PREFIX):
            f = _parse_float(v)
            if f is not None:
                meta[k[len(META_PARAM_PREFIX) :]] = f
    fp = next((tags.get(k) or params.get(k) for k in FINGERPRINT_KEYS if tags.get(k) or params.get(k)), None)
    if fp:
        key = f"fp:{fp}"
    else:
        blob = json.dumps({"uri": uri, "meta": {k: round(v, 10) for k, v in sorted(meta.items())}}, sort_keys=True)
        key = "um:" + hashlib.sha1(blob.encode()).hexdigest()[:12]
    return key, uri, meta


def _dataset_names(datasets: Mapping[str, _Dataset]) -> dict[str, str]:
    base: dict[str, list[str]] = {}
    for key, d in datasets.items():
        name = d.uri.rstrip("/").rsplit("/", 1)[-1] or "dataset"
        base.setdefault(name, []).append(key)
    out = {}
    for name, keys in base.items():
        for key in keys:
            short = hashlib.sha1(key.encode()).hexdigest()[:6]
            out[key] = name if len(keys) == 1 else f"{name}-{short}"
    return out


def _add_extra_metrics(tracker: Any, rec: Any) -> None:
    """The per-epoch metrics besides score/cost (``load_configs`` reads only what resuming needs)."""
    from quicktune.metadataset.table import EXTRA_EPOCH_KEYS

    if not rec.epochs:
        return
    for key in EXTRA_EPOCH_KEYS:
        for step, value, _ in tracker.metric_history(rec.run_id, key):
            if step in rec.epochs:
                rec.epochs[step][key] = value


def harvest_frame(tracking_uri: str, experiments: Sequence[str] | None = None, finished_only: bool = False):
    """The LCT (a DataFrame) of every search on the server, plus a summary dict. ``finished_only``:
    skip searches whose parent run is still RUNNING (continual meta-learning reads ended searches)."""
    from mlflow import MlflowClient

    from quicktune.tracking.layout import SearchTracker

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        if experiments:
            exps = []
            for name in experiments:
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise HarvestError(f"{tracking_uri}: no experiment named {name!r}")
                exps.append(exp)
        else:
            exps = list(client.search_experiments())
    except HarvestError:
        raise
    except Exception as exc:  # noqa: BLE001 - connection errors etc., re-raised with the server named
        from quicktune.tracking.secrets import safe_uri

        raise HarvestError(f"cannot read MLflow at {safe_uri(tracking_uri)}: {type(exc).__name__}: {exc}") from None

    datasets: dict[str, _Dataset] = {}
    curves: dict[tuple[str, str], _Curve] = {}
    warnings: list[str] = []
    n_searches = 0
    for exp in exps:
        tracker = SearchTracker(tracking_uri, experiment=exp.name)
        parents = tracker.find_searches()
        for parent in sorted(parents, key=lambda r: r.info.start_time):
            if finished_only and parent.info.status in ("RUNNING", "SCHEDULED"):
                continue
            search_id = parent.data.tags.get(TAG_SEARCH_ID, parent.info.run_id)
            key, uri, meta = _dataset_of(parent)
            if not meta:
                warnings.append(
                    f"search {search_id}: no meta_features params on its parent run; its curves have no meta.* values"
                )
            d = datasets.setdefault(key, _Dataset(key=key, uri=uri, meta=meta))
            d.searches.append(search_id)
            max_epoch = _parse_float(parent.data.params.get(PARAM_MAX_EPOCHS))
            n_searches += 1
            for cid, rec in tracker.load_configs(parent.info.run_id).items():
                _add_extra_metrics(tracker, rec)
                eps = [{"epoch": e, **m} for e, m in sorted(rec.epochs.items()) if METRIC_SCORE in m]
                status = "ok" if rec.failure is None else (rec.failure.status or "failed")
                c = _Curve(
                    dataset_key=key,
                    config_id=cid,
                    config=rec.config,
                    epochs=eps,
                    status=status,
                    failed_cost=rec.failure.cost if rec.failure is not None else 0.0,
                    max_epoch=int(max_epoch) if max_epoch else None,
                    search_id=search_id,
                )
                if rec.failure is not None and rec.failure.epoch != c.length + 1:
                    # the failure is recorded at an epoch the curve does not reach contiguously
                    c.status = "ok"
                prev = curves.get((key, cid))
                if prev is None or (c.length, c.status != "ok") > (prev.length, prev.status != "ok"):
                    curves[(key, cid)] = c
    if not curves:
        raise HarvestError(
            f"no recorded configurations found on {tracking_uri}"
            + (f" in experiments {list(experiments)}" if experiments else "")
        )
    names = _dataset_names(datasets)
    rows: list[dict[str, Any]] = []
    for (key, cid), c in sorted(curves.items(), key=lambda kv: (names[kv[0][0]], kv[0][1])):
        rows.extend(
            curve_rows(
                names[key],
                cid,
                c.config,
                c.epochs,
                datasets[key].meta,
                status=c.status,
                max_epoch=c.max_epoch,
                failed_cost=c.failed_cost,
            )
        )
    if not rows:
        raise HarvestError(f"the searches on {tracking_uri} recorded no finished epoch yet")
    df = frame_from_rows(rows)
    summary = {
        "searches": n_searches,
        "datasets": len({names[k] for k, _ in curves}),
        "curves": len(curves),
        "rows": int(len(df)),
        "warnings": warnings,
        "dataset_names": {names[k]: {"uri": d.uri, "key": k, "searches": d.searches} for k, d in datasets.items()},
    }
    return df, summary


def harvest(tracking_uri: str, out: str | os.PathLike[str], experiments: Iterable[str] | None = None) -> dict[str, Any]:
    """Write the LCT of every search on ``tracking_uri`` to ``out``; returns a summary
    (searches, datasets, curves, rows, warnings, dataset names)."""
    df, summary = harvest_frame(tracking_uri, list(experiments) if experiments else None)
    write_table_atomic(df, out)
    summary["path"] = str(out)
    return summary
