"""Linear probes on frozen features: full-label and few-label (k labels per class, several draws)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                          c: float = 1.0, max_iter: int = 1000) -> float:
    """Multinomial logistic regression on standardised features → test accuracy."""
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=c, max_iter=max_iter)
    clf.fit(scaler.transform(train_x), train_y)
    return float((clf.predict(scaler.transform(test_x)) == test_y).mean())


def few_label_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` random labelled examples of each class (fewer if a class is short)."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), size=min(per_class, int((labels == c).sum())), replace=False)
             for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def few_label_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                    test_labels: torch.Tensor, per_class: int, draws: int = 5, seed: int = 0) -> tuple[float, float]:
    """Mean ± std test accuracy over ``draws`` random labelled subsets of ``per_class`` per class."""
    trx, try_ = train_feats.numpy(), train_labels.numpy()
    tex, tey = test_feats.numpy(), test_labels.numpy()
    accs = []
    for d in range(draws):
        idx = few_label_indices(try_, per_class, seed * 1000 + d)
        accs.append(linear_probe_accuracy(trx[idx], try_[idx], tex, tey))
    return float(np.mean(accs)), float(np.std(accs))
