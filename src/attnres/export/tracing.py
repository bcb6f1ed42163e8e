"""What the exporters share: the output path, the export size and example input, dynamic
batch / H / W, size-oblivious tracing, the metadata a file carries, and the check of an
exported model against the PyTorch model it came from."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _output_path(out: str | Path) -> Path:
    """`out` as a Path, or a ValueError when it names a folder."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"out={str(out)!r} is a folder; give a file name")
    return out


def _image_size(model: nn.Module, image_size: int | None) -> int:
    if image_size is not None:
        if image_size < 1:
            raise ValueError(f"image_size={image_size!r}: must be a positive integer")
        return int(image_size)
    return int(getattr(model, "preprocessing", {}).get("image_size") or 32)


def _example_size(model: nn.Module, size: int) -> int:
    """`size`, doubled until the map entering the head's pooling is larger than 1x1.

    torch.export specialises on sizes that are 1 in the example: an ImageNet-shaped ResNet
    at 32x32 has 1x1 last maps, and the attention ops on them would pin H, W <= 32.
    """
    pool = getattr(model, "avgpool", None)
    if not isinstance(pool, nn.Module):
        return size
    seen: list[int] = []
    handle = pool.register_forward_hook(lambda m, args, out: seen.append(min(args[0].shape[2:])))
    try:
        with torch.no_grad():
            while size < 1024:
                seen.clear()
                model(torch.zeros(1, 3, size, size))
                if not seen or seen[0] > 1:
                    break
                size *= 2
    finally:
        handle.remove()
    return size


def _check_shapes(size: int, dynamic: bool) -> list[tuple[int, int, int, int]]:
    """Input shapes a file is checked on: the export shape and, when dynamic, another batch
    size at 1.5x the resolution (e.g. export at 32x32, run at 48x48)."""
    shapes = [(2, 3, size, size)]
    if dynamic:
        shapes.append((3, 3, size * 3 // 2, size * 3 // 2))
    return shapes


def _dims(dynamic: bool) -> tuple[dict[int, Any], ...] | None:
    """Dynamic batch, H and W. Dim.DYNAMIC rather than named ranges: torch.export cannot
    prove that a strided conv and a strided slice (the CIFAR nets' pad shortcut) give the
    same size for odd H, and would reject a named range."""
    if not dynamic:
        return None
    dim = torch.export.Dim.DYNAMIC
    return ({0: dim, 2: dim, 3: dim},)


@contextlib.contextmanager
def _size_oblivious() -> Iterator[None]:
    """Trace without specialising sizes that happen to be 1 (a ResNet-18 at 32x32 ends in
    1x1 maps, which would otherwise pin H, W <= 32 in the exported program)."""
    config = getattr(torch.fx.experimental, "_config", None)
    if config is None or not hasattr(config, "backed_size_oblivious"):
        yield
        return
    with config.patch(backed_size_oblivious=True):
        yield


def _reference_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x).float()


def _metadata(model: nn.Module) -> dict[str, str]:
    meta = {"producer": "attnres"}
    for key in ("preprocessing", "build_args"):
        value = getattr(model, key, None)
        if value:
            meta[key] = json.dumps(value)
    return meta


def _verify(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, size: int,
            dynamic: bool, seed: int = 0) -> dict[str, Any]:
    """Max abs difference of `run` against `model` on random inputs of each checked shape."""
    gen = torch.Generator().manual_seed(seed)
    diffs = {}
    for shape in _check_shapes(size, dynamic):
        x = torch.randn(shape, generator=gen)
        diffs["x".join(map(str, shape))] = float((run(x).float() - _reference_logits(model, x))
                                                 .abs().max())
    return {"verified": True, "max_abs_diff": max(diffs.values()), "diff_by_shape": diffs}
