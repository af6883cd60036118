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
    # Colour views (3-channel inputs only; off by default, so grey runs draw the same random numbers):
    # without them SimCLR can match two views by their colour histogram alone.
    saturation: float = Field(0.0, ge=0, le=1, description="saturation jitter: scale chroma by U(1-s, 1+s)")
    grayscale_prob: float = Field(0.0, ge=0, le=1, description="probability of a grey view")


#: Colour views for 3-channel SSL: measured in bench/defaults_rule.py (docs/results.md, "Defaults
#: across datasets"), where colour inputs without them lost to grey ones on drawings.
COLOUR_VIEWS = {"saturation": 0.4, "grayscale_prob": 0.2}


def with_colour_views(cfg: AugmentConfig, channels: int) -> AugmentConfig:
    """``cfg`` with :data:`COLOUR_VIEWS` for colour images when it sets none (grey images: unchanged)."""
    if channels != 3 or cfg.saturation > 0 or cfg.grayscale_prob > 0:
        return cfg
    return cfg.model_copy(update=COLOUR_VIEWS)


def _uniforms(k: int, n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """``(k, n)`` uniforms from ``g`` in one draw (the same stream as ``k`` calls of ``rand(n)``) and
    one host→device copy; pinned + non-blocking on CUDA so the host never waits for the GPU."""
    u = torch.rand(k * n, generator=g, device="cpu").view(k, n)
    if device.type == "cuda":
        return u.pin_memory().to(device, non_blocking=True)
    return u.to(device)


def _device_normal(shape: torch.Size, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Gaussian noise: from ``g`` on CPU; on an accelerator from a device generator seeded by one
    draw of ``g`` (still deterministic and resumable, and no image-sized host→device copy)."""
    if device.type == "cpu":
        return torch.randn(shape, generator=g)
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    dg = torch.Generator(device=device)
    dg.manual_seed(seed)
    return torch.randn(shape, generator=dg, device=device)


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """One random view of each image. ``x``: ``(N, C, H, W)`` float in [0, 1] → same shape.

    Geometric part (resized crop, rotation, flip) is a single affine warp per image; photometric
    part is brightness/contrast jitter, Gaussian blur and noise.
    """
    n, _, h, w = x.shape
    dev = x.device
    # Every per-image draw at once (order: scale, ratio, tx, ty, angle, flip, brightness, contrast, blur).
    u = _uniforms(9 if cfg.blur_prob > 0 else 8, n, g, dev)
    scale = torch.sqrt(cfg.crop_scale_min + (1 - cfg.crop_scale_min) * u[0])  # side fraction
    ratio = torch.exp((u[1] - 0.5) * math.log(4 / 3) * 2)  # aspect ratio in [3/4, 4/3]
    sx, sy = scale * torch.sqrt(ratio), scale / torch.sqrt(ratio)
    sx, sy = sx.clamp(max=1.0), sy.clamp(max=1.0)
    tx = (2 * u[2] - 1) * (1 - sx)
    ty = (2 * u[3] - 1) * (1 - sy)
    ang = (2 * u[4] - 1) * math.radians(cfg.max_rotation_deg)
    flip = torch.where(u[5] < cfg.hflip, -1.0, 1.0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([
        torch.stack([sx * cos * flip, -sy * sin, tx], 1),
        torch.stack([sx * sin * flip, sy * cos, ty], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # ((out - mean)·c + mean)·b as one fused multiply-add: out·(b·c) + mean·b·(1 − c).
    b = 1 + (2 * u[6] - 1) * cfg.brightness
    c = 1 + (2 * u[7] - 1) * cfg.contrast
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = torch.addcmul(mean * (b * (1 - c)).view(n, 1, 1, 1), out, (b * c).view(n, 1, 1, 1))

    if cfg.blur_prob > 0:
        do = u[8] < cfg.blur_prob
        if dev.type == "cpu":  # blur only the chosen images (the mask is already on the host: no sync)
            idx = do.nonzero().squeeze(1)
            if len(idx):
                out[idx] = _gaussian_blur(out[idx], sigma=0.8)
        else:  # on a GPU, blurring all is cheaper than a host sync to find the chosen ones
            out = torch.where(do.view(n, 1, 1, 1), _gaussian_blur(out, sigma=0.8), out)
    if x.shape[1] == 3 and (cfg.saturation > 0 or cfg.grayscale_prob > 0):
        out = _colour_jitter(out, cfg, _uniforms(2, n, g, dev))
    if cfg.noise_std > 0:
        out = out.add_(_device_normal(out.shape, g, dev), alpha=cfg.noise_std)
    return out.clamp_(0, 1)


def _colour_jitter(x: torch.Tensor, cfg: AugmentConfig, u: torch.Tensor) -> torch.Tensor:
    """Saturation jitter and random grey views of ``(N, 3, H, W)`` ``x``; ``u``: ``(2, N)`` uniforms."""
    luma = (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    s = 1 + (2 * u[0] - 1) * cfg.saturation
    s = torch.where(u[1] < cfg.grayscale_prob, torch.zeros_like(s), s)  # saturation 0 = a grey view
    return torch.lerp(luma.expand_as(x), x, s.view(-1, 1, 1, 1))


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.arange(-1, 2, dtype=x.dtype, device=x.device)
    k = torch.exp(-(k**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (1, 1, 0, 0), mode="replicate"), k.view(1, 1, 1, 3).expand(c, 1, 1, 3), groups=c)
    return F.conv2d(F.pad(x, (0, 0, 1, 1), mode="replicate"), k.view(1, 1, 3, 1).expand(c, 1, 3, 1), groups=c)
