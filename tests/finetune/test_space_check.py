"""check_space_for_step: a space is refused before the search starts when the finetuning step
would refuse its configs (issue 12, defect 9: `space validate` accepted unknown knobs and models,
a negative lr and batch_size 0, and every step of such a search came back `invalid`)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from quicktune.finetune.config import KNOBS, InvalidConfigError, resolve_config
from quicktune.finetune.space_check import check_space_for_step, space_problems
from quicktune.space import SearchSpace, SpaceError, load_space

SHIPPED = ["builtin:cpu", "builtin:paper", "tests/tiny_space.yaml", "tests/diverge_space.yaml"]


def _space(**params) -> SearchSpace:
    return SearchSpace.from_dict({"params": {"model": {"choices": ["test_vit"]}, **params}}, source="s.yaml")


@pytest.mark.parametrize("ref", SHIPPED)
def test_shipped_spaces_pass(ref):
    check_space_for_step(load_space(ref), ref)


def test_the_step_knobs_are_the_paper_space():
    """One source of truth: the step's knobs (finetune/config.py) are builtin:paper's parameters."""
    assert set(KNOBS) == set(load_space("builtin:paper").names)


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"lr": {"choices": [-0.1, 0.01]}}, "'lr': -0.1 must be > 0"),
        ({"lr": {"choices": [0.0]}}, "'lr': 0.0 must be > 0"),
        ({"lr": {"type": "float", "low": 0.0, "high": 0.1}}, "'lr': 'low' 0.0 must be > 0"),
        ({"lr": {"choices": ["1e-3"]}}, "write 1.0e-3"),
        ({"batch_size": {"choices": [0, 16]}}, "'batch_size': 0 must be in [1"),
        ({"batch_size": {"choices": [16.0]}}, "'batch_size': 16.0 is not an integer"),
        ({"batch_size": {"type": "float", "low": 8, "high": 64}}, "float range for an integer knob"),
        ({"batch_size": {"type": "int", "low": 0, "high": 64}}, "'low' 0 must be in [1"),
        ({"pct_to_freeze": {"choices": [0.0, 1.5]}}, "'pct_to_freeze': 1.5 must be <= 1.0"),
        ({"mixup_prob": {"type": "float", "low": -0.5, "high": 1.0}}, "'mixup_prob': 'low' -0.5 must be >= 0"),
        ({"smoothing": {"choices": [1.0]}}, "'smoothing': 1.0 must be <= 0.999"),
        ({"drop": {"choices": [-0.1]}}, "'drop': -0.1 must be >= 0"),
        ({"warmup_epochs": {"choices": [-1]}}, "'warmup_epochs': -1 must be in [0"),
        ({"decay_epochs": {"choices": [0]}}, "'decay_epochs': 0 must be in [1"),
        ({"opt": {"choices": ["adamw", "lamb"]}}, "'opt': 'lamb' is not one of"),
        ({"sched": {"choices": ["cosine", "onecycle"]}}, "'sched': 'onecycle' is not one of"),
        ({"sched": {"type": "bool"}}, "'sched': type bool, but the step expects a string"),
        ({"data_augmentation": {"choices": ["none", "augmix"]}}, "'augmix' is not one of"),
        ({"auto_augment": {"choices": ["v1"]}}, "'auto_augment': 'v1' is not one of"),
        ({"opt_betas": {"choices": ["0.9"]}}, "'opt_betas'"),
        ({"linear_probing": {"choices": [0, 1]}}, "'linear_probing': 0 is not true/false"),
        ({"stoch_norm": {"type": "int", "low": 0, "high": 1}}, "'stoch_norm': a int range"),
        ({"colour": {"choices": ["red"]}}, "'colour': not a knob of the finetuning step"),
        ({"cutmx": {"choices": [0.0]}}, "did you mean 'cutmix'"),
    ],
)
def test_refused_with_the_parameter_and_value(params, fragment):
    with pytest.raises(SpaceError) as ei:
        check_space_for_step(_space(**params), "s.yaml")
    assert str(ei.value).startswith("s.yaml: ") and fragment in str(ei.value), str(ei.value)


def test_lr_has_no_upper_bound():
    check_space_for_step(_space(lr={"choices": [0.001, 100000.0]}))  # tests/diverge_space.yaml does this


def test_unknown_models_and_model_knob():
    with pytest.raises(SpaceError, match="unknown model 'resnet_999'"):
        check_space_for_step(SearchSpace.from_dict({"params": {"model": {"choices": ["resnet10t", "resnet_999"]}}}))
    # timm models outside the curated catalogue, and the paper's deprecated timm names, are fine
    check_space_for_step(
        SearchSpace.from_dict({"params": {"model": {"choices": ["resnet18", "tf_efficientnet_b4_ns"]}}})
    )
    assert any(
        "no parameter 'model'" in p
        for p in space_problems(SearchSpace.from_dict({"params": {"lr": {"choices": [0.1]}}}), check_models=False)
    )
    cond = SearchSpace.from_dict(
        {
            "params": {
                "opt": {"choices": ["sgd"]},
                "model": {"choices": ["test_vit"], "only_active_with": {"opt": ["sgd"]}},
            }
        }
    )
    assert any("cannot be conditional" in p for p in space_problems(cond, check_models=False))
    other = SearchSpace.from_dict(
        {"model_param": "lr", "params": {"model": {"choices": ["test_vit"]}, "lr": {"choices": [0.1]}}}
    )
    assert any("model_param" in p for p in space_problems(other, check_models=False))


def test_all_problems_listed_and_values_cut_short():
    long_value = "x" * 5000
    with pytest.raises(SpaceError) as ei:
        check_space_for_step(
            _space(lr={"choices": [-1.0]}, batch_size={"choices": [0]}, opt={"choices": [long_value]}), "s.yaml"
        )
    text = str(ei.value)
    assert "3 problem(s)" in text and "'lr'" in text and "'batch_size'" in text and "'opt'" in text
    assert long_value not in text and len(text) < 1000


def test_a_passing_space_samples_only_configs_the_step_accepts():
    """What the check promises, on the shipped spaces: resolve_config takes every sampled config."""
    for ref in SHIPPED:
        for c in load_space(ref).sample_many(100, np.random.default_rng(0)):
            try:
                resolve_config(c)
            except InvalidConfigError as exc:  # pragma: no cover - the failure message
                pytest.fail(f"{ref}: {exc}")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quicktune.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_validate_is_strict(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "params:\n  model: {choices: [resnet10t, no_such_net]}\n  lr: {choices: [-0.001]}\n"
        "  batch_size: {choices: [0]}\n  colour: {choices: [red]}\n"
    )
    r = _cli("space", "validate", str(bad))
    assert r.returncode == 1
    for fragment in ("bad.yaml", "'no_such_net'", "'lr'", "'batch_size'", "'colour'"):
        assert fragment in r.stderr, r.stderr
    for ref in ("builtin:cpu", "tests/diverge_space.yaml"):
        r = _cli("space", "validate", ref)
        assert r.returncode == 0, r.stderr
