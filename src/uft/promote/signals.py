"""What the gate measures: the held-out images (target val, source val), each encoder's signals on
them, untrained encoders for the degenerate floor, and the domain-shift check against the champion."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from uft.errors import UftError
from uft.promote.policy import VAL_SHOTS

if TYPE_CHECKING:
    import torch
# torch is imported where a tensor is made: `uft run` reads the promotion verdict from here.

@dataclass
class GateData:
    """What the gate measures every encoder on, all held out from training.

    ``target``: uint8 ``(N, C, H, W)`` target images of the val split (no training step reads it);
    ``target_labels``: their labels ``(N,)`` when every one has a label (val labels may serve a
    label-using rule; test labels never do), else None; ``source``: ``(memory images, memory labels,
    query images, query labels, num classes)`` with memory rows from the source train split and
    query rows from its val split, or None; ``split``: where the target images came from, as said in
    the decision (``val``, or ``train`` for a dataset ingested without a val split)."""

    target: Any
    target_labels: Any = None
    source: tuple | None = None
    split: str = "val"
    excluded: int = 0  # target rows left out because a compared encoder trained on them
    excluded_source: int = 0  # source query rows left out likewise


def nhwc_keys(images) -> list[bytes]:
    """Content keys (:func:`uft.data.ingest.content_keys`) of uint8 ``(N, C, H, W)`` images, as published (HWC)."""
    from uft.data.ingest import content_keys

    x = np.ascontiguousarray(np.asarray(images).transpose(0, 2, 3, 1))
    return [k.tobytes() for k in content_keys(x)]


def gate_data(target_uri: str, source_uri: str, max_images: int, seed: int, *, exclude: frozenset[bytes] = frozenset(),
              exclude_source: frozenset[bytes] | None = frozenset()) -> GateData:
    """The published target/source datasets → :class:`GateData` (val splits; see its doc).

    ``exclude``: content keys of target rows a compared encoder trained on (:mod:`uft.lineage`): they
    are not scored. ``exclude_source``: likewise for the source queries; None = it cannot be told
    what the encoders trained on in the source, so source retention is not measured."""
    from uft.data.dataset import load_dataset

    tgt = load_dataset(target_uri)
    split = "val" if int((tgt.split == "val").sum()) >= 4 else "train"
    rows = tgt.subset(split)
    n_excluded = 0
    if exclude:
        keep = np.asarray([k not in exclude for k in nhwc_keys(rows.images.numpy())], bool)
        n_excluded = int((~keep).sum())
        rows = rows.where(keep)
    y = rows.labels.numpy()
    counts = np.bincount(y[y >= 0]) if (y >= 0).any() else np.zeros(0, int)
    counts = counts[counts > 0]
    # The val probe draws VAL_SHOTS per class and scores the rest: every class needs more rows than that.
    usable = split == "val" and bool((y >= 0).all()) and len(counts) >= 2 and int(counts.min()) > VAL_SHOTS
    labels = rows.labels if usable else None
    source, n_src = None, 0
    if exclude_source is not None:
        source = _source_eval(source_uri, max_images, seed)
        if source is not None and exclude_source:
            keep = np.asarray([k not in exclude_source for k in nhwc_keys(source[2].numpy())], bool)
            n_src = int((~keep).sum())
            source = (*source[:2], source[2][keep], source[3][keep], source[4]) if keep.sum() >= 1 else None
    return GateData(rows.images, labels, source, split, n_excluded, n_src)


@dataclass
class _Draws:
    shots: int = VAL_SHOTS
    draws: int = 10  # split_probe's default


def paired_outcomes(encoder: torch.nn.Module, data: GateData, seed: int, max_images: int) -> dict[str, Any]:
    """Per-row outcomes of ``encoder`` on exactly the rows, views and label draws that
    :func:`uft.evaluate.label_free.encoder_signals` scores (same sampling, same seed) → ``{"rows": digest
    of the scored rows' content keys, "retrieval": (n,) share of the image's two views that retrieve
    each other, "probe": (D, n) 1 right / 0 wrong / -1 support of draw d (with val labels)}``.

    Two encoders scored on the same data get the same rows, views and draws, so the outcomes pair
    up row by row (:func:`uft.promote.policy.paired_gain`); their means are ``view_retrieval`` and
    ``val_probe``."""
    import torch

    from uft.data.augment import AugmentConfig, augment
    from uft.evaluate.features import extract_features
    from uft.evaluate.label_free import _unit
    from uft.evaluate.linear import few_label_indices, fit_probe
    from uft.store import sha256_bytes

    images = data.target
    g = torch.Generator().manual_seed(seed)  # the draws of encoder_signals, in its order
    idx = torch.randperm(len(images), generator=g)[:max_images].sort().values
    raw = images[idx]
    x = raw.float().div(255) if raw.dtype == torch.uint8 else raw.float()
    aug = AugmentConfig()
    v1, v2 = augment(x.clone(), aug, g), augment(x.clone(), aug, g)
    out: dict[str, Any] = {"rows": sha256_bytes(b"".join(nhwc_keys(raw.numpy())) if raw.dtype == torch.uint8
                                                else raw.numpy().tobytes())}
    f1, f2 = (extract_features(encoder, v).numpy().astype(np.float64) for v in (v1, v2))
    if not (np.isfinite(f1).all() and np.isfinite(f2).all()):
        return out  # a diverged encoder: no outcomes, so no interval (the collapse rule holds it anyway)
    z = np.concatenate([_unit(f1), _unit(f2)])
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    n = len(x)
    hit = sim.argmax(axis=1) == np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    out["retrieval"] = ((hit[:n].astype(float) + hit[n:]) / 2).tolist()
    if data.target_labels is not None:
        f = extract_features(encoder, x).numpy().astype(np.float64)
        y = data.target_labels[idx].numpy()
        probe = np.full((_Draws.draws, n), -1, np.int8)
        for d in range(_Draws.draws):
            sup = few_label_indices(y, _Draws.shots, seed * 1000 + d)
            rest = np.setdiff1d(np.arange(n), sup)
            scaler, clf = fit_probe(f[sup], y[sup])
            probe[d, rest] = clf.predict(scaler.transform(f[rest])) == y[rest]
        out["probe"] = probe.tolist()
    return out


def _signals(encoder: torch.nn.Module, base: torch.nn.Module, data: GateData, seed: int, max_images: int,
             paired: bool = True) -> dict[str, Any]:
    """``paired``: also the per-row outcomes the gain's paired bootstrap resamples (not needed for
    the untrained floor, which reads only the numeric signals: :func:`uft.evaluate.label_free.floor_of`)."""
    from uft.evaluate.label_free import encoder_signals

    s = encoder_signals(encoder, data.target, base=base, source=data.source, target_labels=data.target_labels,
                        max_images=max_images, seed=seed)
    s["signals_split"] = data.split
    if paired:
        s["paired"] = paired_outcomes(encoder, data, seed, max_images)
    s["excluded_rows"] = data.excluded
    return s


def untrained_like(encoder_uri: str, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised encoder of the same architecture as the published ``encoder_uri``: the
    floor below which an encoder is degenerate (:func:`uft.evaluate.label_free.collapsed`)."""
    import torch

    from uft.models.artifact import load_encoder
    from uft.models.encoders import build_encoder

    spec = load_encoder(encoder_uri)[1]["spec"]
    torch.manual_seed(seed)
    return build_encoder(spec["name"], in_channels=spec["in_channels"], **spec.get("kwargs", {})).eval()


