"""A synthetic learning-curve table (LCT) generator for tests, the demo and the benchmark.

Real finetuning curves are expensive; this generator produces curves with the phenomena a
freeze-thaw optimizer has to cope with, in the LCT long format
(``dataset, config_id, epoch, score, cost, hp.*, meta.*, test_score``):

- *saturation* toward a config-dependent asymptote, exponential or power-law shaped, with a
  learning speed that depends on the learning rate, the optimizer and the model;
- *plateaus*: a warm-up delay before learning starts;
- *overfitting*: after a peak epoch the score declines (small datasets, little regularisation);
- *divergence*: a too-large learning rate gives NaN from some epoch on;
- *noise* on every epoch; a ``test_score`` close to, but not equal to, the validation score;
- *per-model costs*: seconds per epoch depend on the model, the batch size, the frozen fraction
  and the dataset size;
- *conditional hyperparameters*: ``momentum`` only with ``opt == "momentum"``, ``mixup_prob`` only
  with ``mixup``, ``ra_magnitude`` only with ``data_augmentation == "random_augment"`` (missing =
  inactive);
- *related datasets*: every dataset shares the same response surface (which model is good, where
  the learning rate optimum lies) plus a dataset-specific shift that is a smooth function of its
  meta-features plus a little idiosyncratic noise, so meta-learning has something to transfer but
  cannot simply memorise the answer.

Everything is a deterministic function of ``seed``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from quicktune.space import SearchSpace, config_id

# name -> (quality, learning speed, seconds per epoch at batch 64 on 1,000 images, params in M)
MODELS: dict[str, tuple[float, float, float, float]] = {
    "test_vit": (-0.10, 1.20, 0.6, 0.3),
    "mobilenetv3_small_100": (0.00, 1.00, 3.0, 1.5),
    "regnetx_002": (0.02, 0.90, 3.5, 2.3),
    "convnext_atto": (0.05, 0.75, 5.0, 3.4),
    "resnet10t": (0.03, 0.85, 6.0, 4.9),
    "tf_efficientnet_lite0": (0.08, 0.70, 9.0, 3.4),
    "vit_tiny_patch16_224": (0.07, 0.55, 7.0, 5.5),
}

SPACE_DOC: dict[str, Any] = {
    "name": "synthetic",
    "model_param": "model",
    "params": {
        "model": {"type": "categorical", "choices": list(MODELS)},
        "lr": {"type": "float", "low": 1e-5, "high": 0.3, "log": True},
        "batch_size": {"type": "categorical", "choices": [16, 32, 64, 128]},
        "opt": {"type": "categorical", "choices": ["sgd", "momentum", "adamw"]},
        "momentum": {"type": "float", "low": 0.0, "high": 0.99, "only_active_with": {"opt": ["momentum"]}},
        "weight_decay": {"type": "float", "low": 1e-6, "high": 0.1, "log": True},
        "pct_to_freeze": {"type": "float", "low": 0.0, "high": 1.0},
        "mixup": {"type": "bool"},
        "mixup_prob": {"type": "float", "low": 0.1, "high": 1.0, "only_active_with": {"mixup": [True]}},
        "data_augmentation": {"type": "categorical", "choices": ["none", "trivial_augment", "random_augment"]},
        "ra_magnitude": {
            "type": "int",
            "low": 1,
            "high": 15,
            "only_active_with": {"data_augmentation": ["random_augment"]},
        },
    },
}


def synthetic_space() -> SearchSpace:
    """The search space the synthetic configs are drawn from."""
    return SearchSpace.from_dict(SPACE_DOC, source="synthetic")


def _dataset_meta(rng: np.random.Generator, n: int) -> list[dict[str, float]]:
    """Meta-features spread over a range so that datasets differ but are related."""
    metas = []
    for _i in range(n):
        metas.append(
            {
                "num_classes": float(rng.choice([2, 5, 10, 20, 50, 100])),
                "num_samples": float(round(math.exp(rng.uniform(math.log(300), math.log(20000))))),
                "image_size": float(rng.choice([32, 64, 128, 224])),
                "num_channels": float(rng.choice([1, 3], p=[0.3, 0.7])),
            }
        )
    return metas


def _dataset_shift(meta: dict[str, float], rng: np.random.Generator) -> dict[str, Any]:
    """How a dataset moves the shared response surface: a smooth function of its meta-features
    (what meta-learning can learn) plus idiosyncratic noise (what it cannot)."""
    log_n = math.log10(meta["num_samples"])  # 2.5 .. 4.3
    log_c = math.log10(meta["num_classes"])  # 0.3 .. 2
    size = math.log2(meta["image_size"] / 32.0)  # 0 .. 2.8
    ceiling = float(np.clip(0.97 - 0.12 * log_c + 0.05 * (log_n - 3.3) + rng.normal(0, 0.02), 0.45, 0.99))
    floor = 1.0 / meta["num_classes"]
    # models with more capacity gain on large images and many samples; tiny ones on small data
    model_bonus = {}
    for m, (_q, _, _, params) in MODELS.items():
        capacity = math.log(params / 2.0)
        model_bonus[m] = 0.03 * capacity * (size - 1.2) + 0.02 * capacity * (log_n - 3.3) + rng.normal(0, 0.012)
    return {
        "ceiling": ceiling,
        "floor": floor,
        "lr_shift": 0.4 * (3.3 - log_n) + rng.normal(0, 0.15),  # small data -> smaller lr optimum
        "model_bonus": model_bonus,
        "overfit": float(np.clip(1.2 - 0.35 * (log_n - 2.5), 0.1, 1.2)),  # small data overfits more
        "freeze_pref": float(np.clip(0.7 - 0.25 * (log_n - 2.5) + rng.normal(0, 0.05), 0.0, 1.0)),
        "cost_scale": meta["num_samples"] / 1000.0 * (meta["image_size"] / 64.0) ** 1.5,
    }


_LR_OPT = {"sgd": -1.3, "momentum": -1.9, "adamw": -3.1}  # log10 optimal lr per optimizer
_LR_DIVERGE = {"sgd": -0.6, "momentum": -0.9, "adamw": -1.5}  # log10 lr above which runs may diverge


def _curve(
    config: dict[str, Any], shift: dict[str, Any], max_epochs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(validation scores, test scores, costs) for one config on one dataset."""
    model = config["model"]
    quality, speed, sec_per_epoch, _ = MODELS[model]
    opt = config["opt"]
    log_lr = math.log10(config["lr"])
    lr_opt = _LR_OPT[opt] + shift["lr_shift"] + (0.3 if model.startswith("vit") else 0.0) * (opt != "adamw")
    lr_dist = log_lr - lr_opt
    momentum = config.get("momentum", 0.0)
    freeze = config["pct_to_freeze"]
    mixup = config["mixup"]
    aug = config["data_augmentation"]
    wd = math.log10(config["weight_decay"])

    # asymptote: shared surface + dataset shift
    gap = shift["ceiling"] - shift["floor"]
    quality_term = quality + shift["model_bonus"][model]
    lr_pen = 0.09 * lr_dist**2
    freeze_pen = 0.25 * (freeze - shift["freeze_pref"]) ** 2
    reg_gain = 0.015 * (aug != "none") + 0.01 * mixup + 0.004 * (wd + 6) / 5
    if aug == "random_augment":
        reg_gain += 0.012 * math.sin(config["ra_magnitude"] / 15 * math.pi)  # best mid magnitude
    batch_pen = 0.01 * abs(math.log2(config["batch_size"] / 32.0))
    asym_frac = 0.82 + quality_term - lr_pen - freeze_pen + reg_gain - batch_pen
    asym_frac = float(np.clip(asym_frac + rng.normal(0, 0.01), 0.0, 1.0))
    asym = shift["floor"] + gap * asym_frac

    # learning speed: larger lr (up to its optimum), momentum, small batches, fewer frozen layers
    rate = speed * 0.35 * math.exp(0.6 * min(lr_dist, 0.5)) * (1 + 0.5 * momentum)
    rate *= (64.0 / config["batch_size"]) ** 0.25 * (1.0 + 0.6 * freeze)
    rate *= math.exp(rng.normal(0, 0.15))
    power_law = rng.random() < 0.5
    plateau = int(rng.integers(0, 3)) if config["lr"] < 1e-4 or opt == "sgd" else 0

    epochs = np.arange(1, max_epochs + 1, dtype=float)
    t = np.maximum(epochs - plateau, 0.0)
    if power_law:
        progress = 1.0 - (1.0 + rate * t) ** -1.2
    else:
        progress = 1.0 - np.exp(-rate * t)
    start = shift["floor"] + 0.05 * gap * rng.random()
    scores = start + (asym - start) * progress

    # overfitting: decline after a peak, stronger with little regularisation and few frozen layers
    overfit = shift["overfit"] * (1.0 - 0.5 * mixup) * (1.0 - 0.6 * freeze) * (1.0 - 0.3 * (aug != "none"))
    overfit *= 1.0 - 0.15 * (wd + 6) / 5
    if overfit > 0.35 and rng.random() < overfit:
        peak = float(rng.uniform(0.3, 0.7) * max_epochs)
        scores = scores - 0.25 * gap * overfit * (np.maximum(epochs - peak, 0.0) / max_epochs) ** 1.2

    # noise
    noise_sd = 0.004 + 0.01 * (config["batch_size"] <= 16) + 0.004 * (shift["ceiling"] < 0.7)
    scores = scores + rng.normal(0, noise_sd, max_epochs)
    scores = np.clip(scores, 0.0, 1.0)
    test = np.clip(scores + rng.normal(-0.005, 0.008, max_epochs), 0.0, 1.0)

    # divergence: a too-large lr blows up at a random epoch
    excess = log_lr - _LR_DIVERGE[opt]
    if excess > 0 and rng.random() < min(0.95, 0.4 + excess):
        first_nan = int(rng.integers(1, max(2, max_epochs // 2) + 1))
        scores[first_nan - 1 :] = np.nan
        test[first_nan - 1 :] = np.nan

    # cost per epoch
    per_epoch = sec_per_epoch * shift["cost_scale"] * (64.0 / config["batch_size"]) ** 0.3
    per_epoch *= 1.0 - 0.55 * freeze
    per_epoch *= 1.0 + 0.1 * (aug != "none") + 0.05 * mixup
    costs = per_epoch * np.exp(rng.normal(0, 0.05, max_epochs))
    costs[0] *= 1.15  # the first epoch also loads data and builds the model
    return scores, test, costs


def make_synthetic_table(
    n_datasets: int = 6, n_configs: int = 200, max_epochs: int = 20, seed: int = 0
) -> pd.DataFrame:
    """A synthetic LCT with ``n_datasets`` related datasets, ``n_configs`` configs each (drawn
    independently per dataset from :func:`synthetic_space`), ``max_epochs`` epochs per curve."""
    if n_datasets < 1 or n_configs < 1 or max_epochs < 1:
        raise ValueError("n_datasets, n_configs and max_epochs must all be >= 1")
    rng = np.random.default_rng(seed)
    space = synthetic_space()
    metas = _dataset_meta(rng, n_datasets)
    hp_names = space.names
    columns: dict[str, list[Any]] = {k: [] for k in ("dataset", "config_id", "epoch", "score", "cost", "test_score")}
    hp_cols: dict[str, list[Any]] = {f"hp.{n}": [] for n in hp_names}
    meta_cols: dict[str, list[float]] = {f"meta.{k}": [] for k in metas[0]}
    for d, meta in enumerate(metas):
        name = f"synth{d:02d}"
        shift = _dataset_shift(meta, rng)
        configs = space.sample_many(n_configs, rng)
        for config in configs:
            scores, test, costs = _curve(config, shift, max_epochs, rng)
            cid = config_id(config)
            for e in range(max_epochs):
                columns["dataset"].append(name)
                columns["config_id"].append(cid)
                columns["epoch"].append(e + 1)
                columns["score"].append(float(scores[e]))
                columns["cost"].append(float(costs[e]))
                columns["test_score"].append(float(test[e]))
                for n in hp_names:
                    hp_cols[f"hp.{n}"].append(config.get(n))
                for k, v in meta.items():
                    meta_cols[f"meta.{k}"].append(v)
    df = pd.DataFrame(
        {
            **{k: columns[k] for k in ("dataset", "config_id", "epoch", "score", "cost")},
            **hp_cols,
            **meta_cols,
            "test_score": columns["test_score"],
        }
    )
    df["epoch"] = df["epoch"].astype("int64")
    for n in hp_names:
        p = space[n]
        col = f"hp.{n}"
        if p.type == "bool":
            df[col] = df[col].astype("boolean")
        elif p.type == "int" or (p.type == "categorical" and all(isinstance(c, int) for c in p.choices)):
            df[col] = df[col].astype("Int64")
        elif p.type == "float":
            df[col] = df[col].astype("float64")
        else:
            df[col] = df[col].astype("string")
    return df
