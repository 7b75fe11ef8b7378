"""Encoding of arbitrary schemas (from a space, from a table, from foreign configs) and the
meta-feature scaler."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from quicktune.optimizer.encoding import LOG_RATIO, ColumnSpec, MetaScaler, Schema
from quicktune.space import builtin_space

MEDQT = str(__import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "tables" / "medqt_portfolio.parquet")


def _by_name(schema: Schema) -> dict[str, ColumnSpec]:
    return {c.name: c for c in schema.columns}


def test_schema_from_space_separates_model_and_scales_numeric_grids():
    space = builtin_space("paper")
    schema = Schema.from_space(space)
    cols = _by_name(schema)
    assert schema.model is not None and schema.model.name == "model" and len(schema.model.choices) == 24
    assert "model" not in cols  # the model column is encoded only in X_model
    assert cols["lr"].kind == "numeric" and cols["lr"].log  # 1e-5 .. 1e-2
    assert cols["sp_reg"].kind == "numeric" and cols["sp_reg"].log and cols["sp_reg"].shift == pytest.approx(1e-4)
    assert cols["pct_to_freeze"].kind == "numeric" and not cols["pct_to_freeze"].log
    assert cols["opt"].kind == "categorical" and cols["opt"].choices == ["sgd", "momentum", "adam", "adamw", "adamp"]
    assert cols["linear_probing"].choices == [False, True]
    assert cols["momentum"].can_be_inactive and not cols["lr"].can_be_inactive
    configs = space.sample_many(50, np.random.default_rng(0))
    X, M = schema.encode(configs)
    assert X.shape == (50, schema.hp_dim) and M.shape == (50, 24)
    assert np.allclose(M.sum(1), 1.0)
    assert X.min() >= 0.0 and X.max() <= 1.0


def test_encode_values_exactly():
    schema = Schema.from_columns(
        {
            "model": ["a", "b", "a"],
            "lr": [1e-4, 1e-1, 1e-2],  # wide positive range -> log
            "drop": [0.0, 0.5, 0.25],  # linear
            "opt": ["sgd", "adam", "sgd"],
            "mom": [0.9, None, float("nan")],  # can be inactive
            "flag": [True, False, True],
        }
    )
    cols = _by_name(schema)
    assert cols["lr"].log and not cols["drop"].log
    assert list(cols) == ["lr", "drop", "opt", "mom", "flag"]
    X, M = schema.encode(
        [
            {"model": "b", "lr": 1e-2, "drop": 0.5, "opt": "adam", "mom": 0.9, "flag": False},
            {"model": "zzz", "lr": 1e-4, "drop": 0.0, "opt": "rmsprop", "flag": True},
        ]
    )
    # lr: log-scaled midpoint; drop: linear; opt one-hot [adam, sgd]; mom: [value, inactive] (one active
    # value only, so it sits at 0.5); flag [F, T]
    assert X[0].tolist() == pytest.approx([2 / 3, 1.0, 1.0, 0.0, 0.5, 0.0, 1.0, 0.0])
    assert X[1].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    assert M.tolist() == [[0.0, 1.0], [0.0, 0.0]]  # unknown model -> all-zero one-hot


def test_schema_json_roundtrip():
    schema = Schema.from_space(builtin_space("cpu"))
    doc = json.loads(json.dumps(schema.to_json()))
    back = Schema.from_json(doc)
    configs = builtin_space("cpu").sample_many(20, np.random.default_rng(1))
    for a, b in zip(schema.encode(configs), back.encode(configs), strict=False):
        assert np.array_equal(a, b)


@pytest.mark.skipif(not os.path.exists(MEDQT), reason="shared MedQuickTune table not present")
def test_infer_schema_of_a_foreign_table():
    df = pd.read_parquet(MEDQT)
    schema = Schema.infer(df)
    cols = _by_name(schema)
    assert schema.model is not None and schema.model.choices == ["densenet", "resnet"]
    assert cols["no_max_pool"].kind == "categorical" and cols["no_max_pool"].choices == [False, True]
    assert cols["no_max_pool"].can_be_inactive  # ResNet-only knob, missing for DenseNets
    assert cols["learning_rate"].kind == "numeric" and cols["learning_rate"].log
    assert cols["densenet_type"].kind == "categorical" and cols["densenet_type"].can_be_inactive
    firsts = df.drop_duplicates(["dataset", "config_id"])
    configs = [
        {c[3:]: v for c, v in r.items() if c.startswith("hp.") and not pd.isna(v)} for r in firsts.to_dict("records")
    ]
    X, M = schema.encode(configs)
    assert X.shape == (len(configs), schema.hp_dim) and np.isfinite(X).all()
    assert np.allclose(M.sum(1), 1.0)
    # a config of *our* space encoded with this foreign schema: nothing crashes, absent = inactive
    ours = builtin_space("cpu").sample(np.random.default_rng(0))
    Xo, Mo = schema.encode([ours])
    assert Mo.sum() == 0.0
    j = 0
    for c in schema.columns:
        if c.can_be_inactive and c.name not in ours:
            assert Xo[0, j + c.width - 1] == 1.0
        j += c.width


def test_meta_scaler_is_fitted_once_and_applied_identically():
    metas = [
        {"num_samples": 300.0, "num_classes": 2.0},
        {"num_samples": 20000.0, "num_classes": 100.0},
        {"num_samples": 1500.0, "num_classes": 10.0},
    ]
    sc = MetaScaler.fit(metas)
    assert sc.names == ["num_classes", "num_samples"] and sc.kind == ["log", "log"]
    Z = np.stack([sc.transform(m) for m in metas])
    assert np.allclose(Z.mean(0), 0.0, atol=1e-6) and np.allclose(Z.std(0), 1.0, atol=1e-5)
    back = MetaScaler.from_json(json.loads(json.dumps(sc.to_json())))
    assert np.array_equal(back.transform(metas[1]), sc.transform(metas[1]))
    # unknown features are ignored, missing ones sit at the training mean
    v = sc.transform({"num_samples": 300.0, "colour": 3.0})
    assert v[0] == 0.0 and v[1] == pytest.approx(Z[0, 1])
    assert MetaScaler.fit([{"a": 1.0}]).transform({"a": 1.0}).tolist() == [0.0]
    assert not math.isnan(float(sc.transform({"num_samples": float("nan")})[1]))
    assert sc.low == [2.0, 300.0] and sc.high == [100.0, 20000.0]  # the raw ranges it was fitted on


def test_nullable_integers_and_pd_na_are_numbers_and_missing():
    """A table's nullable-integer knob (pandas Int64: ints and pd.NA) is a numeric column with an
    inactive indicator; the old code made string categories '1', '2', '<NA>' out of it."""
    df = pd.DataFrame(
        {
            "dataset": ["d"] * 4,
            "config_id": ["a", "b", "c", "e"],
            "hp.patience_epochs": pd.array([1, 3, pd.NA, 2], dtype="Int64"),
            "hp.lr": [1e-3, 1e-2, 1e-3, 1e-4],
        }
    )
    schema = Schema.infer(df)
    col = _by_name(schema)["patience_epochs"]
    assert col.kind == "numeric" and (col.low, col.high) == (1.0, 3.0) and col.can_be_inactive
    X, _ = schema.encode([{"patience_epochs": 3}, {"patience_epochs": pd.NA}, {"patience_epochs": 2}])
    # the search's plain ints match the table's values; pd.NA is inactive
    assert X[:, :2].tolist() == [[1.0, 0.0], [0.0, 1.0], [0.5, 0.0]]


def test_log_scale_at_exactly_the_log_ratio():
    """lr over [1e-4, 1e-2] spans exactly LOG_RATIO (100x): log-scaled (the old rule was strictly >)."""
    assert LOG_RATIO == 100.0
    schema = Schema.from_columns({"lr": [1e-4, 1e-3, 1e-2], "drop": [1.0, 50.0, 99.0]})
    cols = _by_name(schema)
    assert cols["lr"].log and not cols["drop"].log
    X, _ = schema.encode([{"lr": 1e-3}])
    assert X[0, 0] == pytest.approx(0.5)


def test_meta_features_transfer_from_small_grey_tasks_to_large_colour_ones():
    """Fitted on tasks that are all 32 px, grey, ~600 images (zero spread in sizes and channels): a
    224-px RGB task with 50,000 images is a few spreads away and still distinguishable, never divided
    by a zero spread nor clipped to the same value as a 64-px one; channels are one-hot {1, 3}."""
    metas = [
        {"num_images": n, "median_height": 32.0, "num_channels": 1.0, "num_classes": k, "class_entropy": 1.0}
        for n, k in ((600.0, 10.0), (600.0, 5.0), (200.0, 2.0))
    ]
    sc = MetaScaler.fit(metas)
    assert "num_channels=1" in sc.names and "num_channels=3" in sc.names and "num_channels" not in sc.names
    assert all(s >= 0.25 for s in sc.std)
    idx = {n: i for i, n in enumerate(sc.names)}
    big = sc.transform({"num_images": 50000.0, "median_height": 224.0, "num_channels": 3.0, "num_classes": 100.0})
    mid = sc.transform({"num_images": 5000.0, "median_height": 64.0, "num_channels": 1.0, "num_classes": 10.0})
    same = sc.transform(metas[0])
    assert np.all(np.abs(big) < 5.0) and np.all(np.isfinite(big))  # not clipped
    h = idx["median_height"]
    assert same[h] == 0.0 < mid[h] < big[h]
    assert big[idx["num_images"]] > mid[idx["num_images"]] > same[idx["num_images"]]
    assert big[idx["num_channels=3"]] > 0.0 == mid[idx["num_channels=3"]]
    assert big[idx["num_channels=1"]] < 0.0 == mid[idx["num_channels=1"]]


def test_meta_train_model_encoding_onehot_is_explicit_and_recorded():
    """``model_encoding="onehot"`` ignores the descriptors it is given (the leave-one-model-out
    ablation); the default encodes by descriptor; the artifact records which; an unknown name fails."""
    from quicktune.bench.synthetic import make_synthetic_table
    from quicktune.optimizer.metatrain import meta_train

    df = make_synthetic_table(2, 12, 3, seed=0)
    models = sorted(df["hp.model"].dropna().astype(str).unique())
    desc = {
        m: {"log10_params": 6.0 + 0.1 * i, "log10_gmacs": -1.0 + 0.2 * i, "input_size": 224, "top1": 70.0 + i}
        for i, m in enumerate(models)
    }
    kw = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16, "model_descriptors": desc, "image_size": 32}
    art_d = meta_train(df, **kw)
    art_o = meta_train(df, model_encoding="onehot", **kw)
    assert art_d.schema.model is not None and art_d.schema.model.kind == "descriptor"
    assert art_d.metrics["model_encoding"] == "descriptor"
    assert art_o.schema.model is not None and art_o.schema.model.kind == "onehot"
    assert art_o.metrics["model_encoding"] == "onehot" and art_o.schema.model.descriptors == {}
    assert sorted(art_o.schema.model.choices) == models
    # one-hot: each meta-training model is one unit vector; a model it never saw encodes as all zeros
    _, M = art_o.schema.encode([{"model": models[0]}, {"model": "never_seen_model"}])
    assert M[0].sum() == pytest.approx(1.0) and not M[1].any()
    with pytest.raises(ValueError, match="model_encoding"):
        meta_train(df, model_encoding="ordinal", **kw)
