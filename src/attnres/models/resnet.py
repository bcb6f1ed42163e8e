"""ResNet-family networks with empty attention slots, built on torchvision's classes.

Module names equal torchvision's (`conv1`, `layer1.0.bn2`, `layer2.0.downsample.0`, `fc`),
so torchvision state dicts load. Attention goes into extra children that are
`nn.Identity()` until `attnres.models.placement` fills them (no parameters, no keys):

    conv1 bn1 relu maxpool -> stem_attn -> layer1 -> stage_attn.layer1 -> ... -> layerN
        -> stage_attn.layerN -> head_attn -> avgpool -> fc
    block: conv .. last norm -> attn -> (+ shortcut) -> relu -> attn_post

Architectures (`ARCHS`): torchvision's ImageNet ResNets, ResNeXts and wide ResNets; the
CIFAR ResNets of He et al. 2016 (sec. 4.2); SKNet-50 (Li et al. 2019) and ResNeSt-50
(Zhang et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv

from ..attention import SKConv, SplitAttnConv2d
from .info import IMAGENET_MEAN, IMAGENET_STD, InfoAttributes, Preprocessing

STEMS = ("imagenet", "cifar", "deep")
SHORTCUTS = ("conv", "pad", "avgpool")


class BasicBlock(tv.BasicBlock):
    """torchvision's two-3x3 block with attention slots: `(B, Cin, H, W) -> (B, C, H/s, W/s)`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.attn: nn.Module = nn.Identity()       # placement "block"
        self.attn_post: nn.Module = nn.Identity()  # placement "block-post"

    @property
    def out_channels(self) -> int:
        return self.bn2.num_features

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.attn(out)
        out = out + identity
        out = self.relu(out)
        return self.attn_post(out)


class Bottleneck(tv.Bottleneck):
    """torchvision's 1x1-3x3-1x1 block (stride on the 3x3, "ResNet v1.5") with attention
    slots: `(B, Cin, H, W) -> (B, 4 * planes, H/s, W/s)`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.attn: nn.Module = nn.Identity()
        self.attn_post: nn.Module = nn.Identity()

    @property
    def out_channels(self) -> int:
        return self.bn3.num_features

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.attn(out)
        out = out + identity
        out = self.relu(out)
        return self.attn_post(out)


class SKBottleneck(Bottleneck):
    """SKNet bottleneck: the grouped 3x3 conv is a Selective Kernel conv (M=2, G=groups,
    r=16, L=32). SKConv ends each branch in BN + ReLU, so `bn2` is empty."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        width, stride = self.conv2.in_channels, self.conv2.stride[0]
        self.conv2 = SKConv(width, width, stride, branches=2, groups=self.conv2.groups,
                            reduction=16, min_hidden=32)
        self.bn2 = nn.Identity()


