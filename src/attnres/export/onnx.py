"""ONNX files (dynamo or TorchScript exporter), their operators, and ONNX Runtime sessions.

`import onnx` below is the onnx package, not this module: imports are absolute.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils import atomic_write
from .fusion import prepare_for_inference
from .tracing import (_dims, _example_size, _image_size, _metadata, _output_path,
                      _size_oblivious, _verify)

EXPORTERS = ("dynamo", "torchscript")
DYNAMIC_NAMES = ("batch", None, "height", "width")  # the input's dims, (B, 3, H, W)


def _ort_session(path: str | Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_op_types(path: str | Path) -> list[str]:
    """Sorted operator types in an ONNX file's main graph and its sub-graphs, as
    "domain::Op" for operators outside the standard domain."""
    import onnx

    found: set[str] = set()

    def visit(graph: Any) -> None:
        for node in graph.node:
            found.add(node.op_type if node.domain in ("", "ai.onnx")
                      else f"{node.domain}::{node.op_type}")
            for attr in node.attribute:
                if attr.g is not None and len(attr.g.node):
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    model = onnx.load(str(path))
    visit(model.graph)
    for function in model.functions:
        for node in function.node:
            found.add(node.op_type if node.domain in ("", "ai.onnx")
                      else f"{node.domain}::{node.op_type}")
    return sorted(found)


def name_dynamic_dims(proto: Any) -> None:
    """Rename the input's symbolic dims to batch / height / width everywhere in the graph.

    The dynamo exporter names them after torch.export's symbols (`s0`, `s53`, ...) and
    writes shapes as expressions of them (`((s0 - 1)//2) + 1`); every such symbol is
    replaced as a whole word, in the inputs, outputs and value_info alike."""
    graph = proto.graph
    renames: dict[str, str] = {}
    for dim, name in zip(graph.input[0].type.tensor_type.shape.dim, DYNAMIC_NAMES):
        if name is not None and dim.dim_param and dim.dim_param != name:
            renames[dim.dim_param] = name
    if not renames:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, renames)) + r")\b")
    for info in (*graph.input, *graph.output, *graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: renames[m.group(1)], dim.dim_param)


def _trace_onnx(prepared: nn.Module, example: torch.Tensor, path: Path, exporter: str,
                dynamic: bool, opset: int | None) -> None:
    """Export `prepared` on `example` `(B, 3, H, W)` to the file `path` with `exporter`."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        if exporter == "dynamo":
            with _size_oblivious():
                program = torch.onnx.export(
                    prepared, (example,), None, dynamo=True, input_names=["images"],
                    output_names=["logits"], dynamic_shapes=_dims(dynamic),
                    opset_version=opset, verbose=False)
            program.save(str(path))
        else:
            axes = ({"images": {0: "batch", 2: "height", 3: "width"},
                     "logits": {0: "batch"}} if dynamic else None)
            torch.onnx.export(prepared, (example,), str(path), dynamo=False,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes=axes, opset_version=opset)


def export_onnx(model: nn.Module, out: str | Path, *, image_size: int | None = None,
                opset: int | None = None, dynamic: bool = True, exporter: str = "dynamo",
                verify: bool = True) -> dict[str, Any]:
    """Write `model` (inputs `(B, 3, H, W)` normalised images, outputs `(B, K)` logits) as
    ONNX, with dynamic batch, H and W when `dynamic` (dims named batch, height, width).

    exporter: "dynamo" (torch.export-based, torch's default) or "torchscript" (the older
    tracer, deprecated in torch 2.9+ but still shipped). Both give ReduceMean / ReduceMax
    for the pooling. The model's `preprocessing` and `build_args` go into the file's
    metadata. With `verify` (and onnxruntime installed) the file is run on random inputs
    at the export size and at 1.5x it; the report holds the max abs difference.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r}: allowed {', '.join(EXPORTERS)}")
    import onnx

    out = _output_path(out)
    size = _image_size(model, image_size)
    prepared = prepare_for_inference(model)
    example_size = _example_size(prepared, size) if exporter == "dynamo" and dynamic else size
    example = torch.randn(2, 3, example_size, example_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the exporters write to a path: trace into a scratch folder next to `out`, add the
    # metadata, check, then write the one file atomically
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as scratch:
        traced = Path(scratch) / "model.onnx"
        _trace_onnx(prepared, example, traced, exporter, dynamic, opset)
        proto = onnx.load(str(traced))
    if dynamic:
        name_dynamic_dims(proto)
    for key, value in _metadata(model).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    atomic_write(out, proto.SerializeToString())  # what onnx.save writes for a .onnx file
    report: dict[str, Any] = {
        "format": "onnx", "path": str(out), "exporter": exporter, "dynamic": dynamic,
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                     default=None),
        "size_bytes": out.stat().st_size, "ops": onnx_op_types(out)}
    if verify:
        session = _maybe_session(out)
        if session is None:
            report.update(verified=False, why="onnxruntime is not installed")
        else:
            report.update(_verify(lambda x: _run_onnx(session, x), model, size, dynamic))
    return report


def _maybe_session(path: Path) -> Any:
    try:
        return _ort_session(path)
    except ImportError:
        return None


def _run_onnx(session: Any, x: torch.Tensor) -> torch.Tensor:
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


__all__ = ["DYNAMIC_NAMES", "EXPORTERS", "export_onnx", "name_dynamic_dims", "onnx_op_types"]
