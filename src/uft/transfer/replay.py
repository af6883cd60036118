"""Sparse source replay (METHODS.md §1, UFT arXiv 2110.09510).

Finetuning on a small target set alone damages a pretrained encoder; replaying a few source images in
every batch keeps the representation anchored. Two pieces:

- :func:`select_replay` picks the replay set S once, a small fixed subset of source row ids (the
  pipeline's ``subsample_source`` step). Default size: a few times the target set's size
  (e.g. ``n = 4 * len(target)``), the paper's "sparse" regime; the caller chooses ``n``.
- :func:`replay_count` and :class:`ReplaySampler` decide, per batch of ``B`` target images, how many
  (``ceil(ratio * B)``) and which members of S join the batch. Replayed images are ordinary instances
  of the same SSL loss (two views are positives, for MoCo they enter the queue), with no separate
  weight. ``ratio`` is the knob ``replay_ratio``; sweep it over ``{0.1, 0.25, 0.5, 1}``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from uft.choices import REPLAY_RULES
from uft.errors import UftError


# Above this many source rows k-means uses MiniBatchKMeans: full Lloyd with k = n is too slow there.
_MINIBATCH_ABOVE = 20_000
# Above this many centres k-means seeds at random rather than with k-means++ (speed, see _kmeans).
_PLUSPLUS_UP_TO = 1_000
# Rows of target features handled at once when ranking source neighbours (bounds memory to
# chunk * n_source floats).
_TARGET_CHUNK = 256


def select_replay(
    rule: str,
    n: int,
    *,
    seed: int,
    labels: np.ndarray | None = None,
    source_features: np.ndarray | None = None,
    target_features: np.ndarray | None = None,
    source_size: int | None = None,
) -> np.ndarray:
    """Choose the replay set S: ``n`` distinct source row ids, sorted, ``int64`` of shape ``(n,)``.

    rule:
      - ``"uniform"``: ``n`` rows uniformly at random without replacement.
      - ``"class_balanced"``: needs ``labels`` ``(N,)``; an equal share per class, drawn uniformly
        within each class. A class smaller than its share gives all its rows and the rest is shared
        among the others; the remainder ``n mod k`` goes, one each, to the classes in ascending
        label order.
      - ``"kmeans"``: needs ``source_features`` ``(N, d)``; k-means with ``k = n`` (``n_init=1``,
        seeded; MiniBatchKMeans above 20k rows; random seeding above 1000 centres), then from
        each cluster the member nearest its centre (a medoid-like representative; clusters are
        disjoint so the picks are unique). A centre left with no member takes the nearest row not
        yet chosen.
      - ``"nearest_target"``: needs ``source_features`` ``(N, d)`` and ``target_features`` ``(T, d)``;
        cosine similarity; round-robin by rank over target points (every target's 1st nearest
        source row in target order, then every target's 2nd, ...), skipping rows already chosen,
        until ``n`` distinct rows are chosen. So S covers the whole target set rather than only
        its densest part.

    The source size ``N`` comes from ``labels`` / ``source_features``; for ``"uniform"`` without either
    pass ``source_size``. Same inputs and ``seed`` → same output.
    """
    if rule not in REPLAY_RULES:
        raise UftError(f"replay rule {rule!r} is unknown: use one of {', '.join(REPLAY_RULES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UftError(f"replay seed {seed!r} is not an integer: pass an int seed")
    labels = _as_labels(labels)
    source_features = _as_features(source_features, "source_features")
    target_features = _as_features(target_features, "target_features")
    n_source = _source_size(labels, source_features, source_size)

    if rule == "class_balanced" and labels is None:
        raise UftError("replay rule 'class_balanced' needs labels: pass the source labels or use rule 'uniform'")
    if rule in ("kmeans", "nearest_target") and source_features is None:
        raise UftError(
            f"replay rule {rule!r} needs source_features: embed the source with the base encoder "
            "first, or use rule 'uniform'"
        )
    if rule == "nearest_target" and target_features is None:
        raise UftError(
            "replay rule 'nearest_target' needs target_features: embed the target with the base "
            "encoder first, or use rule 'kmeans'"
        )
    if (
        rule == "nearest_target"
        and source_features is not None
        and target_features is not None
        and source_features.shape[1] != target_features.shape[1]
    ):
        raise UftError(
            f"target_features have dimension {target_features.shape[1]} but source_features have "
            f"{source_features.shape[1]}: embed both with the same encoder"
        )
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0 or n > n_source:
        raise UftError(
            f"replay size n={n!r} is out of range: pick an integer in [1, {n_source}] (the source "
            "size), typically a few times the target set's size"
        )
    n = int(n)
    rng = np.random.default_rng(int(seed))

    if rule == "uniform":
        picked = rng.choice(n_source, size=n, replace=False)
    elif rule == "class_balanced":
        picked = _class_balanced(labels, n, rng)  # type: ignore[arg-type]
    elif rule == "kmeans":
        picked = _kmeans(source_features, n, int(seed))  # type: ignore[arg-type]
    else:
        picked = _nearest_target(source_features, target_features, n)  # type: ignore[arg-type]

    out = np.sort(np.asarray(picked, dtype=np.int64))
    assert out.shape == (n,) and np.unique(out).size == n  # internal invariant
    return out


def replay_count(batch_size: int, ratio: float) -> int:
    """Source images to add to a batch of ``batch_size`` target images: ``ceil(ratio * batch_size)``.

    ``ratio`` (the ``replay_ratio`` knob, ρ) must lie in ``[0, 1]``; 0 turns replay off. The paper's
    sweep is ``{0.1, 0.25, 0.5, 1}``. The product is rounded to 9 decimals before the ceiling so that
    float noise (``0.1 * 30 = 3.0000000000000004``) does not add an image.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise UftError(f"batch_size={batch_size!r} must be a positive integer: set a batch size >= 1")
    try:
        ratio_f = float(ratio)
    except (TypeError, ValueError):
        raise UftError(f"replay_ratio={ratio!r} is not a number: use a value in [0, 1], e.g. 0.25") from None
    if not math.isfinite(ratio_f) or ratio_f < 0.0 or ratio_f > 1.0:
        raise UftError(
            f"replay_ratio={ratio!r} is outside [0, 1]: use a value in [0, 1] "
            "(sweep 0.1, 0.25, 0.5, 1; 0 turns replay off)"
        )
    return int(math.ceil(round(ratio_f * int(batch_size), 9)))


class ReplaySampler:
    """Draws replay source row ids from S, uniformly **with replacement**.

    Drawing with replacement (rather than cycling through a shuffled S) makes every member equally
    likely in every batch whatever the batch size and however S's size divides it, and needs no
    state beyond the generator, so a checkpointed generator state resumes the exact same stream.
    """

    def __init__(self, indices: np.ndarray | torch.Tensor, generator: torch.Generator):
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        if idx.ndim != 1 or idx.numel() == 0:
            raise UftError(
                f"replay indices have shape {tuple(idx.shape)}: pass a non-empty 1-D array of source "
                "row ids (from select_replay)"
            )
        if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.is_complex():
            raise UftError(f"replay indices have dtype {idx.dtype}: pass integer source row ids")
        if not isinstance(generator, torch.Generator):
            raise UftError(f"replay generator {generator!r} is not a torch.Generator: pass one, seeded")
        self.indices = idx.to(torch.int64).cpu()
        self.generator = generator

    def __len__(self) -> int:
        return int(self.indices.numel())

    def draw(self, k: int) -> torch.Tensor:
        """``(k,)`` int64 source row ids, each uniform over S, independent (with replacement)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise UftError(f"replay draw count k={k!r} must be a non-negative integer: use replay_count()")
        pos = torch.randint(
            0, len(self), (int(k),), generator=self.generator, device=self.generator.device
        )
        return self.indices[pos.cpu()]


# --------------------------------------------------------------------------- validation helpers


def _as_labels(labels: np.ndarray | None) -> np.ndarray | None:
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise UftError(f"labels have shape {arr.shape}: pass a non-empty 1-D array, one label per source row")
    return arr


def _as_features(feats: np.ndarray | None, name: str) -> np.ndarray | None:
    if feats is None:
        return None
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().numpy()
    arr = np.asarray(feats)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UftError(f"{name} have shape {arr.shape}: pass a non-empty 2-D array (rows, feature_dim)")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise UftError(f"{name} have dtype {arr.dtype}: pass real-valued features")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise UftError(f"{name} contain NaN or inf: check the encoder that produced them")
    return arr


def _source_size(labels: np.ndarray | None, feats: np.ndarray | None, size: int | None) -> int:
    sizes: dict[str, int] = {}
    if labels is not None:
        sizes["labels"] = labels.shape[0]
    if feats is not None:
        sizes["source_features"] = feats.shape[0]
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise UftError(f"source_size={size!r} must be a positive integer: pass the number of source rows")
        sizes["source_size"] = int(size)
    if not sizes:
        raise UftError(
            "select_replay cannot tell the source size: pass source_size, labels or source_features"
        )
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise UftError(f"source lengths disagree ({detail}): pass labels/features for the same source rows")
    return next(iter(sizes.values()))


# --------------------------------------------------------------------------- rules


def _class_balanced(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = np.zeros(len(classes), dtype=np.int64)
    active = list(range(len(classes)))  # ascending label order
    remaining = n
    # Water-filling: classes smaller than the equal share give all they have; repeat on the rest.
    while active:
        share = remaining // len(active)
        small = [c for c in active if counts[c] <= share]
        if not small:
            extra = remaining - share * len(active)
            for j, c in enumerate(active):
                quota[c] = share + (1 if j < extra else 0)
            break
        for c in small:
            quota[c] = counts[c]
            remaining -= int(counts[c])
        active = [c for c in active if c not in small]
    picks = [
        rng.choice(np.flatnonzero(inverse == c), size=int(quota[c]), replace=False)
        for c in range(len(classes))
        if quota[c] > 0
    ]
    return np.concatenate(picks)


def _kmeans(feats: np.ndarray, n: int, seed: int) -> np.ndarray:
    n_source = feats.shape[0]
    if n == n_source:
        return np.arange(n_source)
    import warnings

    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning

    x = feats.astype(np.float32)
    # k-means++ seeding costs O(N k) distance passes; for large k random seeding is ~10x faster
    # with near-identical inertia (measured: N=10k, d=64, k=2000: 0.3 s vs 3.7 s, inertia +1%).
    init = "k-means++" if n <= _PLUSPLUS_UP_TO else "random"
    if n_source > _MINIBATCH_ABOVE:
        km = MiniBatchKMeans(
            n_clusters=n, n_init=1, init=init, random_state=seed, batch_size=max(1024, 3 * n)
        )
    else:
        km = KMeans(n_clusters=n, n_init=1, init=init, random_state=seed)
    with warnings.catch_warnings():
        # Fewer distinct points than n: duplicate centres; handled below by the fill step.
        warnings.simplefilter("ignore", ConvergenceWarning)
        assign = km.fit_predict(x)
    centres = km.cluster_centers_.astype(np.float64)
    d2 = ((feats - centres[assign]) ** 2).sum(axis=1)  # each row's distance to its own centre
    # For each cluster the member with the smallest distance (ties → lowest row id).
    order = np.lexsort((np.arange(n_source), d2, assign))
    first = np.ones(n_source, dtype=bool)
    first[1:] = assign[order][1:] != assign[order][:-1]
    chosen = np.full(n, -1, dtype=np.int64)
    chosen[assign[order][first]] = order[first]
    taken = np.zeros(n_source, dtype=bool)
    taken[chosen[chosen >= 0]] = True
    for c in np.flatnonzero(chosen < 0):  # empty clusters: nearest row still free
        dist = ((feats - centres[c]) ** 2).sum(axis=1)
        dist[taken] = np.inf
        chosen[c] = int(np.argmin(dist))
        taken[chosen[c]] = True
    return chosen


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _topk_cosine(src: np.ndarray, tgt: np.ndarray, k: int) -> np.ndarray:
    """``(T, k)`` source row ids per target row, most cosine-similar first (ties → lowest id)."""
    out = np.empty((tgt.shape[0], k), dtype=np.int64)
    for s in range(0, tgt.shape[0], _TARGET_CHUNK):
        sim = tgt[s : s + _TARGET_CHUNK] @ src.T  # (chunk, N)
        if k < sim.shape[1]:
            part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(sim.shape[1]), sim.shape)
        psim = np.take_along_axis(sim, part, axis=1)
        # Sort by similarity descending, then by row id, so the ranking is fully deterministic.
        rank = np.lexsort((part, -psim), axis=1)
        out[s : s + _TARGET_CHUNK] = np.take_along_axis(part, rank, axis=1)
    return out


def _nearest_target(src_feats: np.ndarray, tgt_feats: np.ndarray, n: int) -> np.ndarray:
    src, tgt = _unit_rows(src_feats), _unit_rows(tgt_feats)
    n_source, n_target = src.shape[0], tgt.shape[0]
    k = min(n_source, max(1, 2 * math.ceil(n / n_target)))
    while True:
        nn = _topk_cosine(src, tgt, k)  # (T, k)
        stream = nn.T.ravel()  # rank-major: every target's 1st neighbour, then every 2nd, ...
        _, first_pos = np.unique(stream, return_index=True)
        if first_pos.size >= n or k == n_source:
            # Neighbours deeper than k only matter once all rank-<=k picks are exhausted, so taking
            # the first n distinct ids of this stream equals the full round-robin.
            return stream[np.sort(first_pos)[:n]]
        k = min(n_source, 2 * k)
