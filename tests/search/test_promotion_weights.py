"""Promotion reads only the model's weights from a checkpoint (``promotion.load_winner``): the same
network and preprocessing as ``quicktune.finetune.load_trained_model`` (which loads every tensor,
optimizer state included), the checksum still verified, a checkpoint that does not fit refused.
One real one-epoch step of test_vit on the tiny digits; ~10 s.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from quicktune.finetune import load_trained_model, run_step
from quicktune.search.promotion import PromotionError, load_winner


@pytest.fixture(scope="module")
def checkpoint(tiny_image_folder, tmp_path_factory) -> Path:
    ckpt = tmp_path_factory.mktemp("ckpt") / "cfg"
    config = {"model": "test_vit", "lr": 0.001, "opt": "adamw", "batch_size": 16, "sched": "cosine"}
    result = run_step(config, str(tiny_image_folder), 1, str(ckpt), image_size=16, split_seed=3)
    assert result["status"] == "ok", result
    return ckpt


def _tensors_file(ckpt: Path) -> Path:
    (path,) = ckpt.glob("epoch-*.safetensors")
    return path


def test_load_winner_equals_the_full_load_without_reading_the_optimizer_state(checkpoint):
    full, full_pre = load_trained_model(str(checkpoint), "best")
    net, pre, split_seed = load_winner(str(checkpoint), "best")
    assert dict(pre) == dict(full_pre) and split_seed == 3
    a, b = full.state_dict(), net.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not net.training
    raw = _tensors_file(checkpoint).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    keys = json.loads(raw[8 : 8 + n])
    assert any(k.startswith("optim/") for k in keys), "the checkpoint carries optimizer state (skipped)"


def test_load_winner_refuses_a_corrupt_or_foreign_checkpoint(checkpoint, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    path = _tensors_file(bad)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PromotionError, match="corrupt"):
        load_winner(str(bad))
    with pytest.raises(PromotionError, match="no checkpoints"):
        load_winner(str(tmp_path / "empty"))
    with pytest.raises(PromotionError, match="no checkpoint for epoch 7"):
        load_winner(str(checkpoint), 7)
