"""The artifact knows its domain (quicktune/optimizer/domain.py): the report flags a space or a dataset
far from what the shipped artifact was meta-trained on and passes one that is like it; the report is
strict JSON and reads back equal; the optimizer's trust in the meta-trained surrogate (the mixture
weight) starts from it and shrinks when the meta-trained surrogate mispredicts the observed epochs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from quicktune.hub import descriptor_features
from quicktune.optimizer import domain as d
from quicktune.optimizer.artifact import MetaArtifact, default_artifact
from quicktune.optimizer.encoding import Schema
from quicktune.space import SearchSpace, builtin_space

TABLE = "quicktune/metadataset/data/metadataset.parquet"
#: a 224-px RGB dataset of 50,000 images (ImageNet-subset-shaped), far from the shipped 32-px grey tasks
BIG_RGB = {
    "num_classes": 100.0, "num_images": 50000.0, "num_train": 40000.0, "num_val": 5000.0, "num_test": 5000.0,
    "num_channels": 3.0, "median_height": 224.0, "median_width": 224.0, "min_side": 224.0, "max_side": 224.0,
    "min_images_per_class": 500.0, "max_images_per_class": 500.0, "mean_images_per_class": 500.0,
    "class_imbalance": 1.0, "class_entropy": 1.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def shipped() -> MetaArtifact:
    art = default_artifact()
    assert art is not None, "the package ships a default artifact"
    return art


@pytest.fixture(scope="module")
def table_meta() -> dict[str, float]:
    """The meta-features of one task of the shipped table (a task the artifact was meta-trained on)."""
    df = pd.read_parquet(TABLE)
    row = df[df["dataset"] == sorted(df["dataset"].unique())[0]].iloc[0]
    return {c[5:]: float(row[c]) for c in df.columns if c.startswith("meta.")}


def _report(art: MetaArtifact, space: SearchSpace, meta, image_size: int | None) -> d.DomainReport:
    models = [str(c) for p in space.params if p.name == space.model_param for c in p.choices]
    desc = descriptor_features(models, image_size)
    return d.domain_report(art.schema, art.meta_scaler, Schema.from_space(space, desc), models, desc, meta)


def test_builtin_cpu_on_a_shipped_table_task_is_in_domain(shipped, table_meta):
    r = _report(shipped, builtin_space("cpu"), table_meta, 32)
    assert r.score >= d.IN_DOMAIN and r.verdict == "in domain", r.summary()
    assert r.flags() == [] and all(m.distance == 0.0 and m.in_range for m in r.models)


def test_builtin_paper_is_flagged_out_of_domain(shipped, table_meta):
    """The paper's hub (big ViTs and CNNs at 224-512 px) vs six small CNNs at 32 px: every model far."""
    r = _report(shipped, builtin_space("paper"), table_meta, None)
    assert r.score < d.OUT_OF_DOMAIN and r.verdict == "out of domain", r.summary()
    assert r.model_score < d.OUT_OF_DOMAIN
    big = {m.model: m for m in r.models}["beit_large_patch16_512"]
    assert big.distance is not None and big.distance > d.MODEL_FAR and not big.in_range
    assert "log10_params" in big.outside and "log10_gmacs" in big.outside
    assert any(f.startswith("models:") for f in r.flags())
    assert r.meta_score == 1.0  # the same task: only the models (and knob ranges) are foreign


def test_a_224px_rgb_50k_dataset_is_flagged_out_of_domain(shipped):
    """The shipped table (v1 + v2) has colour tasks at 32 and 64 px of 128-1,500 images: colour is
    inside, but 50,000 images and 224 px are far outside, so the task is not in domain and the
    prior starts at less than half weight. (On the v1-only artifact, grey tasks only, it was
    below OUT_OF_DOMAIN with num_channels=3 flagged too.)"""
    r = _report(shipped, builtin_space("cpu"), BIG_RGB, 32)
    assert r.score < 0.5 and r.verdict != "in domain", r.summary()
    assert r.model_score == 1.0 and r.knob_score == 1.0, r.summary()
    off = {m.feature for m in r.meta if m.score < 1.0}
    assert {"num_images", "num_train", "median_height", "max_side"} <= off, off
    assert {m.feature: m.score for m in r.meta}["num_images"] == 0.0
    assert "num_channels=3" not in off  # the shipped table has colour tasks
    flag = [f for f in r.flags() if f.startswith("meta:")]
    assert flag and "num_images" in flag[0]


