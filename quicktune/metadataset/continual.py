"""Continual meta-learning: the surrogate learns from every search the team runs.

The shipped meta-dataset is a starting point; the team's own history is the meta-dataset that
matters. ``quicktune metatrain --from-mlflow URI`` (:func:`retrain_from_mlflow`):

1. harvests every ended search on the tracking server (:mod:`quicktune.metadataset.harvest`);
2. with ``--with-shipped``, merges it with the shipped table (:func:`merge_tables`), one curve per
   (dataset fingerprint, config id): a search tags its parent run with the dataset's fingerprint (a
   hash of the file list, labels and split), so the same data under another URI is one dataset.
   The shipped table records no fingerprint: its datasets get ``shipped:<hash of name and
   meta-features>`` (:func:`shipped_fingerprints`), and a search without one (older versions) is
   keyed by its data URI and meta-features, as harvest does;
3. holds out a fraction of the curves (:func:`heldout_mask`: a curve is held out when a seeded hash
   of its (fingerprint, config id) falls below ``HELDOUT_FRACTION``; datasets with fewer than
   ``MIN_CURVES_TO_HOLD_OUT`` curves keep all of theirs). The hash, not a random draw, is the point:
   a curve is held out in every retrain or in none, so successive versions never trained on the
   curves the next comparison scores them on;
4. meta-trains on the rest and scores the held-out curves (:func:`heldout_loglik`: the GP
   conditioned on training observations of the same dataset predicts each held-out
   (config, epoch); mean Gaussian predictive log-likelihood per dataset, then over datasets);
5. registers the artifact as a new version of ``quicktune-surrogate``
   (:mod:`quicktune.tracking.registry`) and re-scores the current ``champion`` on the *same*
   held-out split: the alias moves only when the new version is not worse. A champion that cannot
   be loaded any more is replaced (no search could use it either).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quicktune.lct import META_PREFIX, LCTError, load_lct, validate_lct

log = logging.getLogger(__name__)

FINGERPRINT_COLUMN = "dataset_fingerprint"
HELDOUT_FRACTION = 0.2
HELDOUT_SEED = 0
MIN_CURVES_TO_HOLD_OUT = 5
CONTEXT_POINTS = 256  # training observations the GP is conditioned on, per dataset
TARGET_POINTS = 512  # held-out observations scored, per dataset
FAILED_LOGLIK = -1e6  # a dataset on which the GP could not predict (a numerical failure)
_REQUIRED = ("dataset", "config_id", "epoch", "score", "cost")


class ContinualError(RuntimeError):
    """Continual meta-training cannot go on; the message says why."""


def _short(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


# --- fingerprints ---------------------------------------------------------------------------------
def shipped_fingerprints(df: pd.DataFrame) -> dict[str, str]:
    """dataset name -> ``shipped:<hash>`` of the name and its meta-features (the shipped table has
    no recorded fingerprint; this one is stable as long as the table's datasets are)."""
    meta_cols = sorted(c for c in df.columns if str(c).startswith(META_PREFIX))
    out = {}
    for name, g in df.groupby("dataset", sort=True):
        meta = {c: (None if pd.isna(g[c].iloc[0]) else round(float(g[c].iloc[0]), 10)) for c in meta_cols}
        blob = json.dumps({"dataset": str(name), "meta": meta}, sort_keys=True)
        out[str(name)] = "shipped:" + hashlib.sha1(blob.encode()).hexdigest()[:16]
    return out


def with_fingerprints(df: pd.DataFrame, fingerprints: Mapping[str, str]) -> pd.DataFrame:
    """``df`` with a ``dataset_fingerprint`` column from ``fingerprints`` (dataset name -> fingerprint)."""
    missing = sorted(set(df["dataset"].astype(str)) - set(fingerprints))
    if missing:
        raise ContinualError(f"no fingerprint for datasets {missing[:5]}")
    out = df.copy()
    out[FINGERPRINT_COLUMN] = out["dataset"].astype(str).map(dict(fingerprints))
    return out


# --- merge ----------------------------------------------------------------------------------------
def _canonical_missing(df: pd.DataFrame) -> pd.DataFrame:
    """Every missing value as None (NaN, pd.NA and None print differently; the digest must not care)."""
    obj = df.astype(object)
    return obj.where(df.notna(), None)


def merge_tables(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One learning-curve table from several, each with a ``dataset_fingerprint`` column: one
    curve per (fingerprint, config id) -- the longest; equal lengths are decided by a digest of
    the curve's content, so the result does not depend on the order of ``frames`` -- and one
    dataset name per fingerprint (two fingerprints with one name get ``NAME-<6 hex>`` each).
    Idempotent: merging a merged table again (alone or with any of its inputs) changes nothing."""
    parts = [f for f in frames if len(f)]
    if not parts:
        raise LCTError("merge: no rows in any table")
    for i, f in enumerate(parts):
        if FINGERPRINT_COLUMN not in f.columns:
            raise LCTError(f"merge: table {i} has no {FINGERPRINT_COLUMN!r} column")
    df = pd.concat([f.reset_index(drop=True) for f in parts], ignore_index=True, sort=False)
    df["dataset"] = df["dataset"].astype(str)
    df["config_id"] = df["config_id"].astype(str)
    df[FINGERPRINT_COLUMN] = df[FINGERPRINT_COLUMN].astype(str)
    df["_src"] = np.concatenate([np.full(len(f), i) for i, f in enumerate(parts)])
    df["epoch"] = df["epoch"].astype(np.int64)

    # one curve per (fingerprint, config id): longest, then the larger digest of the curve itself
    # (config, epochs, scores, costs), then the larger digest with its meta-features. The curve's
    # digest leaves the meta-features out because the merge rewrites them (below): a merged curve
    # must win again against the inputs it beat, or merging a merged table would change it.
    own = sorted(c for c in df.columns if c not in ("_src", "dataset") and not str(c).startswith(META_PREFIX))
    meta = sorted(c for c in df.columns if str(c).startswith(META_PREFIX))
    for col, cols in (("_h", own), ("_hm", own + meta)):
        df[col] = pd.util.hash_pandas_object(_canonical_missing(df[cols]).astype(str), index=False).to_numpy()
    df = df.sort_values([FINGERPRINT_COLUMN, "config_id", "_src", "epoch"], kind="mergesort")

    def _digest(h: pd.Series) -> str:
        return hashlib.sha1(h.to_numpy().tobytes()).hexdigest()

    per_curve = df.groupby([FINGERPRINT_COLUMN, "config_id", "_src"], sort=False).agg(
        length=("_h", "size"), digest=("_h", _digest), meta_digest=("_hm", _digest)
    )
    curves = (
        pd.DataFrame(per_curve)
        .reset_index()
        .sort_values(
            [FINGERPRINT_COLUMN, "config_id", "length", "digest", "meta_digest", "_src"],
            ascending=[True, True, False, False, False, True],
        )
    )
    best = curves.drop_duplicates([FINGERPRINT_COLUMN, "config_id"], keep="first")
    keep = df.merge(best[[FINGERPRINT_COLUMN, "config_id", "_src"]], how="left", indicator=True)["_merge"] == "both"
    df = df[keep.to_numpy()].drop(columns=["_src", "_h", "_hm"])
    # one set of meta-features per fingerprint (the same data measured by two versions may differ):
    # those of its first kept curve, so that the choice does not depend on the order of ``frames``
    df = df.sort_values([FINGERPRINT_COLUMN, "config_id", "epoch"], kind="mergesort")
    meta_cols = [col for col in df.columns if str(col).startswith(META_PREFIX)]
    if meta_cols:
        df[meta_cols] = df.groupby(FINGERPRINT_COLUMN, sort=False)[meta_cols].transform("first")

    # one name per fingerprint; a name shared by two fingerprints gets a suffix on each
    bases: dict[str, str] = {}
    for fp, name in df[[FINGERPRINT_COLUMN, "dataset"]].drop_duplicates().itertuples(index=False, name=None):
        suffix = "-" + _short(fp)
        base = name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name
        bases[fp] = min(bases.get(fp, base), base)
    by_base: dict[str, list[str]] = {}
    for fp, base in bases.items():
        by_base.setdefault(base, []).append(fp)
    names = {fp: (base if len(by_base[base]) == 1 else f"{base}-{_short(fp)}") for fp, base in bases.items()}
    df["dataset"] = df[FINGERPRINT_COLUMN].map(names)

    first = [*_REQUIRED, FINGERPRINT_COLUMN]
    cols = first + sorted(c for c in df.columns if c not in first)
    df = df[cols].sort_values(["dataset", "config_id", "epoch"], kind="mergesort").reset_index(drop=True)
    return validate_lct(df, source="merged table")


# --- held-out split and score ---------------------------------------------------------------------
def heldout_mask(df: pd.DataFrame, fraction: float = HELDOUT_FRACTION, seed: int = HELDOUT_SEED) -> np.ndarray:
    """Row mask of the held-out curves: a curve is held out when the seeded hash of its
    (fingerprint, config id) is below ``fraction``, in datasets with at least
    ``MIN_CURVES_TO_HOLD_OUT`` curves. Stable: a curve's fate does not depend on what else is in
    the table."""
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    fps = df[FINGERPRINT_COLUMN].astype(str) if FINGERPRINT_COLUMN in df.columns else df["dataset"].astype(str)
    keys = fps + "\x00" + df["config_id"].astype(str)
    uniq = keys.unique()
    u = {k: int.from_bytes(hashlib.sha256(f"{seed}\x00{k}".encode()).digest()[:8], "big") / 2.0**64 for k in uniq}
    held = keys.map(lambda k: u[k] < fraction).to_numpy(dtype=bool)
    curves_per_dataset = keys.groupby(df["dataset"].astype(str)).transform("nunique").to_numpy()
    return held & (curves_per_dataset >= MIN_CURVES_TO_HOLD_OUT)


def _rng_for(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}\x00{name}".encode()).digest()[:8], "big"))


def _configs(rows: pd.DataFrame) -> list[dict[str, Any]]:
    hp_cols = [c for c in rows.columns if str(c).startswith("hp.")]
    out = []
    for row in rows[hp_cols].itertuples(index=False, name=None):
        cfg = {}
        for c, v in zip(hp_cols, row, strict=True):
            if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                continue
            cfg[c[3:]] = v.item() if isinstance(v, np.generic) else v
        out.append(cfg)
    return out


def _batch(artifact: Any, rows: pd.DataFrame, curves: Mapping[str, np.ndarray], meta_vec: np.ndarray, L: int) -> Any:
    from quicktune.optimizer.surrogate import make_batch

    X, M = artifact.schema.encode(_configs(rows))
    ep = rows["epoch"].to_numpy(dtype=np.int64)
    cs: list[Any] = [curves[str(c)][: e - 1] for c, e in zip(rows["config_id"].astype(str), ep, strict=True)]
    return make_batch(X, M, ep, cs, meta_vec, L)


def heldout_loglik(
    artifact: Any,
    train_df: pd.DataFrame,
    heldout_df: pd.DataFrame,
    seed: int = HELDOUT_SEED,
    context: int = CONTEXT_POINTS,
    targets: int = TARGET_POINTS,
) -> dict[str, Any]:
    """Mean held-out predictive log-likelihood of ``artifact`` (a MetaArtifact): per dataset of
    ``heldout_df`` with at least two finite training scores, the GP conditioned on up to
    ``context`` training observations of that dataset predicts up to ``targets`` held-out
    (config, epoch) scores (each with its curve up to the epoch before); Gaussian log density with
    the learned noise, averaged per dataset, then over datasets. The samples depend only on the
    tables and ``seed``, so two artifacts are scored on exactly the same points."""
    import torch

    from quicktune.optimizer.surrogate import DeepKernelGP

    model = DeepKernelGP(artifact.surrogate_config)
    model.load_state_dict(artifact.surrogate_state)
    model.eval()
    noise = float(model.likelihood.noise.item())
    L = int(artifact.max_epochs)
    per: dict[str, float] = {}
    n_points = 0
    for name, held in heldout_df.groupby("dataset", sort=True):
        train = train_df[train_df["dataset"] == name]
        ctx = train[np.isfinite(train["score"].to_numpy(dtype=float))]
        tgt = held[np.isfinite(held["score"].to_numpy(dtype=float))]
        if len(ctx) < 2 or len(tgt) == 0:
            continue
        rng = _rng_for(seed, str(name))
        ctx = ctx.iloc[np.sort(rng.choice(len(ctx), size=min(context, len(ctx)), replace=False))]
        tgt = tgt.iloc[np.sort(rng.choice(len(tgt), size=min(targets, len(tgt)), replace=False))]
        both = pd.concat([train, held])
        curves: dict[str, np.ndarray] = {
            str(cid): g.sort_values("epoch")["score"].to_numpy(dtype=float)
            for cid, g in both.groupby("config_id", sort=False)
        }
        first = both.iloc[0]
        meta = {
            str(c)[len(META_PREFIX) :]: float(first[c])
            for c in both.columns
            if str(c).startswith(META_PREFIX) and not pd.isna(first[c])
        }
        meta_vec = artifact.meta_scaler.transform(meta)

        y_ctx = torch.as_tensor(ctx["score"].to_numpy(dtype=np.float32))
        y = tgt["score"].to_numpy(dtype=float)
        try:
            with torch.no_grad():
                mean, std = model.predict(
                    _batch(artifact, ctx, curves, meta_vec, L), y_ctx, _batch(artifact, tgt, curves, meta_vec, L)
                )
            var = std**2 + noise
            ll = float(np.mean(-0.5 * np.log(2 * np.pi * var) - 0.5 * (y - mean) ** 2 / var))
            per[str(name)] = ll if math.isfinite(ll) else FAILED_LOGLIK
        except Exception as exc:  # noqa: BLE001 - a numerical failure scores as very unlikely
            log.warning("held-out score on %s failed: %s", name, exc)
            per[str(name)] = FAILED_LOGLIK
        n_points += len(tgt)
    if not per:
        raise ContinualError("no held-out curve to score (too few curves per dataset?)")
    return {"loglik": float(np.mean(list(per.values()))), "datasets": per, "points": n_points}


# --- the whole round ------------------------------------------------------------------------------
def build_table(tracking_uri: str, with_shipped: bool, experiments: Sequence[str] | None = None):
    """(merged table, harvest summary): every ended search on the server, plus the shipped table."""
    from quicktune.metadataset import shipped_table_path
    from quicktune.metadataset.harvest import HarvestError, harvest_frame

    frames = []
    try:
        harvested, summary = harvest_frame(tracking_uri, experiments, finished_only=True)
        fps = {name: d["key"] for name, d in summary["dataset_names"].items()}
        frames.append(with_fingerprints(harvested, fps))
    except HarvestError as exc:
        if not with_shipped:
            raise ContinualError(str(exc)) from None
        summary = {"searches": 0, "datasets": 0, "curves": 0, "rows": 0, "warnings": [str(exc)]}
    if with_shipped:
        shipped = load_lct(shipped_table_path())
        frames.append(with_fingerprints(shipped, shipped_fingerprints(shipped)))
    return merge_tables(frames), summary


def meta_train_table(table: pd.DataFrame, image_size: int | None = 32, **options: Any) -> Any:
    """``meta_train`` with the table's models encoded by their hub descriptors at ``image_size`` px, as
    ``quicktune metatrain --table`` does (a registry retrain without them fell back to a one-hot model
    encoding that cannot tell the models of another hub apart); names neither the catalogue nor timm
    knows are skipped, so a table of made-up names still trains one-hot."""
    from quicktune.hub import known_descriptor_features
    from quicktune.optimizer.metatrain import meta_train

    models = table["hp.model"].dropna().astype(str).unique().tolist() if "hp.model" in table.columns else []
    descriptors = known_descriptor_features(sorted(models), image_size)
    return meta_train(table, model_descriptors=descriptors, image_size=image_size, **options)


def retrain_from_mlflow(
    tracking_uri: str,
    *,
    with_shipped: bool = False,
    model_name: str = "",
    alias: str = "",
    min_new: int = 0,
    experiments: Sequence[str] | None = None,
    heldout_fraction: float = HELDOUT_FRACTION,
    seed: int = HELDOUT_SEED,
    epochs: int = 20,
    steps_per_epoch: int = 50,
    val_fraction: float = 0.15,
    cache_dir: str | Path | None = None,
    image_size: int | None = 32,
) -> dict[str, Any]:
    """Harvest, merge, meta-train, score on held-out curves, register, and move ``alias`` when the
    new version is not worse than the current one (both scored on this round's held-out split).
    ``steps_per_epoch=0`` trains nothing (the untrained surrogate: a deliberately worse retrain).
    Returns a report (JSON-able); ``{"skipped": ...}`` when fewer than ``min_new`` searches ended
    since the champion was trained. The table's models are encoded by their hub descriptors at
    ``image_size`` px (:func:`meta_train_table`)."""
    from quicktune import __version__
    from quicktune.lct import table_hash
    from quicktune.optimizer.artifact import FORMAT_VERSION, MetaArtifact
    from quicktune.tracking import registry
    from quicktune.tracking.schema import (
        SURROGATE_ALIAS,
        SURROGATE_MODEL,
        TAG_ALIAS_DECISION,
        TAG_ARTIFACT_VERSION,
        TAG_HELDOUT,
        TAG_HELDOUT_LOGLIK,
        TAG_QUICKTUNE_VERSION,
        TAG_TABLE_DATASETS,
        TAG_TABLE_HASH,
        TAG_TABLE_SEARCHES,
    )

    model_name = registry.check_model_name(model_name or SURROGATE_MODEL)
    alias = registry.check_alias(alias or SURROGATE_ALIAS)
    client = registry.client_for(tracking_uri)
    champion = registry.version_by_alias(client, model_name, alias)
    table, summary = build_table(tracking_uri, with_shipped, experiments)
    n_searches = int(summary.get("searches", 0))
    if min_new > 0:
        before = int(float((champion.tags or {}).get(TAG_TABLE_SEARCHES, "0") or 0)) if champion is not None else 0
        if n_searches - before < min_new:
            return {
                "skipped": f"{n_searches - before} new searches since the {alias} (at least {min_new} asked)",
                "searches": n_searches,
            }
    mask = heldout_mask(table, heldout_fraction, seed)
    train_df, held_df = table[~mask].reset_index(drop=True), table[mask].reset_index(drop=True)
    if held_df.empty:
        raise ContinualError(
            f"no curve held out (fraction {heldout_fraction}, datasets need >= {MIN_CURVES_TO_HOLD_OUT} curves); "
            "nothing to compare versions on"
        )
    art = meta_train_table(
        train_df, image_size, epochs=epochs, seed=seed, val_fraction=val_fraction, steps_per_epoch=steps_per_epoch
    )
    scored = heldout_loglik(art, train_df, held_df, seed)
    heldout_desc = {
        "fraction": heldout_fraction,
        "seed": seed,
        "curves": int(held_df.groupby(["dataset", "config_id"]).ngroups),
        "points": scored["points"],
        "table_hash": table_hash(table),
    }
    art.metrics = {**art.metrics, "heldout_loglik": scored["loglik"], "heldout": heldout_desc}

    champ_score: float | None = None
    champ_note = ""
    if champion is not None:
        with contextlib.ExitStack() as stack:  # a download folder of our own is deleted after scoring
            cache = (
                Path(cache_dir)
                if cache_dir
                else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qt-champion-")))
            )
            try:
                champ_art, _ = registry.load_version(
                    client, registry.ModelRef(model_name, version=int(champion.version)), cache, MetaArtifact.load,
                    FORMAT_VERSION,
                )  # fmt: skip
                champ_score = heldout_loglik(champ_art, train_df, held_df, seed)["loglik"]
            except (registry.RegistryError, ContinualError) as exc:
                champ_note = f"the {alias} could not be scored ({exc}); replaced"
                log.warning("%s", champ_note)
    promote = champ_score is None or scored["loglik"] >= champ_score
    if champion is None:
        decision = f"first version: {alias}"
    elif champ_score is None:
        decision = champ_note
    else:
        decision = (
            f"held-out log-likelihood {scored['loglik']:.4f} vs {alias} v{champion.version} {champ_score:.4f} "
            f"on the same split: {'moved' if promote else 'kept'}"
        )
    datasets_json = json.dumps(sorted(art.datasets))
    if len(datasets_json) > 4000:  # MLflow tag values are limited (5000 characters)
        datasets_json = datasets_json[:3990] + "...]"
    tags = {
        TAG_TABLE_HASH: str(art.table_hash),
        TAG_TABLE_DATASETS: datasets_json,
        TAG_TABLE_SEARCHES: str(n_searches),
        TAG_HELDOUT_LOGLIK: repr(float(scored["loglik"])),
        TAG_HELDOUT: json.dumps(heldout_desc, sort_keys=True),
        TAG_QUICKTUNE_VERSION: __version__,
        TAG_ARTIFACT_VERSION: str(art.version),
        TAG_ALIAS_DECISION: decision[:4000],
    }
    with tempfile.TemporaryDirectory(prefix="qt-surrogate-") as tmp:
        art.save(tmp)
        mv = registry.register_folder(
            client,
            tmp,
            model_name,
            experiment=model_name,
            tags=tags,
            metrics={"heldout_loglik": scored["loglik"], "best_val_nll": float(art.metrics.get("best_val_nll", 0))},
            description="Quick-Tune's meta-trained surrogate (quicktune metatrain --from-mlflow)",
        )
    if promote:
        registry.set_alias(client, model_name, alias, mv.version)
    return {
        "model": model_name,
        "version": int(mv.version),
        "uri": f"models:/{model_name}/{mv.version}",
        "alias": alias,
        "alias_moved": promote,
        "decision": decision,
        "heldout_loglik": scored["loglik"],
        "champion_version": int(champion.version) if champion is not None else None,
        "champion_heldout_loglik": champ_score,
        "heldout": heldout_desc,
        "table_hash": art.table_hash,
        "datasets": sorted(art.datasets),
        "searches": n_searches,
        "rows": int(len(table)),
        "warnings": summary.get("warnings", []),
    }
