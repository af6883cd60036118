"""Batched SSL augmentations as tensor ops (no per-sample Python, runs on any device).

All randomness comes from an explicit ``torch.Generator`` so training resumes bit-identically.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field


class AugmentConfig(BaseModel):
    """Strengths of the view augmentations (defaults suit 16–32 px digits; flips are off since
    mirrored digits are different symbols)."""

    model_config = ConfigDict(extra="forbid")
    crop_scale_min: float = Field(0.5, gt=0, le=1, description="min area fraction of the random resized crop")
    max_rotation_deg: float = Field(15.0, ge=0, le=180)
    hflip: float = Field(0.0, ge=0, le=1, description="probability of a horizontal flip")
    brightness: float = Field(0.4, ge=0, le=1)
    contrast: float = Field(0.4, ge=0, le=1)
    blur_prob: float = Field(0.3, ge=0, le=1)
    noise_std: float = Field(0.05, ge=0, le=1)


def _rand(n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device="cpu").to(device)


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """One random view of each image. ``x``: ``(N, C, H, W)`` float in [0, 1] → same shape.

    Geometric part (resized crop, rotation, flip) is a single affine warp per image; photometric
    part is brightness/contrast jitter, Gaussian blur and noise.
    """
    n, _, h, w = x.shape
    dev = x.device
    scale = torch.sqrt(cfg.crop_scale_min + (1 - cfg.crop_scale_min) * _rand(n, g, dev))  # side fraction
    ratio = torch.exp((_rand(n, g, dev) - 0.5) * math.log(4 / 3) * 2)  # aspect ratio in [3/4, 4/3]
    sx, sy = scale * torch.sqrt(ratio), scale / torch.sqrt(ratio)
    sx, sy = sx.clamp(max=1.0), sy.clamp(max=1.0)
    tx = (2 * _rand(n, g, dev) - 1) * (1 - sx)
    ty = (2 * _rand(n, g, dev) - 1) * (1 - sy)
    ang = (2 * _rand(n, g, dev) - 1) * math.radians(cfg.max_rotation_deg)
    flip = torch.where(_rand(n, g, dev) < cfg.hflip, -1.0, 1.0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([
        torch.stack([sx * cos * flip, -sy * sin, tx], 1),
        torch.stack([sx * sin * flip, sy * cos, ty], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    b = 1 + (2 * _rand(n, g, dev) - 1) * cfg.brightness
    c = 1 + (2 * _rand(n, g, dev) - 1) * cfg.contrast
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * c.view(n, 1, 1, 1) + mean) * b.view(n, 1, 1, 1)

    if cfg.blur_prob > 0:
        blurred = _gaussian_blur(out, sigma=0.8)
        do = (_rand(n, g, dev) < cfg.blur_prob).view(n, 1, 1, 1)
        out = torch.where(do, blurred, out)
    if cfg.noise_std > 0:
        noise = torch.randn(out.shape, generator=g, device="cpu").to(dev)
        out = out + cfg.noise_std * noise
    return out.clamp_(0, 1)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.arange(-1, 2, dtype=x.dtype, device=x.device)
    k = torch.exp(-(k**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (1, 1, 0, 0), mode="replicate"), k.view(1, 1, 1, 3).expand(c, 1, 1, 3), groups=c)
    return F.conv2d(F.pad(x, (0, 0, 1, 1), mode="replicate"), k.view(1, 1, 3, 1).expand(c, 1, 3, 1), groups=c)
