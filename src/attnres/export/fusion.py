"""Inference preparation: batch norms folded into the conv / linear before them, global
pooling as a plain mean, attention modules on their traceable reference ops."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from ..attention import iter_attention


class GlobalAvgPool(nn.Module):
    """Mean over H, W: `(B, C, H, W) -> (B, C, 1, 1)`; `AdaptiveAvgPool2d(1)` without the
    adaptive-pooling operator, so exporters emit a plain ReduceMean at any input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


@contextlib.contextmanager
def reference_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Switch the registered attention modules that have other implementations (their
    `impl`, and that of their sub-modules) to the plain eager ops, traceable by torch.fx,
    inside the block, and back afterwards."""
    saved = []
    for _, attention, spec in iter_attention(model):
        if set(spec.impls) == {"reference"}:
            continue
        for m in attention.modules():
            impl = getattr(m, "impl", None)
            if isinstance(impl, str) and impl != "reference":
                saved.append((m, impl))
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


__all__ = ["GlobalAvgPool", "find_bn_pairs", "fold_bn", "fuse", "prepare_for_inference",
           "reference_attention"]
