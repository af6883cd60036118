"""Resizing decoded images to the dataset's one resolution and channel count."""

from __future__ import annotations

import numpy as np

from uft.errors import UftError


def resize_images(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """``(N, H, W, C)`` uint8 → ``(N, size, size, channels)`` uint8 (area/bilinear, antialiased).

    Channels: 3→1 by luminance, 1→3 by replication, 4 (RGBA) composited on black beforehand.
    """
    import torch  # here, not at the top: publishing already-sized images (ImageFolder) needs no torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    c = x.shape[1]
    if c == 4:
        x = x[:, :3] * (x[:, 3:4] / 255.0)
        c = 3
    if channels == 1 and c == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif channels == 3 and c == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels != c:
        raise UftError(f"cannot convert {c}-channel images to {channels} channels: use channels 1 or 3")
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
