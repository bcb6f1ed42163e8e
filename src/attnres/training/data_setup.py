"""What a run reads and how (docs/SCALE.md): the in-memory path (`load_dataset` +
`make_loaders`) or streaming (`open_stream` + `make_stream_loaders`), this process's loaders,
and the data record that `config.json`, `summary.json` and every checkpoint keep.

The record is `{"loader": "memory" | "stream", "fingerprint": ..., "source", "n_train",
"n_val", "split_seed", ...}`. A resumed run must read its data the same way (both paths share
the image order but not the augmentation draws) and the same data: `check_resumed_data`
refuses a changed loader or fingerprint. Every process of a run must see the same data: the
fingerprints of all ranks are compared when the data is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import data as datasets
from .config import TrainConfig
from .distributed import Dist, all_reduce, min_over_ranks
from .limits import apply_subset
from .model_source import normalisation_arch
from .normalisation import with_normalisation


@dataclass
class RunData:
    """The data of one process: `data` (an `ImageData` or a `StreamData`), its loaders,
    the config with `loader` resolved to "memory" or "stream", and the record to keep."""

    data: Any
    train_loader: Any
    val_loader: Any
    config: TrainConfig
    record: dict[str, Any]
    preprocessing: dict[str, Any]


def _streamable(spec: str) -> bool:
    """Whether the streaming path can read `spec` at all: a folder or a tar archive (named
    data sets and other files are left to the in-memory path and its messages)."""
    if spec.lower() in datasets.NAMED_DATASETS:
        return False
    path = Path(spec).expanduser()
    return path.is_dir() or (path.is_file()
                             and path.name.lower().endswith(datasets.ARCHIVE_SUFFIXES))


def resolve_loader_kind(config: TrainConfig, ddp: Dist, device: torch.device) -> str:
    """"memory" or "stream" for `config` (`config.loader` "auto" decides by size against the
    RAM of this machine, see `attnres.data.choose_loader_kind`); the same on every rank."""
    if config.loader == "auto" and config.resume is not None:
        return "memory"  # only a checkpoint from before streaming keeps "auto": memory then
    if config.loader != "stream" and not _streamable(config.data):
        return "memory"
    if config.loader == "memory" and Path(config.data).expanduser().is_file():
        return "memory"  # an archive: no listing needed (only shard folders must stream)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    kind = datasets.choose_loader_kind(config.data, image_size=config.image_size,
                                       cache_dir=config.cache_dir, kind=config.loader,
                                       processes=processes)
    if config.loader == "auto":  # machines differ in RAM: stream when any rank would
        kind = "stream" if all_reduce([float(kind == "stream")], ddp, device)[0] else "memory"
    return kind


def memory_fingerprint(data: Any) -> str:
    """sha256 of an `ImageData`: its classes, and per split the shape, labels and pixels."""
    h = hashlib.sha256("\n".join(data.classes).encode())
    for part in (data.train, data.val):
        h.update(repr(tuple(part.images.shape)).encode())
        h.update(part.labels.to(torch.int64).contiguous().numpy().tobytes())
        h.update(memoryview(part.images.contiguous().numpy()).cast("B"))
    return h.hexdigest()


def _same_on_every_rank(fingerprint: str, ddp: Dist, device: torch.device) -> None:
    value = int(fingerprint[:12], 16)  # 48 bits: exact in the reductions
    if min_over_ranks(value, ddp, device) != -min_over_ranks(-value, ddp, device):
        raise ValueError(f"the processes read different data (rank {ddp.rank} has "
                         f"fingerprint {fingerprint[:12]}); every node must see the same "
                         f"data set")


def load_run_data(config: TrainConfig, ddp: Dist, device: torch.device) -> RunData:
    """Load the data of `config` by the resolved loader kind and make this process's
    training and validation loaders (batch `config.batch_size // world_size`)."""
    kind = resolve_loader_kind(config, ddp, device)
    config = dataclasses.replace(config, loader=kind)
    batch = config.batch_size // ddp.world_size
    use_cuda = device.type == "cuda"
    if kind == "stream":
        data = datasets.open_stream(config.data, val_split=config.val_split,
                                    seed=config.split_seed, image_size=config.image_size,
                                    cache_dir=config.cache_dir, mean=config.mean,
                                    std=config.std)
        if config.mean is None:  # pretrained weights' own statistics win over estimates
            data, preprocessing = with_normalisation(data, config.pretrained,
                                                     normalisation_arch(config))
        else:
            preprocessing = _given(data)
        train_loader, val_loader = datasets.make_stream_loaders(
            data, batch, seed=config.seed, rank=ddp.rank, world_size=ddp.world_size,
            device=device if use_cuda else None, num_workers=config.workers)
        record = {"loader": kind, **data.info}
    else:
        data = datasets.load_dataset(config.data, val_split=config.val_split,
                                     seed=config.split_seed, image_size=config.image_size,
                                     cache_dir=config.cache_dir)
        data = apply_subset(data, config.subset, config.split_seed)  # --subset N
        if config.mean is not None:
            data = dataclasses.replace(data, mean=tuple(config.mean), std=tuple(config.std))
            preprocessing = _given(data)
        else:
            data, preprocessing = with_normalisation(data, config.pretrained,
                                                     normalisation_arch(config))
        # on CUDA, batches are cut and augmented on the GPU when the images fit comfortably
        on_device = use_cuda and data.train.images.numel() + data.val.images.numel() < 2**31
        train_loader, val_loader = datasets.make_loaders(
            data, batch, seed=config.seed, rank=ddp.rank, world_size=ddp.world_size,
            device=device if on_device else None)
        record = {"loader": kind, **data.info, "fingerprint": memory_fingerprint(data),
                  "stats": "given" if config.mean is not None else "computed"}
    _same_on_every_rank(record["fingerprint"], ddp, device)
    return RunData(data, train_loader, val_loader, config, record, preprocessing)


def _given(data: Any) -> dict[str, Any]:
    """The stored preprocessing of a run whose mean/std were given (--mean/--std)."""
    return {"mean": list(data.mean), "std": list(data.std), "image_size": data.image_size,
            "classes": list(data.classes), "normalisation": "given (--mean/--std)"}


def check_resumed_data(record: dict[str, Any], ckpt: dict[str, Any]) -> None:
    """Refuse to continue `ckpt` on other data, or on data read another way, than it was
    trained on (a checkpoint without a data record is not checked)."""
    saved = ckpt.get("data") or {}
    if not saved:
        return
    if saved.get("loader") != record["loader"]:
        raise ValueError(f"the run read its data with the {saved.get('loader')} loader, this "
                         f"one would use {record['loader']}; resume with --data-loader "
                         f"{saved.get('loader')}")
    if saved.get("fingerprint") != record["fingerprint"]:
        raise ValueError(f"data {record.get('source')!r} changed since the run was saved "
                         f"(fingerprint {str(saved.get('fingerprint'))[:12]} in the "
                         f"checkpoint, {record['fingerprint'][:12]} now); start a new run "
                         f"with another --out")


__all__ = ["RunData", "check_resumed_data", "load_run_data", "memory_fingerprint",
           "resolve_loader_kind"]
