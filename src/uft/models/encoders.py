"""Encoders: images ``(N, C, H, W)`` float in [0, 1] → features ``(N, feature_dim)``.

Every encoder normalises its own input (so callers never juggle per-model statistics) and exposes
``feature_dim``. Build one by name with :func:`build_encoder`: a registered name (``tiny``,
``resnet18``, …) or ``FAMILY:NAME`` for a family of library architectures registered with
:func:`register_family` (``timm:convnext_atto``, ``torchvision:resnet18``; :mod:`uft.models.library`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from uft.errors import UftError


class TinyConvNet(nn.Module):
    """Three conv-BN-ReLU blocks and global average pooling: CPU-sized (≈25k parameters at width 32)."""

    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) / 0.5)


EncoderFactory = Callable[..., nn.Module]
ENCODERS: dict[str, EncoderFactory] = {"tiny": TinyConvNet}
#: ``prefix`` → factory(arch name, in_channels=…, **kwargs): architectures named ``prefix:arch``.
FAMILIES: dict[str, EncoderFactory] = {}


def register_encoder(name: str, factory: EncoderFactory) -> None:
    ENCODERS[name] = factory


def register_family(prefix: str, factory: EncoderFactory) -> None:
    """Encoders named ``prefix:<arch>``; ``factory(arch, in_channels=…, **kwargs)`` builds one."""
    FAMILIES[prefix] = factory


def encoder_names() -> list[str]:
    _load_all()
    return sorted(ENCODERS)


def build_encoder(name: str, in_channels: int = 1, **kwargs) -> nn.Module:
    """Build an encoder by name; an unknown name lists the valid ones."""
    _load_all()
    prefix, sep, arch = name.partition(":")
    if sep and prefix in FAMILIES:
        return FAMILIES[prefix](arch, in_channels=in_channels, **kwargs)
    if name not in ENCODERS:
        families = "".join(f", {p}:<name>" for p in sorted(FAMILIES))
        raise UftError(f"unknown encoder {name!r}: choose one of {', '.join(sorted(ENCODERS))}{families}")
    return ENCODERS[name](in_channels=in_channels, **kwargs)


def _load_all() -> None:
    import importlib
    import pkgutil

    import uft.models as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "encoders":
            importlib.import_module(f"uft.models.{mod.name}")
