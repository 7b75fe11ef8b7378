"""Merging learning-curve tables by (dataset fingerprint, config id), the stable held-out split and
the held-out score (quicktune/metadataset/continual.py). The round trip against a real MLflow +
SeaweedFS is in test_continual_roundtrip.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pandas.testing import assert_frame_equal

from quicktune.lct import LCTError
from quicktune.metadataset import continual as c

FPS = ["fp:aaa", "fp:bbb", "fp:ccc"]


@st.composite
def tables(draw):
    """A small LCT with fingerprints: 1-3 datasets (two may share a name), curves of 1-4 epochs."""
    rows = []
    names = draw(st.lists(st.sampled_from(["digits", "emoji"]), min_size=1, max_size=3))
    for fp, name in zip(FPS, names, strict=False):
        for cid in draw(st.sets(st.sampled_from(["c1", "c2", "c3", "c4"]), min_size=1, max_size=3)):
            n = draw(st.integers(1, 4))
            lr = draw(st.sampled_from([0.1, 0.01]))
            for e in range(1, n + 1):
                score = draw(st.one_of(st.floats(0, 1, allow_nan=False), st.just(float("nan"))))
                rows.append(
                    {
                        "dataset": name,
                        "config_id": cid,
                        "epoch": e,
                        "score": score,
                        "cost": 1.0,
                        "hp.lr": lr,
                        "meta.num_classes": 10.0 if name == "digits" else 5.0,
                        c.FINGERPRINT_COLUMN: fp,
                    }
                )
    return pd.DataFrame(rows)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=tables(), b=tables())
def test_merge_is_order_independent_and_idempotent(a, b):
    ab = c.merge_tables([a, b])
    assert_frame_equal(ab, c.merge_tables([b, a]))
    assert_frame_equal(c.merge_tables([ab]), ab)
    assert_frame_equal(c.merge_tables([ab, b]), ab)
    assert_frame_equal(c.merge_tables([a, a]), c.merge_tables([a]))
    # one curve per (fingerprint, config id), the longest of the inputs
    keys = ab.groupby([c.FINGERPRINT_COLUMN, "config_id"]).size()
    for (fp, cid), n in keys.items():
        lengths = [len(t[(t[c.FINGERPRINT_COLUMN] == fp) & (t["config_id"] == cid)]) for t in (a, b)]
        assert n == max(lengths)
    # one name per fingerprint, one fingerprint per name
    pairs = ab[["dataset", c.FINGERPRINT_COLUMN]].drop_duplicates()
    assert pairs["dataset"].is_unique and pairs[c.FINGERPRINT_COLUMN].is_unique


def test_merge_refuses_a_table_without_fingerprints():
    df = pd.DataFrame({"dataset": ["d"], "config_id": ["c"], "epoch": [1], "score": [0.5], "cost": [1.0]})
    with pytest.raises(LCTError, match="dataset_fingerprint"):
        c.merge_tables([df])


def test_shipped_fingerprints_are_stable_and_distinct():
    df = pd.DataFrame({"dataset": ["a", "a", "b"], "config_id": ["1", "1", "1"], "meta.num_classes": [3.0, 3.0, 4.0]})
    fps = c.shipped_fingerprints(df)
    assert fps == c.shipped_fingerprints(df.iloc[::-1]) and len(set(fps.values())) == 2
    assert all(v.startswith("shipped:") for v in fps.values())


def _table(n_curves: int, fp: str = "fp:x") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"dataset": "d", "config_id": f"c{i}", "epoch": 1, "score": 0.5, "cost": 1.0, c.FINGERPRINT_COLUMN: fp}
            for i in range(n_curves)
        ]
    )


def test_heldout_split_is_stable_under_growth_and_seeded():
    small, big = _table(40), _table(400)
    held_small = set(small[c.heldout_mask(small)]["config_id"])
    held_big = set(big[c.heldout_mask(big)]["config_id"])
    assert held_small == held_big & set(small["config_id"])  # a curve's fate does not depend on the rest
    assert 0.1 < len(held_big) / 400 < 0.3  # HELDOUT_FRACTION = 0.2
    assert held_big != set(big[c.heldout_mask(big, seed=1)]["config_id"])
    assert not c.heldout_mask(_table(c.MIN_CURVES_TO_HOLD_OUT - 1), fraction=0.99).any()


def test_heldout_loglik_ranks_a_trained_surrogate_above_an_untrained_one():
    """The score the champion decision rests on: the same points for both, higher for a real fit."""
    from quicktune.bench.synthetic import make_synthetic_table
    from quicktune.optimizer.metatrain import meta_train

    df = make_synthetic_table(n_datasets=3, n_configs=30, max_epochs=4, seed=0)
    df[c.FINGERPRINT_COLUMN] = "fp:" + df["dataset"].astype(str)
    mask = c.heldout_mask(df)
    train, held = df[~mask], df[mask]
    trained = meta_train(train, epochs=4, steps_per_epoch=25, seed=0)
    untrained = meta_train(train, epochs=1, steps_per_epoch=0, seed=0)
    s1, s0 = c.heldout_loglik(trained, train, held), c.heldout_loglik(untrained, train, held)
    assert s1 == c.heldout_loglik(trained, train, held)  # deterministic
    assert s1["points"] == s0["points"] > 0
    assert np.isfinite(s1["loglik"]) and s1["loglik"] > s0["loglik"]


@pytest.mark.slow  # ~45 s: the held-out score of the whole shipped table
def test_a_registry_retrain_encodes_models_by_descriptor(tmp_path):
    """retrain_from_mlflow meta-trains with the models' hub descriptors, like ``metatrain --table``
    (it used to fall back to one-hot): here on the shipped table through a sqlite registry."""
    from quicktune.optimizer.artifact import FORMAT_VERSION, MetaArtifact
    from quicktune.tracking import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = registry.client_for(uri)
    client.create_experiment("quicktune-surrogate", artifact_location=str(tmp_path / "artifacts"))
    report = c.retrain_from_mlflow(uri, with_shipped=True, epochs=1, steps_per_epoch=0, image_size=32)
    assert report["alias_moved"] and report["version"] == 1
    art, _ = registry.load_version(
        client, registry.parse_models_uri(report["uri"]), tmp_path / "cache", MetaArtifact.load, FORMAT_VERSION
    )
    model = art.schema.model
    assert model is not None and model.kind == "descriptor" and model.image_size == 32
    assert set(model.choices) == set(model.descriptors) and len(model.choices) >= 6
    assert all(d["log10_gmacs"] < 0 for d in model.descriptors.values())  # the tiny models at 32 px


def test_meta_train_table_keeps_one_hot_for_made_up_model_names():
    from quicktune.bench.synthetic import make_synthetic_table

    df = make_synthetic_table(n_datasets=2, n_configs=8, max_epochs=3, seed=0)
    assert c.meta_train_table(df, 32, epochs=1, steps_per_epoch=1).schema.model.kind == "descriptor"
    df["hp.model"] = "made-up-" + df["hp.model"].astype(str)
    art = c.meta_train_table(df, 32, epochs=1, steps_per_epoch=1)
    assert art.schema.model is not None and art.schema.model.kind == "onehot"


def test_merging_a_merged_table_again_keeps_its_curves_when_meta_features_differ():
    """One fingerprint measured under two names (different meta-features): the merge rewrites the
    losing side's meta-features, so the tie-break between equally long curves must not read them,
    or ``merge([ab, b])`` picks other scores than ``merge([a, b])`` (a Hypothesis finding)."""

    def table(name, n_classes, scores):
        return pd.DataFrame(
            {
                "dataset": name,
                "config_id": list(scores),
                "epoch": 1,
                "score": list(scores.values()),
                "cost": 1.0,
                "hp.lr": 0.1,
                "meta.num_classes": n_classes,
                c.FINGERPRINT_COLUMN: "fp:x",
            }
        )

    # c1's tie goes to b (meta-features 5), c2's to a: ab's c2 then carries b's meta-features
    a = table("digits", 10.0, {"c1": 0.1, "c2": 0.3})
    b = table("emoji", 5.0, {"c1": 0.1, "c2": 0.6})
    ab = c.merge_tables([a, b])
    assert_frame_equal(c.merge_tables([ab, b]), ab)
    assert_frame_equal(c.merge_tables([ab, a]), ab)
    assert_frame_equal(c.merge_tables([b, a]), ab)
