"""Where pretrained weights come from: files, checkpoint dicts, torchvision's weights API.

* `read_state_dict(path)`: a `.pth` / `.pt` / `.pth.tar` (read with
  `torch.load(weights_only=True)`) or `.safetensors` file holding a state dict, or a
  checkpoint dict holding one under `state_dict`, `model`, `model_state`, `net`, ...
  (DataParallel `module.` and `torch.compile` `_orig_mod.` prefixes are removed);
* `torchvision_weights(arch, name)`: a torchvision weights enum member ("IMAGENET1K_V2",
  "DEFAULT", "ResNet50_Weights.IMAGENET1K_V2"), its state dict fetched through torchvision
  and so cached where torchvision caches (`torch.hub.get_dir()/checkpoints/<file name from
  the weights URL>`), its preprocessing read from its `transforms()`.
"""

from __future__ import annotations

import os
import pickle
import urllib.error
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..utils import closest
from .info import Preprocessing, _preview

# Keys under which training scripts nest the model's state dict in a checkpoint.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net",
                   "weights", "params")
# Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def missing_weights_hint(path: str | os.PathLike) -> str:
    """Where to get a missing weights file whose name is the CBAM / BAM authors' (their
    release's names hold "CBAM" or "BAM"), as "; ..." to append to the message; else ""."""
    path = Path(path)
    if "bam" not in path.name.lower():
        return ""
    return (f"; the CBAM/BAM authors' checkpoints (e.g. RESNET50_CBAM_new_name_wrap.pth) are "
            f"linked from the README of https://github.com/Jongchan/attention-module: "
            f"download one and put it at {str(path.absolute())!r}, or pass the path where it "
            f"is (with --arch resnet50 --attention cbam --pretrained PATH)")


def read_state_dict(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The state dict in a `.safetensors` / `.pth` / `.pt` / `.pth.tar` file.

    Torch files are read with `weights_only=True` (a pickle that would run code is refused);
    a checkpoint dict is searched for the state dict it holds, and wrapper prefixes
    (`module.`, `_orig_mod.`) are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} not found"
                                f"{missing_weights_hint(path)}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        device = str(map_location) if map_location is not None else "cpu"
        try:
            return strip_wrapper_prefixes(load_file(str(path), device=device))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"cannot read {str(path)!r} as a safetensors file: "
                             f"{_first_line(e)}") from e
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise ValueError(f"cannot read {str(path)!r} as a torch file: {_first_line(e)}") from e
        # torch's message is long; its line naming the refused global is the useful one
        lines = [line.strip() for line in str(e).splitlines() if "global" in line.lower()]
        reason = (lines[0].split(" was not")[0] if lines
                  else "objects that weights_only=True does not allow")
        raise ValueError(f"refusing to load {str(path)!r}: it holds Python objects other than "
                         f"tensors and containers ({reason}); if you trust it, re-save just "
                         f"its state dict with torch.save") from e
    except (RuntimeError, EOFError, KeyError, ValueError) as e:
        raise ValueError(f"cannot read {str(path)!r} as a torch file (truncated, or not a "
                         f"checkpoint): {type(e).__name__}: {_first_line(e)}") from e
    return strip_wrapper_prefixes(find_state_dict(obj, str(path)))


