"""Frozen-encoder feature extraction, batched, without gradients."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 1024,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 or float ``(N, C, H, W)`` → float32 features ``(N, D)`` (encoder in eval mode)."""
    was_training = encoder.training
    encoder.eval().to(device)
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i: i + batch_size].to(device)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        out.append(encoder(x).float().cpu())
    encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