class ResNeStBottleneck(Bottleneck):
    """ResNeSt bottleneck: conv2 is a radix-2 split-attention 3x3 conv at stride 1, then a
    3x3 average pool carries the stride ("avd"); split attention holds its own BN + ReLU."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        width, stride = self.conv2.in_channels, self.conv2.stride[0]
        self.conv2 = SplitAttnConv2d(width, width, 3, stride=1, radix=2,
                                     groups=self.conv2.groups)
        self.bn2 = nn.Identity()
        self.avd = nn.AvgPool2d(3, stride, padding=1) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.avd(self.conv2(out))
        out = self.bn3(self.conv3(out))
        out = self.attn(out)
        out = out + identity
        out = self.relu(out)
        return self.attn_post(out)


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut, parameter-free: subsample by `stride`, then append
    zero channels. `(B, Cin, H, W) -> (B, out_channels, H/s, W/s)`."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - x.shape[1]))


@dataclass(frozen=True)
class ArchSpec:
    """One row of the architecture table."""

    block: type[nn.Module]
    layers: tuple[int, ...]           # blocks per stage
    widths: tuple[int, ...]           # `planes` per stage (block output = planes * expansion)
    stem: str = "imagenet"            # one of STEMS
    groups: int = 1
    width_per_group: int = 64
    shortcut: str = "conv"            # one of SHORTCUTS
    num_classes: int = 1000           # default head size (10 for the CIFAR nets)
    paper: str = ""


_IMAGENET_WIDTHS = (64, 128, 256, 512)
_CIFAR_WIDTHS = (16, 32, 64)

ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(BasicBlock, (2, 2, 2, 2), _IMAGENET_WIDTHS, paper="He et al. 2016"),
    "resnet34": ArchSpec(BasicBlock, (3, 4, 6, 3), _IMAGENET_WIDTHS, paper="He et al. 2016"),
    "resnet50": ArchSpec(Bottleneck, (3, 4, 6, 3), _IMAGENET_WIDTHS, paper="He et al. 2016"),
    "resnet101": ArchSpec(Bottleneck, (3, 4, 23, 3), _IMAGENET_WIDTHS, paper="He et al. 2016"),
    "resnet152": ArchSpec(Bottleneck, (3, 8, 36, 3), _IMAGENET_WIDTHS, paper="He et al. 2016"),
    "resnext50_32x4d": ArchSpec(Bottleneck, (3, 4, 6, 3), _IMAGENET_WIDTHS, groups=32,
                                width_per_group=4, paper="Xie et al. 2017"),
    "resnext101_32x8d": ArchSpec(Bottleneck, (3, 4, 23, 3), _IMAGENET_WIDTHS, groups=32,
                                 width_per_group=8, paper="Xie et al. 2017"),
    "wide_resnet50_2": ArchSpec(Bottleneck, (3, 4, 6, 3), _IMAGENET_WIDTHS,
                                width_per_group=128, paper="Zagoruyko & Komodakis 2016"),
    # He et al. 2016 sec. 4.2: 6n+2 layers, n blocks per stage, option-A shortcuts
    **{f"resnet{6 * n + 2}": ArchSpec(BasicBlock, (n, n, n), _CIFAR_WIDTHS, stem="cifar",
                                      shortcut="pad", num_classes=10,
                                      paper="He et al. 2016, CIFAR")
       for n in (3, 5, 7, 9, 18)},
    # SKNet-50: ResNeXt-50 32x4d with every 3x3 conv a selective kernel conv
    "skresnet50": ArchSpec(SKBottleneck, (3, 4, 6, 3), _IMAGENET_WIDTHS, groups=32,
                           width_per_group=4, paper="Li et al. 2019"),
    # ResNeSt-50: deep stem, radix-2 split attention, average-pool shortcuts
    "resnest50": ArchSpec(ResNeStBottleneck, (3, 4, 6, 3), _IMAGENET_WIDTHS, stem="deep",
                          shortcut="avgpool", paper="Zhang et al. 2020"),
}


class ResNet(InfoAttributes, tv.ResNet):
    """A ResNet of any number of stages: `(B, in_chans, H, W) -> (B, num_classes)` logits
    (`num_classes=0`: no classifier, `(B, num_features)` pooled features, as in timm).

    Reuses torchvision's `_make_layer`; `stem` picks the input layers ("imagenet": 7x7/2
    conv + 3x3/2 max pool; "cifar": 3x3 conv, no pool; "deep": three 3x3 convs 32-32-64 +
    max pool), `shortcut` the projection of strided / widening blocks ("conv": 1x1 conv +
    BN; "pad": parameter-free subsample + zero channels; "avgpool": average pool, 1x1 conv,
    BN). Attention slots: `stem_attn`, `stage_attn[layerS]`, `head_attn`, and `attn` /
    `attn_post` in each block. `build_args`, `preprocessing`, ... read `model_info`
    (`attnres.models.info`).
    """

    def __init__(self, block: type[nn.Module], layers: Sequence[int], widths: Sequence[int],
                 *, stem: str = "imagenet", shortcut: str = "conv", num_classes: int = 1000,
                 groups: int = 1, width_per_group: int = 64, zero_init_residual: bool = False,
                 norm_layer: Callable[..., nn.Module] | None = None, in_chans: int = 3) -> None:
        nn.Module.__init__(self)  # torchvision's __init__ hard-codes four stages and the stem
        if stem not in STEMS:
            raise ValueError(f"stem={stem!r}; allowed: {', '.join(STEMS)}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r}; allowed: {', '.join(SHORTCUTS)}")
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers={list(layers)} and widths={list(widths)} must be "
                             "non-empty and of the same length")
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.groups, self.base_width, self.dilation = groups, width_per_group, 1
        self.shortcut = shortcut

        self.inplanes = 64 if stem != "cifar" else widths[0]
        if stem == "imagenet":
            self.conv1: nn.Module = nn.Conv2d(in_chans, self.inplanes, 7, 2, 3, bias=False)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(in_chans, self.inplanes, 3, 1, 1, bias=False)
        else:  # ResNeSt deep stem; its last conv is followed by bn1 / relu below
            self.conv1 = nn.Sequential(
                nn.Conv2d(in_chans, 32, 3, 2, 1, bias=False), self._norm_layer(32),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, 32, 3, 1, 1, bias=False), self._norm_layer(32), nn.ReLU(inplace=True),
                nn.Conv2d(32, self.inplanes, 3, 1, 1, bias=False))
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (nn.Identity() if stem == "cifar"
                                   else nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.stem_channels = self.inplanes
        self.stem_attn: nn.Module = nn.Identity()

        self.stage_names = [f"layer{i + 1}" for i in range(len(layers))]
        for i, (name, depth, planes) in enumerate(zip(self.stage_names, layers, widths)):
            setattr(self, name, self._make_layer(block, planes, depth, stride=1 if i == 0 else 2))
        self.stage_attn = nn.ModuleDict({name: nn.Identity() for name in self.stage_names})
        self.head_attn: nn.Module = nn.Identity()

        self.num_features = self.inplanes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc: nn.Module = (nn.Linear(self.num_features, num_classes) if num_classes
                              else nn.Identity())

        if self.bn1.weight.is_meta:  # shapes only (e.g. counting parameters): nothing to fill
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017)
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        inplanes = self.inplanes
        layer = super()._make_layer(block, planes, blocks, stride, dilate)
        first = layer[0]
        if first.downsample is not None and self.shortcut != "conv":
            out = planes * block.expansion
            if self.shortcut == "pad":
                first.downsample = PadShortcut(out, stride)
            else:  # "avgpool": pool first so the 1x1 conv sees every position (ResNeSt-D)
                pool = (nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                        if stride > 1 else nn.Identity())
                first.downsample = nn.Sequential(
                    pool, nn.Conv2d(inplanes, out, 1, bias=False), self._norm_layer(out))
        return layer

    @property
    def num_classes(self) -> int:
        """Logits per image; 0 when there is no classifier."""
        return self.fc.out_features if isinstance(self.fc, nn.Linear) else 0

    def stage(self, index: int) -> nn.Sequential:
        """Stage `index` (1-based), e.g. `stage(1) is model.layer1`."""
        return getattr(self, self.stage_names[index - 1])

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.stem_attn(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            x = self.stage_attn[name](x)
        x = self.head_attn(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet_from_spec(spec: ArchSpec, *, num_classes: int | None = None,
                     zero_init_residual: bool = False, **kwargs) -> ResNet:
    """A plain (attention-free) `ResNet` for one row of `ARCHS`."""
    return ResNet(spec.block, spec.layers, spec.widths, stem=spec.stem, shortcut=spec.shortcut,
                  num_classes=spec.num_classes if num_classes is None else num_classes,
                  groups=spec.groups, width_per_group=spec.width_per_group,
                  zero_init_residual=zero_init_residual, **kwargs)


def adopt_torchvision(model: nn.Module) -> ResNet:
    """Make a torchvision ResNet / ResNeXt / wide ResNet an attnres `ResNet` in place: its
    blocks become attnres' `BasicBlock` / `Bottleneck` (subclasses adding only the empty
    slots `attn` / `attn_post`) and the network gets `stem_attn`, `stage_attn`, `head_attn`.
    Parameters, keys and outputs are unchanged. An attnres `ResNet` is returned as it is."""
    if isinstance(model, ResNet):
        return model
    blocks = {tv.BasicBlock: BasicBlock, tv.Bottleneck: Bottleneck}
    stages = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    found = sorted({type(b).__name__ for s in stages if s is not None for b in s
                    if type(b) not in blocks})
    if type(model) is not tv.ResNet or found:
        raise ValueError(f"{type(model).__name__} is not a torchvision ResNet of its own "
                         f"BasicBlock / Bottleneck (found {', '.join(found) or 'a subclass'})")
    for stage in stages:
        for block in stage:
            block.__class__ = blocks[type(block)]
            block.attn, block.attn_post = nn.Identity(), nn.Identity()
    model.__class__ = ResNet
    model.shortcut, model.stage_names = "conv", [f"layer{i}" for i in range(1, 5)]
    model.stem_channels, model.num_features = model.bn1.num_features, model.inplanes
    model.stem_attn = nn.Identity()
    model.stage_attn = nn.ModuleDict({name: nn.Identity() for name in model.stage_names})
    model.head_attn = nn.Identity()
    return model


def arch_name(model: nn.Module) -> str | None:
    """The `ARCHS` name whose network `model` (an attnres `ResNet` or a torchvision one) is:
    same blocks, depths, widths, groups, stem, shortcuts and batch norms; else None."""
    norms = {type(m) for m in model.modules() if "Norm" in type(m).__name__}
    if norms != {nn.BatchNorm2d} or getattr(model, "dilation", 1) != 1:
        return None
    as_attnres = {tv.BasicBlock: BasicBlock, tv.Bottleneck: Bottleneck}
    stem = ("deep" if isinstance(model.conv1, nn.Sequential)
            else "imagenet" if model.conv1.kernel_size[0] == 7 else "cifar")
    stages = [getattr(model, n) for n in getattr(model, "stage_names", ["layer1", "layer2",
                                                                         "layer3", "layer4"])]
    types = {as_attnres.get(type(b), type(b)) for s in stages for b in s}
    widths = [(s[0].bn3 if hasattr(s[0], "bn3") else s[0].bn2).num_features for s in stages]
    for name, spec in ARCHS.items():
        if (tuple(len(s) for s in stages) == spec.layers and stem == spec.stem
                and types == {spec.block} and getattr(model, "shortcut", "conv") == spec.shortcut
                and (model.groups, model.base_width) == (spec.groups, spec.width_per_group)
                and widths == [w * spec.block.expansion for w in spec.widths]):
            return name
    return None


def default_preprocessing(arch: str | None, in_chans: int = 3) -> Preprocessing:
    """The data-independent preprocessing of architecture `arch`: ImageNet's statistics and
    torchvision's evaluation transform (resize 256, bilinear, centre crop 224) for the
    ImageNet nets; for the CIFAR nets only their 32 x 32 input (the statistics are the
    data's). Mean and std are unknown (None) for `in_chans != 3`. `source="architecture"`."""
    if arch not in ARCHS:
        return Preprocessing()
    if ARCHS[arch].stem == "cifar":
        return Preprocessing(image_size=32, source="architecture")
    rgb = in_chans == 3
    return Preprocessing(mean=IMAGENET_MEAN if rgb else None, std=IMAGENET_STD if rgb else None,
                         image_size=224, resize_size=256, interpolation="bilinear",
                         source="architecture")
