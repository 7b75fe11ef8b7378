"""Batches for training and evaluation, with a data order that is a pure function of
``(seed, epoch)`` so that a resumed run sees exactly the batches a straight run would.

Images are decoded and resized once per step (once per process in a warm worker,
``quicktune.finetune.warm_cache``) and kept in memory (the datasets of a finetuning
step are small: thousands of images at 32-128 px). Without augmentation the normalized tensors
are precomputed too, so a training batch is a single indexing operation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from quicktune.finetune import warm_cache
from quicktune.finetune.transforms import normalize, resize_rgb, to_tensor, to_uint8

__all__ = ["epoch_seed", "ImageSet", "train_batches", "eval_batches"]


def epoch_seed(seed: int, epoch: int, purpose: str = "epoch") -> int:
    """A 63-bit seed derived from (seed, epoch, purpose); stable across processes and machines."""
    digest = hashlib.sha256(f"quicktune/{purpose}/{int(seed)}/{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ImageSet(torch.utils.data.Dataset):
    """The images of one split, resized once; ``policy`` (train only) runs per sample."""

    def __init__(
        self,
        dataset: Any,
        indices: Sequence[int],
        image_size: int,
        in_chans: int,
        mean: Sequence[float],
        std: Sequence[float],
        policy: Callable[[Image.Image], Image.Image] | None = None,
    ):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(dataset.labels)[self.indices], dtype=torch.long)
        self.in_chans, self.mean, self.std, self.policy = in_chans, tuple(mean), tuple(std), policy
        self.image_size = int(image_size)
        # Without a random policy every epoch sees the same pixels: keep them as one uint8 tensor
        # (a quarter of float32's memory) and normalize per batch. A long-lived step process keeps
        # both forms between steps (quicktune.finetune.warm_cache; a no-op unless enabled).
        self.tensors: torch.Tensor | None = None
        self.images: list[Image.Image] = []
        if policy is None:
            self.tensors = warm_cache.uint8_images(
                dataset, self.indices, image_size, in_chans, lambda: self._stack(self._decode(dataset, image_size))
            )
        else:
            self.images = warm_cache.resized_images(
                dataset, self.indices, image_size, lambda: self._decode(dataset, image_size)
            )

    def _decode(self, dataset: Any, image_size: int) -> list[Image.Image]:
        return [resize_rgb(dataset.load_image(int(i)), image_size) for i in self.indices]

    def _stack(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            return torch.empty(0, self.in_chans, self.image_size, self.image_size, dtype=torch.uint8)
        return torch.stack([to_uint8(im, self.in_chans) for im in images])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tensors is not None:
            return normalize(self.tensors[k], self.mean, self.std), self.labels[k]
        return to_tensor(self.policy(self.images[k]), self.in_chans, self.mean, self.std), self.labels[k]

    def batch(self, ks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tensors is not None:
            return normalize(self.tensors[ks], self.mean, self.std), self.labels[ks]
        xs = [self[int(k)][0] for k in ks]
        return torch.stack(xs), self.labels[ks]

    def plain_batch(self, ks: torch.Tensor) -> torch.Tensor:
        """Unaugmented, normalized images (for co-tuning's relationship)."""
        if self.tensors is not None:
            return normalize(self.tensors[ks], self.mean, self.std)
        return torch.stack([to_tensor(self.images[int(k)], self.in_chans, self.mean, self.std) for k in ks])


def effective_batch_size(n: int, batch_size: int) -> int:
    """Batches are full (the last partial batch is dropped, as in timm's training loader); a
    training split smaller than one batch becomes one batch (of even size, for mixup)."""
    if n >= batch_size:
        return batch_size
    return max(2, n - (n % 2)) if n >= 2 else n


def train_order(n: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Generator]:
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, "order"))
    return torch.randperm(n, generator=gen), gen


def train_batches(
    data: ImageSet, batch_size: int, seed: int, epoch: int, num_workers: int = 0, pin_memory: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled full batches of the training split for ``epoch`` (1-based)."""
    n = len(data)
    bs = effective_batch_size(n, batch_size)
    order, _ = train_order(n, seed, epoch)
    batches = [order[i : i + bs] for i in range(0, n - bs + 1, bs)] if bs > 0 else []
    if num_workers <= 0 or data.tensors is not None:
        for ks in batches:
            yield data.batch(ks)
        return
    loader = torch.utils.data.DataLoader(
        data,
        batch_sampler=[b.tolist() for b in batches],
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, "workers")),
        persistent_workers=False,
    )
    yield from loader


def eval_batches(data: ImageSet, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(data)
    for i in range(0, n, batch_size):
        yield data.batch(torch.arange(i, min(n, i + batch_size)))
