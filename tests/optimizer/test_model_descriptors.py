"""Models encoded by what they are: the descriptor encoding, the physics-first cost model and the
artifact format that stores the meta-training models' descriptors. The optimizer is pure, so the
descriptors here are plain numbers (as ``quicktune.hub.ModelDescriptor.features()`` gives them)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from quicktune.optimizer.artifact import ArtifactError, MetaArtifact
from quicktune.optimizer.encoding import DESCRIPTOR_FEATURES, DescriptorError, Schema
from quicktune.optimizer.metatrain import meta_train
from quicktune.optimizer.quicktune import QuickTune


def _desc(gmacs: float, params: float, arch: str = "cnn", pretrained: bool = False, top1: float | None = None):
    return {
        "log10_params": math.log10(params),
        "log10_gmacs": math.log10(gmacs),
        "log2_input_size": 8.0,
        "log2_num_features": 9.0,
        "arch_cnn": float(arch == "cnn"),
        "arch_vit": float(arch == "vit"),
        "arch_hybrid": float(arch == "hybrid"),
        "pretrained": float(pretrained),
        "top1": top1 / 100 if top1 is not None else float("nan"),
    }


SEEN = {"small": _desc(0.005, 1e6), "middle": _desc(0.05, 5e6), "large": _desc(0.5, 5e7)}
UNSEEN = {"between": _desc(0.015, 2.5e6)}  # between 'small' and 'middle'


def _true_cost(model: str, n_images: float, batch_size: int) -> float:
    gmacs = 10 ** {**SEEN, **UNSEEN}[model]["log10_gmacs"]
    return n_images * (2e-4 + 0.01 * gmacs) * (1.3 if batch_size == 16 else 1.0)


@pytest.fixture(scope="module")
def cost_table():
    rng = np.random.default_rng(0)
    rows = []
    for d, n in enumerate((300, 1000, 3000)):
        for c in range(24):
            model, bs = list(SEEN)[c % 3], (16, 64)[(c // 3) % 2]
            lr = float(10 ** rng.uniform(-4, -2))
            for e in range(1, 4):
                rows.append(
                    {
                        "dataset": f"d{d}",
                        "config_id": f"c{c}",
                        "epoch": e,
                        "score": float(np.clip(0.3 + 0.1 * e + 0.05 * rng.normal(), 0, 1)),
                        "cost": _true_cost(model, n, bs) * float(np.exp(0.05 * rng.normal())),
                        "hp.model": model,
                        "hp.batch_size": bs,
                        "hp.lr": lr,
                        "meta.num_train": float(n),
                        "meta.num_classes": 10.0,
                    }
                )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def desc_artifact(cost_table):
    return meta_train(cost_table, epochs=6, steps_per_epoch=30, seed=0, model_descriptors=SEEN, image_size=32)


def test_the_artifact_stores_the_models_it_was_trained_on(desc_artifact, tmp_path):
    m = desc_artifact.schema.model
    assert m is not None and m.kind == "descriptor" and m.choices == ["large", "middle", "small"]
    assert m.descriptors["large"]["log10_gmacs"] == pytest.approx(math.log10(0.5)) and m.image_size == 32
    back = MetaArtifact.load(desc_artifact.save(tmp_path / "a"))
    assert back.schema.to_json() == desc_artifact.schema.to_json()
    assert back.meta_scaler.low == [10.0, 300.0] and back.meta_scaler.high == [10.0, 3000.0]


def test_an_unseen_model_costs_between_a_smaller_and_a_larger_seen_model(desc_artifact):
    pool = [
        (f"{m}-{bs}", {"model": m, "batch_size": bs, "lr": 1e-3})
        for m in ("small", "between", "middle", "large")
        for bs in (16, 64)
    ]
    opt = QuickTune(
        pool,
        3,
        seed=0,
        artifact=desc_artifact,
        meta_features={"num_train": 2000.0, "num_classes": 10.0},
        model_descriptors=UNSEEN,
    )
    ids = [cid for cid, _ in pool]
    pred = dict(zip(ids, opt.cost_model.predict(opt._batch(ids, [1] * len(ids))), strict=True))
    for bs in (16, 64):
        assert pred[f"small-{bs}"] < pred[f"between-{bs}"] < pred[f"middle-{bs}"] < pred[f"large-{bs}"]
    # learned, not only ordered: within a factor 2 of the true cost on a dataset size never seen
    for cid, cfg in pool:
        true = _true_cost(cfg["model"], 2000.0, cfg["batch_size"])
        assert true / 2 < pred[cid] < 2 * true, (cid, pred[cid], true)


def test_a_model_without_descriptor_is_an_error_not_zeros(desc_artifact):
    pool = [("a", {"model": "small", "lr": 1e-3}), ("b", {"model": "nobody_knows", "lr": 1e-3})]
    with pytest.raises(DescriptorError, match="nobody_knows"):
        QuickTune(pool, 3, artifact=desc_artifact)
    opt = QuickTune(pool, 3, artifact=desc_artifact, model_descriptors={"nobody_knows": _desc(1.0, 1e7, "vit")})
    _, M, _ = opt._encode(["a", "b"])
    assert M.shape == (2, len(DESCRIPTOR_FEATURES) + 1) and not np.array_equal(M[0], M[1]) and np.abs(M[1]).sum() > 0


def test_an_artifact_of_the_one_hot_format_is_a_clear_error(desc_artifact, tmp_path):
    d = desc_artifact.save(tmp_path / "old")
    doc = json.loads((d / "artifact.json").read_text())
    doc["version"] = 1
    (d / "artifact.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="version 1.*one-hot.*quicktune metatrain"):
        MetaArtifact.load(d)


def test_without_descriptors_the_model_is_one_hot():
    schema = Schema.from_columns({"model": ["a", "b"], "lr": [1e-3, 1e-2]}, descriptors={"a": _desc(0.1, 1e6)})
    assert schema.model is not None and schema.model.kind == "onehot"  # 'b' has none: one-hot for all


_finite = st.floats(min_value=-3, max_value=3, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text("abcxyz_.0123", min_size=1, max_size=12),
        st.fixed_dictionaries({f: _finite for f in DESCRIPTOR_FEATURES}),
        min_size=1,
        max_size=5,
    )
)
def test_descriptor_schema_json_roundtrip(descs):
    names = sorted(descs)
    schema = Schema.from_columns({"model": names, "lr": [1e-3] * len(names)}, descriptors=descs, image_size=64)
    back = Schema.from_json(json.loads(json.dumps(schema.to_json())))
    cfgs = [{"model": n, "lr": 1e-3} for n in names]
    for a, b in zip(schema.encode(cfgs), back.encode(cfgs), strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(schema.log_gmacs(cfgs), back.log_gmacs(cfgs))
