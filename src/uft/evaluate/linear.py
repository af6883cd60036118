"""Linear probes on frozen features: full-label and few-label (k labels per class, several draws)."""

from __future__ import annotations

from typing import Callable, Iterable

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


# The full-label probe is fitted on at most this many train rows (a uniform random sample above it):
# its memory and time then stop growing with the dataset; below it, every row is used.
FULL_PROBE_ROWS = 100_000


def full_probe_rows(n: int, seed: int, cap: int = FULL_PROBE_ROWS) -> np.ndarray:
    """Sorted positions of the train rows the full-label probe is fitted on: all ``n`` when
    ``n <= cap``, else ``cap`` drawn uniformly without replacement (``seed``)."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, n]).choice(n, size=cap, replace=False))


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, c: float = 1.0, max_iter: int = 1000):
    """The probe of :func:`linear_probe_accuracy`: (scaler, multinomial logistic regression)."""
    scaler = StandardScaler().fit(train_x)
    return scaler, LogisticRegression(C=c, max_iter=max_iter).fit(scaler.transform(train_x), train_y)


def linear_probes_streamed(train_labels: np.ndarray, train_rows: Callable[[np.ndarray], np.ndarray],
                           test_blocks: Iterable[tuple[np.ndarray, np.ndarray]], shots: list[int], draws: int,
                           seed: int) -> dict[str, float]:
    """The few-label probes of :func:`few_label_probe` (each of ``shots``, ``draws`` draws) and the
    full-label probe (on :func:`full_probe_rows`), with neither split's features held whole.

    ``train_labels (N,)``: the train split's labels in dataset order; ``train_rows(positions)``: the
    features ``(len(positions), D)`` of those sorted positions (one streamed pass); ``test_blocks``:
    (features, labels) blocks of the test split. Same numbers as the whole-array functions on
    the same features: the same rows fit each probe, and accuracy is an exact count over blocks."""
    picks = {(k, d): few_label_indices(train_labels, k, seed * 1000 + d) for k in shots for d in range(draws)}
    picks["full"] = full_probe_rows(len(train_labels), seed)
    needed = np.unique(np.concatenate(list(picks.values())))
    x = train_rows(needed)
    models = {key: fit_probe(x[np.searchsorted(needed, idx)], train_labels[idx]) for key, idx in picks.items()}
    del x
    correct, total = dict.fromkeys(models, 0), 0
    for tx, ty in test_blocks:
        for key, (scaler, clf) in models.items():
            correct[key] += int((clf.predict(scaler.transform(tx)) == ty).sum())
        total += len(ty)
    acc = {key: c / total for key, c in correct.items()}
    out: dict[str, float] = {}
    for k in shots:
        accs = [acc[(k, d)] for d in range(draws)]
        out[f"linear_{k}shot"], out[f"linear_{k}shot_std"] = float(np.mean(accs)), float(np.std(accs))
    out["linear_full"] = float(acc["full"])
    return out