def test_unknown_and_widened_knobs_are_flagged(shipped, table_meta):
    cpu = builtin_space("cpu").to_dict()
    cpu["params"]["lr"]["choices"] = [1e-7, 1e-5, 1e-3]  # two decades below what the artifact saw
    cpu["params"]["brand_new_knob"] = {"type": "float", "low": 0.0, "high": 1.0}
    cpu["param_order"].append("brand_new_knob")
    r = _report(shipped, SearchSpace.from_dict(cpu), table_meta, 32)
    knobs = {k.knob: k for k in r.knobs}
    assert knobs["brand_new_knob"].status == "unknown" and knobs["brand_new_knob"].score == 0.0
    assert knobs["lr"].status == "outside" and knobs["lr"].excess > 0.5
    assert any(f.startswith("knobs:") for f in r.flags())
    assert r.knob_score == pytest.approx((len(r.knobs) - 2) / len(r.knobs)) and r.score == r.knob_score


meta_values = st.fixed_dictionaries(
    {},
    optional={
        "num_images": st.floats(10, 1e7),
        "num_train": st.floats(10, 1e7),
        "num_classes": st.floats(2, 2e4),
        "num_channels": st.sampled_from([1.0, 3.0, 4.0]),
        "median_height": st.floats(8, 2048),
        "class_entropy": st.floats(0, 1),
        "not_a_known_feature": st.floats(-5, 5),
    },
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=meta_values)
def test_report_is_strict_json_and_reads_back_equal(shipped, meta):
    space = builtin_space("cpu")
    models = [str(c) for p in space.params if p.name == space.model_param for c in p.choices]
    desc = descriptor_features(models, 32)
    r = d.domain_report(shipped.schema, shipped.meta_scaler, Schema.from_space(space, desc), models, desc, meta)
    doc = json.loads(json.dumps(r.to_json(), allow_nan=False))
    back = d.DomainReport.from_json(doc)
    assert back == r and back.to_json() == r.to_json()
    assert 0.0 <= r.score <= 1.0 and r.score == min(r.model_score, r.knob_score, r.meta_score)
    assert ("not_a_known_feature" in meta) == ("not_a_known_feature" in r.meta_unknown)


@settings(max_examples=30, deadline=None)
@given(a=st.floats(0, 1), b=st.floats(0, 1), feature=st.sampled_from(["num_images", "median_height", "num_classes"]))
def test_further_beyond_the_training_range_never_scores_higher(shipped, a, b, feature):
    sc = shipped.meta_scaler
    high = sc.high[sc.names.index(feature)]
    near, far = high * 10 ** (3 * min(a, b)), high * 10 ** (3 * max(a, b))  # both at or above the range

    def score(v: float) -> float:
        return {m.feature: m.score for m in d.meta_domain(sc, {feature: v})[0]}[feature]

    assert score(high) == 1.0 and score(far) <= score(near)


def test_ramp_thresholds():
    assert d._ramp(0.0, 0.5, 2.0) == 1.0 and d._ramp(0.5, 0.5, 2.0) == 1.0
    assert d._ramp(2.0, 0.5, 2.0) == 0.0 and d._ramp(math.inf, 0.5, 2.0) == 0.0
    assert d._ramp(1.25, 0.5, 2.0) == pytest.approx(0.5)
    assert d.verdict(d.IN_DOMAIN) == "in domain" and d.verdict(np.nextafter(d.OUT_OF_DOMAIN, 0)) == "out of domain"


# ----------------------------------------------------------------------------------------------
# the mixture weight of the meta-trained surrogate
@pytest.fixture(scope="module")
def synth():
    from quicktune.bench.synthetic import make_synthetic_table
    from quicktune.optimizer.metatrain import meta_train

    table = make_synthetic_table(n_datasets=3, n_configs=30, max_epochs=6, seed=0)
    return table, meta_train(table, exclude=["synth00"], epochs=2, steps_per_epoch=10, seed=0)  # two RGB tasks


def _opt(synth, meta_features, seed=0, **kw):
    from quicktune.lct import table_configs
    from quicktune.optimizer.registry import make_optimizer

    table, art = synth
    return make_optimizer(
        "quicktune", table_configs(table, "synth01"), 6, seed=seed, artifact=art, meta_features=meta_features, **kw
    )


def _far(meta):
    """The same task described as grey, 300x larger, 2048 px, 5000 classes: outside every meta-training range."""
    far = {"image_size": 2048.0, "num_classes": 5000.0, "num_channels": 1.0}
    return {**meta, **far, "num_samples": meta["num_samples"] * 300}