def _source_eval(source_uri: str, max_images: int, seed: int):
    """(memory images, labels, query images, labels, num classes) of the labelled source — memory from
    its train split, queries from its val split (held out from pretraining) — or None."""
    import torch

    from uft.data.stream import load_rows, split_rows
    from uft.store import read_manifest

    if not source_uri:
        return None
    # Labels and row ids from the shards' small columns; pixels only for the sampled rows (the
    # source may be far larger than memory).
    rows = split_rows(source_uri)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    (ytr, rtr), (yva, rva) = ((y[y >= 0], r[y >= 0]) for y, r in (rows.get("train", empty), rows.get("val", empty)))
    if len(ytr) < 2 or len(yva) < 1:
        return None
    g = np.random.default_rng(seed)
    i = np.sort(g.permutation(len(ytr))[: 2 * max_images])
    j = np.sort(g.permutation(len(yva))[: max_images])
    # load_rows returns rows in dataset order, as the sorted picks are
    return (load_rows(source_uri, rtr[i]), torch.from_numpy(ytr[i]), load_rows(source_uri, rva[j]),
            torch.from_numpy(yva[j]), len(read_manifest(source_uri)[0]["classes"]))


class _GateInputs:
    """What the signals are measured on, each loaded on first use: a rerun whose signals are all
    recorded (:func:`_recorded_signals`) and whose encoder is already registered loads nothing."""

    def __init__(self, encoder_uri: str, base_encoder_uri: str, target_uri: str, source_uri: str, max_images: int,
                 seed: int, exclude: frozenset[bytes] = frozenset(), exclude_source: frozenset[bytes] | None = frozenset()):
        self.encoder_uri, self.base_encoder_uri, self.target_uri = encoder_uri, base_encoder_uri, target_uri
        self.source_uri, self.max_images, self.seed = source_uri, max_images, seed
        self.exclude, self.exclude_source = exclude, exclude_source

    @cached_property
    def encoder(self) -> torch.nn.Module:
        from uft.models.artifact import load_encoder

        return load_encoder(self.encoder_uri)[0]

    @cached_property
    def base(self) -> torch.nn.Module:
        from uft.models.artifact import load_encoder

        return load_encoder(self.base_encoder_uri)[0]

    @cached_property
    def data(self) -> GateData:
        return gate_data(self.target_uri, self.source_uri, self.max_images, self.seed, exclude=self.exclude,
                         exclude_source=self.exclude_source)

    def signals(self, encoder: torch.nn.Module, paired: bool = True) -> dict[str, Any]:
        return _signals(encoder, self.base, self.data, self.seed, self.max_images, paired)


