"""Meta-training the surrogate and the cost predictor on a learning-curve table.

As in DyHPO / Quick-Tune meta-training: each step picks one dataset and a random batch of its
observations (config, epoch, curve before the epoch, meta-features) -> score, and takes an Adam
step on the exact GP marginal likelihood of that batch (kernel hyperparameters and feature
extractor jointly). The prior head (initial design) and the cost predictor are trained on the same
batches. A fraction of each dataset's configs is held out; the checkpoint with the best held-out
predictive log-likelihood (GP conditioned on training observations of the same dataset) is kept.
Datasets named in ``exclude`` are never seen (leave-one-dataset-out).

Models are encoded by the descriptors the caller passes (``model_descriptors``: the search layer
computes them with ``quicktune.hub.descriptor`` at the table's training resolution ``image_size``);
they are stored in the artifact's schema, so a search encodes the meta-training models identically
and brings descriptors only for models the artifact never saw. A table whose models have no
descriptor (made-up names) falls back to a one-hot model encoding, with a warning.
``model_encoding="onehot"`` asks for the one-hot encoding on purpose (the ablation of the
leave-one-model-out benchmark: a model the artifact never saw then encodes as all zeros); the
encoding used is in the artifact's schema (``schema.model.kind``) and in ``metrics["model_encoding"]``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from quicktune.lct import LCTError, table_hash, validate_lct
from quicktune.optimizer.artifact import MetaArtifact
from quicktune.optimizer.cost import CostPredictor
from quicktune.optimizer.encoding import MetaScaler, Schema, train_images
from quicktune.optimizer.surrogate import Batch, DeepKernelGP, SurrogateConfig, make_batch

log = logging.getLogger(__name__)

#: how ``meta_train`` encodes the model choice (``model_encoding=``)
MODEL_ENCODINGS = ("descriptor", "onehot")


@dataclass
class _Dataset:
    name: str
    X: np.ndarray  # (n_cfg, hp_dim)
    M: np.ndarray  # (n_cfg, model_dim)
    G: np.ndarray  # (n_cfg,) ln GMACs of the config's model (NaN: unknown)
    log_images: float | None  # ln(training images) of the dataset (None: unknown)
    scores: np.ndarray  # (n_cfg, max_epochs), NaN where missing / failed
    costs: np.ndarray  # (n_cfg, max_epochs), NaN where missing
    meta: np.ndarray  # (meta_dim,)
    train_obs: np.ndarray  # (k, 2) [config index, epoch] with finite score, training configs
    val_obs: np.ndarray  # same, held-out configs
    train_cost: np.ndarray  # (k, 2) rows with a cost, training configs
    val_cost: np.ndarray

    def batch(self, obs: np.ndarray, max_epochs: int, zero_curves: bool = False) -> Batch:
        ci, ep = obs[:, 0], obs[:, 1]
        curves: list[Any] = [[] if zero_curves else self.scores[c, : e - 1] for c, e in zip(ci, ep, strict=True)]
        return make_batch(self.X[ci], self.M[ci], ep, curves, self.meta, max_epochs, self.G[ci], self.log_images)


def _observed(A: np.ndarray, mask_cfg: np.ndarray) -> np.ndarray:
    """(config row, epoch) pairs with a finite entry in ``A`` among the configs in ``mask_cfg``."""
    r, e = np.nonzero(np.isfinite(A) & mask_cfg[:, None])
    return np.stack([r, e + 1], axis=1).astype(np.int64)


def _prepare(
    df: pd.DataFrame, schema: Schema, scaler: MetaScaler, max_epochs: int, val_fraction: float, rng: np.random.Generator
) -> list[_Dataset]:
    hp_cols = [c for c in df.columns if str(c).startswith("hp.")]
    meta_cols = [c for c in df.columns if str(c).startswith("meta.")]
    out = []
    for name, g in df.groupby("dataset", sort=True):
        cids = list(dict.fromkeys(g["config_id"].tolist()))
        pos = {c: i for i, c in enumerate(cids)}
        firsts = g.drop_duplicates("config_id").set_index("config_id").loc[cids]
        configs = []
        for row in firsts[hp_cols].itertuples(index=False, name=None):
            cfg = {}
            for c, v in zip(hp_cols, row, strict=True):
                if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
                    continue
                cfg[c[3:]] = v.item() if isinstance(v, np.generic) else v
            configs.append(cfg)
        X, M = schema.encode(configs)
        G = schema.log_gmacs(configs)
        S = np.full((len(cids), max_epochs), np.nan)
        C = np.full((len(cids), max_epochs), np.nan)
        ci = g["config_id"].map(pos).to_numpy()
        ep = g["epoch"].to_numpy().astype(int)
        keep = ep <= max_epochs
        S[ci[keep], ep[keep] - 1] = g["score"].to_numpy()[keep]
        C[ci[keep], ep[keep] - 1] = g["cost"].to_numpy()[keep]
        meta = {c[5:]: float(g[c].iloc[0]) for c in meta_cols if not pd.isna(g[c].iloc[0])}
        n_images = train_images(meta)
        n_val = int(round(val_fraction * len(cids))) if len(cids) >= 4 else 0
        perm = rng.permutation(len(cids))
        is_val = np.zeros(len(cids), bool)
        is_val[perm[:n_val]] = True

        out.append(
            _Dataset(
                str(name),
                X,
                M,
                G,
                math.log(n_images) if n_images else None,
                S,
                C,
                scaler.transform(meta),
                _observed(S, ~is_val),
                _observed(S, is_val),
                _observed(C, ~is_val),
                _observed(C, is_val),
            )
        )
    return out


def meta_train(
    df: pd.DataFrame,
    exclude: Sequence[str] = (),
    epochs: int = 20,
    seed: int = 0,
    val_fraction: float = 0.15,
    steps_per_epoch: int = 50,
    batch_size: int = 128,
    learning_rate: float = 5e-3,
    cost_learning_rate: float = 5e-3,
    surrogate: dict | None = None,
    model_descriptors: Mapping[str, Mapping[str, float]] | None = None,
    image_size: int | None = None,
    model_encoding: str = "descriptor",
) -> MetaArtifact:
    """Meta-train on every dataset of ``df`` except ``exclude``; returns the artifact with the
    checkpoint of best held-out predictive log-likelihood. ``epochs * steps_per_epoch`` Adam steps
    in all (each on a batch of one dataset). ``model_descriptors``: ``{model: descriptor features}``
    of the table's models at the table's training resolution ``image_size`` (px, recorded).
    ``model_encoding``: ``"descriptor"`` (default; one-hot, with a warning, when a model has no
    descriptor) or ``"onehot"`` (one-hot over the meta-training models, descriptors ignored)."""
    if model_encoding not in MODEL_ENCODINGS:
        raise ValueError(f"model_encoding must be one of {', '.join(MODEL_ENCODINGS)}, got {model_encoding!r}")
    df = validate_lct(df, source="meta-training table")
    excl = {str(e) for e in exclude}
    unknown = excl - set(df["dataset"].unique().tolist())
    if unknown:
        log.warning("excluded datasets not in the table: %s", sorted(unknown))
    train_df = df[~df["dataset"].isin(excl)]
    if train_df.empty:
        raise LCTError("meta-training table: no dataset left after exclusion")
    rng = np.random.default_rng(seed)
    onehot = model_encoding == "onehot"
    schema = Schema.infer(train_df, descriptors=None if onehot else model_descriptors, image_size=image_size)
    if schema.model is not None and schema.model.kind != "descriptor" and not onehot:
        missing = sorted(set(schema.model.choices) - set(model_descriptors or {}))
        log.warning(
            "meta-training with a one-hot model encoding: no descriptor for %s (a model it never saw will "
            "encode as all zeros)",
            missing[:8],
        )
    metas = [
        {
            c[5:]: float(g[c].iloc[0])
            for c in train_df.columns
            if str(c).startswith("meta.") and not pd.isna(g[c].iloc[0])
        }
        for _, g in train_df.groupby("dataset", sort=True)
    ]
    scaler = MetaScaler.fit(metas)
    max_epochs = int(train_df["epoch"].max())
    data = [d for d in _prepare(train_df, schema, scaler, max_epochs, val_fraction, rng) if len(d.train_obs) >= 2]
    if not data:
        raise LCTError("meta-training table: no dataset with at least two finite scores")

    cfg = SurrogateConfig(hp_dim=schema.hp_dim, model_dim=schema.model_dim, meta_dim=scaler.dim, **(surrogate or {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DeepKernelGP(cfg)
        cost_model = CostPredictor(
            cfg.hp_dim, cfg.model_dim, cfg.meta_dim, model_mask=schema.model.cost_mask() if schema.model else None
        )
    # start the cost head at the typical log-cost (over the physics term of the observed steps)
    all_c = np.concatenate([d.costs[np.isfinite(d.costs)] for d in data])
    cbatch = Batch.cat([d.batch(d.train_cost[:256], max_epochs) for d in data if len(d.train_cost)])
    cost_model.start_at(float(np.mean(np.log(np.maximum(all_c, 1e-3)))), cbatch)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    cost_opt = torch.optim.Adam(cost_model.parameters(), lr=cost_learning_rate)

    def sample(obs: np.ndarray, n: int) -> np.ndarray:
        if len(obs) <= n:
            return obs
        return obs[rng.choice(len(obs), size=n, replace=False)]

    best_val, best_state, best_cost_val, best_cost_state = math.inf, None, math.inf, None
    history = []
    for ep in range(int(epochs)):
        for _ in range(int(steps_per_epoch)):
            d = data[int(rng.integers(len(data)))]
            obs = sample(d.train_obs, batch_size)
            b = d.batch(obs, max_epochs)
            y = torch.as_tensor(d.scores[obs[:, 0], obs[:, 1] - 1], dtype=torch.float32)
            opt.zero_grad(set_to_none=True)
            loss = model.neg_mll(b, y) + model.prior_loss(d.batch(obs, max_epochs, zero_curves=True), y)
            if torch.isfinite(loss):
                loss.backward()
                opt.step()
            cobs = sample(d.train_cost, batch_size)
            cb = d.batch(cobs, max_epochs)
            cost_opt.zero_grad(set_to_none=True)
            closs = cost_model.loss(cb, CostPredictor.target(d.costs[cobs[:, 0], cobs[:, 1] - 1]))
            closs.backward()
            cost_opt.step()
        val, cval = _validate(model, cost_model, data, max_epochs, batch_size, rng)
        history.append({"epoch": ep + 1, "val_nll": val, "val_cost_mse": cval})
        log.info("meta-train epoch %d: val nll %.4f, cost mse %.4f", ep + 1, val, cval)
        if val < best_val or best_state is None:
            best_val, best_state = val, copy.deepcopy(model.state_dict())
        if cval < best_cost_val or best_cost_state is None:
            best_cost_val, best_cost_state = cval, copy.deepcopy(cost_model.state_dict())

    assert best_state is not None and best_cost_state is not None, "epochs must be >= 1"
    return MetaArtifact(
        schema=schema,
        meta_scaler=scaler,
        surrogate_config=cfg,
        surrogate_state={k: v.detach().clone() for k, v in best_state.items()},
        cost_state={k: v.detach().clone() for k, v in best_cost_state.items()},
        max_epochs=max_epochs,
        table_hash=table_hash(df),
        datasets=sorted(d.name for d in data),
        excluded=sorted(excl),
        metrics={
            "best_val_nll": best_val,
            "best_val_cost_mse": best_cost_val,
            "history": history,
            "model_encoding": schema.model.kind if schema.model is not None else None,
        },
    )


@torch.no_grad()
def _validate(
    model: DeepKernelGP,
    cost_model: CostPredictor,
    data: list[_Dataset],
    max_epochs: int,
    batch_size: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Mean held-out predictive NLL (GP conditioned on training observations of the same
    dataset) and mean held-out squared log-cost error. Falls back to training observations when a
    dataset has no held-out configs."""
    nlls, cms = [], []
    vrng = np.random.default_rng(int(rng.integers(2**31)))
    for d in data:
        vobs = d.val_obs if len(d.val_obs) else d.train_obs
        if len(vobs) == 0:
            continue
        tobs = d.train_obs[vrng.choice(len(d.train_obs), size=min(batch_size, len(d.train_obs)), replace=False)]
        vsel = vobs[vrng.choice(len(vobs), size=min(batch_size, len(vobs)), replace=False)]
        ty = torch.as_tensor(d.scores[tobs[:, 0], tobs[:, 1] - 1], dtype=torch.float32)
        vy = d.scores[vsel[:, 0], vsel[:, 1] - 1]
        try:
            mean, std = model.predict(d.batch(tobs, max_epochs), ty, d.batch(vsel, max_epochs))
        except Exception:
            nlls.append(1e6)
            continue
        var = std**2 + float(model.likelihood.noise.item())
        nlls.append(float(np.mean(0.5 * np.log(2 * np.pi * var) + 0.5 * (vy - mean) ** 2 / var)))
        cobs = d.val_cost if len(d.val_cost) else d.train_cost
        csel = cobs[vrng.choice(len(cobs), size=min(batch_size, len(cobs)), replace=False)]
        pred = np.log(cost_model.predict(d.batch(csel, max_epochs)))
        cms.append(float(np.mean((pred - np.log(np.maximum(d.costs[csel[:, 0], csel[:, 1] - 1], 1e-3))) ** 2)))
    return (float(np.mean(nlls)) if nlls else math.inf), (float(np.mean(cms)) if cms else math.inf)
