"""The CBAM and BAM authors' checkpoints (github.com/Jongchan/attention-module) in attnres.

The authors' ResNet + CBAM and the attnres model built by `cbam_authors_model(arch)` compute
the same function: CBAM sits in every block on the residual branch after the last BN and
before the add (attnres placement `block`), the shared MLP is Linear -> ReLU -> Linear with
biases, pooling is avg + max, the spatial gate is a 7x7 conv without bias followed by batch
norm, and the stem is torchvision's. Two layout differences are converted: their MLP is
`ChannelGate.mlp.1` / `mlp.3` (ours `channel_gate.fc1` / `fc2`), and their spatial pool stacks
[max, mean] where ours stacks [mean, max], so the conv's two input channels are swapped.
Their classifier pools with `AvgPool2d(7)`, which equals attnres' global average pool for
224 x 224 inputs (7 x 7 final maps), the size they trained and evaluated at; at other input
sizes their network is a different function. Their CIFAR variant (3x3 stem, four stages of
64..512 channels) has no attnres architecture and is refused with a message. Their
`train_imagenet.py` evaluates on `Scale(256)` (bilinear), `CenterCrop(224)`, normalised
with ImageNet's mean and std: `AUTHORS_PREPROCESSING`, set on models loaded from them.

The authors' BAM checkpoints (`RESNET50_IMAGENET_BAM_best.pth.tar`) load their backbone only:
their BAM multiplies the channel and spatial branches and keeps batch norm inside the MLP and
biases in the spatial convs, whereas attnres' BAM follows the paper (branches summed, batch
norm after the MLP and the spatial convs), so no BAM weight has a counterpart. Their BAM
modules (`bam1..3`, after stages 1..3) come back as `unexpected` in the report; build the
model with `bam_authors_model(arch)` and pass `identity_init_missing=True` to fine-tune
fresh, identity-initialised BAM modules on the authors' backbone.

Both layouts are registered with `load_pretrained` (`register_format`) when this module is
imported, which `import attnres.models` does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..utils import closest
from .build import build_model
from .info import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .pretrained import SourceFormat, register_format

# Depths that the authors' `ResidualNet` builds.
AUTHORS_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
# attnres CBAM options equal to the authors' CBAM.
AUTHORS_CBAM_KWARGS: dict[str, Any] = dict(reduction=16, pool_types=("avg", "max"),
                                            kernel_size=7, order="channel-first",
                                            mlp_bias=True, spatial_norm="batch")
AUTHORS_PREPROCESSING = Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=224,
                                      resize_size=256, interpolation="bilinear",
                                      source="weights")

_CBAM_KEY = re.compile(r"^(?P<block>.+)\.cbam\.(?P<gate>ChannelGate|SpatialGate)\.(?P<rest>.+)$")
_BAM_KEY = re.compile(r"^bam(?P<stage>[1-3])\.(channel_att|spatial_att)\.")
# The authors' names inside CBAM -> attnres names.
_CBAM_RENAMES = {
    ("ChannelGate", "mlp.1"): "channel_gate.fc1",
    ("ChannelGate", "mlp.3"): "channel_gate.fc2",
    ("SpatialGate", "spatial.conv"): "spatial_gate.conv",
    ("SpatialGate", "spatial.bn"): "spatial_gate.norm",
}


def convert_cbam_authors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' ResNet + CBAM state dict with attnres names and layouts.

    `layerS.I.cbam.ChannelGate.mlp.{1,3}` -> `layerS.I.attn.channel_gate.fc{1,2}`,
    `...SpatialGate.spatial.conv` -> `...attn.spatial_gate.conv` with its two input channels
    swapped ([max, mean] -> [mean, max]), `...SpatialGate.spatial.bn` ->
    `...attn.spatial_gate.norm`. Backbone keys are torchvision's already and stay.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _CBAM_KEY.match(key)
        if match is None:
            converted[key] = value
            continue
        module, _, param = match["rest"].rpartition(".")
        new_module = _CBAM_RENAMES.get((match["gate"], module))
        if new_module is None:
            raise ValueError(f"unrecognised key {key!r} in a CBAM authors' checkpoint; known "
                             f"modules: {', '.join(f'{g}.{m}' for g, m in _CBAM_RENAMES)}")
        if new_module == "spatial_gate.conv" and param == "weight":
            if value.ndim != 4 or value.shape[1] != 2:
                raise ValueError(f"{key!r} has shape {tuple(value.shape)}; expected (1, 2, k, k)")
            value = value[:, [1, 0]].clone()  # [max, mean] -> [mean, max]
        converted[f"{match['block']}.attn.{new_module}.{param}"] = value
    return converted


def _cifar_check(state: Mapping[str, torch.Tensor],
                 target: Mapping[str, torch.Tensor]) -> list[str]:
    have, want = state.get("conv1.weight"), target.get("conv1.weight")
    if have is not None and want is not None and have.shape[-1] == 3 and want.shape[-1] == 7:
        return ["this is the authors' CIFAR ResNet (3x3 stem, stages of 64..512 channels), "
                "which has no attnres architecture"]
    return []


CBAM_AUTHORS = register_format(SourceFormat(
    "cbam-authors", detect=lambda state: any(_CBAM_KEY.match(k) for k in state),
    convert=convert_cbam_authors, check=_cifar_check,
    hint="; build the model with cbam_authors_model()", preprocessing=AUTHORS_PREPROCESSING))
# The authors' BAM has no counterpart in attnres' (paper) BAM: set aside, reported.
BAM_AUTHORS = register_format(SourceFormat(
    "bam-authors", detect=lambda state: any(_BAM_KEY.match(k) for k in state),
    set_aside=lambda key: _BAM_KEY.match(key) is not None, preprocessing=AUTHORS_PREPROCESSING))


def _check_arch(who: str, arch: str) -> None:
    if arch not in AUTHORS_ARCHS:
        raise ValueError(f"the {who} authors' code builds {', '.join(AUTHORS_ARCHS)}, not "
                         f"{arch!r}{closest(arch, list(AUTHORS_ARCHS))}")


def cbam_authors_model(arch: str = "resnet50", num_classes: int = 1000,
                       pretrained: str | os.PathLike | None = None) -> nn.Module:
    """The attnres model equivalent to the CBAM authors' `ResidualNet("ImageNet", depth,
    num_classes, "CBAM")`: CBAM in every block (placement `block`) with `AUTHORS_CBAM_KWARGS`.

    `pretrained` (e.g. the path of `RESNET50_CBAM_new_name_wrap.pth`) is loaded with
    `load_pretrained`. Input `(B, 3, 224, 224)` reproduces their outputs, see the module doc.
    """
    _check_arch("CBAM", arch)
    return build_model(arch, attention="cbam", placement="block", num_classes=num_classes,
                       pretrained=pretrained, attention_kwargs=dict(AUTHORS_CBAM_KWARGS))


def bam_authors_model(arch: str = "resnet50", num_classes: int = 1000) -> nn.Module:
    """The attnres model with BAM where the BAM authors put it, after stages 1, 2 and 3
    (`stage_attn.layer1..3`). attnres' BAM follows the paper, so only the authors' backbone
    loads into it (see the module doc)."""
    _check_arch("BAM", arch)
    return build_model(arch, attention="bam", placement="stage", stages=[1, 2, 3],
                       num_classes=num_classes)


__all__ = ["AUTHORS_ARCHS", "AUTHORS_CBAM_KWARGS", "AUTHORS_PREPROCESSING", "BAM_AUTHORS",
           "CBAM_AUTHORS", "bam_authors_model", "cbam_authors_model", "convert_cbam_authors"]
