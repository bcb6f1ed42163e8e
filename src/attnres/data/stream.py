"""Batches decoded on the fly in `torch.utils.data.DataLoader` workers, with the contract of
`BatchLoader`: iterating yields `(x, y)`, x float32 normalised `(B, 3, S, S)`, y int64 `(B,)`;
`len()` is the number of batches; `set_epoch(epoch, start_batch)` fixes the next iteration.

Every random choice is a pure function of the seed: the order of (seed, epoch) (the same
permutation as `BatchLoader`, so both paths visit images in the same order), each image's
augmentation of (seed, epoch, image index). Batches are therefore the same for any number of
workers, and a resumed epoch (`start_batch=k`) yields exactly the batches k, k+1, ... of the
uninterrupted one. Workers return uint8 crops; normalisation runs once per batch, on `device`.

Transforms (torchvision.transforms.v2 on the full-resolution decoded image):
- "imagenet" training: RandomResizedCrop(S) + RandomHorizontalFlip; validation: Resize to
  round(S / 0.875) (256 for 224, torchvision's reference) + CenterCrop(S).
- "small" (<= 64 px): shorter side resized to S and centre cropped (as the in-memory path
  stores it), then for training RandomCrop(S, padding=4) + RandomHorizontalFlip.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .decode import _fit, decode_full
from .loader import _derive_seed
from .records import Records

VAL_CROP_FRACTION = 0.875  # torchvision's reference: resize 256, centre crop 224
_SHUFFLE_TAG = 0x5EED  # the tag `BatchLoader` shuffles with: both paths share the order


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one image's augmentation, a pure function of (seed, epoch, index);
    a hash, since SeedSequence costs ~100 us, as much as decoding a small JPEG."""
    key = struct.pack("<3Q", *(int(v) & 0xFFFFFFFFFFFFFFFF for v in (seed, epoch, index)))
    digest = hashlib.blake2b(key, digest_size=8, person=b"attnres-augment").digest()
    return int.from_bytes(digest, "little") >> 1


class StreamTransform:
    """uint8 `(3, H, W)` -> uint8 `(3, S, S)` for one split (see the module docstring); random
    draws come from torch's global generator, which `StreamDataset` seeds per image."""

    def __init__(self, kind: str, image_size: int, train: bool, padding: int = 4) -> None:
        from torchvision.transforms import v2

        if kind not in ("small", "imagenet"):
            raise ValueError(f"kind {kind!r} is not one of: small, imagenet")
        self.kind, self.image_size, self.train = kind, image_size, train
        if kind == "imagenet":
            steps = ([v2.RandomResizedCrop(image_size, antialias=True),
                      v2.RandomHorizontalFlip()] if train else
                     [v2.Resize(round(image_size / VAL_CROP_FRACTION), antialias=True),
                      v2.CenterCrop(image_size)])
        else:
            steps = ([v2.RandomCrop(image_size, padding=padding), v2.RandomHorizontalFlip()]
                     if train else [])
        self.steps = v2.Compose(steps) if steps else None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.kind == "small":
            image = _fit(image, self.image_size)
        return self.steps(image) if self.steps is not None else image


class StreamDataset(Dataset):
    """Images of `records`, decoded and transformed: item `(epoch, index)` -> (uint8
    `(3, S, S)`, label). Training draws are seeded by (seed, epoch, index) and leave the
    calling process's random state untouched (so 0 workers changes nothing either)."""

    def __init__(self, records: Records, *, image_size: int, kind: str, train: bool,
                 seed: int = 0, padding: int = 4) -> None:
        self.records, self.train, self.seed = records, train, seed
        self.transform = StreamTransform(kind, image_size, train, padding)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        data = self.records.read(index)
        try:
            image = decode_full(data)
        except Exception as e:  # name the file: the trainer sees this from inside a worker
            first = str(e).splitlines()[0][:100] if str(e) else ""
            raise ValueError(f"{self.records.where(index)} could not be read as an image "
                             f"({type(e).__name__}: {first}); remove or replace it") from None
        if self.train:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed also seeds CUDA and is slow
                torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
                image = self.transform(image)
        else:
            image = self.transform(image)
        return image.contiguous(), int(self.records.labels[index])


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool, rank: int = 0,
                world_size: int = 1) -> torch.Tensor:
    """This rank's indices for one epoch, with `DistributedSampler` semantics: one shuffle of
    (seed, epoch) for all ranks; when shuffled, padded by wrapping around to a multiple of
    world_size so every rank gets as many; then every world_size-th index from `rank`."""
    if shuffle:
        gen = torch.Generator().manual_seed(_derive_seed(seed, epoch, _SHUFFLE_TAG))
        order = torch.randperm(n, generator=gen)
        total = math.ceil(n / world_size) * world_size
        if total > n:
            order = torch.cat([order, order.repeat(math.ceil(total / n))[: total - n]])
    else:
        order = torch.arange(n)
    return order[rank::world_size]