def test_prior_weight_starts_high_in_domain_and_low_out_of_domain(synth):
    from quicktune.lct import table_meta_features
    from quicktune.optimizer.mixture import W_MAX, W_MIN

    meta = table_meta_features(synth[0], "synth01")  # a task the artifact was meta-trained on
    inside, outside = _opt(synth, meta), _opt(synth, _far(meta))
    assert inside.domain.score >= d.IN_DOMAIN and inside.prior_weight == pytest.approx(W_MAX)
    assert outside.domain.score < d.OUT_OF_DOMAIN and outside.prior_weight == pytest.approx(W_MIN)
    assert _opt(synth, _far(meta), mixture=False).prior_weight == 1.0  # the ablation: the prior alone


def test_out_of_domain_the_initial_design_stops_following_the_prior(synth):
    """In domain the first pick is one of the prior head's top 3 (probability >= 0.95 each); out of
    domain it is random with probability 0.95 (a top-3 pick: about 0.15). 20 seeds each."""
    from quicktune.lct import table_meta_features
    from quicktune.optimizer.testing import seed_offset

    meta = table_meta_features(synth[0], "synth01")
    probe = _opt(synth, meta)
    ids = list(probe.configs)
    top3 = {ids[i] for i in probe.design_order(ids)[:3]}
    seeds = [seed_offset() + k for k in range(20)]
    hits_in = sum(_opt(synth, meta, seed=s).ask().config_id in top3 for s in seeds)
    hits_out = sum(_opt(synth, _far(meta), seed=s).ask().config_id in top3 for s in seeds)
    assert hits_in >= 16 and hits_out <= 9, (hits_in, hits_out)  # binomial tails below 1e-3


def test_the_weight_follows_the_predictive_likelihood_of_observed_epochs(synth):
    from quicktune.lct import table_meta_features

    opt = _opt(synth, table_meta_features(synth[0], "synth01"))
    cid = next(iter(opt.configs))
    w0 = opt.prior_weight
    opt.weight.preds[cid] = [1.0, 0.9, 0.02, 0.31, 0.1]  # the meta-trained surrogate sure and wrong
    opt.tell(cid, 1, 0.3, 1.0)
    w1 = opt.prior_weight
    assert w1 < 0.1 * w0 and opt.weight.updates == 1 and cid not in opt.weight.preds
    opt.weight.preds[cid] = [2.0, 0.5, 0.05, 0.1, 0.05]  # now the other way round
    opt.tell(cid, 2, 0.5, 1.0)
    assert opt.prior_weight > w1
    opt.weight.preds[cid] = [9.0, 0.0, 0.01, 1.0, 0.01]  # for another epoch than the one told: ignored
    w2 = opt.prior_weight
    opt.tell(cid, 3, 0.5, 1.0)
    assert opt.prior_weight == w2 and cid not in opt.weight.preds


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    log_odds=st.floats(-4.5, 4.5),
    preds=st.lists(st.tuples(st.integers(1, 6), st.floats(-1, 2), st.floats(1e-4, 1)), max_size=4),
)
def test_the_mixture_state_round_trips_exactly(synth, log_odds, preds):
    from quicktune.lct import table_meta_features

    meta = table_meta_features(synth[0], "synth01")
    a = _opt(synth, meta)
    ids = list(a.configs)
    a.weight.log_odds = log_odds
    a.weight.preds = {ids[i]: [float(e), m, s, 1 - m, 2 * s] for i, (e, m, s) in enumerate(preds)}
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
    assert state["version"] == 3
    b = _opt(synth, meta, seed=7)
    b.load_state_dict(state)
    assert b.weight.log_odds == a.weight.log_odds and b.weight.preds == a.weight.preds
    assert b.prior_weight == a.prior_weight
    assert b.state_dict() == a.state_dict()


def test_a_version_2_state_loads_with_the_mixture_starting_afresh(synth):
    """A search snapshotted before the mixture existed resumes: same observations, the weight at its start."""
    from quicktune.lct import table_meta_features

    meta = table_meta_features(synth[0], "synth01")
    a = _opt(synth, meta)
    s = a.ask()
    a.tell(s.config_id, s.epoch, 0.5, 1.0)
    old = {k: v for k, v in a.state_dict().items() if k != "mixture"} | {"version": 2}
    b = _opt(synth, meta)
    b.weight.log_odds = 3.0
    b.load_state_dict(json.loads(json.dumps(old)))
    assert b.curves == a.curves and b.prior_weight == pytest.approx(b.weight.w0) and not b.base_fitted_once
    with pytest.raises(ValueError, match="version"):
        b.load_state_dict({**old, "version": 1})
