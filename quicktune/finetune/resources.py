"""What a step may use of its machine: CPUs (torch threads, DataLoader workers) and ``/dev/shm``.

Why: in a Kubernetes pod ``os.cpu_count()`` is the *node's* core count (64 on a GPU node) while
the pod's CPU limit (a CFS quota in its cgroup) may be 4: sizing threads or workers from the
node oversubscribes the quota and the kernel throttles the pod. And a pod that sends no thread
count ran its CPU-side work on one thread, starving the GPU. So the step reads the quota the
process really has: cgroup v2 ``cpu.max``, else cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``,
else the CPUs the process may run on (``os.sched_getaffinity``), else ``os.cpu_count()``.

DataLoader workers hand their batches to the training process through shared memory
(``/dev/shm``; 64 MiB by default in a container): :func:`dataloader_shm_bytes` is what a pod must
give it for a config (``quicktune.backends.kubernetes`` sizes its ``emptyDir`` from it).
Everything here is pure (paths and numbers in, numbers out) so it is tested with fake cgroup files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "THREADS_ENV",
    "MAX_WORKERS",
    "PREFETCH_FACTOR",
    "cpu_limit",
    "default_threads",
    "default_workers",
    "dataloader_shm_bytes",
    "config_shm_bytes",
]

#: set by the local backend (its ``threads_per_worker``); wins over the quota when set
THREADS_ENV = "QUICKTUNE_NUM_THREADS"
#: never more DataLoader workers than this by default (the datasets are small, decoded in memory)
MAX_WORKERS = 4
#: torch's DataLoader default: batches each worker prepares ahead
PREFETCH_FACTOR = 2
#: shm beyond the batches in flight: pinned-memory and queue bookkeeping, torch's own segments
SHM_BASE_BYTES = 64 * 2**20
SHM_MARGIN = 0.5


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup CFS quota under ``root`` (None: no limit or no cgroup files)."""
    v2 = _read(root / "cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
    if v2 is not None:
        parts = v2.split()
        if len(parts) >= 1 and parts[0] != "max":
            try:
                quota, period = int(parts[0]), int(parts[1]) if len(parts) > 1 else 100_000
            except ValueError:
                return None
            if quota > 0 and period > 0:
                return quota / period
        return None
    for base in (root / "cpu", root / "cpu,cpuacct", root):  # cgroup v1 layouts
        q, p = _read(base / "cpu.cfs_quota_us"), _read(base / "cpu.cfs_period_us")
        if q is None or p is None:
            continue
        try:
            quota, period = int(q), int(p)
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None  # -1 = no limit
    return None


def cpu_limit(cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup", affinity: int | None = None) -> int:
    """The CPUs this process really has, at least 1.

    The CFS quota (rounded up: a 1.5-CPU limit gives 2 threads, as the JVM and Go runtimes do),
    capped by the CPUs the process may run on (``affinity``, by default
    ``len(os.sched_getaffinity(0))``, else ``os.cpu_count()``)."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            affinity = os.cpu_count() or 1
    cpus = max(1, int(affinity))
    quota = _cgroup_quota(Path(cgroup_root))
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 1e-9)))
    return cpus


def default_threads(
    env: Mapping[str, str] | None = None,
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
    affinity: int | None = None,
) -> int:
    """torch's intra-op threads when ``--threads`` is not given: ``$QUICKTUNE_NUM_THREADS`` (the
    local backend's share of the machine), else ``$OMP_NUM_THREADS`` (an operator's explicit
    limit), else :func:`cpu_limit`. A malformed variable raises ValueError naming it."""
    env = os.environ if env is None else env
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        raw = env.get(name, "").strip()
        if raw:
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"${name}={raw!r} is not a whole number of threads") from None
            if value >= 1:
                return value
    return cpu_limit(cgroup_root, affinity)


def default_workers(cpus: int, device_type: str, augmented: bool) -> int:
    """DataLoader workers when ``--workers`` is not given.

    0 (batches built in the training process) on the CPU, where workers would compete with the
    training threads for the same cores, and whenever there is no per-sample augmentation (the
    images are then precomputed tensors: a batch is one indexing operation). On CUDA with
    augmentation: one worker per CPU of the limit, at most :data:`MAX_WORKERS`, none with 1 CPU."""
    if device_type != "cuda" or not augmented or cpus < 2:
        return 0
    return min(MAX_WORKERS, int(cpus))


def dataloader_shm_bytes(
    batch_size: int,
    image_size: int,
    workers: int,
    channels: int = 3,
    prefetch_factor: int = PREFETCH_FACTOR,
    margin: float = SHM_MARGIN,
    base: int = SHM_BASE_BYTES,
) -> int:
    """Bytes of ``/dev/shm`` the step's DataLoader needs: ``workers x prefetch_factor`` float32
    batches of ``batch_size x channels x image_size^2`` in flight, plus ``margin`` of that, plus
    ``base``. 0 workers: only ``base`` (no batch crosses processes). E.g. batch 128 at 384 px,
    4 workers: 1.69 GiB in flight, 2.6 GiB with the margin."""
    for name, value in (("batch_size", batch_size), ("image_size", image_size), ("channels", channels)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if int(workers) < 0 or int(prefetch_factor) < 1 or margin < 0:
        raise ValueError(
            f"workers >= 0, prefetch_factor >= 1 and margin >= 0 needed, got {workers}, {prefetch_factor}, {margin}"
        )
    in_flight = int(workers) * int(prefetch_factor) * int(batch_size) * int(channels) * int(image_size) ** 2 * 4
    return int(base + in_flight * (1.0 + margin))


def config_shm_bytes(config: Mapping[str, Any], image_size: int, workers: int, channels: int = 3) -> int:
    """:func:`dataloader_shm_bytes` for a search config (its ``batch_size``; no workers at all
    when it has no augmentation, see :func:`default_workers`). Bad knobs raise
    ``InvalidConfigError`` as the step would."""
    from quicktune.finetune.config import resolve_config

    cfg = resolve_config(config)
    augmented = cfg["data_augmentation"] != "none"
    return dataloader_shm_bytes(int(cfg["batch_size"]), image_size, workers if augmented else 0, channels=channels)
