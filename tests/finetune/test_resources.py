"""CPU limit (cgroup v2, v1, affinity), default threads and workers, and /dev/shm sizing.

The cgroup files are fakes written under ``tmp_path`` in the kernel's formats (``cpu.max`` is
``"QUOTA PERIOD"`` or ``"max PERIOD"``; v1 ``cpu.cfs_quota_us`` is -1 without a limit)."""

from __future__ import annotations

import os

import pytest

from quicktune.finetune.resources import (
    MAX_WORKERS,
    SHM_BASE_BYTES,
    config_shm_bytes,
    cpu_limit,
    dataloader_shm_bytes,
    default_threads,
    default_workers,
)


def _v2(tmp_path, text):
    (tmp_path / "cpu.max").write_text(text + "\n")
    return tmp_path


def _v1(tmp_path, quota, period, sub="cpu,cpuacct"):
    d = tmp_path / sub
    d.mkdir()
    (d / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (d / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


@pytest.mark.parametrize(
    "text, affinity, expected",
    [
        ("400000 100000", 64, 4),  # a 4-CPU pod on a 64-core node
        ("150000 100000", 64, 2),  # 1.5 CPUs: rounded up
        ("50000 100000", 64, 1),  # half a CPU: still one thread
        ("max 100000", 64, 64),  # no limit: the affinity
        ("800000 100000", 2, 2),  # a quota above the CPUs the process may use: the affinity wins
        ("200000", 16, 2),  # period omitted: the kernel's default 100 ms
    ],
)
def test_cgroup_v2_quota(tmp_path, text, affinity, expected):
    assert cpu_limit(_v2(tmp_path, text), affinity=affinity) == expected


@pytest.mark.parametrize("sub", ["cpu,cpuacct", "cpu"])
def test_cgroup_v1_quota(tmp_path, sub):
    assert cpu_limit(_v1(tmp_path, 300000, 100000, sub), affinity=32) == 3


def test_cgroup_v1_without_limit_and_no_cgroup_at_all(tmp_path):
    assert cpu_limit(_v1(tmp_path, -1, 100000), affinity=8) == 8
    assert cpu_limit(tmp_path / "nothing-here", affinity=6) == 6
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    assert cpu_limit(_v2(garbage, "x y"), affinity=5) == 5


def test_real_machine_limit_is_at_most_its_affinity():
    n = cpu_limit()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_default_threads_env_wins_over_the_quota(tmp_path):
    root = _v2(tmp_path, "400000 100000")
    assert default_threads({}, root, affinity=64) == 4
    assert default_threads({"OMP_NUM_THREADS": "2"}, root, affinity=64) == 2
    assert default_threads({"QUICKTUNE_NUM_THREADS": "1", "OMP_NUM_THREADS": "3"}, root, affinity=64) == 1
    assert default_threads({"QUICKTUNE_NUM_THREADS": " "}, root, affinity=64) == 4
    with pytest.raises(ValueError, match="QUICKTUNE_NUM_THREADS"):
        default_threads({"QUICKTUNE_NUM_THREADS": "four"}, root, affinity=64)


def test_default_workers():
    assert default_workers(8, "cpu", True) == 0  # CPU: workers would compete with the training threads
    assert default_workers(8, "cuda", False) == 0  # no augmentation: precomputed tensors, no DataLoader
    assert default_workers(1, "cuda", True) == 0
    assert default_workers(3, "cuda", True) == 3
    assert default_workers(64, "cuda", True) == MAX_WORKERS


def test_shm_formula_and_the_issue_example():
    # workers x prefetch x batch x 3 x size^2 x 4 bytes, + 50 % margin, + 64 MiB
    assert dataloader_shm_bytes(2, 10, 1, prefetch_factor=1, margin=0.0, base=0) == 2 * 3 * 100 * 4
    assert dataloader_shm_bytes(128, 384, 0) == SHM_BASE_BYTES
    in_flight = 4 * 2 * 128 * 3 * 384 * 384 * 4  # issue 16: ~1.8 GB in flight at batch 128, 384 px
    assert in_flight == pytest.approx(1.8e9, rel=0.01)
    need = dataloader_shm_bytes(128, 384, 4)
    assert need == SHM_BASE_BYTES + int(in_flight * 1.5)
    assert need > 2**30  # the fixed 1 Gi of the manifests is too small for this config
    assert dataloader_shm_bytes(512, 384, 4, channels=1) > dataloader_shm_bytes(128, 384, 4, channels=1)
    for bad in ({"batch_size": 0}, {"image_size": -1}, {"workers": -1}, {"prefetch_factor": 0}):
        kw = {"batch_size": 8, "image_size": 32, "workers": 1, **bad}
        with pytest.raises(ValueError):
            dataloader_shm_bytes(**kw)


def test_config_shm_bytes():
    aug = {"model": "test_vit", "batch_size": 128, "data_augmentation": "trivial_augment"}
    assert config_shm_bytes(aug, 384, 4) == dataloader_shm_bytes(128, 384, 4)
    assert config_shm_bytes(dict(aug, data_augmentation="none"), 384, 4) == SHM_BASE_BYTES
    from quicktune.finetune.config import InvalidConfigError

    with pytest.raises(InvalidConfigError):
        config_shm_bytes(dict(aug, batch_size=-3), 384, 4)
