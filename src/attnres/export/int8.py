"""Post-training static int8 quantization for CPU (torch.fx graph mode, x86 backend), with
the attention modules kept in fp32, and its plain-data file.

PyTorch 2.14 no longer ships the PT2E flow (`torch.ao.quantization.quantize_pt2e` and
`X86InductorQuantizer` moved to the separate `torchao` package, and their int8 kernels only
run through `torch.compile`). The FX graph-mode flow that torch 2.14 still ships
(`prepare_fx` / `convert_fx` with the "x86" backend: fbgemm + oneDNN int8 kernels) runs
quantized convolutions eagerly, so it is used here.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attention import iter_attention
from ..models import build_model
from ..utils import atomic_write
from .fusion import _set_submodule, reference_attention
from .tracing import _output_path

INT8_FORMAT = "attnres-int8-fx-v1"  # the `format` key of an int8 file


def _fp32_module_names(model: nn.Module) -> list[str]:
    """Paths of the attention modules, read from the registry (every registered kind: gates
    and SK / split-attention convs; outermost only), kept in fp32: sigmoid / softmax gates
    quantized to 8 bits lose most of their resolution."""
    return [path for path, _, _ in iter_attention(model)]


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
    return atomic_write(_output_path(out), lambda f: torch.save(obj, f))


def load_int8(path: str | Path) -> nn.Module:
    """Rebuild a model saved by `save_int8`: `(B, 3, H, W) -> (B, K)` int8 GraphModule."""
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


__all__ = ["INT8_FORMAT", "load_int8", "quantize_int8", "save_int8"]
