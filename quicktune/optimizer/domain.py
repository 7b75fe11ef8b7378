"""How far a new search is from what a meta-artifact was meta-trained on (its *domain*).

A meta-learned prior is only worth trusting on tasks like the ones it learned from: on a hub of large
ViTs, or on a 224-px RGB dataset of 50,000 images, a surrogate meta-trained on six small CNNs and
32-px grey tasks of ~600 images is extrapolating, and its early picks can be worse than no prior at
all. This module compares, with plain numbers only (no hub, no data access), the artifact's stored
training domain with a new search:

- **models**: every model of the space is encoded by its descriptor exactly as the surrogate sees it
  (``encoding.ModelColumn``, fixed scales: one unit = 10x parameters or GMACs, 2x input size or
  feature width, one architecture type, 0.1 ImageNet top-1); its distance is the Euclidean distance
  to the *nearest* meta-training model, and ``in_range`` says whether every descriptor feature lies
  within the meta-training models' range (their bounding box; the convex hull of a handful of models
  in ten dimensions is degenerate). A model scores 1 up to ``MODEL_NEAR`` units and 0 from
  ``MODEL_FAR`` units, linearly between. A one-hot artifact knows only its own model names (distance
  0, or unknown: score 0).
- **knobs**: a knob of the space the artifact never saw is invisible to its surrogate (score 0); a
  numeric knob whose range reaches beyond the artifact's by ``excess`` (in units of the artifact's own
  encoded range: 0.5 = half of it) scores ``1 - excess / KNOB_FAR``; a categorical one scores the
  share of its choices the artifact knows.
- **meta-features**: the dataset's meta-features in the artifact's scaled units (``MetaScaler``:
  log counts and sizes, channels one-hot, divided by the floored training spread); a feature's
  ``excess`` is its distance beyond the scaled meta-training range; it scores 1 up to ``META_NEAR``
  and 0 from ``META_FAR`` units. Meta-features the artifact does not know are listed, not scored
  (its surrogate ignores them); ones the dataset lacks are listed (they sit at the training mean).

Each part's score is the mean over its items (a raw meta-feature counts once: ``num_channels`` scores
the worse of its two one-hot outputs); the overall ``score`` (``in_domain``) is the *smallest*
of the three: the prior is only as trustworthy as its least familiar input. ``score >= IN_DOMAIN``
reads "in domain", ``score < OUT_OF_DOMAIN`` "out of domain", between "partly". The optimizer starts
its trust in the meta-trained surrogate from this score (``quicktune.QuickTune``, the mixture weight).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from quicktune.optimizer.encoding import ColumnSpec, MetaScaler, ModelColumn, Schema, _is_missing, _key

#: model descriptor distance (encoded units) up to which a model counts as seen, and from which as foreign
MODEL_NEAR = 0.5
MODEL_FAR = 2.0
#: a numeric knob reaching this far beyond the artifact's range (in units of that range) scores 0
KNOB_FAR = 1.0
#: meta-feature excess beyond the scaled meta-training range (in scaled units): score 1 up to NEAR, 0 from FAR
META_NEAR = 0.5
META_FAR = 2.0
#: overall score thresholds
IN_DOMAIN = 0.7
OUT_OF_DOMAIN = 0.3


def _ramp(x: float, near: float, far: float) -> float:
    """1 up to ``near``, 0 from ``far``, linear between (``inf`` -> 0)."""
    if not math.isfinite(x):
        return 0.0
    return float(np.clip((far - x) / (far - near), 0.0, 1.0))


def verdict(score: float) -> str:
    if score >= IN_DOMAIN:
        return "in domain"
    if score < OUT_OF_DOMAIN:
        return "out of domain"
    return "partly in domain"


@dataclass
class ModelDomain:
    model: str
    distance: float | None  # to the nearest meta-training model; None: unknown (no descriptor / unseen name)
    nearest: str | None
    in_range: bool
    outside: list[str] = field(default_factory=list)  # descriptor features outside the training range
    score: float = 0.0


@dataclass
class KnobDomain:
    knob: str
    status: str  # known | unknown | outside | new_choices
    excess: float = 0.0  # numeric: how far beyond the artifact's range (units of that range)
    new_choices: list[Any] = field(default_factory=list)
    score: float = 1.0


@dataclass
class MetaDomain:
    feature: str  # the scaled feature (e.g. num_images, num_channels=3)
    value: float  # scaled
    low: float  # scaled meta-training range
    high: float
    excess: float
    score: float


@dataclass
class DomainReport:
    score: float
    verdict: str
    model_score: float
    knob_score: float
    meta_score: float
    models: list[ModelDomain] = field(default_factory=list)
    knobs: list[KnobDomain] = field(default_factory=list)
    meta: list[MetaDomain] = field(default_factory=list)
    meta_unknown: list[str] = field(default_factory=list)  # dataset meta-features the artifact ignores
    meta_missing: list[str] = field(default_factory=list)  # artifact meta-features the dataset lacks
    knobs_absent: list[str] = field(default_factory=list)  # artifact knobs the space does not have
    training_models: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def in_domain(self) -> float:
        return self.score

    def flags(self) -> list[str]:
        """Short reasons, e.g. ``models:7/24-far``, ``knobs:unknown=2``, ``meta:num_images``."""
        out: list[str] = []
        far = [m for m in self.models if m.score < 1.0]
        if far:
            out.append(f"models:{len(far)}/{len(self.models)}-far")
        unknown = [k for k in self.knobs if k.status == "unknown"]
        if unknown:
            out.append(f"knobs:unknown={len(unknown)}")
        outside = [k for k in self.knobs if k.status in ("outside", "new_choices")]
        if outside:
            out.append(f"knobs:outside={len(outside)}")
        off = [m.feature for m in self.meta if m.score < 1.0]
        if off:
            out.append("meta:" + ",".join(off))
        return out

    def summary(self) -> str:
        """One line for a log."""
        far = sorted((m for m in self.models if m.score < 1.0), key=lambda m: m.score)
        parts = [
            f"domain score {self.score:.2f} ({self.verdict}): models {self.model_score:.2f}, "
            f"knobs {self.knob_score:.2f}, meta-features {self.meta_score:.2f}"
        ]
        if far:
            names = ", ".join(m.model for m in far[:3]) + (" ..." if len(far) > 3 else "")
            parts.append(f"{len(far)}/{len(self.models)} models far from the meta-training models ({names})")
        for status, what in (
            ("unknown", "unknown to the artifact"),
            ("outside", "outside its ranges"),
            ("new_choices", "with choices it never saw"),
        ):
            knobs = [k.knob for k in self.knobs if k.status == status]
            if knobs:
                more = " ..." if len(knobs) > 4 else ""
                parts.append(f"{len(knobs)} knobs {what} ({', '.join(knobs[:4])}{more})")
        off = sorted((m for m in self.meta if m.score < 1.0), key=lambda m: -m.excess)
        if off:
            more = f" (+{len(off) - 5} more)" if len(off) > 5 else ""
            parts.append(
                "meta-features outside the meta-training range (scaled units beyond it): "
                + ", ".join(f"{m.feature} {m.excess:.1f}" for m in off[:5])
                + more
            )
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["flags"] = self.flags()
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DomainReport:
        d = {k: v for k, v in doc.items() if k != "flags"}
        d["models"] = [ModelDomain(**m) for m in d.get("models", [])]
        d["knobs"] = [KnobDomain(**k) for k in d.get("knobs", [])]
        d["meta"] = [MetaDomain(**m) for m in d.get("meta", [])]
        return cls(**d)


def _encode_model(col: ModelColumn, name: str) -> np.ndarray:
    out = np.zeros(col.width, dtype=np.float64)
    col.encode_into(out, name)
    return out


def model_domain(
    train_col: ModelColumn | None, models: Sequence[str], descriptors: Mapping[str, Mapping[str, float]] | None
) -> list[ModelDomain]:
    """Per model of the search: distance to the nearest meta-training model in the encoded descriptor space."""
    out: list[ModelDomain] = []
    if train_col is None:
        return [ModelDomain(str(m), None, None, False, [], 0.0) for m in models]
    training = [str(c) for c in train_col.choices]
    if train_col.kind != "descriptor":
        for m in models:
            seen = str(m) in training
            out.append(ModelDomain(str(m), 0.0 if seen else None, str(m) if seen else None, seen, [], float(seen)))
        return out
    known = {**train_col.descriptors, **{str(k): dict(v) for k, v in (descriptors or {}).items()}}
    col = ModelColumn(train_col.name, "descriptor", training, known, train_col.image_size)
    T = np.stack([_encode_model(col, c) for c in training if c in known]) if training else np.zeros((0, col.width))
    names = col.feature_names()
    lo, hi = (T.min(axis=0), T.max(axis=0)) if len(T) else (None, None)
    train_names = [c for c in training if c in known]
    for m in models:
        m = str(m)
        if m not in known or not len(T):
            out.append(ModelDomain(m, None, None, False, [], 0.0))
            continue
        x = _encode_model(col, m)
        d = np.sqrt(((T - x) ** 2).sum(axis=1))
        j = int(np.argmin(d))
        assert lo is not None and hi is not None
        outside = [names[i] for i in range(len(x)) if x[i] < lo[i] - 1e-9 or x[i] > hi[i] + 1e-9]
        dist = float(d[j])
        out.append(ModelDomain(m, dist, train_names[j], not outside, outside, _ramp(dist, MODEL_NEAR, MODEL_FAR)))
    return out


def _encoded_bounds(art: ColumnSpec, low: float, high: float) -> tuple[float, float]:
    """``low``/``high`` of the space in the artifact column's [0, 1] units (before any clipping)."""
    a_lo, a_hi = art._transform(art.low), art._transform(art.high)
    span = a_hi - a_lo

    def z(v: float) -> float:
        if art.log and v + art.shift <= 0:
            return -math.inf
        t = art._transform(v)
        return (t - a_lo) / span if span > 0 else (0.0 if t == a_lo else math.copysign(math.inf, t - a_lo))

    return z(low), z(high)