class EpochBatchSampler(Sampler):
    """Batches of `(epoch, index)` keys in `epoch_order`, skipping the first `start_batch`
    batches of the next iteration only (the skip costs nothing: no image is read)."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool | None = None) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r} must be a whole number >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_batch = 0, 0
        n_local = self._num_local()
        self.drop_last = (shuffle and n_local >= batch_size) if drop_last is None else drop_last

    def _num_local(self) -> int:
        if self.shuffle:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def indices(self) -> torch.Tensor:
        return epoch_order(self.n, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
                           rank=self.rank, world_size=self.world_size)

    def __len__(self) -> int:
        n = self._num_local()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.indices().tolist()
        start, self.start_batch = self.start_batch, 0
        for b in range(start, len(self)):
            yield [(self.epoch, i) for i in order[b * self.batch_size:(b + 1) * self.batch_size]]


class StreamLoader:
    """Streaming twin of `BatchLoader`: same arguments where they mean the same, same batches
    (order, shapes, normalisation), plus the `DataLoader` worker options.

    `device`: where batches are normalised (uint8 crops are moved there first, from pinned
    memory when `pin_memory`, default on for CUDA). `persistent_workers` defaults to True
    with workers, so each epoch does not pay for starting them again.
    """

    def __init__(self, records: Records, *, batch_size: int, train: bool,
                 mean: Sequence[float], std: Sequence[float], kind: str, image_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None, padding: int = 4,
                 device: str | torch.device | None = None, num_workers: int = 0,
                 pin_memory: bool | None = None, persistent_workers: bool | None = None,
                 prefetch_factor: int | None = None) -> None:
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(f"num_workers {num_workers!r} must be a whole number >= 0")
        self.dataset = StreamDataset(records, image_size=image_size, kind=kind, train=train,
                                     seed=seed, padding=padding)
        self.sampler = EpochBatchSampler(len(records), batch_size, shuffle=train, seed=seed,
                                         rank=rank, world_size=world_size, drop_last=drop_last)
        self.batch_size, self.train, self.kind, self.image_size = batch_size, train, kind, \
            image_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last, self.num_workers = self.sampler.drop_last, num_workers
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        pin = self.device.type == "cuda" if pin_memory is None else pin_memory
        extra = {}
        if num_workers > 0:
            extra = dict(persistent_workers=True if persistent_workers is None
                         else persistent_workers, prefetch_factor=prefetch_factor)
        # the DataLoader draws its workers' base seed from this generator, not torch's global
        # one, so iterating never shifts the trainer's random state
        self.loader = DataLoader(self.dataset, batch_sampler=self.sampler,
                                 num_workers=num_workers, pin_memory=pin,
                                 generator=torch.Generator().manual_seed(seed), **extra)
        std_t = torch.tensor(std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1).to(self.device)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, 3, 1, 1).to(
            self.device)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Fix the shuffle + augmentation of the next iteration; optionally skip batches."""
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.sampler)

    def indices(self) -> torch.Tensor:
        """This rank's image indices for the current epoch, in batch order."""
        return self.sampler.indices()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        for images, labels in self.loader:
            x = images.to(self.device, non_blocking=non_blocking).float()
            yield (x.mul_(self._scale).add_(self._shift).contiguous(),
                   labels.to(self.device, non_blocking=non_blocking))


__all__ = ["EpochBatchSampler", "StreamDataset", "StreamLoader", "StreamTransform",
           "VAL_CROP_FRACTION", "decode_full", "epoch_order", "sample_seed"]
