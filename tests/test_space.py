"""Search-space files: validation errors, conditions in sampling, stable ids, the built-in spaces, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from quicktune.hub import model_info
from quicktune.space import SearchSpace, SpaceError, builtin_space, config_id, load_space

KNOBS = [
    "model",
    "pct_to_freeze",
    "linear_probing",
    "layer_decay",
    "sp_reg",
    "delta_reg",
    "bss_reg",
    "cotuning_reg",
    "stoch_norm",
    "mixup",
    "mixup_prob",
    "cutmix",
    "smoothing",
    "drop",
    "data_augmentation",
    "ra_num_ops",
    "ra_magnitude",
    "auto_augment",
    "opt",
    "opt_betas",
    "momentum",
    "lr",
    "weight_decay",
    "clip_grad",
    "sched",
    "warmup_epochs",
    "warmup_lr",
    "decay_rate",
    "decay_epochs",
    "patience_epochs",
    "batch_size",
]


def test_builtin_spaces_share_knob_names_and_types():
    paper, cpu = builtin_space("paper"), builtin_space("cpu")
    assert sorted(paper.names) == sorted(KNOBS) == sorted(cpu.names)
    assert len(paper["model"].choices) == 24
    assert set(cpu["model"].choices) == {
        "tf_efficientnet_lite0",
        "resnet10t",
        "mobilenetv3_small_100",
        "regnetx_002",
        "convnext_atto",
        "test_vit",
    }
    for name in KNOBS:
        assert paper[name].type == cpu[name].type, name
        assert dict(paper[name].only_active_with) == dict(cpu[name].only_active_with), name
    assert set(cpu["batch_size"].choices) <= set(range(16, 65))


def test_cpu_wide_is_cpu_with_pretrained_and_random_twins():
    cpu, wide = builtin_space("cpu"), builtin_space("cpu-wide")
    assert wide.names == cpu.names
    for name in KNOBS:
        if name != "model":
            assert wide[name] == cpu[name], name
    models = set(wide["model"].choices)
    assert set(cpu["model"].choices) < models
    for n in (0, 1, 2):
        pretrained, twin = model_info(f"tf_efficientnet_lite{n}"), model_info(f"tf_efficientnet_lite{n}.random")
        assert {pretrained.name, twin.name} <= models
        assert pretrained.pretrained_available_offline and not twin.pretrained
        assert pretrained.arch == twin.arch and pretrained.params == twin.params


@pytest.mark.parametrize("name", ["paper", "cpu", "cpu-wide"])
def test_sampling_respects_conditions(name):
    space = builtin_space(name)
    configs = space.sample_many(300, np.random.default_rng(0))
    assert len(configs) == 300
    seen_active = {
        "ra_num_ops": 0,
        "auto_augment": 0,
        "opt_betas": 0,
        "momentum": 0,
        "decay_rate": 0,
        "patience_epochs": 0,
    }
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


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"params": {}}, "non-empty"),
        ({"params": {"a": {"type": "nope"}}}, "'type'"),
        ({"params": {"a": {"type": "float", "low": 1.0}}}, "numeric 'low' and 'high'"),
        ({"params": {"a": {"type": "float", "low": 2.0, "high": 1.0}}}, "low < high"),
        ({"params": {"a": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, "low > 0"),
        ({"params": {"a": {"type": "categorical", "choices": []}}}, "non-empty list"),
        ({"params": {"a": {"type": "categorical", "choices": ["x", "x"]}}}, "duplicate"),
        ({"params": {"a": {"type": "int", "low": 1, "high": 3, "only_active_with": {"b": [1]}}}}, "not defined"),
        ({"params": {"a": {"choices": [1, 2], "colour": "red"}}}, "unknown keys"),
        ({"model_param": "m", "params": {"a": {"choices": [1, 2]}}}, "model_param"),
        # conditions resolved by dependency: a cycle (or a self-condition) can never be sampled
        (
            {
                "params": {
                    "a": {"choices": [1, 2], "only_active_with": {"b": [1]}},
                    "b": {"choices": [1, 2], "only_active_with": {"a": [1]}},
                }
            },
            "cycle",
        ),
        ({"params": {"a": {"choices": [1, 2], "only_active_with": {"a": [1]}}}}, "itself"),
        (
            {"params": {"a": {"choices": [1, 2]}, "b": {"type": "bool", "only_active_with": {"a": [3]}}}},
            "not one of its values",
        ),
        ({"params": {"a": {"choices": [1, 2]}, "b": {"type": "bool", "only_active_with": {"a": []}}}}, "no values"),
        ({"params": {"a": {"choices": [[1, 2], 3]}}}, "strings, numbers or booleans"),
        ({"params": {"a": {"choices": [None, 3]}}}, "strings, numbers or booleans"),
        ({"params": {"a": {"choices": [float("nan")]}}}, "finite"),
        ({"params": {"a": {"type": "float", "low": 0.0, "high": float("inf")}}}, "finite"),
        ({"params": {"a": {"type": "float", "low": 0.1, "high": 1.0, "log": "false"}}}, "'log'"),
        ({"params": {1: {"choices": [1, 2]}}}, "non-empty strings"),
        # an explicit order must be a permutation that keeps every parent before its children
        ({"param_order": ["a"], "params": {"a": {"choices": [1]}, "b": {"choices": [1]}}}, "misses ['b']"),
        ({"param_order": ["a", "b", "c"], "params": {"a": {"choices": [1]}, "b": {"choices": [1]}}}, "unknown"),
        ({"param_order": ["a", "a"], "params": {"a": {"choices": [1]}}}, "twice"),
        ({"param_order": "ab", "params": {"a": {"choices": [1]}}}, "list of parameter names"),
        (
            {
                "param_order": ["b", "a"],
                "params": {"a": {"choices": [1]}, "b": {"choices": [1], "only_active_with": {"a": [1]}}},
            },
            "puts 'b' before 'a'",
        ),
    ],
)
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
    good.write_text(
        "params:\n  model: {choices: [test_vit, resnet10t]}\n"
        "  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"
        "  momentum: {type: float, low: 0.0, high: 0.9, only_active_with: {model: [resnet10t]}}\n"
    )
    r = _cli("space", "validate", str(good))
    assert r.returncode == 0 and "ok" in r.stdout and "1 conditional" in r.stdout
    generic = tmp_path / "generic.yaml"  # well formed, but not knobs of the finetuning step
    generic.write_text("params:\n  model: {choices: [a, b]}\n  mom: {type: float, low: 0.0, high: 0.9}\n")
    r = _cli("space", "validate", str(generic))
    assert r.returncode == 1 and "'mom'" in r.stderr and "unknown model 'a'" in r.stderr
    r = _cli("space", "validate", "--syntax-only", str(generic))
    assert r.returncode == 0, r.stderr
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


# --- defect 1 of issue 12: the space round trip through spec.json ---------------------------------
@pytest.mark.parametrize("name", ["cpu", "paper"])
def test_builtin_space_survives_spec_json(name):
    """spec.json is written with sort_keys=True; sorted, 'auto_augment' came before its parent
    'data_augmentation' and every resume of a search on a built-in space failed."""
    space = load_space(f"builtin:{name}")
    again = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict(), sort_keys=True)))
    assert again == space and again.names == space.names  # same order, hence the same sampling stream
    assert again.sample_many(50, np.random.default_rng(7)) == space.sample_many(50, np.random.default_rng(7))


def test_spec_json_of_the_old_format_still_loads():
    """A spec.json written before 'param_order' existed (sorted keys): the conditions are resolved
    by dependency, so the search can be resumed (with another parameter order)."""
    space = load_space("builtin:cpu")
    doc = space.to_dict()
    del doc["param_order"]
    old = SearchSpace.from_dict(json.loads(json.dumps(doc, sort_keys=True)))
    assert set(old.names) == set(space.names) and old.names != space.names
    for p in old.params:  # every parent before its children
        assert all(old.names.index(parent) < old.names.index(p.name) for parent in p.only_active_with)
    for c in old.sample_many(100, np.random.default_rng(0)):
        space.validate(c)


def test_dependency_order_keeps_declared_order_where_valid():
    doc = {
        "params": {
            "x": {"choices": [1]},
            "child": {"choices": [1], "only_active_with": {"parent": ["on"]}},
            "y": {"choices": [1]},
            "parent": {"choices": ["on", "off"]},
            "z": {"choices": [1]},
            "grandchild": {"type": "bool", "only_active_with": {"child": [1]}},
        }
    }
    assert SearchSpace.from_dict(doc).names == ["x", "y", "parent", "child", "z", "grandchild"]


def test_to_dict_is_plain_json():
    """numpy scalars and tuples in a space become JSON types (spec.json is dumped with default=str,
    which would have turned an np.int64 choice into the string '3')."""
    space = SearchSpace.from_dict(
        {
            "params": {
                "a": {"choices": (np.int64(3), np.float64(0.5), np.str_("s"), np.bool_(True))},
                "b": {
                    "type": "float",
                    "low": np.float64(0.1),
                    "high": np.float64(1.0),
                    "only_active_with": {"a": (np.int64(3),)},
                },
            }
        }
    )
    doc = space.to_dict()
    assert doc == json.loads(json.dumps(doc))
    assert doc["params"]["a"]["choices"] == [3, 0.5, "s", True]
    assert type(doc["params"]["a"]["choices"][0]) is int
    assert SearchSpace.from_dict(json.loads(json.dumps(doc, sort_keys=True))) == space


def test_config_ids_of_grid_values_are_unchanged():
    """config_id now rounds floats to 9 significant digits (was 10): ids of every config of the
    built-in grids (values of at most 8 digits) are what they were, so stored ids stay valid."""
    import hashlib

    def old_id(config):
        canon = {k: (float(f"{v:.10g}") if isinstance(v, float) else v) for k, v in sorted(config.items())}
        blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    for name in ("cpu", "paper"):
        for c in builtin_space(name).sample_many(200, np.random.default_rng(3)):
            assert config_id(c) == old_id(c)
    assert config_id({"lr": 9.0}) == config_id({"lr": 9.0 * (1 + 9e-11)})  # was different
    assert config_id({"lr": 0.0}) == config_id({"lr": -0.0})


def test_space_file_errors_never_echo_contents(tmp_path):
    """A space reference may point at any readable file (a credentials file, say): say where the
    problem is, never what the file holds."""
    creds = tmp_path / "credentials"
    creds.write_text("[default]\nkey = S3CR3T\n  nested: [unclosed\n")
    with pytest.raises(SpaceError) as ei:
        SearchSpace.from_yaml(creds)
    assert "S3CR3T" not in str(ei.value) and "line 2" in str(ei.value)
    binary = tmp_path / "blob.yaml"
    binary.write_bytes(b"\xff\xfe\x00SECRETVALUE123")
    with pytest.raises(SpaceError, match="UTF-8") as ei:
        SearchSpace.from_yaml(binary)
    assert "SECRETVALUE123" not in str(ei.value)
    with pytest.raises(SpaceError, match="folder"):
        SearchSpace.from_yaml(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(SpaceError, match="larger than"):
        SearchSpace.from_yaml(big)


@pytest.mark.parametrize(
    "ref", ["builtin:../../../etc/passwd", "builtin:../cli/__init__", "builtin:CPU/..", "builtin:"]
)
def test_builtin_names_are_names_not_paths(ref):
    from quicktune.space import SpaceError, load_space

    with pytest.raises(SpaceError, match="no built-in space"):
        load_space(ref)
