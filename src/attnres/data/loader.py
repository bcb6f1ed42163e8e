"""Batches for training and validation: `BatchLoader` and `make_loaders`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .augment import center_crop, pad_crop_flip, random_resized_crop_flip
from .datasets import ImageData


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the parts (distinct tuples, distinct seeds)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2)
    return (int(state[0]) << 31) ^ int(state[1])


class BatchLoader:
    """Batches `(x, y)` from uint8 images: x float32 normalised `(B, 3, S, S)`, y int64 `(B,)`.

    Training loaders shuffle and augment; the order and every random draw are a pure function
    of (seed, epoch, rank, batch index), so `set_epoch` + the same seed replays an epoch
    exactly (resume), and `set_epoch(epoch, start_batch=k)` skips to batch k without drawing.
    With `world_size > 1` each rank takes every world_size-th index of the shuffled order
    (training pads the order so all ranks get the same number of batches; validation does
    not pad, so each image is counted once when sums are reduced across ranks).
    `device`: where batches are built (e.g. "cuda" to augment on the GPU; images moved once).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 train: bool, mean: Sequence[float], std: Sequence[float], kind: str = "small",
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None, image_size: int | None = None,
                 padding: int = 4, device: str | torch.device | None = None) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r} must be a whole number >= 1")
        if kind not in ("small", "imagenet"):
            raise ValueError(f"kind {kind!r} is not one of: small, imagenet")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match "
                             f"{images.shape[0]} images")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(torch.int64).to(self.device)
        self.batch_size, self.train, self.kind = batch_size, train, kind
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.padding = padding
        stored = images.shape[-1]
        self.image_size = image_size or (stored if kind == "small" else round(stored * 7 / 8))
        # x_norm = x_uint8 * scale + shift, i.e. (x / 255 - mean) / std in one fused op
        std_t = torch.tensor(std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1).to(self.device)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, 3, 1, 1).to(
            self.device)
        self.epoch, self.start_batch = 0, 0
        n_local = self._num_local()
        self.drop_last = (train and n_local >= batch_size) if drop_last is None else drop_last

    def _num_local(self) -> int:
        n = self.labels.numel()
        if self.world_size == 1:
            return n
        if self.train:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Fix the shuffle + augmentation of the next iteration; optionally skip batches."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        n = self._num_local()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's image indices for the current epoch, in batch order."""
        n = self.labels.numel()
        if self.train:
            gen = torch.Generator().manual_seed(_derive_seed(self.seed, self.epoch, 0x5EED))
            order = torch.randperm(n, generator=gen)
            if self.world_size > 1:  # pad by wrapping so every rank gets the same count
                total = math.ceil(n / self.world_size) * self.world_size
                order = torch.cat([order, order[: total - n]]) if total > n else order
        else:
            order = torch.arange(n)
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices().to(self.device)
        start, self.start_batch = self.start_batch, 0  # a skip applies to one iteration only
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self._make_batch(idx, i)

    def _make_batch(self, idx: torch.Tensor, batch_index: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images[idx]
        if self.train:
            gen = torch.Generator().manual_seed(
                _derive_seed(self.seed, self.epoch, self.rank, batch_index))
            if self.kind == "small":
                x = pad_crop_flip(images, self.padding, gen).float()
            else:
                x = random_resized_crop_flip(images, self.image_size, gen)
        else:
            x = images if images.shape[-1] == self.image_size else center_crop(
                images, self.image_size)
            x = x.float()
        return x.mul_(self._scale).add_(self._shift).contiguous(), self.labels[idx]


def make_loaders(data: ImageData, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, device: str | torch.device | None = None,
                 val_batch_size: int | None = None) -> tuple[BatchLoader, BatchLoader]:
    """Training (shuffled, augmented) and validation loaders for `data`, sharded by rank."""
    common = dict(mean=data.mean, std=data.std, kind=data.kind, seed=seed, rank=rank,
                  world_size=world_size, image_size=data.image_size, device=device)
    train = BatchLoader(data.train.images, data.train.labels, batch_size=batch_size,
                        train=True, **common)
    val = BatchLoader(data.val.images, data.val.labels, batch_size=val_batch_size or batch_size,
                      train=False, **common)
    return train, val


__all__ = ["BatchLoader", "make_loaders"]
