"""`torch.export` programs: dynamic batch, H and W, saved as one `.pt2` file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils import atomic_write
from .fusion import prepare_for_inference
from .tracing import (_dims, _example_size, _image_size, _metadata, _output_path,
                      _size_oblivious, _verify)


def export_pt2(model: nn.Module, out: str | Path, *, image_size: int | None = None,
               dynamic: bool = True, verify: bool = True) -> dict[str, Any]:
    """Write a `torch.export` program of the inference-prepared `model` with
    `torch.export.save` (load it with `torch.export.load(path).module()`). Dynamic batch,
    H and W when `dynamic`; `preprocessing.json` / `build_args.json` ride along as extra
    files. Inputs `(B, 3, H, W)`, outputs `(B, K)`."""
    size = _image_size(model, image_size)
    prepared = prepare_for_inference(model)
    example_size = _example_size(prepared, size) if dynamic else size
    example = torch.randn(2, 3, example_size, example_size)
    with _size_oblivious():
        program = torch.export.export(prepared, (example,), dynamic_shapes=_dims(dynamic),
                                      strict=False)
    out = _output_path(out)
    extra = {f"{k}.json": v for k, v in _metadata(model).items() if k != "producer"}
    atomic_write(out, lambda f: torch.export.save(program, f, extra_files=extra))
    report: dict[str, Any] = {
        "format": "pt2", "path": str(out), "dynamic": dynamic, "example_size": example_size,
        "size_bytes": out.stat().st_size,
        "input_ranges": {str(k): str(v) for k, v in program.range_constraints.items()}}
    if verify:
        loaded = torch.export.load(str(out)).module()
        report.update(_verify(loaded, model, size, dynamic))
    return report


__all__ = ["export_pt2"]
