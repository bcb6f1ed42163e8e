"""Deployment: batch-norm folding, ONNX, `torch.export` programs and int8 quantization.

    fuse(model)                    fold every batch norm into the conv / linear before it
    prepare_for_inference(model)   eval copy: BN folded, global pooling as a plain mean
    export_onnx(model, out)        ONNX file (dynamic batch, H, W), checked with onnxruntime
    export_pt2(model, out)         `torch.export` program (dynamic batch, H, W), `.pt2` file
    quantize_int8(model, batches)  post-training static int8 (FX graph mode, x86 backend)
    export_model(...)              any of the three from a model or a checkpoint (the CLI)

Every exporter checks its file against the PyTorch model it came from (max abs difference
of the logits on random inputs, also at a size other than the export size) and, given data,
the top-1 accuracy on the validation split. Files are written atomically.

int8: PyTorch 2.14 no longer ships the PT2E flow (`torch.ao.quantization.quantize_pt2e`
and `X86InductorQuantizer` moved to the separate `torchao` package, and their int8 kernels
only run through `torch.compile`). The FX graph-mode flow that torch 2.14 still ships
(`prepare_fx` / `convert_fx` with the "x86" backend: fbgemm + oneDNN int8 kernels) runs
quantized convolutions eagerly, so it is used here; the attention modules stay in fp32.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMATS = ("onnx", "pt2", "int8")
EXPORTERS = ("dynamo", "torchscript")
INT8_FORMAT = "attnres-int8-fx-v1"  # the `format` key of an int8 file


# ---------------------------------------------------------------------------------------
# Inference preparation: batch-norm folding, mean pooling
# ---------------------------------------------------------------------------------------

class GlobalAvgPool(nn.Module):
    """Mean over H, W: `(B, C, H, W) -> (B, C, 1, 1)`; `AdaptiveAvgPool2d(1)` without the
    adaptive-pooling operator, so exporters emit a plain ReduceMean at any input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


@contextlib.contextmanager
def reference_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Switch attention modules with an `impl` option to the plain eager ops (traceable by
    torch.fx) inside the block, and back afterwards."""
    saved = [(m, m.impl) for m in model.modules()
             if getattr(m, "impl", None) in ("fast", "triton")]
    for m, _ in saved:
        m.impl = "reference"
    try:
        yield model
    finally:
        for m, impl in saved:
            m.impl = impl


def fold_bn(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of `layer` (Conv1d/2d/3d or Linear) computing `bn(layer(x))` with the batch
    norm's running statistics: W' = W * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta,
    per output channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{type(bn).__name__} keeps no running statistics; it cannot be folded")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        fused = copy.deepcopy(layer)
        weight = layer.weight.double() * scale.view(-1, *([1] * (layer.weight.dim() - 1)))
        bias = shift if layer.bias is None else layer.bias.double() * scale + shift
        fused.weight = nn.Parameter(weight.to(layer.weight.dtype), layer.weight.requires_grad)
        fused.bias = nn.Parameter(bias.to(layer.weight.dtype), layer.weight.requires_grad)
    return fused


_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _LeafTracer(torch.fx.Tracer):
    """Keeps convs, linears and every batch norm (also subclasses such as SafeBatchNorm2d)
    as single graph nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (*_FOLDABLE, nn.modules.batchnorm._BatchNorm)):
            return True
        return super().is_leaf_module(m, qualname)


def _adds_trailing_dims(node: torch.fx.Node) -> bool:
    """True for `t[:, :, None, None]`-style indexing: keeps dims 0, 1 and only appends
    singleton dims (BAM's channel branch between its Linear and its batch norm)."""
    if node.op != "call_function" or getattr(node.target, "__name__", "") != "getitem":
        return False
    index = node.args[1]
    full = slice(None, None, None)
    return (isinstance(index, tuple) and len(index) >= 2 and index[0] == full
            and index[1] == full and all(i is None for i in index[2:]))


