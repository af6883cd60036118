"""Weighted cosine k-NN classification (Wu et al. 2018) as a streamed top-k: train features come in
blocks, each block's k best neighbours per test row are merged into a running top-k, so memory is
one block of train features plus ``(M, k)`` — flat in the number of train rows."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

# Test rows scored per pass over the train features (each further block costs one more pass): a
# test split up to this size is read once; its features and running top-k stay a few tens of MB.
KNN_TEST_ROWS = 32_768
# Largest (test rows × train rows) similarity block computed at once: 2**24 floats, 64 MB.
SIM_BLOCK = 2**24


def knn_topk(test_feats: torch.Tensor, train_blocks: Iterable[tuple[torch.Tensor, torch.Tensor]], k: int,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and labels of the ``k`` nearest train rows of each of ``test_feats (M, D)``
    → (float32 ``(M, k')``, int64 ``(M, k')``), best first, ``k' = min(k, train rows)``.

    ``train_blocks``: (features ``(b, D)``, labels ``(b,)``) in any block sizes; the result is the
    top-k of the whole train set (the similarity of a pair does not depend on the blocking)."""
    te = F.normalize(test_feats.float(), dim=1)
    best_s = torch.empty(len(te), 0)
    best_y = torch.empty(len(te), 0, dtype=torch.int64)
    for feats, labels in train_blocks:
        if len(feats) == 0:
            continue
        tr = F.normalize(feats.float(), dim=1)
        chunk = max(1, SIM_BLOCK // len(tr))
        new_s, new_y = [], []
        for i in range(0, len(te), chunk):
            s, idx = (te[i: i + chunk] @ tr.T).topk(min(k, len(tr)), dim=1)  # this block's best
            s, pick = torch.cat([best_s[i: i + chunk], s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
            new_s.append(s)
            new_y.append(torch.cat([best_y[i: i + chunk], labels[idx]], 1).gather(1, pick))
        best_s, best_y = torch.cat(new_s), torch.cat(new_y)
    return best_s, best_y


def knn_vote(sims: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float = 0.07) -> torch.Tensor:
    """Each neighbour (``sims``, ``labels`` ``(M, k)``, best first) votes ``exp(sim / temperature)``
    for its class → predicted labels ``(M,)``."""
    votes = torch.zeros(len(sims), num_classes)
    votes.scatter_add_(1, labels, (sims / temperature).exp())
    return votes.argmax(1)


def _blocks(feats: torch.Tensor, labels: torch.Tensor, rows: int = 16_384) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(feats), rows):
        yield feats[i: i + rows], labels[i: i + rows]


def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Predict labels ``(M,)`` for ``test_feats (M, D)`` from ``train_feats (N, D)``, ``train_labels (N,)``.

    Each of the k nearest neighbours (cosine) votes ``exp(sim / temperature)`` for its class."""
    sims, labels = knn_topk(test_feats, _blocks(train_feats, train_labels), k)
    return knn_vote(sims, labels, num_classes, temperature)


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 20) -> float:
    pred = knn_predict(train_feats, train_labels, test_feats, num_classes, k)
    return float((pred == test_labels).float().mean())


def _accuracy(correct: int, total: int) -> float:
    """``correct / total`` as float32, as ``(pred == y).float().mean()`` gives it (exact integer
    sum, one rounded division), so streamed and whole-array accuracies are the same number."""
    return float(torch.tensor(correct, dtype=torch.float32) / total) if total else float("nan")


def knn_accuracy_streamed(train_blocks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                          test_blocks: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                          k: int = 20, temperature: float = 0.07) -> float:
    """k-NN accuracy with neither split held whole: for each block of test rows (features, labels),
    one pass over ``train_blocks()`` (a fresh iterator each time). Memory: a test block, a train
    block and the ``(test block, k)`` running top-k."""
    correct = total = 0
    for te, yte in test_blocks:
        sims, labels = knn_topk(te, train_blocks(), k)
        correct += int((knn_vote(sims, labels, num_classes, temperature) == yte).sum())
        total += len(yte)
    return _accuracy(correct, total)
