"""Weighted cosine k-NN classification (Wu et al. 2018), batched as matrix products."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 2048) -> torch.Tensor:
    """Predict labels ``(M,)`` for ``test_feats (M, D)`` from ``train_feats (N, D)``, ``train_labels (N,)``.

    Each of the k nearest neighbours (cosine) votes ``exp(sim / temperature)`` for its class.
    """
    k = min(k, len(train_feats))
    # The (chunk, N) similarity block is the big buffer: cap it at 2**26 floats (256 MB) so memory
    # stays flat when N grows (unchanged, 2048 rows, up to N = 32k).
    chunk = max(1, min(chunk, 2**26 // max(1, len(train_feats))))
    tr = F.normalize(train_feats.float(), dim=1)
    preds = []
    for i in range(0, len(test_feats), chunk):
        te = F.normalize(test_feats[i: i + chunk].float(), dim=1)
        sim, idx = (te @ tr.T).topk(k, dim=1)
        votes = torch.zeros(len(te), num_classes, device=te.device)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 20) -> float:
    pred = knn_predict(train_feats, train_labels, test_feats, num_classes, k)
    return float((pred == test_labels).float().mean())