def find_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, batch-norm name) pairs where the batch norm reads only the output of a
    conv or linear layer that nothing else reads, found by tracing `model` with torch.fx.

    A module that torch.fx cannot trace (data-dependent Python in its forward) is searched
    child by child instead; inside it only conv -> BN pairs adjacent in an nn.Sequential
    are taken (with a warning naming it).
    """
    return _pairs_in(model, "")


def _pairs_in(module: nn.Module, prefix: str) -> list[tuple[str, str]]:
    try:
        with reference_attention(module):
            graph = _LeafTracer().trace(module)
    except Exception as e:
        warnings.warn(f"fuse: torch.fx cannot trace {prefix or type(module).__name__} "
                      f"({str(e).splitlines()[0][:120]}); searching its children", stacklevel=3)
        pairs = [(prefix + a, prefix + b) for a, b in _sequential_pairs(module, shallow=True)]
        for name, child in module.named_children():
            if next(child.children(), None) is not None:
                pairs += _pairs_in(child, f"{prefix}{name}.")
        return pairs
    modules = dict(module.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or calls[node.target] != 1:
            continue
        src = node.args[0]
        while isinstance(src, torch.fx.Node) and len(src.users) == 1 and _adds_trailing_dims(src):
            src = src.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and len(src.users) == 1 and calls[src.target] == 1):
            continue
        layer = modules[src.target]
        out_features = getattr(layer, "out_channels", getattr(layer, "out_features", None))
        if isinstance(layer, _FOLDABLE) and out_features == bn.num_features:
            pairs.append((prefix + src.target, prefix + node.target))
    return pairs


def _sequential_pairs(module: nn.Module, shallow: bool = False) -> list[tuple[str, str]]:
    """Adjacent (conv or linear, batch norm) children of `module` if it is an nn.Sequential
    (`shallow`), or of every nn.Sequential inside it."""
    found = [("", module)] if shallow else list(module.named_modules())
    pairs = []
    for name, m in found:
        if isinstance(m, nn.Sequential):
            children = list(m.named_children())
            for (a, first), (b, second) in zip(children, children[1:], strict=False):
                if (isinstance(first, _FOLDABLE)
                        and isinstance(second, nn.modules.batchnorm._BatchNorm)
                        and first.weight.shape[0] == second.num_features):
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + a, prefix + b))
    return pairs


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fuse(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold every batch norm into the conv or linear layer before it (stem, blocks,
    downsample, CBAM's spatial conv + BN, BAM's branches, SK / split-attention branches);
    the batch norms become `nn.Identity`. Returns the model in eval mode; outputs equal the
    eval-mode outputs of the original to float rounding. Input `(B, 3, H, W)` as before."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    modules = dict(model.named_modules())
    for layer_name, bn_name in find_bn_pairs(model):
        _set_submodule(model, layer_name, fold_bn(modules[layer_name], modules[bn_name]))
        _set_submodule(model, bn_name, nn.Identity())
    return model


def prepare_for_inference(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """An eval-mode copy for deployment: batch norms folded (`fuse`), global average pools
    `AdaptiveAvgPool2d(1)` replaced by a mean (ReduceMean in ONNX, valid at any size), and
    no gradients. `build_args` / `preprocessing` attributes are kept."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval().requires_grad_(False)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            _set_submodule(model, name, GlobalAvgPool())
    return fuse(model, inplace=True)


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------

def _atomic_target(out: str | Path) -> tuple[Path, str]:
    """(final path, temporary path in the same folder with the same suffix)."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"out={str(out)!r} is a folder; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix or ".tmp",
                               dir=out.parent)
    os.close(fd)
    return out, tmp


def _commit(tmp: str, out: Path) -> None:
    os.replace(tmp, out)


def _cleanup(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)


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


# ---------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------

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


def export_onnx(model: nn.Module, out: str | Path, *, image_size: int | None = None,
                opset: int | None = None, dynamic: bool = True, exporter: str = "dynamo",
                verify: bool = True) -> dict[str, Any]:
    """Write `model` (inputs `(B, 3, H, W)` normalised images, outputs `(B, K)` logits) as
    ONNX, with dynamic batch, H and W when `dynamic`.

    exporter: "dynamo" (torch.export-based, torch's default) or "torchscript" (the older
    tracer, deprecated in torch 2.9+ but still shipped). Both give ReduceMean / ReduceMax
    for the pooling. The model's `preprocessing` and `build_args` go into the file's
    metadata. With `verify` (and onnxruntime installed) the file is run on random inputs
    at the export size and at 1.5x it; the report holds the max abs difference.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r}: allowed {', '.join(EXPORTERS)}")
    import onnx

    size = _image_size(model, image_size)
    prepared = prepare_for_inference(model)
    example_size = _example_size(prepared, size) if exporter == "dynamo" and dynamic else size
    example = torch.randn(2, 3, example_size, example_size)
    out, tmp = _atomic_target(out)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*")
            if exporter == "dynamo":
                with _size_oblivious():
                    program = torch.onnx.export(
                        prepared, (example,), None, dynamo=True, input_names=["images"],
                        output_names=["logits"], dynamic_shapes=_dims(dynamic),
                        opset_version=opset, verbose=False)
                program.save(tmp)
            else:
                axes = ({"images": {0: "batch", 2: "height", 3: "width"},
                         "logits": {0: "batch"}} if dynamic else None)
                torch.onnx.export(prepared, (example,), tmp, dynamo=False,
                                  input_names=["images"], output_names=["logits"],
                                  dynamic_axes=axes, opset_version=opset)
        proto = onnx.load(tmp)
        for key, value in _metadata(model).items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        _commit(tmp, out)
    finally:
        _cleanup(tmp)
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


