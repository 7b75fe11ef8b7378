"""The step's exact-resume state (quicktune.finetune.state) and its build (quicktune.finetune.build).

The checkpoint manifest is a contract with every checkpoint already written: its keys are fixed
here as a literal list (the keys of a manifest written before the step was split into
step/build/state), and a save -> load -> restore round trip must give back the RNG streams, the
optimizer and scheduler states and the weights exactly (same process, same machine).

Cost: each test builds a test_vit (0.3 M parameters) on CPU, ~1-3 s.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from quicktune.finetune import checkpoint as ck
from quicktune.finetune.build import TrainingParts, build_training
from quicktune.finetune.config import resolve_config
from quicktune.finetune.model import model_defaults
from quicktune.finetune.state import MANIFEST_KEYS, CheckpointMeta, checkpoint_tensors, restore_state
from quicktune.finetune.train import train_one_epoch

#: the manifest keys of a checkpoint written by the step before the split (one epoch of test_vit);
#: checkpoint.save_checkpoint adds epoch/format/sha256/size/tensors_file
OLD_MANIFEST_KEYS = {
    "best_epoch",
    "best_score",
    "classes",
    "config",
    "data_fingerprint",
    "data_uri",
    "epoch",
    "format",
    "history",
    "image_size",
    "in_chans",
    "max_epochs",
    "mean",
    "model",
    "num_classes",
    "optimizer",
    "pretrained",
    "resolved_config",
    "rng",
    "scaler",
    "scheduler",
    "seed",
    "sha256",
    "size",
    "source_head",
    "split_seed",
    "std",
    "stoch_norm",
    "tensors_file",
    "versions",
}


def _build(overrides: dict, seed: int = 0) -> tuple[dict, TrainingParts]:
    cfg = resolve_config({"model": "test_vit", "lr": 0.003, "batch_size": 16, **overrides})
    defaults = model_defaults(cfg["model"])
    warnings: list[str] = []
    parts = build_training(cfg, defaults, 10, 1, 16, torch.device("cpu"), seed, 6, None, warnings)
    assert isinstance(parts, TrainingParts)
    return cfg, parts


def _meta(cfg: dict, parts: TrainingParts, **per_epoch) -> dict:
    defaults = model_defaults(cfg["model"])
    base = CheckpointMeta(
        config={"model": cfg["model"]},
        resolved_config=cfg,
        classes=[str(i) for i in range(10)],
        in_chans=1,
        image_size=16,
        max_epochs=6,
        seed=0,
        split_seed=0,
        mean=defaults["mean"],
        std=defaults["std"],
        pretrained=bool(defaults["pretrained"]),
        data_uri="/data",
        data_fingerprint="abc",
        **per_epoch,
    )
    return base.manifest(parts)


def _train_a_little(parts: TrainingParts) -> None:
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    train_one_epoch(
        parts.net,
        batches,
        parts.optimizer,
        parts.loss_fn,
        torch.device("cpu"),
        parts.regs,
        mixup=parts.mixup,
        num_classes=10,
    )
    parts.scheduler.step(1, 0.5)


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_manifest_keys_are_the_ones_old_checkpoints_have(tmp_path):
    cfg, parts = _build({})
    manifest = _meta(cfg, parts, history=[{"epoch": 1, "score": 0.5}], best_epoch=1, best_score=0.5)
    added_by_save = {"epoch", "format", "sha256", "size", "tensors_file"}
    added_since = {"precision"}  # new keys: a resumed step reads them with .get (absent in old checkpoints)
    assert set(manifest) == set(MANIFEST_KEYS) == (OLD_MANIFEST_KEYS - added_by_save) | added_since
    assert manifest["precision"] == "fp32"  # auto on the CPU
    uri = ck.save_checkpoint(str(tmp_path), 1, checkpoint_tensors(parts), manifest)
    on_disk = ck.load_checkpoint(uri).manifest
    assert set(on_disk) == OLD_MANIFEST_KEYS | added_since
    assert set(on_disk["rng"]) == {"python", "numpy", "data_order"}
    assert set(on_disk["rng"]["numpy"]) == {"pos", "has_gauss", "cached_gaussian"}
    assert on_disk["num_classes"] == 10 and on_disk["model"] == "test_vit" and on_disk["best_epoch"] == 1


@pytest.mark.parametrize(
    "overrides",
    [{}, {"sched": "plateau", "sp_reg": 0.01, "opt": "momentum", "momentum": 0.9}],
    ids=["cosine-adamw", "plateau-sgd-sp"],
)
def test_save_load_restore_gives_back_weights_optimizer_scheduler_and_rng_streams(tmp_path, overrides):
    cfg, parts = _build(overrides)
    _train_a_little(parts)
    random.seed(11)
    np.random.seed(12)
    np.random.randn()  # leave a cached gaussian in numpy's state (has_gauss)
    torch.manual_seed(13)
    manifest = _meta(cfg, parts)
    uri = ck.save_checkpoint(str(tmp_path), 1, checkpoint_tensors(parts), manifest)
    expected = _draws()

    _, fresh = _build(overrides, seed=5)  # another init: everything must come from the checkpoint
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    restore_state(ck.load_checkpoint(uri), fresh)
    assert _draws() == expected
    for (k, a), (k2, b) in zip(parts.net.state_dict().items(), fresh.net.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    sa, sb = parts.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i, st in sa["state"].items():
        for name, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb["state"][i][name])), (i, name)
    assert _meta(cfg, fresh)["scheduler"] == manifest["scheduler"]


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    cfg, parts = _build({})
    uri = ck.save_checkpoint(str(tmp_path), 1, checkpoint_tensors(parts), _meta(cfg, parts))
    loaded = ck.load_checkpoint(uri)
    loaded.tensors = {k: v for k, v in loaded.tensors.items() if not k.endswith("head.weight")}
    with pytest.raises(ck.CheckpointError, match="do not fit"):
        restore_state(loaded, parts)
