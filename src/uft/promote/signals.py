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


def gate_data(target_uri: str, source_uri: str, max_images: int, seed: int) -> GateData:
    """The published target/source datasets → :class:`GateData` (val splits; see its doc)."""
    from uft.data.dataset import load_dataset

    tgt = load_dataset(target_uri)
    split = "val" if int((tgt.split == "val").sum()) >= 4 else "train"
    rows = tgt.subset(split)
    y = rows.labels.numpy()
    counts = np.bincount(y[y >= 0]) if (y >= 0).any() else np.zeros(0, int)
    counts = counts[counts > 0]
    # The val probe draws VAL_SHOTS per class and scores the rest: every class needs more rows than that.
    usable = split == "val" and bool((y >= 0).all()) and len(counts) >= 2 and int(counts.min()) > VAL_SHOTS
    labels = rows.labels if usable else None
    return GateData(rows.images, labels, _source_eval(source_uri, max_images, seed), split)


def _signals(encoder: torch.nn.Module, base: torch.nn.Module, data: GateData, seed: int, max_images: int) -> dict[str, Any]:
    from uft.evaluate.label_free import encoder_signals

    s = encoder_signals(encoder, data.target, base=base, source=data.source, target_labels=data.target_labels,
                        max_images=max_images, seed=seed)
    s["signals_split"] = data.split
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
                 seed: int):
        self.encoder_uri, self.base_encoder_uri, self.target_uri = encoder_uri, base_encoder_uri, target_uri
        self.source_uri, self.max_images, self.seed = source_uri, max_images, seed

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
        return gate_data(self.target_uri, self.source_uri, self.max_images, self.seed)

    def signals(self, encoder: torch.nn.Module) -> dict[str, Any]:
        return _signals(encoder, self.base, self.data, self.seed, self.max_images)


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