# ---------------------------------------------------------------------------------------
# torch.export
# ---------------------------------------------------------------------------------------

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
    out, tmp = _atomic_target(out)
    try:
        extra = {f"{k}.json": v for k, v in _metadata(model).items() if k != "producer"}
        torch.export.save(program, tmp, extra_files=extra)
        _commit(tmp, out)
    finally:
        _cleanup(tmp)
    report: dict[str, Any] = {
        "format": "pt2", "path": str(out), "dynamic": dynamic, "example_size": example_size,
        "size_bytes": out.stat().st_size,
        "input_ranges": {str(k): str(v) for k, v in program.range_constraints.items()}}
    if verify:
        loaded = torch.export.load(str(out)).module()
        report.update(_verify(loaded, model, size, dynamic))
    return report


# ---------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------

def _fp32_module_names(model: nn.Module) -> list[str]:
    """Names of the attention modules (gates and SK / split-attention convs), kept in fp32:
    sigmoid / softmax gates quantized to 8 bits lose most of their resolution."""
    from .attention import ATTENTION, SKConv, SplitAttnConv2d

    kinds = (*ATTENTION.values(), SKConv, SplitAttnConv2d)
    names = []
    for name, m in model.named_modules():
        if isinstance(m, kinds) and not any(name.startswith(p + ".") for p in names):
            names.append(name)
    return names


def _qconfig_mapping(backend: str, fp32_modules: list[str]) -> Any:
    from torch.ao.quantization import get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping(backend)
    for name in fp32_modules:
        mapping.set_module_name(name, None)
    return mapping


def _prepare_fx(model: nn.Module, backend: str, fp32_modules: list[str],
                example: torch.Tensor) -> nn.Module:
    from torch.ao.quantization.quantize_fx import prepare_fx

    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"backend={backend!r}: this torch supports "
                         f"{', '.join(torch.backends.quantized.supported_engines)}")
    torch.backends.quantized.engine = backend
    model = copy.deepcopy(model).eval()
    # torch.fx treats only torch.nn's own classes as leaves; in eval mode a BatchNorm2d
    # subclass (SafeBatchNorm2d) computes what BatchNorm2d does, so swap in the plain one.
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.BatchNorm2d) and type(m) is not nn.BatchNorm2d:
            plain = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine,
                                   m.track_running_stats)
            plain.load_state_dict(m.state_dict())
            _set_submodule(model, name, plain.eval())
    with warnings.catch_warnings(), reference_attention(model):
        warnings.simplefilter("ignore")  # FX quantization's deprecation notices
        return prepare_fx(model, _qconfig_mapping(backend, fp32_modules), (example,))


def _convert_fx(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared)


def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor] | torch.Tensor, *,
                  backend: str = "x86", keep_attention_fp32: bool = True) -> nn.Module:
    """Post-training static int8 quantization for CPU: per-channel int8 weights, per-tensor
    uint8 activations with ranges observed on the `calibration` batches `(B, 3, H, W)`
    (a few hundred training images are enough). Convs with their BN and ReLU are fused
    by the flow; attention modules stay in fp32 when `keep_attention_fp32`.

    Returns a torch.fx GraphModule mapping `(B, 3, H, W)` to `(B, K)` logits, carrying the
    model's `build_args` / `preprocessing` and `fp32_modules` (save it with `save_int8`).
    """
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    if not batches:
        raise ValueError("calibration: need at least one batch of images (B, 3, H, W)")
    fp32 = _fp32_module_names(model) if keep_attention_fp32 else []
    prepared = _prepare_fx(model, backend, fp32, batches[0])
    with torch.no_grad():
        for x in batches:
            prepared(x)
    quantized = _convert_fx(prepared)
    for key in ("build_args", "preprocessing"):
        if hasattr(model, key):
            setattr(quantized, key, copy.deepcopy(getattr(model, key)))
    quantized.fp32_modules, quantized.backend = fp32, backend
    return quantized