def find_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: `obj` itself when it maps names to tensors,
    else the first of `CHECKPOINT_KEYS` holding one (searched recursively)."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
        for key in CHECKPOINT_KEYS:
            if key in obj:
                try:
                    return find_state_dict(obj[key], f"{where}[{key!r}]")
                except ValueError:
                    continue
    keys = f" (keys: {_preview([str(k) for k in obj])})" if isinstance(obj, Mapping) else ""
    raise ValueError(f"no state dict found in {where}{keys}; expected a dict of tensors or a "
                     f"checkpoint holding one under {', '.join(CHECKPOINT_KEYS)}")


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove `module.` (DataParallel, DDP) and `_orig_mod.` (torch.compile) prefixes that
    every key carries."""
    state = dict(state_dict)
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def torchvision_weights(arch: str | None, name: str) -> Any:
    """The torchvision weights enum member `name` ("IMAGENET1K_V2", "DEFAULT", or
    "ResNet50_Weights.IMAGENET1K_V2") for the torchvision architecture `arch`."""
    from torchvision.models import get_model_weights, get_weight

    if "_Weights." in name:
        try:
            return get_weight(name)
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"unknown torchvision weights {name!r}") from e
    if arch is None:
        raise ValueError(f"the model records no architecture (model_info.architecture); pass "
                         f"the full torchvision weights name, e.g. 'ResNet50_Weights.{name}', "
                         f"or a file path")
    try:
        enum = get_model_weights(arch)
    except ValueError as e:
        raise ValueError(f"torchvision has no weights for {arch!r}; pass a weights file "
                         f"instead") from e
    names = list(enum.__members__)
    if name not in names:
        raise ValueError(f"unknown weights {name!r} for {arch}{closest(name, names)}; "
                         f"allowed: {', '.join(names)}, or a file path")
    return enum[name]


def torchvision_state_dict(weights: Any, map_location: Any = "cpu",
                           progress: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of torchvision `weights`, from torch.hub's cache or downloaded into it.

    Offline, raises FileNotFoundError naming the file and the folder to put it in.
    """
    filename = os.path.basename(weights.url)
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        return weights.get_state_dict(progress=progress, map_location=map_location,
                                      weights_only=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise FileNotFoundError(
            f"cannot download {weights} ({e}); offline, put {filename} (from {weights.url}) "
            f"into {cache_dir}") from e



def default_weights(arch: str) -> str:
    """The full name of torchvision's DEFAULT weights for `arch` (what `pretrained=True`
    means, as in timm), e.g. "ResNet50_Weights.IMAGENET1K_V2"; ValueError when torchvision
    has none."""
    from torchvision.models import get_model_weights, list_models

    if arch not in list_models():
        raise ValueError(f"pretrained=True: torchvision has no default weights for {arch!r} "
                         f"(it has weights for its own architectures, e.g. resnet50); pass a "
                         f"weights file")
    weights = get_model_weights(arch).DEFAULT
    return f"{type(weights).__name__}.{weights.name}"


def weights_preprocessing(weights: Any, in_chans: int = 3, head: bool = True) -> Preprocessing:
    """The evaluation preprocessing of torchvision `weights`, read from `weights.transforms()`
    (resize, crop, interpolation, mean, std) and its meta (class names, when `head`: the
    classifier was loaded). Mean and std are unknown (None) for `in_chans != 3`."""
    transform = weights.transforms()
    crop, resize = transform.crop_size, transform.resize_size
    interpolation = getattr(transform.interpolation, "value", transform.interpolation)
    classes = weights.meta.get("categories") if head else None
    rgb = in_chans == 3
    return Preprocessing(
        mean=tuple(transform.mean) if rgb else None, std=tuple(transform.std) if rgb else None,
        image_size=int(crop[0] if isinstance(crop, (list, tuple)) else crop),
        resize_size=int(resize[0] if isinstance(resize, (list, tuple)) else resize),
        interpolation=str(interpolation), classes=tuple(classes) if classes else None,
        source="weights")


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first-conv weight `(O, 3, k, k)` for `in_chans` input channels, as timm adapts
    pretrained weights (`timm.models._manipulate.adapt_input_conv`): for 1 channel the sum
    over the RGB channels (a grey image x gives the response to (x, x, x)); otherwise the
    RGB weights repeated to `in_chans` channels and scaled by 3 / in_chans, so the response
    keeps its scale."""
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"cannot adapt a first conv of shape {tuple(weight.shape)}; "
                         f"expected (C_out, 3, k, k)")
    dtype, weight = weight.dtype, weight.float()
    if in_chans == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeats = -(-in_chans // 3)
        adapted = weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (3 / in_chans)
    return adapted.to(dtype)
