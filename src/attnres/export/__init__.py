"""Deployment: batch-norm folding, ONNX, `torch.export` programs and int8 quantization.

    fuse(model)                    fold every batch norm into the conv / linear before it
    prepare_for_inference(model)   eval copy: BN folded, global pooling as a plain mean
    export_onnx(model, out)        ONNX file (dynamic batch, H, W), checked with onnxruntime
    export_pt2(model, out)         `torch.export` program (dynamic batch, H, W), `.pt2` file
    quantize_int8(model, batches)  post-training static int8 (FX graph mode, x86 backend)
    export_model(...)              any of the three from a model or a checkpoint (the CLI)

Every exporter checks its file against the PyTorch model it came from (max abs difference
of the logits on random inputs, also at a size other than the export size) and, given data,
the top-1 accuracy on the validation split. Files are written atomically
(`attnres.utils.atomic_write`). int8 keeps every registered attention module in fp32.

Modules: `fusion` (BN folding, inference preparation), `tracing` (what the exporters share),
`onnx`, `pt2`, `int8`, `compare` (accuracy and latency per runtime).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils import check_image_size, closest
from .compare import _loader, _with_ratios, compare_on_data, format_report
from .fusion import (GlobalAvgPool, find_bn_pairs, fold_bn, fuse, prepare_for_inference,
                     reference_attention)
from .int8 import INT8_FORMAT, load_int8, quantize_int8, save_int8
from .onnx import EXPORTERS, _maybe_session, _ort_session, _run_onnx, export_onnx, onnx_op_types
from .pt2 import export_pt2

FORMATS = ("onnx", "pt2", "int8")
Runner = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) -> (B, K) logits


def _load(model_or_checkpoint: nn.Module | str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model (eval mode) and the training config stored with it (or {})."""
    if isinstance(model_or_checkpoint, nn.Module):
        return model_or_checkpoint.eval(), {}
    from ..checkpoint import load_model, read_checkpoint_config

    return load_model(model_or_checkpoint), read_checkpoint_config(model_or_checkpoint)


def _load_data(data: Any, config: dict[str, Any], model: nn.Module) -> Any:
    """ImageData from a spec string, with the checkpoint's own validation split when the
    spec is the data it was trained on (so validation images were never trained on)."""
    if data is None or not isinstance(data, (str, Path)):
        return data
    from ..data import load_dataset

    spec = str(data)
    same = config.get("data") is not None and (
        spec == config["data"] or Path(spec).resolve() == Path(str(config["data"])).resolve())
    size = (getattr(model, "preprocessing", None) or {}).get("image_size")
    if same:
        return load_dataset(spec, val_split=config.get("val_split"),
                            seed=config.get("split_seed", 0),
                            image_size=config.get("image_size") or size,
                            cache_dir=config.get("cache_dir"))
    return load_dataset(spec, image_size=size)


def _export_int8(model: nn.Module, out: str | Path, data: Any, runners: dict[str, Runner], *,
                 image_size: int | None, exporter: str, calibration_images: int,
                 val_images: int | None, batch_size: int, backend: str,
                 seed: int) -> dict[str, Any]:
    """Calibrate on training images, save, and compare on the validation images against
    fp32 PyTorch and (when onnxruntime is installed) fp32 ONNX Runtime."""
    calib = _loader(data, "train", model, batch_size, limit=calibration_images, seed=seed)
    quantized = quantize_int8(model, (x for x, _ in calib), backend=backend)
    path = save_int8(quantized, out)
    report = {"format": "int8", "path": str(path), "backend": backend,
              "size_bytes": path.stat().st_size,
              "calibration_images": min(calibration_images, len(data.train.labels)),
              "fp32_modules": quantized.fp32_modules}
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(folder) / "model.onnx"
        with contextlib.suppress(ImportError):
            import onnxruntime  # noqa: F401  (optional extra)

            export_onnx(model, onnx_path, image_size=image_size, exporter=exporter,
                        verify=False)
            session = _ort_session(onnx_path)
            runners["onnxruntime-fp32"] = lambda x: _run_onnx(session, x)
        runners["pytorch-int8"] = quantized
        report["compare"] = compare_on_data(
            runners, _loader(data, "val", model, batch_size, limit=val_images, seed=seed))
    return report


def _check_counts(*, image_size: int | None, calibration_images: int, val_images: int | None,
                  batch_size: int) -> None:
    """One-line ValueErrors for the numeric options of `export_model`, before any work."""
    if image_size is not None:
        check_image_size(image_size)
    for name, value in (("calibration_images", calibration_images),
                        ("val_images", val_images), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"{name}={value!r}: must be a positive integer (images)")


def export_model(model_or_checkpoint: nn.Module | str | Path, format: str, out: str | Path, *,
                 data: Any = None, opset: int | None = None, dynamic: bool = True,
                 exporter: str = "dynamo", image_size: int | None = None,
                 calibration_images: int = 512, val_images: int | None = None,
                 batch_size: int = 100, backend: str = "x86", verify: bool = True,
                 seed: int = 0) -> dict[str, Any]:
    """Export a model (or a checkpoint / run folder made by `attnres train`) as `format`
    ("onnx", "pt2" or "int8") to `out`, and return a report: path, max abs difference
    against PyTorch on random inputs (onnx, pt2), and with `data` (a spec as for
    `attnres train`, or an ImageData) the top-1 and latency of fp32 PyTorch and the export
    on the validation split (`val_images` of it, all by default).

    int8 needs `data`: `calibration_images` training images set the activation ranges; the
    comparison then also includes ONNX Runtime (fp32) when onnxruntime is installed.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}{closest(format, list(FORMATS))}; "
                         f"allowed: {', '.join(FORMATS)}")
    _check_counts(image_size=image_size, calibration_images=calibration_images,
                  val_images=val_images, batch_size=batch_size)
    if format == "int8" and data is None:
        raise ValueError("format 'int8' needs data: calibration and validation images "
                         "(e.g. data='cifar10' or a folder / archive path)")
    model, config = _load(model_or_checkpoint)
    data = _load_data(data, config, model)
    runners: dict[str, Runner] = {"pytorch-fp32": model}
    if data is not None:
        runners["pytorch-fp32-fused"] = prepare_for_inference(model)

    if format == "int8":
        report = _export_int8(model, out, data, runners, image_size=image_size,
                              exporter=exporter, calibration_images=calibration_images,
                              val_images=val_images, batch_size=batch_size, backend=backend,
                              seed=seed)
        report["threads"] = torch.get_num_threads()
        return _with_ratios(report)
    if format == "onnx":
        report = export_onnx(model, out, image_size=image_size, opset=opset, dynamic=dynamic,
                             exporter=exporter, verify=verify)
        if data is not None and (session := _maybe_session(Path(out))) is not None:
            runners["onnxruntime-fp32"] = lambda x: _run_onnx(session, x)
    else:
        report = export_pt2(model, out, image_size=image_size, dynamic=dynamic, verify=verify)
        if data is not None:
            runners["torch.export"] = torch.export.load(str(out)).module()
    if data is not None:
        report["compare"] = compare_on_data(
            runners, _loader(data, "val", model, batch_size, limit=val_images, seed=seed))
        report["threads"] = torch.get_num_threads()
    return _with_ratios(report)


__all__ = ["EXPORTERS", "FORMATS", "INT8_FORMAT", "GlobalAvgPool", "compare_on_data",
           "export_model", "export_onnx", "export_pt2", "find_bn_pairs", "fold_bn",
           "format_report", "fuse", "load_int8", "onnx_op_types", "prepare_for_inference",
           "quantize_int8", "save_int8"]
