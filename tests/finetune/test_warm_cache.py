"""A warm process's caches (quicktune.finetune.warm_cache): decoded images and the last config's
training state kept between steps must change nothing a step computes -- metrics, weights and
checkpoints are bit-identical to cold steps -- and the checkpoint, not the memory, decides where a
config resumes.

Real digits images (conftest ``tiny_image_folder``), the test-sized ``test_efficientnet`` at 16 px
with every RNG consumer on (mixup/cutmix, augmentation, StochNorm, plateau). ~40-60 s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from quicktune.finetune import checkpoint as ck, warm_cache
from quicktune.finetune.step import run_step

RANDOM_INIT = {"models": {"test_efficientnet": {"source": "none"}}}
CFG = {
    "model": "test_efficientnet",
    "lr": 0.01,
    "batch_size": 16,
    "opt": "adamw",
    "mixup": 0.4,
    "cutmix": 0.5,
    "mixup_prob": 0.75,
    "data_augmentation": "trivial_augment",
    "stoch_norm": True,
    "sp_reg": 0.001,
    "sched": "plateau",
    "patience_epochs": 1,
    "warmup_epochs": 1,
    "warmup_lr": 1e-5,
}
TIMING = ("train_seconds", "eval_seconds", "train_cpu_seconds", "eval_cpu_seconds", "cost")


@pytest.fixture
def warm():
    warm_cache.enable(limit_mb=64)
    yield
    warm_cache.disable()


def _step(data, to_epoch, ckdir, **kw):
    kw.setdefault("image_size", 16)
    kw.setdefault("max_epochs", 6)
    kw.setdefault("weights_config", RANDOM_INIT)
    kw.setdefault("cache_dir", str(Path(ckdir).parent / "cache"))
    res = run_step(CFG, str(data), to_epoch, str(ckdir), **kw)
    assert res["status"] == "ok", res["message"]
    return res


def _metrics(epochs):
    return [{k: v for k, v in e.items() if k not in TIMING} for e in epochs]


def _newest(ckdir):
    c = ck.load_checkpoint(ck.list_checkpoints(str(ckdir))[-1][1])
    manifest = {k: v for k, v in c.manifest.items() if k not in ("history", "sha256")}
    return c.epoch, c.tensors, manifest, _metrics(c.manifest["history"])


def _assert_same_checkpoint(a, b):
    ea, ta, ma, ha = _newest(a)
    eb, tb, mb, hb = _newest(b)
    assert ea == eb and ha == hb and ma == mb
    assert set(ta) == set(tb)
    for k in ta:  # every tensor, the RNG states included
        assert torch.equal(ta[k], tb[k]), k


def test_warm_sequence_is_bit_identical_to_cold_steps(tiny_image_folder, tmp_path, warm):
    kw = {"deterministic": True, "precision": "fp32"}
    warm_runs = [_step(tiny_image_folder, e, tmp_path / "warm", **kw) for e in (1, 2, 3)]
    assert [r.get("memory") for r in warm_runs] == [None, True, True]  # epochs 2 and 3 from memory
    assert warm_cache.stats()["pixel_hits"] >= 4  # train + val images, decoded once
    assert warm_cache.stats()["dataset_hits"] == 2
    warm_cache.disable()
    cold_runs = [_step(tiny_image_folder, e, tmp_path / "cold", **kw) for e in (1, 2, 3)]
    assert all("memory" not in r for r in cold_runs)
    for w, c in zip(warm_runs, cold_runs, strict=True):
        assert _metrics(w["epochs"]) == _metrics(c["epochs"])
        assert w["warnings"] == c["warnings"]
    _assert_same_checkpoint(tmp_path / "warm", tmp_path / "cold")


def test_memory_is_not_used_when_another_worker_trained_the_config(tiny_image_folder, tmp_path, warm):
    ckdir = tmp_path / "ck"
    _step(tiny_image_folder, 1, ckdir)
    mine = warm_cache.take_training(str(ckdir))  # this worker's state: epoch 1
    assert mine is not None and mine.epoch == 1
    # another worker trains epoch 2 meanwhile (its state is not this process's: forget it)
    other = _step(tiny_image_folder, 2, ckdir)
    assert "memory" not in other and [e["epoch"] for e in other["epochs"]] == [2]
    warm_cache.drop_training()
    warm_cache.remember_training(mine)
    res = _step(tiny_image_folder, 3, ckdir)
    assert "memory" not in res  # the checkpoint (epoch 2) is newer than the memory (epoch 1)
    assert [e["epoch"] for e in res["epochs"]] == [3]  # epoch 2 not trained twice
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
    warm_cache.disable()
    for e in (1, 2, 3):
        _step(tiny_image_folder, e, tmp_path / "cold")
    _assert_same_checkpoint(ckdir, tmp_path / "cold")


def test_memory_is_not_used_when_the_checkpoint_is_older(tiny_image_folder, tmp_path, warm):
    ckdir = tmp_path / "ck"
    _step(tiny_image_folder, 1, ckdir)
    saved = tmp_path / "epoch1"
    shutil.copytree(ckdir, saved)
    _step(tiny_image_folder, 2, ckdir)  # memory: epoch 2
    shutil.rmtree(ckdir)  # the folder goes back to epoch 1 (e.g. restored from elsewhere)
    shutil.copytree(saved, ckdir)
    res = _step(tiny_image_folder, 3, ckdir)
    assert "memory" not in res
    assert [e["epoch"] for e in res["epochs"]] == [2, 3]  # resumed where the checkpoint is, none lost
    warm_cache.disable()
    _step(tiny_image_folder, 3, tmp_path / "cold")
    _assert_same_checkpoint(ckdir, tmp_path / "cold")


def test_memory_is_not_used_when_the_same_epoch_was_rewritten(tiny_image_folder, tmp_path, warm):
    ckdir = tmp_path / "ck"
    _step(tiny_image_folder, 1, ckdir)
    manifest = ckdir / "epoch-0001.json"
    data = json.loads(manifest.read_text())
    data["history"][0]["train_seconds"] += 1.0  # another worker's run of the same epoch
    manifest.write_text(json.dumps(data, indent=1, sort_keys=True))
    res = _step(tiny_image_folder, 2, ckdir)
    assert "memory" not in res and [e["epoch"] for e in res["epochs"]] == [2]
    assert warm_cache.stats()["states"] == [str(ckdir)]  # kept again after the save


def test_a_failed_step_keeps_no_state(tiny_image_folder, tmp_path, warm, monkeypatch):
    ckdir = tmp_path / "ck"
    _step(tiny_image_folder, 1, ckdir)
    from quicktune.finetune import epochs as epochs_mod

    def boom(*a, **k):
        raise KeyError("boom")

    monkeypatch.setattr(epochs_mod, "best_uri", boom)  # fails after epoch 2's checkpoint
    res = run_step(CFG, str(tiny_image_folder), 2, str(ckdir), image_size=16, max_epochs=6, weights_config=RANDOM_INIT)
    assert res["status"] == "failed"
    assert warm_cache.stats()["states"] == []  # the parts may be past the checkpoint: dropped


def test_another_config_drops_the_kept_state(tiny_image_folder, tmp_path, warm):
    _step(tiny_image_folder, 1, tmp_path / "a")
    assert warm_cache.stats()["states"] == [str(tmp_path / "a")]
    _step(tiny_image_folder, 1, tmp_path / "b")
    assert warm_cache.stats()["states"] == [str(tmp_path / "b")]


def test_decoded_images_are_shared_and_bounded(tiny_image_folder, tmp_path):
    from quicktune.data import open_dataset
    from quicktune.finetune.loader import ImageSet

    ds = open_dataset(str(tiny_image_folder), cache_dir=tmp_path / "c")
    idx = ds.split("train")
    mean = std = (0.5, 0.5, 0.5)
    cold = ImageSet(ds, idx, 16, 1, mean, std, None)
    warm_cache.enable(limit_mb=1)
    try:
        first = ImageSet(ds, idx, 16, 1, mean, std, None)
        second = ImageSet(ds, idx, 16, 1, mean, std, None)
        assert second.tensors is first.tensors and torch.equal(first.tensors, cold.tensors)
        policy = ImageSet(ds, idx, 16, 1, mean, std, lambda im: im)
        assert [im.tobytes() for im in policy.images] == [
            im.tobytes() for im in ImageSet(ds, idx, 16, 1, mean, std, lambda im: im).images
        ]
        other_size = ImageSet(ds, idx, 24, 1, mean, std, None)
        assert other_size.tensors.shape[-1] == 24
        assert warm_cache.stats()["pixel_bytes"] <= 2**20
        warm_cache.enable(limit_mb=0.01)  # smaller than one split: nothing kept
        assert warm_cache.stats()["pixel_entries"] == 0
        ImageSet(ds, idx, 16, 1, mean, std, None)
        assert warm_cache.stats()["pixel_entries"] == 0
    finally:
        warm_cache.disable()


def test_a_diverged_epoch_leaves_no_tensors_file(tiny_image_folder, tmp_path):
    cfg = {"model": "resnet10t", "lr": 1e4, "batch_size": 16, "opt": "sgd", "momentum": 0.9}
    res = run_step(cfg, str(tiny_image_folder), 2, str(tmp_path / "ck"), image_size=16, max_epochs=4)
    assert res["status"] == "diverged"
    left = sorted(p.name for p in (tmp_path / "ck").iterdir()) if (tmp_path / "ck").exists() else []
    assert all(n.endswith(".json") or n.replace(".safetensors", ".json") in left for n in left), left


def test_a_dataset_changed_between_steps_is_noticed(tiny_image_folder, tmp_path, warm):
    data = tmp_path / "data"
    shutil.copytree(tiny_image_folder, data)
    _step(data, 1, tmp_path / "ck")
    img = sorted(p for p in data.rglob("*.png"))[0]
    img.write_bytes(sorted(p for p in data.rglob("*.png"))[1].read_bytes())  # another image's pixels
    second = _step(data, 2, tmp_path / "ck")  # trained on the version it had opened, checked beside
    assert any("changed while this step ran" in w for w in second["warnings"]), second["warnings"]
    third = _step(data, 3, tmp_path / "ck")  # opens the new version
    assert any("changed since this config's last checkpoint" in w for w in third["warnings"]), third["warnings"]
    fingerprints = [json.loads((tmp_path / "ck" / "epoch-0003.json").read_text())["data_fingerprint"]]
    assert fingerprints[0] == __import__("quicktune.data").data.open_dataset(str(data)).fingerprint


def test_a_threads_cpu_time_is_read_while_it_runs():
    import threading
    import time

    from quicktune.finetune.threadcpu import CpuThread, cpu_seconds

    go = threading.Event()

    def spin():
        end = time.thread_time() + 0.2
        while time.thread_time() < end:
            pass
        go.wait(10)

    t = CpuThread(target=spin, daemon=True)
    t.start()
    time.sleep(0.5)
    running = cpu_seconds([t, None])
    go.set()
    t.join()
    assert 0.15 <= running <= t.cpu_seconds() + 1e-6 and t.final_cpu is not None
