"""Where the stages, residual blocks, stem and head of a CNN are, and what it is.

`find_layout(model)` serves `add_attention`; `describe_model(model)` makes the `ModelInfo` of a
network attnres did not build (a torchvision ResNet is recognised as the attnres architecture
with the same modules, a timm model by its `pretrained_cfg`).

Blocks are recognised by their residual structure, not by a list of model families:

* torchvision's `BasicBlock` / `Bottleneck` (and attnres' subclasses): a residual branch
  ending in `bn2` / `bn3`, then the add;
* timm's ResNet blocks (`timm.models.resnet`, also in resnext*, seresnet*, resnet*d): an
  `se` slot that timm's own forward calls after the last norm, before the add;
* any other block with a `drop_path` module (timm's convention for stochastic depth, e.g.
  ConvNeXt, RegNet): its input is the residual branch just before the add.

Stages are timm's `feature_info` modules and children named `layerN`, `sN` or the items of
`stages` / `blocks`, keeping those holding blocks; the stem is the child before the first
stage, the head the global pool (`global_pool`, `avgpool`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from torch import nn
from torchvision.models import resnet as tv

from .info import ModelInfo, Preprocessing, get_model_info
from .resnet import ResNet, arch_name, default_preprocessing

BLOCK_KINDS = ("torchvision", "timm-resnet", "drop-path")
_STAGE_NAME = re.compile(r"^(layer\d+|s\d+|stages\.\d+|blocks\.\d+)$")
_HEAD_POOLS = ("global_pool", "avgpool")


@dataclass
class Layout:
    """Stage paths, with the `(path, kind)` of each stage's blocks (kind: `BLOCK_KINDS`);
    `stem`: the module whose output is the stem's ("stem", "maxpool", "bn1"); `head`: the
    pooling module whose input is the last stage's output. None: not found."""

    stages: list[str]
    blocks: list[list[tuple[str, str]]]
    stem: str | None = None
    head: str | None = None
    found: list[str] = field(default_factory=list)  # what was looked at, for messages


def block_kind(module: nn.Module) -> str | None:
    """One of `BLOCK_KINDS`, or None when `module` is not a recognised residual block."""
    if isinstance(module, (tv.BasicBlock, tv.Bottleneck)):
        return "torchvision"
    cls = type(module)
    if cls.__module__ == "timm.models.resnet" and cls.__name__ in ("BasicBlock", "Bottleneck"):
        return "timm-resnet"
    if isinstance(getattr(module, "drop_path", None), nn.Module):
        return "drop-path"
    return None


def _blocks_in(module: nn.Module, prefix: str) -> list[tuple[str, str]]:
    found = []
    for name, child in module.named_children():
        kind = block_kind(child)
        if kind is not None:
            found.append((f"{prefix}.{name}", kind))
        else:
            found.extend(_blocks_in(child, f"{prefix}.{name}"))
    return found


def _stage_candidates(model: nn.Module) -> list[str]:
    """timm's `feature_info` modules and children named like stages, in module order."""
    info = getattr(model, "feature_info", None)
    named = [f["module"] for f in info if isinstance(f, dict) and "module" in f] \
        if isinstance(info, list) else []
    return [n for n, _ in model.named_modules() if n and (n in named or _STAGE_NAME.match(n))]


def find_layout(model: nn.Module) -> Layout:
    """The layout of `model`; ValueError naming what was found when it has no stages of
    recognised blocks."""
    if isinstance(model, ResNet):
        return Layout(list(model.stage_names),
                      [[(f"{s}.{i}", "torchvision") for i in range(len(getattr(model, s)))]
                       for s in model.stage_names])
    stages, blocks, looked = [], [], []
    for path in _stage_candidates(model):
        if any(path.startswith(s + ".") for s in stages):
            continue  # inside a stage already found
        found = _blocks_in(model.get_submodule(path), path)
        looked.append(f"{path} ({len(found)} blocks)")
        if found:
            stages.append(path)
            blocks.append(found)
    children = [n for n, _ in model.named_children()]
    layout = Layout(stages, blocks, found=looked or [f"children {', '.join(children)}"])
    if not stages:
        raise ValueError(
            f"add_attention: cannot find the stages and residual blocks of "
            f"{type(model).__name__} (looked at {'; '.join(layout.found)}; blocks are "
            f"torchvision / timm ResNet blocks or modules with a drop_path); place attention "
            f"by module path with insert_attention(model, name, at=['PATH:before', "
            f"'PATH:after'])")
    # the stem: the child just before the one holding the first stage (stem, maxpool, bn1)
    top = children.index(stages[0].split(".")[0])
    layout.stem = children[top - 1] if top > 0 else None
    layout.head = next((n for n, _ in model.named_modules()
                        if n.rpartition(".")[2] in _HEAD_POOLS and n.count(".") <= 1), None)
    return layout


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def timm_preprocessing(cfg: dict, in_chans: int = 3) -> Preprocessing:
    """timm's `pretrained_cfg` as `Preprocessing`: its eval transform resizes to
    floor(size / crop_pct) and centre-crops `size` (timm.data.transforms_factory)."""
    size = (cfg.get("input_size") or (None, None, None))[-1]
    crop = cfg.get("crop_pct")
    return Preprocessing(
        mean=tuple(cfg["mean"]) if cfg.get("mean") and in_chans == 3 else None,
        std=tuple(cfg["std"]) if cfg.get("std") and in_chans == 3 else None,
        image_size=size, resize_size=math.floor(size / crop) if size and crop else None,
        interpolation=cfg.get("interpolation"), source="architecture")


def describe_model(model: nn.Module) -> ModelInfo:
    """A `ModelInfo` for a network attnres did not build (the attached one if any).

    A torchvision ResNet whose modules are those of an `ARCHS` architecture is described as
    that architecture (library "attnres": same keys and function); a timm model by its
    `pretrained_cfg` (timm does not keep `create_model`'s keyword arguments: set
    `info.build_kwargs` for one made with structural ones, e.g. `block_args`)."""
    info = get_model_info(model)
    if info is not None:
        return info
    conv = first_conv(model)
    in_chans = conv.in_channels if conv is not None else 3
    classes = getattr(model, "num_classes", None)
    if type(model) is tv.ResNet or isinstance(model, ResNet):
        arch = arch_name(model)
        return ModelInfo(architecture=arch, library="attnres" if arch else None,
                         num_classes=getattr(model.fc, "out_features", 0), in_chans=in_chans,
                         preprocessing=default_preprocessing(arch, in_chans))
    cfg = getattr(model, "pretrained_cfg", None)
    if type(model).__module__.startswith("timm.") and isinstance(cfg, dict):
        return ModelInfo(architecture=cfg.get("architecture"), library="timm",
                         num_classes=classes, in_chans=in_chans,
                         preprocessing=timm_preprocessing(cfg, in_chans))
    return ModelInfo(library=None, in_chans=in_chans,
                     num_classes=classes if isinstance(classes, int) else None)


def ensure_model_info(model: nn.Module) -> ModelInfo:
    """`model.model_info`, made with `describe_model` and attached when missing."""
    info = vars(model).get("model_info")
    if not isinstance(info, ModelInfo):
        info = describe_model(model)
        vars(model)["model_info"] = info
    return info
