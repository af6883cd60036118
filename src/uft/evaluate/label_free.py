"""Label-free quality signals of an encoder's features (no target labels needed).

Pure functions on feature matrices (``torch.Tensor`` or ``np.ndarray``; computed in float64 numpy),
plus :func:`encoder_signals`, which extracts the features and calls them. Notation: ``N`` samples,
``D`` feature dimensions; "views" are two random augmentations of the same images.

- :func:`effective_rank` — RankMe (Garrido et al. 2023): ``exp`` of the entropy of the normalised
  singular values; 1 for collapsed features, up to ``min(N, D)``.
- :func:`alignment`, :func:`uniformity` — Wang & Isola (2020), on L2-normalised features: the mean
  distance between two views of an image (lower = more invariant) and the log mean Gaussian
  potential between different images (lower = more spread over the sphere).
- :func:`view_retrieval` — top-1 accuracy of finding an image's other view among all views of the
  batch (the instance-discrimination task measured on held-out images); chance is ``1 / N``.
- :func:`neighbourhood_agreement` — mean Jaccard overlap of the k-NN sets of the same images under
  two encoders (how much finetuning re-arranged the neighbourhoods).
- :func:`soft_neighbourhood_density` — SND (Saito et al. 2021): mean entropy of the softmax over
  cosine similarities to the other samples.
- :func:`source_retention` — weighted k-NN accuracy on held-out *labelled source* data (those
  labels exist, so "label-free" refers to the target).
- :func:`split_probe` — a few-label linear probe *within* one labelled split (shots drawn from it,
  scored on its other rows): the label-using signal the gate reads on the target's val split, so no
  decision touches the test split.

The gate measures all of them on images no training step saw (the target's and the source's "val"
splits, :data:`uft.data.ingest.SPLITS`), so a candidate gets no home advantage on its own training
images.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from uft.errors import UftError

ArrayLike = torch.Tensor | np.ndarray


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise UftError(f"features of shape {a.shape}: pass a (N, D) matrix with N >= 2")
    return a


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def is_finite(feats: ArrayLike) -> bool:
    """True when every feature value is finite (a diverged encoder yields nan/inf)."""
    return bool(np.isfinite(_np(feats)).all())


def effective_rank(feats: ArrayLike, eps: float = 1e-7) -> float:
    """RankMe of ``feats (N, D)`` → float in ``[1, min(N, D)]``.

    ``p_k = σ_k / Σσ + eps`` over the singular values σ of the (uncentred, as in RankMe) features;
    ``exp(−Σ p_k log p_k)``. Collapsed (all rows equal) → 1; isotropic → ``min(N, D)``. Zero
    features → 1 (nothing spans any direction).
    """
    s = np.linalg.svd(_np(feats), compute_uv=False)
    total = s.sum()
    if not np.isfinite(total) or total <= 0:
        return 1.0
    p = s / total + eps
    return float(min(math.exp(-(p * np.log(p)).sum()), len(s)))


def alignment(view1: ArrayLike, view2: ArrayLike, alpha: float = 2.0) -> float:
    """Wang & Isola alignment: ``mean_i ‖u_i − v_i‖^α`` over L2-normalised views ``(N, D)`` each → [0, 2^α]."""
    a, b = _unit(_np(view1)), _unit(_np(view2))
    if a.shape != b.shape:
        raise UftError(f"view features {a.shape} and {b.shape}: pass the two views of the same images")
    return float((np.linalg.norm(a - b, axis=1) ** alpha).mean())


def uniformity(feats: ArrayLike, t: float = 2.0) -> float:
    """Wang & Isola uniformity: ``log mean_{i<j} exp(−t ‖u_i − u_j‖²)`` over L2-normalised ``(N, D)``.

    In ``[−4t, 0]``: 0 when collapsed, lower when spread (≈ −3.6 for t = 2 on a high-dimensional sphere).
    """
    u = _unit(_np(feats))
    sq = np.maximum(2.0 - 2.0 * (u @ u.T), 0.0)
    iu = np.triu_indices(len(u), k=1)
    x = -t * sq[iu]
    m = x.max()
    return float(m + np.log(np.exp(x - m).mean()))  # log-mean-exp, stable


def view_retrieval(view1: ArrayLike, view2: ArrayLike) -> float:
    """Views ``(N, D)`` each → fraction of images whose nearest (cosine) neighbour among the other
    ``2N − 1`` views is their own other view, over both directions. Chance ≈ ``1/(2N)``; a collapsed
    encoder scores near chance (ties resolve to the lowest index), a discriminative one near 1."""
    a, b = _unit(_np(view1)), _unit(_np(view2))
    if a.shape != b.shape:
        raise UftError(f"view features {a.shape} and {b.shape}: pass the two views of the same images")
    z = np.concatenate([a, b])
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    n = len(a)
    partner = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    return float((sim.argmax(axis=1) == partner).mean())


def knn_indices(feats: ArrayLike, k: int) -> np.ndarray:
    """``(N, D)`` → ``(N, k)`` indices of each row's k nearest other rows by cosine (self excluded;
    ties broken by index, so the result is deterministic)."""
    u = _unit(_np(feats))
    if not 1 <= k < len(u):
        raise UftError(f"k={k} for {len(u)} samples: use 1 <= k < N")
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def neighbourhood_agreement(feats_a: ArrayLike, feats_b: ArrayLike, k: int = 10) -> float:
    """Mean Jaccard overlap ``|A_i ∩ B_i| / |A_i ∪ B_i|`` of the k-NN sets of row i under two
    feature sets ``(N, Da)``, ``(N, Db)`` of the same images → [0, 1] (1 = same neighbourhoods)."""
    a, b = _np(feats_a), _np(feats_b)
    if len(a) != len(b):
        raise UftError(f"{len(a)} vs {len(b)} rows: pass features of the same images under both encoders")
    ia, ib = knn_indices(a, k), knn_indices(b, k)
    n = len(a)
    ma = np.zeros((n, n), dtype=bool)
    mb = np.zeros((n, n), dtype=bool)
    rows = np.repeat(np.arange(n), k)
    ma[rows, ia.ravel()] = True
    mb[rows, ib.ravel()] = True
    inter = (ma & mb).sum(axis=1)
    return float((inter / (2 * k - inter)).mean())


def soft_neighbourhood_density(feats: ArrayLike, temperature: float = 0.05) -> float:
    """SND (Saito et al. 2021) of ``(N, D)``: mean over i of the entropy of ``softmax_j(cos_ij / T)``,
    ``j ≠ i`` → [0, log(N − 1)]. High = dense neighbourhoods. Note: it is maximal for a fully
    collapsed encoder (all similarities equal), so it must not be read alone."""
    u = _unit(_np(feats))
    logits = (u @ u.T) / temperature
    np.fill_diagonal(logits, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return float(ent.mean())


def source_retention(train_feats: ArrayLike, train_labels: ArrayLike, test_feats: ArrayLike, test_labels: ArrayLike,
                     num_classes: int, k: int = 20) -> float:
    """Weighted cosine k-NN accuracy (:func:`uft.evaluate.knn.knn_accuracy`) on held-out labelled
    source data: train ``(N, D)``, ``(N,)``; test ``(M, D)``, ``(M,)`` → [0, 1]."""
    from uft.evaluate.knn import knn_accuracy

    tr, te = torch.as_tensor(_np(train_feats)).float(), torch.as_tensor(_np(test_feats)).float()
    return knn_accuracy(tr, torch.as_tensor(train_labels).long(), te, torch.as_tensor(test_labels).long(),
                        num_classes, k=k)


def split_probe(feats: ArrayLike, labels: ArrayLike, per_class: int = 5, draws: int = 10, seed: int = 0) -> float:
    """Few-label linear probe inside one labelled split: ``draws`` times, ``per_class`` rows per class
    are the probe's training set and the split's other rows its test set → mean accuracy in [0, 1].

    ``feats (N, D)``, ``labels (N,)`` (all >= 0). The draws depend on the labels and ``seed`` only, so
    two encoders scored on the same rows see the same draws (a paired comparison)."""
    from uft.evaluate.linear import few_label_indices, linear_probe_accuracy

    x, y = _np(feats), np.asarray(torch.as_tensor(labels).cpu().numpy() if isinstance(labels, torch.Tensor) else labels)
    if len(y) != len(x) or (y < 0).any():
        raise UftError(f"split_probe: {len(x)} feature rows and {len(y)} labels (all >= 0 needed)")
    accs = []
    for d in range(draws):
        idx = few_label_indices(y, per_class, seed * 1000 + d)
        rest = np.setdiff1d(np.arange(len(y)), idx)
        if len(np.unique(y[idx])) < 2 or not len(rest):
            raise UftError(f"split_probe: {len(y)} labelled rows in {len(np.unique(y))} classes are too few "
                           f"for a {per_class}-shot probe")
        accs.append(linear_probe_accuracy(x[idx], y[idx], x[rest], y[rest]))
    return float(np.mean(accs))


# --- the gate's score ------------------------------------------------------------------------------

#: The signals where larger is better (the others are read with a minus sign).
HIGHER_IS_BETTER = {"effective_rank": True, "rank_fraction": True, "alignment": False, "uniformity": False,
                    "view_retrieval": True, "neighbourhood_agreement": True, "snd": True, "source_retention": True}


def gate_score(signals: dict[str, float]) -> float:
    """The one number the promotion gate compares: ``view_retrieval × rank_fraction`` (both in [0, 1]).

    View retrieval measures how well held-out target images stay distinguishable under the
    augmentations; the rank fraction (effective rank / feature dim) how many directions the
    features use. Either one alone can be gamed (a few well-separated directions / spread but
    augmentation-sensitive noise); the product is near 0 for a collapsed encoder. Validity
    against probe accuracy is measured in ``bench/label_free_validity.py``.
    """
    v, r = signals.get("view_retrieval"), signals.get("rank_fraction")
    if v is None or r is None or not (math.isfinite(v) and math.isfinite(r)):
        return 0.0
    return float(v * r)


def collapsed(signals: dict[str, Any], min_rank: float = 2.0, min_retrieval_x_chance: float = 1.0, *,
              floor: dict[str, Any] | None = None, reference: dict[str, Any] | None = None, margin: float = 0.0,
              probe_margin: float = 0.0, retention_tolerance: float = 0.0) -> str:
    """Why these signals show a collapsed, diverged or degenerate encoder, or ``""`` when they do not.

    - non-finite features (diverged);
    - effective rank below ``min_rank``: constant output (rank 1) or every image on one line (rank one);
    - view retrieval no better than ``min_retrieval_x_chance`` × chance (cannot tell images apart);
    - degenerate: ``floor`` holds the best value each signal reaches over a few *untrained* encoders of
      the same architecture on the same images (:func:`floor_of`); for any of gate score, val probe and
      source retention on which the ``reference`` (base or champion) is clearly above that floor, a
      candidate that is not above it (by ``margin`` relative, ``probe_margin``, ``retention_tolerance``)
      has lost what training gave it.
    """
    if not signals.get("finite", True):
        return "features are not finite (the encoder diverged)"
    if signals.get("effective_rank", 0.0) < min_rank:
        return f"effective rank {signals.get('effective_rank', 0.0):.2f} < {min_rank} (features collapsed)"
    n = signals.get("n_views", 0)
    if n and signals.get("view_retrieval", 0.0) <= min_retrieval_x_chance / (2 * n):
        return f"view retrieval {signals['view_retrieval']:.3f} is at chance (≤ {min_retrieval_x_chance:g}/{2 * n})"
    if floor and reference:
        # (signal, margin, how the margin applies): the gate score's margin is relative
        for k, m, rel in (("gate_score", margin, True), ("val_probe", probe_margin, False),
                          ("source_retention", retention_tolerance, False)):
            vals = [d.get(k) for d in (floor, reference, signals)]
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
                continue
            f, r, c = (float(v) for v in vals)
            bar = f * (1 + m) if rel else f + m
            if r > bar and c <= bar:
                return (f"degenerate: {k} {c:.4f} is no better than untrained encoders' {f:.4f} "
                        f"(+{m:.1%} relative)" if rel else f"degenerate: {k} {c:.4f} is no better than untrained "
                        f"encoders' {f:.4f} (+{m:.3f})") + f", while the reference has {r:.4f}"
    return ""


def floor_of(untrained: list[dict[str, Any]]) -> dict[str, Any]:
    """The signals of several untrained encoders → the best (largest) value of each numeric signal."""
    keys = {k for d in untrained for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: max(float(d[k]) for d in untrained if isinstance(d.get(k), (int, float))) for k in sorted(keys)}


# --- from an encoder and images -------------------------------------------------------------------

@torch.no_grad()
def encoder_signals(encoder: torch.nn.Module, target_images: torch.Tensor, *, base: torch.nn.Module | None = None,
                    source: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None,
                    target_labels: torch.Tensor | None = None, max_images: int = 1000, k: int = 10, seed: int = 0,
                    device: str = "cpu") -> dict[str, Any]:
    """Every label-free signal of ``encoder`` on (up to ``max_images``) ``target_images`` uint8 ``(N, C, H, W)``.

    ``base``: the encoder it was finetuned from (adds ``neighbourhood_agreement``). ``source``:
    ``(memory_images, memory_labels, query_images, query_labels, num_classes)`` of labelled source data,
    queries held out from training (adds ``source_retention``). ``target_labels (N,)``: labels of
    ``target_images`` (the val split's; adds ``val_probe``, :func:`split_probe`). The views use the
    training augmentations with a fixed ``seed``, so two encoders are scored on the same views.
    """
    from uft.data.augment import AugmentConfig, augment
    from uft.evaluate.features import extract_features

    if len(target_images) < 4:
        raise UftError(f"{len(target_images)} target images: label-free signals need at least 4")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(target_images), generator=g)[:max_images].sort().values
    x = target_images[idx]
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    aug = AugmentConfig()
    v1, v2 = augment(x.clone(), aug, g), augment(x.clone(), aug, g)
    f = extract_features(encoder, x, device=device)
    f1, f2 = extract_features(encoder, v1, device=device), extract_features(encoder, v2, device=device)
    out: dict[str, Any] = {"n_views": len(x), "feature_dim": int(f.shape[1]), "finite": is_finite(f) and is_finite(f1) and is_finite(f2)}
    if not out["finite"]:
        out.update(effective_rank=1.0, rank_fraction=0.0, view_retrieval=0.0)
        out["gate_score"] = 0.0
        return out
    kk = min(k, len(x) - 1)
    out["effective_rank"] = effective_rank(f)
    out["rank_fraction"] = out["effective_rank"] / min(f.shape)
    out["alignment"] = alignment(f1, f2)
    out["uniformity"] = uniformity(f)
    out["view_retrieval"] = view_retrieval(f1, f2)
    out["snd"] = soft_neighbourhood_density(f)
    if base is not None:
        out["neighbourhood_agreement"] = neighbourhood_agreement(extract_features(base, x, device=device), f, k=kk)
    if source is not None:
        tr_x, tr_y, te_x, te_y, num_classes = source
        out["source_retention"] = source_retention(extract_features(encoder, tr_x, device=device), tr_y,
                                                   extract_features(encoder, te_x, device=device), te_y, num_classes)
    if target_labels is not None:
        out["val_probe"] = split_probe(f, target_labels[idx], seed=seed)
    out["gate_score"] = gate_score(out)
    return out