def save_int8(quantized: nn.Module, out: str | Path) -> Path:
    """Save a `quantize_int8` result as a plain-data checkpoint (weights_only loadable):
    build_args, backend, fp32 module names, preprocessing and the quantized state dict."""
    build_args = getattr(quantized, "build_args", None)
    if not build_args:
        raise ValueError("save_int8: the model has no build_args (make it with "
                         "attnres.build_model or attnres.load_model); the file is rebuilt "
                         "from them")
    obj = {"format": INT8_FORMAT, "build_args": build_args, "backend": quantized.backend,
           "fp32_modules": list(quantized.fp32_modules),
           "preprocessing": getattr(quantized, "preprocessing", {}),
           "state_dict": quantized.state_dict()}
    out, tmp = _atomic_target(out)
    try:
        torch.save(obj, tmp)
        _commit(tmp, out)
    finally:
        _cleanup(tmp)
    return out


def load_int8(path: str | Path) -> nn.Module:
    """Rebuild a model saved by `save_int8`: `(B, 3, H, W) -> (B, K)` int8 GraphModule."""
    from .models import build_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"int8 model {str(path)!r} not found")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != INT8_FORMAT:
        raise ValueError(f"{path}: not an attnres int8 file (format {INT8_FORMAT!r})")
    args = dict(obj["build_args"])
    args["pretrained"] = None
    model = build_model(args.pop("arch"), **args).eval()
    size = int(obj["preprocessing"].get("image_size") or 32)
    prepared = _prepare_fx(model, obj["backend"], obj["fp32_modules"],
                           torch.zeros(1, 3, size, size))
    with torch.no_grad():  # observers need one batch before convert; the state dict wins
        prepared(torch.zeros(1, 3, size, size))
    quantized = _convert_fx(prepared)
    quantized.load_state_dict(obj["state_dict"])
    quantized.build_args, quantized.preprocessing = obj["build_args"], obj["preprocessing"]
    quantized.fp32_modules, quantized.backend = obj["fp32_modules"], obj["backend"]
    return quantized


# ---------------------------------------------------------------------------------------
# Accuracy and latency on a data set
# ---------------------------------------------------------------------------------------

def _loader(data: Any, split: str, model: nn.Module, batch_size: int,
            limit: int | None = None, seed: int = 0) -> Any:
    """Normalised, un-augmented batches of `data.<split>` (optionally a seeded subset)."""
    from .data import BatchLoader

    subset = getattr(data, split)
    images, labels = subset.images, subset.labels
    if limit is not None and limit < len(labels):
        pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:limit]
        images, labels = images[pick], labels[pick]
    prep = getattr(model, "preprocessing", None) or {}
    return BatchLoader(images, labels, batch_size=batch_size, train=False,
                       mean=prep.get("mean") or data.mean, std=prep.get("std") or data.std,
                       kind=data.kind, image_size=prep.get("image_size") or data.image_size)


def _top1(run: Callable[[torch.Tensor], torch.Tensor], loader: Iterable) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((run(x).argmax(1) == y).sum())
            total += len(y)
    return correct / max(total, 1)