def knob_domain(train: Schema, space: Schema) -> tuple[list[KnobDomain], list[str]]:
    """Per knob of the space: known to the artifact and within its range, or not; plus the artifact's
    knobs the space does not have."""
    art = {c.name: c for c in train.columns}
    out: list[KnobDomain] = []
    for c in space.columns:
        a = art.get(c.name)
        if a is None:
            out.append(KnobDomain(c.name, "unknown", score=0.0))
            continue
        if c.kind == "numeric" and a.kind == "numeric":
            zl, zh = _encoded_bounds(a, c.low, c.high)
            excess = max(0.0, -zl, zh - 1.0)
            if excess <= 1e-9:
                out.append(KnobDomain(c.name, "known"))
            else:
                ex = excess if math.isfinite(excess) else 1e9
                out.append(KnobDomain(c.name, "outside", ex, [], _ramp(ex, 0.0, KNOB_FAR)))
            continue
        choices = list(c.choices) if c.kind == "categorical" else [c.low, c.high]
        a_keys = {_ck(v) for v in (a.choices if a.kind == "categorical" else [])}
        if a.kind == "numeric":  # the artifact has numbers, the space categories: known when numeric and in range
            new = [v for v in choices if not _numeric_in(a, v)]
        else:
            new = [v for v in choices if _ck(v) not in a_keys]
        score = 1.0 - len(new) / max(len(choices), 1)
        out.append(KnobDomain(c.name, "new_choices" if new else "known", 0.0, new, score))
    names = {c.name for c in space.columns}
    absent = [c.name for c in train.columns if c.name not in names]
    return out, absent


