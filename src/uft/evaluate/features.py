"""Frozen-encoder feature extraction, batched, without gradients."""

from __future__ import annotations

from typing import Iterator

import numpy as np
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


# Rows of features handed out at once by :func:`feature_blocks`: 16 MB of 256-d float32 features,
# so evaluation memory does not grow with the dataset.
BLOCK_ROWS = 16_384


def feature_blocks(encoder: nn.Module, uri: str, split: str, batch_size: int = 1024,
                   device: str | torch.device = "cpu", block_rows: int = BLOCK_ROWS,
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Features of every ``split`` row of the published dataset at ``uri``, read shard by shard, in
    dataset order, as blocks of at most ``max(block_rows, batch_size)`` rows: (float32 ``(b, D)``,
    int64 labels ``(b,)``). The encoder sees the same batches as :func:`extract_features` on
    ``load_dataset(uri).subset(split).images`` (hence the same numbers); only one block of
    features, one window of shards and one batch of images are in memory at a time."""
    from uft.data.stream import StreamSource

    batches = iter(StreamSource(uri, split=split, window=1).open(batch_size, shuffle=False, epochs=1, drop_last=False))
    was_training = encoder.training
    encoder.eval().to(device)
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        for batch in batches:
            with torch.no_grad():
                feats.append(encoder(batch.images.to(device).float().div_(255)).float().cpu())
            labels.append(batch.labels)
            if sum(len(f) for f in feats) >= block_rows:
                yield torch.cat(feats), torch.cat(labels)
                feats, labels = [], []
        if feats:
            yield torch.cat(feats), torch.cat(labels)
    finally:
        batches.close()  # stops its read-ahead thread when the caller leaves early
        encoder.train(was_training)


def stream_features(encoder: nn.Module, uri: str, split: str, batch_size: int = 1024,
                    device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """All of :func:`feature_blocks` at once → (float32 ``(N, D)``, int64 labels ``(N,)``), rows in
    dataset order (images are never all in memory; the features are)."""
    blocks = list(feature_blocks(encoder, uri, split, batch_size, device))
    if not blocks:
        return torch.empty(0), torch.empty(0, dtype=torch.int64)
    return torch.cat([f for f, _ in blocks]), torch.cat([y for _, y in blocks])


def gather_features(encoder: nn.Module, uri: str, split: str, rows: np.ndarray, batch_size: int = 1024,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """Features of the ``split`` rows at positions ``rows`` (sorted, unique, into the split in
    dataset order) → float32 ``(len(rows), D)`` in that order; the same numbers as
    ``stream_features(...)[0][rows]`` while holding only those rows."""
    out: torch.Tensor | None = None
    start = 0
    for f, _ in feature_blocks(encoder, uri, split, batch_size, device):
        if out is None:  # one allocation up front: many small kept pieces between the large transient
            out = torch.empty(len(rows), f.shape[1])  # buffers fragment the heap, and RSS grows with N
        lo, hi = np.searchsorted(rows, [start, start + len(f)])
        out[lo:hi] = f[torch.from_numpy(rows[lo:hi] - start)]
        start += len(f)
    return out if out is not None else torch.empty(0)
