"""ResNet-18/50 (He et al. 2016) with the small-image stem used for CIFAR-sized inputs.

Differences from the ImageNet ResNet, as in SimCLR's CIFAR experiments: the stem is a 3×3 conv with
stride 1 and there is no max-pool, so a 32×32 image reaches the last stage at 4×4. No torchvision:
it does not work in this environment, and the module names need not match any checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from uft.errors import UftError
from uft.models.encoders import register_encoder

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    """Two 3×3 convs; ``expansion = 1``."""

    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.relu(h + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carries the stride), 1×1 expand ×4; ``expansion = 4``."""

    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int = 1):
        super().__init__()
        out = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return self.relu(h + self.shortcut(x))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class ResNet(nn.Module):
    """Images ``(N, in_channels, H, W)`` in [0, 1] → features ``(N, 8·width·expansion)``.

    Args:
        block: :class:`BasicBlock` (ResNet-18) or :class:`Bottleneck` (ResNet-50).
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)``.
        in_channels: image channels.
        width: channels of the first stage (64 in the paper; smaller only for tests/toys).
        zero_init_residual: start every residual branch's last BN at γ = 0, so each block begins
            as the identity (Goyal et al. 2017); helps short finetuning runs from scratch.

    Inputs are standardised internally: ImageNet mean/std for 3 channels, mean 0.5 / std 0.5
    (i.e. to [-1, 1]) otherwise.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        in_channels: int = 3,
        width: int = 64,
        zero_init_residual: bool = True,
    ):
        super().__init__()
        if in_channels < 1 or width < 1:
            raise UftError(f"resnet in_channels={in_channels}, width={width}: both must be positive integers")
        mean, std = (_IMAGENET_MEAN, _IMAGENET_STD) if in_channels == 3 else ((0.5,) * in_channels, (0.5,) * in_channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_ch = width
        for i, n_blocks in enumerate(layers):
            ch = width * 2**i
            blocks = []
            for j in range(n_blocks):
                blocks.append(block(in_ch, ch, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = ch * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_ch

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)
                elif isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.mean.shape[1]:
            raise UftError(
                f"input with {x.shape[1]} channels to a resnet built for {self.mean.shape[1]}: "
                "build the encoder with the images' channel count"
            )
        h = self.stem((x - self.mean) / self.std)
        return self.pool(self.stages(h)).flatten(1)


def resnet18(in_channels: int = 3, width: int = 64, zero_init_residual: bool = True) -> ResNet:
    """ResNet-18, small-image stem; ``feature_dim`` 512 at the default width."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, width, zero_init_residual)


def resnet50(in_channels: int = 3, width: int = 64, zero_init_residual: bool = True) -> ResNet:
    """ResNet-50, small-image stem; ``feature_dim`` 2048 at the default width."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, width, zero_init_residual)


register_encoder("resnet18", resnet18)
register_encoder("resnet50", resnet50)