def _ck(v: Any) -> str:
    return _key(v)


def _numeric_in(a: ColumnSpec, v: Any) -> bool:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return False
    return a.low - 1e-12 <= x <= a.high + 1e-12


def meta_domain(scaler: MetaScaler, meta: Mapping[str, Any] | None) -> tuple[list[MetaDomain], list[str], list[str]]:
    """Per scaled meta-feature: its value and the meta-training range in scaled units, and the excess."""
    meta = dict(meta or {})
    out: list[MetaDomain] = []
    missing: list[str] = []
    for i, name in enumerate(scaler.names):
        src = scaler.source[i]
        v = meta.get(src)
        if v is None or _is_missing(v):
            if src not in missing:
                missing.append(src)
            continue
        kind = scaler.kind[i]
        mean, std = scaler.mean[i], scaler.std[i]

        def s(x: float, kind: str = kind, mean: float = mean, std: float = std) -> float:
            return (MetaScaler._t(kind, float(x)) - mean) / std

        x = s(float(v))
        lo_raw, hi_raw = scaler.low[i], scaler.high[i]
        if not (math.isfinite(lo_raw) and math.isfinite(hi_raw)):
            continue  # an old scaler without ranges: nothing to compare with
        if kind.startswith("onehot:"):
            target = float(kind.split(":", 1)[1])
            seen = {s(lo_raw), s(hi_raw)}
            if lo_raw <= target <= hi_raw and lo_raw != hi_raw:
                seen |= {s(target)}
            lo, hi = min(seen), max(seen)
        else:
            lo, hi = sorted((s(lo_raw), s(hi_raw)))
        excess = max(0.0, lo - x, x - hi)
        out.append(MetaDomain(name, float(x), float(lo), float(hi), float(excess), _ramp(excess, META_NEAR, META_FAR)))
    unknown = sorted(k for k, v in meta.items() if k not in set(scaler.source) and not _is_missing(v))
    return out, unknown, missing


