"""What a long-lived step process keeps between steps: opened datasets, decoded images, and the
last config's training state.

Why: a warm worker (``quicktune.backends.kubernetes.worker``, ``quicktune step --worker``) runs
step after step in one process, and most of them continue the config it ran last for one more
epoch. A cold step pays, besides the epoch itself, the dataset's freshness check (an S3 listing),
decoding and resizing every image, building the model from the pretrained weights and loading
the checkpoint. Here the process keeps them instead:

- **datasets** (:func:`open_dataset`): the opened ``ImageDataset`` by (uri, cache folder, split
  seed). A reused one is re-checked beside the training, not before it: :class:`DatasetCheck`
  re-opens the dataset (the S3 listing and mirror sync a cold step does first) in a thread, and
  the step joins it before its first checkpoint; a dataset that changed meanwhile is reported as a
  warning (the step trained on the version its fingerprint names, which its checkpoint records)
  and replaced for the next step;
- **decoded images** (:func:`resized_images`, :func:`uint8_images`): the split's images decoded
  and resized (and, without augmentation, stacked as uint8) by the dataset fingerprint, split
  indices, image size and channels -- exactly what ``loader.ImageSet`` would compute, so a step
  sees the same pixels warm or cold. LRU, at most ``QUICKTUNE_WARM_CACHE_MB`` MiB (default
  :data:`DEFAULT_LIMIT_MB`) of pixel data; an entry larger than the limit is not kept;
- **training state** (:class:`TrainingMemory`): after a step trained a config to epoch e and its
  checkpoint was written, the step's parts (network, optimizer, scheduler, grad scaler,
  regularizers) stay in memory with the manifest bytes it wrote. The next step of that
  checkpoint folder continues from memory only when the folder's newest checkpoint is that very
  manifest (same epoch, byte for byte the same JSON, whose SHA-256 names the tensors): if another
  worker trained the config meanwhile, or the checkpoint is older or newer, the step restores
  from the checkpoint as a cold step does. The checkpoint decides, always. At most
  ``QUICKTUNE_WARM_STATES`` (default 1) states are kept, and a step of another config drops them
  before it builds its own (GPU memory is freed).

Off by default: :func:`enable` (the warm workers call it). A one-shot step process gains nothing
from keeping anything.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quicktune.finetune.threadcpu import CpuThread

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LIMIT_MB",
    "enable",
    "disable",
    "enabled",
    "clear",
    "stats",
    "open_dataset",
    "DatasetCheck",
    "resized_images",
    "uint8_images",
    "TrainingMemory",
    "remember_training",
    "take_training",
    "drop_training",
    "free_gpu",
]

DEFAULT_LIMIT_MB = 1024
LIMIT_ENV = "QUICKTUNE_WARM_CACHE_MB"
STATES_ENV = "QUICKTUNE_WARM_STATES"

_lock = threading.RLock()
_enabled = False
_limit_bytes = DEFAULT_LIMIT_MB * 2**20
_max_states = 1
_pixels: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()  # key -> (value, bytes), oldest first
_datasets: dict[Hashable, Any] = {}
_states: OrderedDict[str, TrainingMemory] = OrderedDict()
_counts = {"pixel_hits": 0, "pixel_misses": 0, "dataset_hits": 0, "state_hits": 0, "state_misses": 0}


def enable(limit_mb: float | None = None, max_states: int | None = None) -> None:
    """Keep datasets, decoded images and the last training state in this process from now on.
    ``limit_mb`` default ``$QUICKTUNE_WARM_CACHE_MB`` or :data:`DEFAULT_LIMIT_MB`; ``max_states``
    default ``$QUICKTUNE_WARM_STATES`` or 1."""
    global _enabled, _limit_bytes, _max_states
    if limit_mb is None:
        limit_mb = float(os.environ.get(LIMIT_ENV) or DEFAULT_LIMIT_MB)
    if max_states is None:
        max_states = int(os.environ.get(STATES_ENV) or 1)
    with _lock:
        _enabled = True
        _limit_bytes = max(0, int(float(limit_mb) * 2**20))
        _max_states = max(0, int(max_states))
        _trim_pixels()
        _trim_states(_max_states)


def disable() -> None:
    """Stop caching and drop everything kept."""
    global _enabled
    with _lock:
        _enabled = False
    clear()


def enabled() -> bool:
    return _enabled


def clear() -> None:
    with _lock:
        _pixels.clear()
        _datasets.clear()
        for k in _counts:
            _counts[k] = 0
    drop_training()


def stats() -> dict[str, Any]:
    """Counters and sizes (for logs and tests)."""
    with _lock:
        return {
            **_counts,
            "pixel_entries": len(_pixels),
            "pixel_bytes": sum(b for _, b in _pixels.values()),
            "limit_bytes": _limit_bytes,
            "datasets": len(_datasets),
            "states": list(_states),
        }


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
class DatasetCheck:
    """The freshness check of a reused dataset, running in a thread (module docstring)."""

    def __init__(self, key: Hashable, used: Any, opener: Callable[[], Any]):
        self.key, self.used, self._opener = key, used, opener
        self.fresh: Any = None
        self.error: BaseException | None = None
        self.thread = CpuThread(target=self._run, name="quicktune-dataset-check", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.fresh = self._opener()
        except BaseException as exc:  # noqa: BLE001 - reported by result()
            self.error = exc

    def result(self) -> str | None:
        """Wait for the check; a warning when the dataset changed (or could not be re-checked),
        else None. Either way the next step opens the data as it is now."""
        self.thread.join()
        with _lock:
            if self.error is not None:
                _datasets.pop(self.key, None)  # the next step opens it cold and sees the problem
                log.warning("could not re-check dataset %s: %s", self.used.uri, self.error)
                return None
            old, new = getattr(self.used, "fingerprint", None), getattr(self.fresh, "fingerprint", None)
            if old != new and _enabled:
                _datasets[self.key] = self.fresh  # unchanged: the used one stays (its meta-features loaded)
            if old != new:
                return (
                    f"{self.used.uri}: the dataset changed while this step ran (fingerprint {old} -> {new}); "
                    f"this step trained on {old}, the next one uses {new}"
                )
        return None


def open_dataset(uri: str, cache_dir: str | None, split_seed: int) -> tuple[Any, DatasetCheck | None]:
    """``quicktune.data.open_dataset``, or the dataset this process opened before together with
    the :class:`DatasetCheck` that re-opens it in the background."""
    from quicktune import data

    def opener() -> Any:
        return data.open_dataset(uri, cache_dir=cache_dir, split_seed=split_seed)

    if not _enabled:
        return opener(), None
    key = (str(uri), None if cache_dir is None else str(cache_dir), int(split_seed))
    with _lock:
        ds = _datasets.get(key)
        if ds is not None:
            _counts["dataset_hits"] += 1
    if ds is None:
        ds = opener()
        with _lock:
            if _enabled:
                _datasets[key] = ds
        return ds, None
    return ds, DatasetCheck(key, ds, opener)


# --------------------------------------------------------------------------------------------
# Decoded images
# --------------------------------------------------------------------------------------------
def _pixel_key(
    kind: str, dataset: Any, indices: np.ndarray, image_size: int, extra: Hashable = None
) -> Hashable | None:
    fp = getattr(dataset, "fingerprint", None)
    if fp is None:
        return None  # not an ImageDataset with a content fingerprint: never cached
    digest = hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()
    return (kind, fp, str(getattr(dataset, "root", "")), getattr(dataset, "mode", None), digest, int(image_size), extra)


def _get(key: Hashable | None) -> Any:
    if key is None or not _enabled:
        return None
    with _lock:
        hit = _pixels.get(key)
        if hit is None:
            _counts["pixel_misses"] += 1
            return None
        _pixels.move_to_end(key)
        _counts["pixel_hits"] += 1
        return hit[0]


def _put(key: Hashable | None, value: Any, nbytes: int) -> None:
    if key is None or not _enabled:
        return
    with _lock:
        if nbytes > _limit_bytes:
            return
        _pixels[key] = (value, int(nbytes))
        _pixels.move_to_end(key)
        _trim_pixels()


def _trim_pixels() -> None:
    total = sum(b for _, b in _pixels.values())
    while _pixels and total > _limit_bytes:
        _, (_, b) = _pixels.popitem(last=False)
        total -= b


def resized_images(dataset: Any, indices: np.ndarray, image_size: int, decode: Callable[[], list]) -> list:
    """``decode()`` (the split's images as resized PIL images), cached. The list and its images
    are shared between steps: callers must not modify them (augmentation policies return new
    images)."""
    key = _pixel_key("pil", dataset, indices, image_size)
    hit = _get(key)
    if hit is not None:
        return hit
    images = decode()
    _put(key, images, sum(im.width * im.height * len(im.getbands()) for im in images))
    return images


def uint8_images(dataset: Any, indices: np.ndarray, image_size: int, in_chans: int, make: Callable[[], Any]) -> Any:
    """``make()`` (the split's images as one uint8 tensor [N, C, H, W]), cached; shared between
    steps, so read-only for callers (batches index it, which copies)."""
    key = _pixel_key("uint8", dataset, indices, image_size, int(in_chans))
    hit = _get(key)
    if hit is not None:
        return hit
    tensors = make()
    _put(key, tensors, int(tensors.numel()) * int(tensors.element_size()))
    return tensors


# --------------------------------------------------------------------------------------------
# Training state
# --------------------------------------------------------------------------------------------
@dataclass
class TrainingMemory:
    """A config's training state after its last step, and the checkpoint that step wrote.

    ``signature``: everything the parts were built from (config, weights config, device, image
    size, seed, schedule length, precision, classes, channels); ``manifest_uri`` and
    ``manifest_bytes``: the checkpoint as written (the memory path requires the folder's newest
    manifest to be these very bytes); ``warnings``: what building the parts warned (a cold step
    repeats them; so does the memory path)."""

    checkpoint_dir: str
    epoch: int
    manifest_uri: str
    manifest_bytes: bytes
    signature: Mapping[str, Any]
    parts: Any  # build.TrainingParts
    rng: Any  # state.RngState: the RNG states the checkpoint recorded
    warnings: Sequence[str] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def remember_training(memory: TrainingMemory) -> None:
    """Keep ``memory`` (the newest state of its checkpoint folder); the oldest go beyond the limit."""
    if not _enabled or _max_states <= 0:
        return
    with _lock:
        _states.pop(memory.checkpoint_dir, None)
        _states[memory.checkpoint_dir] = memory
        _trim_states(_max_states)


def take_training(checkpoint_dir: str) -> TrainingMemory | None:
    """Remove and return the state kept for ``checkpoint_dir``, dropping every other one first
    (the step about to run needs the memory; it puts the state back after its checkpoint)."""
    if not _enabled:
        return None
    with _lock:
        memory = _states.pop(checkpoint_dir, None)
        _counts["state_hits" if memory is not None else "state_misses"] += 1
    drop_training()
    return memory


def drop_training() -> None:
    """Forget every kept training state and free the GPU memory it held."""
    with _lock:
        had = bool(_states)
        _states.clear()
    if had:
        free_gpu()


def _trim_states(limit: int) -> None:
    dropped = False
    while len(_states) > limit:
        _states.popitem(last=False)
        dropped = True
    if dropped:
        free_gpu()


def free_gpu() -> None:
    import gc
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()  # (host memory needs no collection pass: freed as the last reference goes)
        torch.cuda.empty_cache()
