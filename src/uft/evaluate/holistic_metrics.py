"""Holistic-transfer metrics (METHODS.md §3): seen/unseen accuracies, AUSUC, NCM, per-class.

Every function takes ``torch.Tensor`` or ``np.ndarray`` and computes in float64 numpy; none has
side effects. Notation: ``C`` classes, ``S = seen`` (classes with target training labels),
``U = C \\ S`` (unseen). Accuracies over an empty subset (e.g. no unseen test samples) are ``nan``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from uft.errors import UftError

ArrayLike = torch.Tensor | np.ndarray


def _np(x: ArrayLike, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check(logits: ArrayLike, labels: ArrayLike, seen: Sequence[int] | None = None):
    """→ (logits (N, C) float64, labels (N,) int64, seen mask (C,) bool or None)."""
    z, y = _np(logits), _np(labels, np.int64)
    if z.ndim != 2 or y.ndim != 1 or z.shape[0] != y.shape[0]:
        raise UftError(
            f"logits {z.shape} / labels {y.shape}: pass logits (N, C) and labels (N,) for the same N"
        )
    c = z.shape[1]
    if y.size and (y.min() < 0 or y.max() >= c):
        raise UftError(f"labels span [{y.min()}, {y.max()}] but logits have {c} classes: labels must be in [0, {c})")
    if seen is None:
        return z, y, None
    s = np.asarray(list(seen), dtype=np.int64)
    if s.size == 0 or len(set(s.tolist())) != s.size or s.min() < 0 or s.max() >= c:
        raise UftError(f"seen classes {s.tolist()}: pass distinct class ids in [0, {c}), at least one")
    mask = np.zeros(c, dtype=bool)
    mask[s] = True
    return z, y, mask


def _masked_argmax(z: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """z (N, C), cols (C,) bool → (N,) argmax over the columns in ``cols`` (global class ids)."""
    return np.where(cols[None, :], z, -np.inf).argmax(axis=1)


def _acc(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean()) if y.size else float("nan")


def holistic_accuracies(logits: ArrayLike, labels: ArrayLike, seen: Sequence[int]) -> dict[str, float]:
    """logits (N, C), labels (N,), seen class ids → accuracies.

    ``overall`` / ``seen`` / ``unseen``: argmax over all C logits, on all / seen-labelled /
    unseen-labelled samples. ``seen_seen`` / ``unseen_unseen``: on seen- / unseen-labelled samples
    with the argmax restricted to S / U.
    """
    z, y, smask = _check(logits, labels, seen)
    pred = z.argmax(axis=1)
    row_s = smask[y]
    row_u = ~row_s
    out = {"overall": _acc(pred, y), "seen": _acc(pred[row_s], y[row_s]), "unseen": _acc(pred[row_u], y[row_u])}
    out["seen_seen"] = _acc(_masked_argmax(z[row_s], smask), y[row_s])
    out["unseen_unseen"] = _acc(_masked_argmax(z[row_u], ~smask), y[row_u]) if (~smask).any() else float("nan")
    return out


def flip_points(logits: ArrayLike, seen: Sequence[int]) -> np.ndarray:
    """logits (N, C) → (N,) the bias γ on unseen logits at which each sample's prediction flips
    from S to U: ``max_S z − max_U z``. For γ below it the sample is predicted in S, above it in U.
    """
    z, _, smask = _check(logits, np.zeros(len(logits), dtype=np.int64), seen)
    if smask.all():
        raise UftError("seen covers every class: flip points need at least one unseen class")
    return z[:, smask].max(axis=1) - z[:, ~smask].max(axis=1)


def sweep_regions(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip points g (N,) → (order (N,), ends (K,), candidates (K + 1,)).

    ``order`` sorts g ascending; the K distinct values end at positions ``ends`` (exclusive) of
    the sorted array, so region k (0..K) is "the first ``ends[k-1]`` sorted samples have flipped"
    (``ends[-1]`` := 0 for k = 0). ``candidates[k]`` is a γ strictly inside region k: midpoints
    between distinct flip points, and min − 1 / max + 1 at the ends.
    """
    order = np.argsort(g, kind="stable")
    gs = g[order]
    uniq, first = np.unique(gs, return_index=True)
    ends = np.append(first[1:], gs.size)
    mids = (uniq[:-1] + uniq[1:]) / 2 if uniq.size > 1 else np.empty(0)
    cands = np.concatenate([[uniq[0] - 1.0], mids, [uniq[-1] + 1.0]]) if uniq.size else np.zeros(1)
    return order, ends, cands


