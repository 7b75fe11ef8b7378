"""``quicktune prior`` and quicktune.search.prior with the shipped artifact: the prior tells the models
of a hub apart (distinct costs that follow their size) from cached descriptors, without building a model."""

from __future__ import annotations

import json

import pytest

from quicktune.cli import main
from quicktune.hub import descriptor as dmod
from quicktune.search.prior import REFERENCE_META, PriorError, default_knobs, explain_prior
from quicktune.space import SearchSpace, builtin_space


@pytest.fixture
def no_model_construction(monkeypatch):
    def build(*args, **kwargs):
        raise AssertionError("a model was built: the catalogue's descriptors should come from the cache")

    monkeypatch.setattr(dmod, "_count", build)


def test_prior_cli_on_the_paper_hub_gives_24_distinct_costs_that_follow_gmacs(capsys, no_model_construction):
    assert main(["prior", "--space", "builtin:paper", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["models"]
    assert len(rows) == 24 and doc["image_size"] == "native" and doc["data"] == "reference"
    costs = {r["model"]: r["predicted_epoch_seconds"] for r in rows}
    assert len(set(costs.values())) == 24
    assert costs["beit_large_patch16_512"] > 100 * costs["mobilevit_xxs"]
    scores = [r["prior_score"] for r in rows]
    assert scores == sorted(scores, reverse=True)  # best first
    # within one architecture type and the same knobs, more GMACs never costs less
    for t in ("cnn", "vit", "hybrid"):
        same = sorted((r["gmacs"], r["predicted_epoch_seconds"]) for r in rows if r["arch_type"] == t)
        assert all(a[1] <= b[1] for a, b in zip(same, same[1:], strict=False)), t
    # the domain report: every paper model far from the shipped artifact's six 32-px CPU models
    dom = doc["domain"]
    assert dom["verdict"] == "out of domain" and dom["score"] < 0.3 and dom["model_score"] < 0.3
    assert len(dom["models"]) == 24 and any(f.startswith("models:") for f in dom["flags"])


def test_prior_cli_on_the_cpu_hub_human_table(capsys, no_model_construction):
    assert main(["prior", "--space", "builtin:cpu", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "CIFAR-10-shaped" in out and "image size: 32" in out
    for m in ("tf_efficientnet_lite0", "resnet10t", "test_vit"):
        assert m in out
    lines = [ln for ln in out.splitlines() if ln.split() and ln.split()[0] in builtin_space("cpu")["model"].choices]
    assert len(lines) == 6 and all(ln.rstrip().endswith("yes") for ln in lines)  # all six seen in meta-training
    # the six models are the meta-training models; the RGB 60k-image reference task is not like its tasks
    assert "domain score" in out and "models 1.00" in out and "meta-features outside" in out


def test_default_knobs_are_the_first_choice_or_midpoint_and_respect_conditions():
    space = SearchSpace.from_dict(
        {
            "name": "t",
            "params": {
                "model": {"type": "categorical", "choices": ["resnet10t"]},
                "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
                "betas": {"type": "categorical", "choices": ["0.9 0.99"], "only_active_with": {"opt": ["adam"]}},
                "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "drop": {"type": "float", "low": 0.0, "high": 0.4},
                "epochs": {"type": "int", "low": 1, "high": 4},
                "lp": {"type": "bool"},
            },
        }
    )
    k = default_knobs(space)
    assert k == {"opt": "sgd", "lr": pytest.approx(1e-3), "drop": pytest.approx(0.2), "epochs": 2, "lp": False}


def test_given_meta_features_change_the_cost_and_unknown_models_are_errors(no_model_construction):
    space = builtin_space("cpu")
    ref = {r["model"]: r["predicted_epoch_seconds"] for r in explain_prior(space, image_size=32)["models"]}
    small = {**REFERENCE_META, "num_train": 400.0, "num_images": 600.0}
    few = {r["model"]: r["predicted_epoch_seconds"] for r in explain_prior(space, None, small, 32)["models"]}
    assert all(few[m] < ref[m] for m in ref)  # 100x fewer images: cheaper epochs
    bad = SearchSpace.from_dict({"name": "bad", "params": {"model": {"type": "categorical", "choices": ["nope_net"]}}})
    with pytest.raises(PriorError, match="unknown model 'nope_net'"):
        explain_prior(bad)
