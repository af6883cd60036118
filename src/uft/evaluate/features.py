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


@torch.no_grad()
def stream_features(encoder: nn.Module, uri: str, split: str, batch_size: int = 1024,
                    device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every ``split`` row of the published dataset at ``uri``, read shard by shard
    (images are never all in memory; only one window of shards and one batch at a time)
    → (float32 ``(N, D)``, int64 labels ``(N,)``), rows in dataset order — the same batches, hence
    the same numbers, as :func:`extract_features` on ``load_dataset(uri).subset(split).images``."""
    from uft.data.stream import StreamSource

    stream = StreamSource(uri, split=split, window=1).open(batch_size, shuffle=False, epochs=1, drop_last=False)
    was_training = encoder.training
    encoder.eval().to(device)
    feats, labels = [], []
    for batch in stream:
        feats.append(encoder(batch.images.to(device).float().div_(255)).float().cpu())
        labels.append(batch.labels)
    encoder.train(was_training)
    if not feats:
        return torch.empty(0), torch.empty(0, dtype=torch.int64)
    return torch.cat(feats), torch.cat(labels)