def domain_shift(base: torch.nn.Module, old_images, new_images, max_images: int = 500, seed: int = 0) -> float:
    """Held-out accuracy of a linear classifier telling ``old_images`` from ``new_images`` (uint8
    ``(N, C, H, W)`` each) by their ``base`` features, balanced classes, 2-fold → [0, 1]; 0.5 = the
    same distribution. Images of another size or channel count → 1.0 (another domain outright)."""
    from uft.evaluate.features import extract_features
    from uft.evaluate.linear import linear_probe_accuracy

    if tuple(old_images.shape[1:]) != tuple(new_images.shape[1:]):
        return 1.0
    g = np.random.default_rng(seed)
    n = min(len(old_images), len(new_images), max_images)
    if n < 8:
        return 0.5  # too few images to tell: no evidence of a shift
    a = extract_features(base, old_images[np.sort(g.permutation(len(old_images))[:n])]).numpy()
    b = extract_features(base, new_images[np.sort(g.permutation(len(new_images))[:n])]).numpy()
    x, y = np.concatenate([a, b]), np.repeat([0, 1], n)
    fold = g.permutation(2 * n) % 2
    return float(np.mean([linear_probe_accuracy(x[fold != k], y[fold != k], x[fold == k], y[fold == k])
                          for k in (0, 1)]))




def _champion_shift(champ_v, target_sha: str, data: "_GateInputs") -> float | None:
    """:func:`domain_shift` between the champion's target (its version tag ``uft.target_uri``) and this
    run's, on their held-out images; None when it is the same target or the old one is not readable."""
    from uft.data.dataset import load_dataset

    old_uri = champ_v.tags.get("uft.target_uri", "")
    if not old_uri or champ_v.tags.get("uft.target_sha") == target_sha:
        return None
    try:
        old = load_dataset(old_uri)
    except (UftError, OSError, ValueError, KeyError):
        return None
    old_split = "val" if int((old.split == "val").sum()) >= 4 else "train"
    return domain_shift(data.base, old.subset(old_split).images, data.data.target, seed=data.seed)
