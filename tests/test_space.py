"""Search-space files: validation errors, conditions in sampling, stable ids, the built-in spaces, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from quicktune.space import SearchSpace, SpaceError, builtin_space, config_id, load_space

KNOBS = ["model", "pct_to_freeze", "linear_probing", "layer_decay", "sp_reg", "delta_reg", "bss_reg", "cotuning_reg",
         "stoch_norm", "mixup", "mixup_prob", "cutmix", "smoothing", "drop", "data_augmentation", "ra_num_ops",
         "ra_magnitude", "auto_augment", "opt", "opt_betas", "momentum", "lr", "weight_decay", "clip_grad", "sched",
         "warmup_epochs", "warmup_lr", "decay_rate", "decay_epochs", "patience_epochs", "batch_size"]


def test_builtin_spaces_share_knob_names_and_types():
    paper, cpu = builtin_space("paper"), builtin_space("cpu")
    assert sorted(paper.names) == sorted(KNOBS) == sorted(cpu.names)
    assert len(paper["model"].choices) == 24
    assert set(cpu["model"].choices) == {"tf_efficientnet_lite0", "resnet10t", "mobilenetv3_small_100",
                                         "regnetx_002", "convnext_atto", "test_vit"}
    for name in KNOBS:
        assert paper[name].type == cpu[name].type, name
        assert dict(paper[name].only_active_with) == dict(cpu[name].only_active_with), name
    assert set(cpu["batch_size"].choices) <= set(range(16, 65))


@pytest.mark.parametrize("name", ["paper", "cpu"])
def test_sampling_respects_conditions(name):
    space = builtin_space(name)
    configs = space.sample_many(300, np.random.default_rng(0))
    assert len(configs) == 300
    seen_active = {"ra_num_ops": 0, "auto_augment": 0, "opt_betas": 0, "momentum": 0, "decay_rate": 0,
                   "patience_epochs": 0}
    for c in configs:
        space.validate(c)  # exactly the active parameters, each valid
        assert ("ra_num_ops" in c) == ("ra_magnitude" in c) == (c["data_augmentation"] == "random_augment")
        assert ("auto_augment" in c) == (c["data_augmentation"] == "auto_augment")
        assert ("opt_betas" in c) == (c["opt"] in ("adam", "adamw", "adamp"))
        assert ("momentum" in c) == (c["opt"] in ("sgd", "momentum"))
        assert ("decay_rate" in c) == ("decay_epochs" in c) == (c["sched"] in ("step", "multistep"))
        assert ("patience_epochs" in c) == (c["sched"] == "plateau")
        for k in seen_active:
            seen_active[k] += k in c
    assert all(v > 0 for v in seen_active.values())  # every conditional knob does get sampled


def test_config_id_is_stable_and_order_independent():
    c = {"model": "test_vit", "lr": 0.001, "opt": "adamw"}
    assert config_id(c) == config_id(dict(reversed(list(c.items()))))
    assert config_id(c) == config_id({**c, "lr": np.float64(0.001)})
    assert config_id(c) != config_id({**c, "lr": 0.002})
    assert len(config_id(c)) == 12


@pytest.mark.parametrize("doc, fragment", [
    ({"params": {}}, "non-empty"),
    ({"params": {"a": {"type": "nope"}}}, "'type'"),
    ({"params": {"a": {"type": "float", "low": 1.0}}}, "numeric 'low' and 'high'"),
    ({"params": {"a": {"type": "float", "low": 2.0, "high": 1.0}}}, "low < high"),
    ({"params": {"a": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, "low > 0"),
    ({"params": {"a": {"type": "categorical", "choices": []}}}, "non-empty list"),
    ({"params": {"a": {"type": "categorical", "choices": ["x", "x"]}}}, "duplicate"),
    ({"params": {"a": {"type": "int", "low": 1, "high": 3, "only_active_with": {"b": [1]}}}}, "not defined before"),
    ({"params": {"a": {"choices": [1, 2], "colour": "red"}}}, "unknown keys"),
    ({"model_param": "m", "params": {"a": {"choices": [1, 2]}}}, "model_param"),
])
def test_space_validation_errors(doc, fragment):
    with pytest.raises(SpaceError) as ei:
        SearchSpace.from_dict(doc, source="my.yaml")
    assert fragment in str(ei.value) and "my.yaml" in str(ei.value)


def test_config_validation_errors():
    space = builtin_space("cpu")
    c = space.sample(np.random.default_rng(1))
    with pytest.raises(SpaceError, match="not in space"):
        space.validate({**c, "colour": 1})
    c2 = dict(c, opt="adamw")
    c2.pop("momentum", None)
    c2["opt_betas"] = "0.9 0.999"
    space.validate(c2)
    with pytest.raises(SpaceError, match="inactive"):
        space.validate({**c2, "momentum": 0.9})
    with pytest.raises(SpaceError, match="misses active parameter 'opt_betas'"):
        space.validate({k: v for k, v in c2.items() if k != "opt_betas"})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quicktune.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_validate_and_sample(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("params:\n  model: {choices: [a, b]}\n  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"
                    "  mom: {type: float, low: 0.0, high: 0.9, only_active_with: {model: [a]}}\n")
    r = _cli("space", "validate", str(good))
    assert r.returncode == 0 and "ok" in r.stdout and "1 conditional" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  lr: {type: float, low: 1.0, high: 0.1}\n")
    r = _cli("space", "validate", str(bad))
    assert r.returncode == 1 and "bad.yaml" in r.stderr and "'lr'" in r.stderr
    r = _cli("space", "sample", "builtin:cpu", "-n", "4", "--seed", "3")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 4
    space = load_space("builtin:cpu")
    for row in lines:
        space.validate(row["config"])
        assert row["config_id"] == config_id(row["config"])
