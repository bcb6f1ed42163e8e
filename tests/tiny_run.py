"""The tiny training run many tests share: a slice of the real digits data (96 training,
64 validation images at 8x8, 3 steps per epoch of batch 32) saved to a file that a patched
`attnres.data.load_dataset` reads, so that subprocesses start without scikit-learn.

`tiny_dataset` is copied into subprocess scripts with `inspect.getsource`: it imports what
it needs itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import attnres.data
from attnres.training import TrainConfig, train

STEPS_PER_EPOCH = 3  # 96 training images, batch 32


def tiny_dataset(spec, **kwargs):
    """Stand-in for `attnres.data.load_dataset`: the ImageData saved in the file `spec`."""
    import torch

    import attnres.data

    saved = torch.load(spec, weights_only=True)
    return attnres.data.ImageData(
        train=attnres.data.ImageSet(saved["train_images"], saved["train_labels"]),
        val=attnres.data.ImageSet(saved["val_images"], saved["val_labels"]),
        classes=list(saved["classes"]), mean=tuple(saved["mean"]), std=tuple(saved["std"]),
        image_size=8, kind="small", name="tiny-digits")


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(arch="resnet20", attention="cbam", data=str(data), epochs=2, batch_size=32,
                  lr=0.05, warmup_epochs=0.5, seed=0, out=str(out), quiet=True,
                  tensorboard=False)
    values.update(overrides)
    return TrainConfig(**values)


def tiny_cli_args(data: Path, out: Path) -> list[str]:
    """The run of `tiny_config` through the CLI, for subprocesses."""
    return ["train", "--arch", "resnet20", "--attention", "cbam", "--data", str(data),
            "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--warmup-epochs", "0.5",
            "--seed", "0", "--out", str(out), "--quiet", "--no-tensorboard"]


def run_tiny(data: Path, out: Path, **overrides) -> dict:
    """`train(tiny_config(...))` with `load_dataset` reading the tiny data file."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attnres.data, "load_dataset", tiny_dataset)
        return train(tiny_config(data, out, **overrides))