def domain_report(
    train: Schema,
    scaler: MetaScaler,
    space: Schema,
    models: Sequence[str],
    descriptors: Mapping[str, Mapping[str, float]] | None,
    meta_features: Mapping[str, Any] | None,
) -> DomainReport:
    """Compare a search (``space``: its schema as inferred from the space or pool; ``models``: its model
    choices with their ``descriptors``; the dataset's raw ``meta_features``) with what an artifact was
    meta-trained on (its ``train`` schema and meta-feature ``scaler``). See the module docstring."""
    m = model_domain(train.model, list(models), descriptors)
    k, absent = knob_domain(train, space)
    f, unknown, missing = meta_domain(scaler, meta_features)

    def mean(xs: Sequence[float]) -> float:
        return float(np.mean(xs)) if len(xs) else 1.0

    per_source: dict[str, float] = {}  # a raw meta-feature scores once (num_channels: the worse of its one-hots)
    for x in f:
        src = x.feature.split("=", 1)[0]
        per_source[src] = min(per_source.get(src, 1.0), x.score)
    ms, ks, fs = mean([x.score for x in m]), mean([x.score for x in k]), mean(list(per_source.values()))
    score = float(min(ms, ks, fs))
    return DomainReport(
        score=score,
        verdict=verdict(score),
        model_score=ms,
        knob_score=ks,
        meta_score=fs,
        models=m,
        knobs=k,
        meta=f,
        meta_unknown=unknown,
        meta_missing=missing,
        knobs_absent=absent,
        training_models=[str(c) for c in train.model.choices] if train.model is not None else [],
        thresholds={
            "in_domain": IN_DOMAIN,
            "out_of_domain": OUT_OF_DOMAIN,
            "model_near": MODEL_NEAR,
            "model_far": MODEL_FAR,
            "knob_far": KNOB_FAR,
            "meta_near": META_NEAR,
            "meta_far": META_FAR,
        },
    )
