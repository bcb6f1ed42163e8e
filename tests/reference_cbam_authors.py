"""A reference ResNet + CBAM with the module names of the CBAM authors' official code
(github.com/Jongchan/attention-module, MODELS/model_resnet.py and MODELS/cbam.py), written
from the paper's formulas (Woo et al., ECCV 2018):

    Mc(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))),            F'  = Mc(F) * F
    Ms(F) = sigmoid(BN(conv7x7([MaxPool_c(F); AvgPool_c(F)]))),    F'' = Ms(F') * F'

with the authors' choices: MLP = Flatten, Linear (bias), ReLU, Linear (bias) stored as
`ChannelGate.mlp`; the channel pool stacks [max, mean]; the spatial conv has no bias and is
followed by BN (`SpatialGate.spatial.conv` / `.bn`); CBAM sits in every block after the last
BN and before the residual add; the ImageNet head pools with AvgPool2d(7).

Only the tests use it: to make checkpoints in the authors' format and to compute the outputs
attnres must reproduce. `bam_state_dict` makes the key names and shapes of their BAM modules.
"""

from __future__ import annotations

import torch
from torch import nn


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.mlp = nn.Sequential(Flatten(), nn.Linear(channels, hidden), nn.ReLU(),
                                 nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        avg = nn.functional.avg_pool2d(x, (height, width))
        mx = nn.functional.max_pool2d(x, (height, width))
        weights = torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        return x * weights[:, :, None, None]


class ChannelPool(nn.Module):
    """(B, C, H, W) -> (B, 2, H, W): [max over C; mean over C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.max(dim=1).values, x.mean(dim=1)], dim=1)


class BasicConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SpatialGate(nn.Module):
    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.compress = ChannelPool()
        self.spatial = BasicConv(2, 1, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.spatial(self.compress(x)))


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)
        self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


def conv_bn(cin: int, cout: int, kernel_size: int,
            stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(cin, cout, kernel_size, stride, padding=kernel_size // 2, bias=False)
    return conv, nn.BatchNorm2d(cout)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, use_cbam: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3)
        self.downsample = (nn.Sequential(*conv_bn(cin, planes, 1, stride))
                           if stride != 1 or cin != planes else None)
        self.cbam = CBAM(planes) if use_cbam else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.cbam is not None:
            out = self.cbam(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, use_cbam: bool) -> None:
        super().__init__()
        cout = planes * 4
        self.conv1, self.bn1 = conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride)  # stride on the 3x3
        self.conv3, self.bn3 = conv_bn(planes, cout, 1)
        self.downsample = (nn.Sequential(*conv_bn(cin, cout, 1, stride))
                           if stride != 1 or cin != cout else None)
        self.cbam = CBAM(cout) if use_cbam else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.cbam is not None:
            out = self.cbam(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


DEPTHS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
          50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3])}


class AuthorsResNet(nn.Module):
    """The authors' ImageNet ResidualNet(depth, num_classes, "CBAM" or None)."""

    def __init__(self, depth: int = 50, num_classes: int = 1000, use_cbam: bool = True) -> None:
        super().__init__()
        block, counts = DEPTHS[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for index, (planes, count) in enumerate(zip([64, 128, 256, 512], counts), start=1):
            blocks = []
            for i in range(count):
                stride = 2 if i == 0 and index > 1 else 1
                blocks.append(block(cin, planes, stride, use_cbam))
                cin = planes * block.expansion
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AvgPool2d(7)
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The output of layer4: `(B, 3, H, W) -> (B, C, H / 32, W / 32)`."""
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(self.features(x)).flatten(1))


def uniform(width: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(width, generator=gen) * (high - low) + low


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, BN running statistics included, with scales that keep the
    activations of a deep random network of order one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                width = module.num_features
                module.weight.copy_(uniform(width, 0.5, 1.0, gen))
                module.bias.copy_(uniform(width, -0.5, 0.5, gen))
                module.running_mean.copy_(uniform(width, -0.5, 0.5, gen))
                module.running_var.copy_(uniform(width, 0.5, 1.5, gen))
                module.num_batches_tracked.fill_(1000)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                    * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.5)
    return model


def authors_checkpoint(model: nn.Module, epoch: int = 100) -> dict:
    """A checkpoint as the authors' train_imagenet.py saves it (DataParallel-wrapped keys)."""
    return {"epoch": epoch, "arch": "resnet",
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "best_prec1": torch.tensor(77.622)}


def bam_state_dict(channels: int, prefix: str, reduction: int = 16) -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of the authors' BAM module `prefix`
    (channel branch `channel_att.gate_c`, spatial branch `spatial_att.gate_s`)."""
    hidden = channels // reduction
    shapes: dict[str, tuple[int, ...]] = {
        "channel_att.gate_c.gate_c_fc_0.weight": (hidden, channels),
        "channel_att.gate_c.gate_c_fc_0.bias": (hidden,),
        "channel_att.gate_c.gate_c_fc_final.weight": (channels, hidden),
        "channel_att.gate_c.gate_c_fc_final.bias": (channels,),
        "spatial_att.gate_s.gate_s_conv_reduce0.weight": (hidden, channels, 1, 1),
        "spatial_att.gate_s.gate_s_conv_reduce0.bias": (hidden,),
        "spatial_att.gate_s.gate_s_conv_final.weight": (1, hidden, 1, 1),
        "spatial_att.gate_s.gate_s_conv_final.bias": (1,),
    }
    for i in range(2):
        shapes[f"spatial_att.gate_s.gate_s_conv_di_{i}.weight"] = (hidden, hidden, 3, 3)
        shapes[f"spatial_att.gate_s.gate_s_conv_di_{i}.bias"] = (hidden,)
    bns = {"channel_att.gate_c.gate_c_bn_1": hidden, "spatial_att.gate_s.gate_s_bn_reduce0": hidden,
           "spatial_att.gate_s.gate_s_bn_di_0": hidden, "spatial_att.gate_s.gate_s_bn_di_1": hidden}
    for name, width in bns.items():
        for param in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{param}"] = (width,)
    return {f"{prefix}.{k}": torch.randn(shape) for k, shape in shapes.items()}
