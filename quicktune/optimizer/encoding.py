"""Turning configs and dataset meta-features into the numbers the surrogate sees.

The optimizer must work on any learning-curve table, not only on our own spaces, so the encoding is
*inferred* (from a ``SearchSpace`` or from a table's ``hp.*`` columns) and stored with the
meta-trained weights, so that meta-training and search encode identically.

- numeric columns: min-max scaled to [0, 1]; log scale where the positive values span ``LOG_RATIO``
  (100x) or more, i.e. ``max / min >= LOG_RATIO`` (a learning rate over ``[1e-4, 1e-2]`` is
  log-scaled; a column that also holds zeros uses ``log(x + c)`` with ``c`` its smallest
  positive value, so that 0 stays representable: regularizer weights like ``[0, 1e-4 .. 0.1]``).
- missing = ``None``, NaN and pandas' ``pd.NA``/``NaT`` (a nullable-integer column of a table gives
  Python ints and ``pd.NA``: it is a numeric column with an inactive indicator, never string
  categories like ``'1'`` and ``'<NA>'`` that the integers of a search would never match).
  A categorical whose choices are all numbers (the paper's ordinal grids) is a numeric column.
- string / categorical and bool columns: one-hot; a value never seen -> all zeros.
- every column that can be inactive gets an indicator (1 = inactive, its other entries 0).
- the model-choice column is encoded separately (``X_model``) because the surrogate has a separate
  model encoder; it is never part of ``X_hp`` (no index arithmetic that could split them wrongly).
  A model is encoded by its *descriptor* (``ModelColumn``, kind ``descriptor``): the plain numbers the
  search layer computes with ``quicktune.hub.descriptor`` (log parameters, log GMACs at the training
  resolution, native input size, feature width, cnn/vit/hybrid, pretrained, ImageNet top-1), on fixed
  scales (``DESCRIPTOR_SCALES``), so that a model never seen in meta-training is encoded by what it is.
  This package never imports the hub: the descriptors come in as ``{model name: {feature: value}}``
  and the ones of the meta-training models are stored in the schema. Only when no descriptor is
  known for the models (a foreign table's made-up names) is the model one-hot (kind ``onehot``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: a numeric column is log-scaled when its positive values span at least this ratio (``max/min >= LOG_RATIO``)
LOG_RATIO = 100.0


def _is_missing(v: Any) -> bool:
    """None, NaN, ``pd.NA`` and ``pd.NaT`` (pandas' missing markers of nullable columns)."""
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    try:
        return isinstance(v, (float, np.floating)) and math.isnan(v)
    except TypeError:
        return False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _key(v: Any) -> str:
    """A canonical string for a categorical value (bools, numbers and strings never collide)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool):
        return "b:" + str(v)
    if isinstance(v, (int, float)):
        return "n:" + repr(float(v))
    return "s:" + str(v)


@dataclass
class ColumnSpec:
    """How one config key is encoded."""

    name: str
    kind: str  # "numeric" | "categorical"
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    shift: float = 0.0  # added before the log (columns that hold zeros)
    choices: list[Any] = field(default_factory=list)
    can_be_inactive: bool = False

    @property
    def width(self) -> int:
        base = 1 if self.kind == "numeric" else len(self.choices)
        return base + int(self.can_be_inactive)

    @classmethod
    def numeric_from_values(
        cls, name: str, values: Sequence[float], can_be_inactive: bool, log: bool | None = None
    ) -> ColumnSpec:
        vals = np.asarray([float(v) for v in values], dtype=np.float64)
        lo, hi = float(vals.min()), float(vals.max())
        shift = 0.0
        if log is None:
            pos = vals[vals > 0]
            log = bool(lo >= 0 and pos.size > 0 and pos.max() / pos.min() >= LOG_RATIO * (1 - 1e-9))
            if log and lo == 0:
                shift = float(pos.min())
        if log and lo <= 0 and shift == 0.0:
            shift = float(vals[vals > 0].min()) if (vals > 0).any() else 1.0
        return cls(
            name=name, kind="numeric", low=lo, high=hi, log=bool(log), shift=shift, can_be_inactive=can_be_inactive
        )

    def _transform(self, x: float) -> float:
        return math.log(x + self.shift) if self.log else x

    def encode_into(self, out: np.ndarray, value: Any) -> None:
        """Write this column's encoding of ``value`` (``None`` = inactive) into ``out``."""
        out[:] = 0.0
        if value is None or _is_missing(value):
            if self.can_be_inactive:
                out[-1] = 1.0
            return
        if self.kind == "numeric":
            if isinstance(value, (bool, np.bool_)):
                value = float(value)
            if not _is_number(value):
                return  # a foreign string in a numeric column: nothing known about it
            lo, hi = self._transform(self.low), self._transform(self.high)
            x = float(value)
            if self.log and x + self.shift <= 0:
                z = -0.5
            else:
                z = (self._transform(x) - lo) / (hi - lo) if hi > lo else 0.5
            out[0] = float(np.clip(z, -0.5, 1.5))
        else:
            k = _key(value)
            for i, c in enumerate(self.choices):
                if _key(c) == k:
                    out[i] = 1.0
                    break


#: descriptor features (as ``quicktune.hub.ModelDescriptor.features()`` names them) -> (centre, scale):
#: encoded as ``(value - centre) / scale``; fixed, so no fit can divide by a zero spread and a 300 M
#: parameter model is 2 units from a 3 M one whatever models the meta-training saw
DESCRIPTOR_SCALES: dict[str, tuple[float, float]] = {
    "log10_params": (6.5, 1.0),
    "log10_gmacs": (-1.0, 1.0),
    "log2_input_size": (8.0, 1.0),
    "log2_num_features": (9.0, 1.0),
    "arch_cnn": (0.0, 1.0),
    "arch_vit": (0.0, 1.0),
    "arch_hybrid": (0.0, 1.0),
    "pretrained": (0.0, 1.0),
    "top1": (0.75, 0.1),  # unknown (NaN) -> 0 and the ``top1_known`` indicator 0
}
DESCRIPTOR_FEATURES = tuple(DESCRIPTOR_SCALES)
#: descriptor features the cost model's residual may read (the size features enter through the physics term)
COST_RESIDUAL_FEATURES = ("arch_cnn", "arch_vit", "arch_hybrid")
#: raw meta-features that count the training images, in order of preference (the cost model's physics term)
TRAIN_IMAGE_FEATURES = ("num_train", "num_images", "num_samples", "total_num_samples")


def train_images(meta: Mapping[str, Any] | None) -> float | None:
    """The number of training images a dataset's raw meta-features give, or None."""
    for k in TRAIN_IMAGE_FEATURES:
        v = (meta or {}).get(k)
        if v is not None and not _is_missing(v) and float(v) > 0:
            return float(v)
    return None


def _clean(features: Mapping[str, Any]) -> dict[str, float]:
    """Descriptor features as floats, the unknown (NaN / None) ones left out (valid JSON, NaN != NaN)."""
    return {str(k): float(v) for k, v in features.items() if not _is_missing(v)}


class DescriptorError(ValueError):
    """A model has no descriptor where the encoding needs one."""


@dataclass
class ModelColumn:
    """How the model choice is encoded: by descriptor (``DESCRIPTOR_FEATURES`` + a ``top1_known``
    indicator) or, without descriptors, one-hot over ``choices``. ``descriptors`` holds the raw
    features of every model known to this schema (at meta-training: the table's models, at
    ``image_size`` px; a search adds its own with ``Schema.with_descriptors``); ``choices`` are the models
    the schema was inferred from (for an artifact: the models it was meta-trained on)."""

    name: str
    kind: str = "descriptor"  # descriptor | onehot
    choices: list[str] = field(default_factory=list)
    descriptors: dict[str, dict[str, float]] = field(default_factory=dict)
    image_size: int | None = None
    can_be_inactive: bool = False

    @property
    def width(self) -> int:
        if self.kind == "descriptor":
            return len(DESCRIPTOR_FEATURES) + 1
        return len(self.choices) + int(self.can_be_inactive)

    def feature_names(self) -> list[str]:
        if self.kind == "descriptor":
            return [*DESCRIPTOR_FEATURES, "top1_known"]
        return [f"{self.name}={c}" for c in self.choices] + (["inactive"] if self.can_be_inactive else [])

    def cost_mask(self) -> np.ndarray:
        """1 where the cost model's residual may read the column (all of a one-hot)."""
        if self.kind != "descriptor":
            return np.ones(self.width, dtype=np.float32)
        return np.asarray([float(f in COST_RESIDUAL_FEATURES) for f in self.feature_names()], dtype=np.float32)

    def descriptor(self, value: Any) -> dict[str, float]:
        d = self.descriptors.get(str(value))
        if d is None:
            raise DescriptorError(
                f"model {value!r} has no descriptor: pass model_descriptors={{name: features}} "
                f"(quicktune.hub.descriptor_features) for every model of the search"
            )
        return d

    def encode_into(self, out: np.ndarray, value: Any) -> None:
        out[:] = 0.0
        if value is None or _is_missing(value):
            if self.can_be_inactive and self.kind != "descriptor":
                out[-1] = 1.0
            return
        if self.kind != "descriptor":
            k = str(value)
            for i, c in enumerate(self.choices):
                if c == k:
                    out[i] = 1.0
                    break
            return
        d = self.descriptor(value)
        for i, f in enumerate(DESCRIPTOR_FEATURES):
            v = d.get(f)
            if v is None or _is_missing(v):
                continue
            centre, scale = DESCRIPTOR_SCALES[f]
            out[i] = (float(v) - centre) / scale
            if f == "top1":
                out[-1] = 1.0

    def log_gmacs(self, value: Any) -> float:
        """ln(GMACs) of the model (NaN when it has no descriptor)."""
        d = self.descriptors.get(str(value)) if value is not None else None
        if not d or d.get("log10_gmacs") is None or _is_missing(d["log10_gmacs"]):
            return float("nan")
        return float(d["log10_gmacs"]) * math.log(10.0)

    @classmethod
    def infer(
        cls,
        name: str,
        choices: Sequence[str],
        descriptors: Mapping[str, Mapping[str, float]] | None,
        can_be_inactive: bool = False,
        image_size: int | None = None,
    ) -> ModelColumn:
        """Descriptor encoding when ``descriptors`` cover every choice, else one-hot."""
        choices = [str(c) for c in choices]
        descriptors = descriptors or {}
        if choices and all(c in descriptors for c in choices):
            known = {c: _clean(descriptors[c]) for c in choices}
            return cls(name, "descriptor", choices, known, image_size, can_be_inactive)
        return cls(name, "onehot", choices, {}, None, can_be_inactive)


@dataclass
class Schema:
    """The column specs of the hyperparameters plus the separately encoded model column."""

    columns: list[ColumnSpec]
    model: ModelColumn | None = None

    def with_descriptors(self, descriptors: Mapping[str, Mapping[str, float]] | None) -> Schema:
        """A copy whose model column also knows ``descriptors`` (they win over the stored ones: a
        search's own resolution); a one-hot schema is returned unchanged."""
        if not descriptors or self.model is None or self.model.kind != "descriptor":
            return self
        known = {
            **self.model.descriptors,
            **{str(k): _clean(v) for k, v in descriptors.items()},
        }
        m = self.model
        return Schema(
            list(self.columns), ModelColumn(m.name, m.kind, list(m.choices), known, m.image_size, m.can_be_inactive)
        )

    def missing_descriptors(self, models: Iterable[Any]) -> list[str]:
        """Models without a descriptor (always [] for a one-hot schema)."""
        if self.model is None or self.model.kind != "descriptor":
            return []
        return sorted({str(m) for m in models if m is not None and str(m) not in self.model.descriptors})

    @property
    def hp_dim(self) -> int:
        return sum(c.width for c in self.columns)

    @property
    def model_dim(self) -> int:
        return self.model.width if self.model is not None else 0

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns] + ([self.model.name] if self.model else [])

    # --- inference ----------------------------------------------------------------------------
    @classmethod
    def from_space(cls, space: Any, descriptors: Mapping[str, Mapping[str, float]] | None = None) -> Schema:
        """From a ``quicktune.space.SearchSpace``: ranges from the declared bounds/choices; the model
        by descriptor when ``descriptors`` cover its choices, else one-hot."""
        cols: list[ColumnSpec] = []
        model = None
        for p in space.params:
            conditional = bool(p.only_active_with)
            if p.name == space.model_param:
                model = ModelColumn.infer(p.name, [str(_plain(c)) for c in p.choices], descriptors, conditional)
                continue
            if p.type == "bool":
                cols.append(ColumnSpec(p.name, "categorical", choices=[False, True], can_be_inactive=conditional))
            elif p.type == "categorical":
                if all(_is_number(c) for c in p.choices) and len(p.choices) > 1:
                    cols.append(ColumnSpec.numeric_from_values(p.name, p.choices, conditional))
                else:
                    cols.append(
                        ColumnSpec(
                            p.name, "categorical", choices=[_plain(c) for c in p.choices], can_be_inactive=conditional
                        )
                    )
            else:
                cols.append(ColumnSpec.numeric_from_values(p.name, [p.low, p.high], conditional, log=p.log))
        return cls(cols, model)

    @classmethod
    def from_columns(
        cls,
        values: Mapping[str, Sequence[Any]],
        model_column: str | None = "model",
        descriptors: Mapping[str, Mapping[str, float]] | None = None,
        image_size: int | None = None,
    ) -> Schema:
        """From raw column values (``None``/NaN = inactive), e.g. a table's ``hp.*`` columns; the model
        by descriptor when ``descriptors`` (at ``image_size`` px) cover its values, else one-hot."""
        cols: list[ColumnSpec] = []
        model = None
        for name, raw in values.items():
            raw = list(raw)
            present = [v.item() if isinstance(v, np.generic) else v for v in raw if not _is_missing(v)]
            can_be_inactive = len(present) < len(raw)
            if not present:
                continue  # never active: carries no information
            if name == model_column:
                choices = sorted({str(v) for v in present})
                model = ModelColumn.infer(name, choices, descriptors, can_be_inactive, image_size)
            elif all(isinstance(v, bool) for v in present):
                cols.append(ColumnSpec(name, "categorical", choices=[False, True], can_be_inactive=can_be_inactive))
            elif all(_is_number(v) for v in present):
                if len({float(v) for v in present}) == 1:
                    if not can_be_inactive:
                        continue  # a constant column carries no information
                    cols.append(
                        ColumnSpec(name, "numeric", low=float(present[0]), high=float(present[0]), can_be_inactive=True)
                    )
                else:
                    cols.append(ColumnSpec.numeric_from_values(name, present, can_be_inactive))
            else:
                choices = sorted({str(v) for v in present})
                cols.append(ColumnSpec(name, "categorical", choices=choices, can_be_inactive=can_be_inactive))
        return cls(cols, model)

    @classmethod
    def infer(
        cls,
        df: Any,
        model_column: str = "model",
        descriptors: Mapping[str, Mapping[str, float]] | None = None,
        image_size: int | None = None,
    ) -> Schema:
        """From a learning-curve table's ``hp.<name>`` columns (one row per config is used)."""
        firsts = df.drop_duplicates(["dataset", "config_id"]) if "config_id" in df.columns else df
        values = {c[3:]: firsts[c].tolist() for c in df.columns if str(c).startswith("hp.")}
        return cls.from_columns(values, model_column=model_column, descriptors=descriptors, image_size=image_size)

    @classmethod
    def from_configs(
        cls,
        configs: Iterable[Mapping[str, Any]],
        model_column: str | None = "model",
        descriptors: Mapping[str, Mapping[str, float]] | None = None,
    ) -> Schema:
        """From a list of config dicts (absent key = inactive)."""
        configs = list(configs)
        names: list[str] = []
        for c in configs:
            for k in c:
                if k not in names:
                    names.append(k)
        return cls.from_columns(
            {n: [c.get(n) for c in configs] for n in names}, model_column=model_column, descriptors=descriptors
        )

    # --- encoding -----------------------------------------------------------------------------
    def encode(self, configs: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """``(X_hp, X_model)`` as float32 arrays. Keys not in the schema are ignored; columns
        absent from a config are inactive."""
        n = len(configs)
        X = np.zeros((n, self.hp_dim), dtype=np.float32)
        M = np.zeros((n, self.model_dim), dtype=np.float32)
        buf = np.zeros(max([c.width for c in self.columns] + [self.model_dim, 1]), dtype=np.float64)
        for i, cfg in enumerate(configs):
            j = 0
            for col in self.columns:
                w = col.width
                col.encode_into(buf[:w], cfg.get(col.name))
                X[i, j : j + w] = buf[:w]
                j += w
            if self.model is not None:
                w = self.model.width
                v = cfg.get(self.model.name)
                self.model.encode_into(buf[:w], None if v is None else str(v))
                M[i, :] = buf[:w]
        return X, M

    def log_gmacs(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """ln(GMACs) of each config's model (NaN where unknown: one-hot schema or no model)."""
        if self.model is None:
            return np.full(len(configs), np.nan)
        return np.asarray([self.model.log_gmacs(c.get(self.model.name)) for c in configs], dtype=np.float64)

    # --- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "columns": [asdict(c) for c in self.columns],
            "model": asdict(self.model) if self.model is not None else None,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Schema:
        cols = [ColumnSpec(**c) for c in doc["columns"]]
        model = ModelColumn(**doc["model"]) if doc.get("model") else None
        return cls(cols, model)

    def fingerprint(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, default=str)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


#: meta-features that are counts or sizes: compared on a log scale (``log1p``), so that 600 vs 50,000
#: images or 32 vs 224 px are a few units apart, not hundreds of standard deviations
LOG_META = frozenset(
    {
        "num_classes", "num_images", "num_train", "num_val", "num_test", "num_samples", "total_num_samples",
        "min_images_per_class", "max_images_per_class", "mean_images_per_class", "class_imbalance",
        "median_height", "median_width", "min_side", "max_side", "image_size",
        "input_size_h", "input_size_w", "input_size_d",
    }
)  # fmt: skip
#: meta-features that are the number of image channels: a category (one-hot over CHANNEL_VALUES), not a size
CHANNEL_META = frozenset({"num_channels", "input_channels"})
CHANNEL_VALUES = (1, 3)
#: smallest spread a standardized meta-feature is divided by (per kind): a feature constant over the
#: meta-training tasks (all 32 px, all grey) must still tell a 224-px RGB task apart, never divide by ~0
MIN_SPREAD = {"log": 1.0, "linear": 0.25, "onehot": 0.5}


def _meta_kind(name: str, values: np.ndarray) -> str:
    if name in LOG_META:
        return "log"
    # an unknown feature: a non-negative one that goes above 1 is taken for a count or a size
    return "log" if values.size and values.min() >= 0 and values.max() > 1 else "linear"


@dataclass
class MetaScaler:
    """Scales dataset meta-features. Fitted once (at meta-training) and stored in the artifact,
    then applied identically during search: the reference code scaled them differently in the two
    places, which silently broke transfer.

    Each output feature is ``(t(x) - mean) / spread``, clipped to [-5, 5], where ``t`` is ``log1p`` for
    counts and sizes (``LOG_META``, and unknown non-negative features that exceed 1), the identity for
    bounded ones (``class_entropy``), and a one-hot over ``CHANNEL_VALUES`` for the number of channels
    (``num_channels=1``, ``num_channels=3``); ``spread`` is the training spread but never below
    ``MIN_SPREAD`` of its kind. Unknown features are ignored; missing ones sit at the training mean (0).
    ``low``/``high`` keep the raw range seen at meta-training (what the artifact was trained on)."""

    names: list[str] = field(default_factory=list)  # output features
    source: list[str] = field(default_factory=list)  # the raw meta-feature each one reads
    kind: list[str] = field(default_factory=list)  # log | linear | onehot:<value>
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)  # the spread divided by (already floored)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return len(self.names)

    @staticmethod
    def _t(kind: str, x: float) -> float:
        if kind == "log":
            return math.log1p(max(x, 0.0))
        if kind.startswith("onehot:"):
            return 1.0 if x == float(kind.split(":", 1)[1]) else 0.0
        return x

    @classmethod
    def fit(cls, metas: Sequence[Mapping[str, float]]) -> MetaScaler:
        out = cls()
        for n in sorted({k for m in metas for k in m}):
            v = np.array([float(m[n]) for m in metas if n in m and not _is_missing(m[n])], dtype=np.float64)
            if v.size == 0:
                continue  # never observed: carries no information
            if n in CHANNEL_META:
                kinds = [(f"{n}={c}", f"onehot:{c}") for c in CHANNEL_VALUES]
            else:
                kinds = [(n, _meta_kind(n, v))]
            for oname, kind in kinds:
                t = np.array([cls._t(kind, float(x)) for x in v])
                floor = MIN_SPREAD[kind.split(":", 1)[0]]
                out.names.append(oname)
                out.source.append(n)
                out.kind.append(kind)
                out.mean.append(float(t.mean()))
                out.std.append(max(float(t.std()), floor))
                out.low.append(float(v.min()))
                out.high.append(float(v.max()))
        return out

    def transform(self, meta: Mapping[str, float] | None) -> np.ndarray:
        out = np.zeros(self.dim, dtype=np.float32)
        meta = meta or {}
        for i, src in enumerate(self.source):
            v = meta.get(src)
            if v is None or _is_missing(v):
                continue
            x = self._t(self.kind[i], float(v))
            out[i] = float(np.clip((x - self.mean[i]) / self.std[i], -5, 5))
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> MetaScaler:
        if "kind" not in doc and "log" in doc:  # the first format: per feature a log flag, no ranges
            names = list(doc["names"])
            nan = [float("nan")] * len(names)
            kinds = ["log" if lg else "linear" for lg in doc["log"]]
            return cls(names, list(names), kinds, list(doc["mean"]), list(doc["std"]), list(nan), list(nan))
        return cls(**{k: list(v) for k, v in doc.items()})