def seen_unseen_curve(logits: ArrayLike, labels: ArrayLike, seen: Sequence[int]):
    """→ (gammas (K+1,), seen_acc (K+1,), unseen_acc (K+1,)): exact sweep of γ added to U-logits.

    One point per region between consecutive distinct flip points, from all-S (γ → −∞: seen_acc =
    seen_seen, unseen_acc = 0) to all-U (γ → +∞: seen_acc = 0, unseen_acc = unseen_unseen).
    """
    z, y, smask = _check(logits, labels, seen)
    row_s = smask[y]
    n_s, n_u = int(row_s.sum()), int((~row_s).sum())
    if n_s == 0 or n_u == 0:
        raise UftError(f"labels hold {n_s} seen and {n_u} unseen samples: AUSUC needs both")
    g = flip_points(z, seen)
    correct_s = row_s & (_masked_argmax(z, smask) == y)  # right when predicted in S
    correct_u = ~row_s & (_masked_argmax(z, ~smask) == y)  # right when predicted in U
    order, ends, cands = sweep_regions(g)
    flipped_s = np.concatenate([[0], np.cumsum(correct_s[order])[ends - 1]])
    flipped_u = np.concatenate([[0], np.cumsum(correct_u[order])[ends - 1]])
    seen_acc = (correct_s.sum() - flipped_s) / n_s
    unseen_acc = flipped_u / n_u
    return cands, seen_acc, unseen_acc


def ausuc(logits: ArrayLike, labels: ArrayLike, seen: Sequence[int]) -> float:
    """Area under the seen-unseen accuracy curve (logits (N, C), labels (N,)) → float in [0, 1].

    γ is added to every unseen logit and swept over every point where some prediction flips
    between S and U (computed exactly, :func:`seen_unseen_curve`); the curve (x = unseen accuracy,
    y = seen accuracy) is integrated with the trapezoid rule from all-S to all-U. Invariant to a
    calibration shift already applied to the logits. Needs seen- and unseen-labelled samples.
    """
    _, ys, xs = seen_unseen_curve(logits, labels, seen)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2))


def ncm_logits(
    train_feats: ArrayLike, train_labels: ArrayLike, test_feats: ArrayLike, num_classes: int
) -> np.ndarray:
    """Nearest-class-mean cosine scores: train (N, D) + (N,), test (M, D) → (M, num_classes).

    Features are L2-normalised, class means taken over the train features of each class,
    re-normalised; the score is the cosine. Classes absent from train score −inf (never predicted).
    """
    f, y = _np(train_feats), _np(train_labels, np.int64)
    t = _np(test_feats)
    if f.ndim != 2 or t.ndim != 2 or f.shape[1] != t.shape[1] or y.shape != (f.shape[0],):
        raise UftError(
            f"NCM features train {f.shape} / labels {y.shape} / test {t.shape}: pass (N, D), (N,), (M, D)"
        )
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise UftError(f"NCM train labels outside [0, {num_classes}): pass num_classes covering every label")

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    f = unit(f)
    sums = np.zeros((num_classes, f.shape[1]))
    np.add.at(sums, y, f)
    present = np.bincount(y, minlength=num_classes) > 0
    scores = unit(t) @ unit(sums).T
    scores[:, ~present] = -np.inf
    return scores


def ncm_accuracy(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    num_classes: int,
) -> float:
    """NCM accuracy (analysis probe; uses train labels of *all* classes). Shapes: train (N, D),
    (N,); test (M, D), (M,). See :func:`ncm_logits`."""
    scores = ncm_logits(train_feats, train_labels, test_feats, num_classes)
    return _acc(scores.argmax(axis=1), _np(test_labels, np.int64))


def per_class_accuracy(logits: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """logits (N, C), labels (N,) → (num_classes,) accuracy per true class (argmax over all C);
    ``nan`` for classes with no samples."""
    z, y, _ = _check(logits, labels)
    if num_classes != z.shape[1]:
        raise UftError(f"num_classes {num_classes} but logits have {z.shape[1]} columns: pass the logits' class count")
    hit = (z.argmax(axis=1) == y).astype(np.float64)
    n = np.bincount(y, minlength=num_classes).astype(np.float64)
    k = np.bincount(y, weights=hit, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, k / np.where(n > 0, n, 1), np.nan)