def compare_on_data(runners: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                    loader: Iterable, *, latency_batch: int = 1, repeats: int = 30
                    ) -> dict[str, dict[str, float]]:
    """Top-1 of each runner over `loader`, and latency: median ms per call on one batch of
    `latency_batch` images and images/s on a full loader batch, timed interleaved."""
    from .analysis.bench import time_interleaved

    results = {name: {"top1": _top1(run, loader)} for name, run in runners.items()}
    x_full = next(iter(loader))[0]
    x_one = x_full[:latency_batch].contiguous()
    with torch.no_grad():
        one = time_interleaved({n: (lambda r=r: r(x_one)) for n, r in runners.items()},
                               warmup=3, repeats=repeats)
        full = time_interleaved({n: (lambda r=r: r(x_full)) for n, r in runners.items()},
                                warmup=1, repeats=max(3, repeats // 5))
    for name in runners:
        results[name]["latency_ms"] = one[name] * 1e3
        results[name]["images_per_s"] = len(x_full) / full[name]
    return results


# ---------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------

def _load(model_or_checkpoint: nn.Module | str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model (eval mode) and the training config stored with it (or {})."""
    if isinstance(model_or_checkpoint, nn.Module):
        return model_or_checkpoint.eval(), {}
    from .checkpoint import load_model, read_checkpoint_config

    return load_model(model_or_checkpoint), read_checkpoint_config(model_or_checkpoint)


def _load_data(data: Any, config: dict[str, Any], model: nn.Module) -> Any:
    """ImageData from a spec string, with the checkpoint's own validation split when the
    spec is the data it was trained on (so validation images were never trained on)."""
    if data is None or not isinstance(data, (str, Path)):
        return data
    from .data import load_dataset

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
        from .attention import closest

        raise ValueError(f"unknown format {format!r}{closest(format, list(FORMATS))}; "
                         f"allowed: {', '.join(FORMATS)}")
    if format == "int8" and data is None:
        raise ValueError("format 'int8' needs data: calibration and validation images "
                         "(e.g. data='cifar10' or a folder / archive path)")
    model, config = _load(model_or_checkpoint)
    data = _load_data(data, config, model)
    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"pytorch-fp32": model}
    if data is not None:
        runners["pytorch-fp32-fused"] = prepare_for_inference(model)

    if format == "onnx":
        report = export_onnx(model, out, image_size=image_size, opset=opset, dynamic=dynamic,
                             exporter=exporter, verify=verify)
        if data is not None and (session := _maybe_session(Path(out))) is not None:
            runners["onnxruntime-fp32"] = lambda x: _run_onnx(session, x)
    elif format == "pt2":
        report = export_pt2(model, out, image_size=image_size, dynamic=dynamic, verify=verify)
        if data is not None:
            runners["torch.export"] = torch.export.load(str(out)).module()
    else:
        calib = _loader(data, "train", model, batch_size,
                        limit=calibration_images, seed=seed)
        quantized = quantize_int8(model, (x for x, _ in calib), backend=backend)
        path = save_int8(quantized, out)
        report = {"format": "int8", "path": str(path), "backend": backend,
                  "size_bytes": path.stat().st_size, "calibration_images":
                  min(calibration_images, len(data.train.labels)),
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
        report["threads"] = torch.get_num_threads()
        return _with_ratios(report)
    if data is not None:
        report["compare"] = compare_on_data(
            runners, _loader(data, "val", model, batch_size, limit=val_images, seed=seed))
        report["threads"] = torch.get_num_threads()
    return _with_ratios(report)


def _with_ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Latency of each runner relative to fp32 PyTorch (below 1 is faster)."""
    compare = report.get("compare")
    if compare and "pytorch-fp32" in compare:
        base = compare["pytorch-fp32"]["latency_ms"]
        for row in compare.values():
            row["latency_ratio"] = row["latency_ms"] / base if base > 0 else math.nan
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a few lines of text and, with data, a Markdown table."""
    lines = [f"wrote {report['path']} ({report['format']}, "
             f"{report['size_bytes'] / 1e6:.2f} MB)"]
    if "max_abs_diff" in report:
        shapes = ", ".join(f"{k}: {v:.2e}" for k, v in report["diff_by_shape"].items())
        lines.append(f"max abs diff vs PyTorch: {report['max_abs_diff']:.2e} ({shapes})")
    elif report.get("why"):
        lines.append(f"not verified: {report['why']}")
    if "ops" in report:
        lines.append(f"ONNX ops (opset {report['opset']}): {', '.join(report['ops'])}")
    if "compare" in report:
        lines.append(f"validation split, CPU, {report['threads']} thread(s):")
        lines.append("| runtime | top-1 (%) | latency, batch 1 (ms) | vs fp32 | images/s |")
        lines.append("|---|---:|---:|---:|---:|")
        for name, row in report["compare"].items():
            lines.append(f"| {name} | {100 * row['top1']:.2f} | {row['latency_ms']:.2f} | "
                         f"{row['latency_ratio']:.2f}x | {row['images_per_s']:.0f} |")
    return "\n".join(lines)


__all__ = ["EXPORTERS", "FORMATS", "GlobalAvgPool", "compare_on_data", "export_model",
           "export_onnx", "export_pt2", "find_bn_pairs", "fold_bn", "format_report", "fuse",
           "load_int8", "onnx_op_types", "prepare_for_inference", "quantize_int8",
           "save_int8"]
