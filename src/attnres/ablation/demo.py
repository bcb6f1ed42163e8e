"""`attnres demo` (and `make demo`): a small real ablation in about a minute on two cores.

resnet20 without attention, with SE and with CBAM, trained on the embedded digits data
(scikit-learn's 1,797 handwritten digits, 8x8 originals) resized to 16x16 px, seed 0, then
the usual report (`ablate`). The images and the recipe were chosen to be fast and clearly
better than chance (10 classes, so 10%) on every row: 16 px keeps all the detail of the
8x8 originals at a quarter of the 32 px cost, and batches of 32 give four times the steps
of 128 for the same work.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .grid import Grid

DEMO_EPOCHS = 5
DEMO_IMAGE_SIZE = 16
DEMO_GRID = Grid(name="demo", configs=[{"name": "baseline", "attention": None},
                                       {"name": "se", "attention": "se"},
                                       {"name": "cbam", "attention": "cbam"}],
                 defaults={"arch": "resnet20", "data": "digits",
                           "image_size": DEMO_IMAGE_SIZE, "batch_size": 32, "lr": 0.05})


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` inside the block, restored after."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r}: must be a positive integer")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def demo(out: str | Path = "runs/demo", epochs: float | None = None,
         threads: int | None = None, log: Callable[[str], None] = print
         ) -> list[dict[str, Any]]:
    """Train and report resnet20 without attention, with SE and with CBAM on digits at
    `DEMO_IMAGE_SIZE` px, seed 0 (see `ablate`), with `threads` torch threads (default:
    torch's count, which in a fresh process is every core it may use; the report records
    it). Returns the report's rows."""
    from .costs import hardware
    from .run import ablate

    epochs = DEMO_EPOCHS if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not epochs > 0:
        raise ValueError(f"epochs={epochs!r}: must be a positive number")
    threads = torch.get_num_threads() if threads is None else threads
    start = time.perf_counter()
    with torch_threads(threads):
        log(f"demo: resnet20 baseline / SE / CBAM on digits at {DEMO_IMAGE_SIZE} px, "
            f"{epochs:g} epochs, seed 0; {hardware()['cpu']}, {threads} torch "
            f"thread{'' if threads == 1 else 's'}")
        rows = ablate(DEMO_GRID, out=out, seeds=[0], epochs=epochs, log=log)
    log(f"demo: done in {time.perf_counter() - start:.0f} s")
    return rows


__all__ = ["DEMO_EPOCHS", "DEMO_GRID", "DEMO_IMAGE_SIZE", "demo", "torch_threads"]
