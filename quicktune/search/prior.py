"""What the meta-learned prior believes about a space before a GPU hour is spent (``quicktune prior``).

For each model of the space: the predicted seconds of one epoch (the cost model: the physics of
GMACs x training images plus what meta-training learned) and the prior's predicted final score of
the space's *default knobs* with that model (the prior head that ranks the initial design). The
default knobs are, per parameter: a parameter's ``default`` when the space declares one; else the
first choice of a categorical; ``False`` for a bool; the midpoint of a numeric range (geometric for a
log-scaled one, rounded for an int); a conditional parameter only when its condition holds under the
knobs chosen before it. The models are described by ``quicktune.hub.descriptor`` at ``image_size``
(None: each model's native input size, what a GPU step trains at).

Without a dataset the meta-features are those of ``REFERENCE_META``: a CIFAR-10-shaped task (10
balanced classes, 60,000 RGB images of 32 x 32 px, split 40,000 / 10,000 / 10,000).

The output also holds the artifact's *domain report* (``quicktune.optimizer.domain``): how far the
space's models, its knobs and the dataset are from what the artifact was meta-trained on. A search
starts its trust in the meta-trained surrogate from that score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from quicktune.hub import HubError, describe_many
from quicktune.optimizer.artifact import ArtifactError, MetaArtifact, default_artifact
from quicktune.optimizer.domain import domain_report
from quicktune.optimizer.encoding import Schema
from quicktune.optimizer.quicktune import QuickTune
from quicktune.space import Param, SearchSpace

REFERENCE_NAME = "CIFAR-10-shaped reference task (10 classes, 60,000 RGB 32x32 images, 40k/10k/10k split)"
REFERENCE_META: dict[str, float] = {
    "num_classes": 10.0,
    "num_images": 60000.0,
    "num_train": 40000.0,
    "num_val": 10000.0,
    "num_test": 10000.0,
    "num_channels": 3.0,
    "median_height": 32.0,
    "median_width": 32.0,
    "min_side": 32.0,
    "max_side": 32.0,
    "min_images_per_class": 6000.0,
    "max_images_per_class": 6000.0,
    "mean_images_per_class": 6000.0,
    "class_imbalance": 1.0,
    "class_entropy": 1.0,
}


class PriorError(ValueError):
    """The prior cannot be explained for these inputs (no artifact, a model the hub does not know)."""


def _default_value(p: Param) -> Any:
    if p.default is not None:
        return p.default
    if p.type == "categorical":
        return p.choices[0]
    if p.type == "bool":
        return False
    lo, hi = float(p.low if p.low is not None else 0.0), float(p.high if p.high is not None else 1.0)
    mid = math.sqrt(lo * hi) if p.log and lo > 0 else (lo + hi) / 2
    return int(round(mid)) if p.type == "int" else mid


def default_knobs(space: SearchSpace) -> dict[str, Any]:
    """The space's default knobs (see the module docstring), without the model."""
    config: dict[str, Any] = {}
    for p in space.params:
        if p.name == space.model_param:
            config[p.name] = p.choices[0]
            continue
        if space.is_active(p, config):
            config[p.name] = _default_value(p)
    if space.model_param:
        config.pop(space.model_param, None)
    return config


def explain_prior(
    space: SearchSpace,
    artifact: MetaArtifact | None = None,
    meta_features: Mapping[str, float] | None = None,
    image_size: int | None = None,
) -> dict[str, Any]:
    """Per model of ``space``: predicted seconds per epoch and prior score of the default knobs,
    best score first. ``meta_features`` None: ``REFERENCE_META``."""
    art = artifact if artifact is not None else default_artifact()
    if art is None:
        raise PriorError("no meta-artifact: none given and none shipped with the package")
    models = [str(c) for p in space.params if p.name == space.model_param for c in p.choices]
    if not models or not space.model_param:
        raise PriorError(f"space {space.name!r} has no model choices (model_param {space.model_param!r})")
    try:
        descs = describe_many(models, image_size)
    except HubError as exc:
        raise PriorError(f"space {space.name!r}: {exc}") from exc
    meta = dict(meta_features) if meta_features is not None else dict(REFERENCE_META)
    knobs = default_knobs(space)
    pool = [(m, {**knobs, str(space.model_param): m}) for m in models]
    opt = QuickTune(
        pool,
        art.max_epochs,
        seed=0,
        artifact=art,
        meta_features=meta,
        model_descriptors={m: d.features() for m, d in descs.items()},
    )
    score, cost = opt.explain_prior(models)
    features = {m: d.features() for m, d in descs.items()}
    domain = domain_report(
        art.schema, art.meta_scaler, Schema.from_space(space, features), models, features, meta
    ).to_json()
    seen = set(art.schema.model.choices) if art.schema.model is not None else set()
    rows = [
        {
            "model": m,
            "predicted_epoch_seconds": float(cost[i]),
            "prior_score": float(score[i]),
            "params": descs[m].params,
            "gmacs": descs[m].gmacs,
            "image_size": descs[m].image_size,
            "arch_type": descs[m].arch_type,
            "pretrained": descs[m].pretrained,
            "seen_in_meta_training": m in seen,
        }
        for i, m in enumerate(models)
    ]
    rows.sort(key=lambda r: (-float(r["prior_score"]), str(r["model"])))  # type: ignore[arg-type]
    return {
        "space": space.name,
        "image_size": image_size if image_size else "native",
        "data": "reference" if meta_features is None else "given",
        "reference_data": REFERENCE_NAME if meta_features is None else None,
        "meta_features": meta,
        "default_knobs": knobs,
        "max_epochs": art.max_epochs,
        "artifact_table_hash": art.table_hash,
        "models": rows,
        "domain": domain,
    }


__all__ = ["REFERENCE_META", "PriorError", "default_knobs", "explain_prior", "ArtifactError"]
