"""The start of every method: the source classifier, AdaBN, and the check that the start is not degenerate."""

from __future__ import annotations

import copy
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uft.errors import UftError
from uft.transfer.holistic.config import HolisticConfig, _images, _labels
from uft.transfer.holistic.training import _batches, _cosine, predict


#: Augmentation of the supervised source recipe: the SSL view augmentation (:mod:`uft.data.augment`)
#: with a milder crop (a supervised label must survive the crop) and no flips (mirrored digits
#: are other symbols).
SOURCE_AUGMENT = {"crop_scale_min": 0.6, "max_rotation_deg": 12.0, "hflip": 0.0, "brightness": 0.3, "contrast": 0.3,
                  "blur_prob": 0.3, "noise_std": 0.03}


def _warmup_cosine(t: int, steps: int, warmup: float) -> float:
    """lr factor of step t: linear warm-up over ``warmup · steps`` steps, then cosine to 0."""
    w = int(round(warmup * steps))
    if t < w:
        return (t + 1) / w
    return _cosine((t - w) / max(steps - w, 1))


def train_source_classifier(
    encoder: nn.Module, images, labels: torch.Tensor | None, num_classes: int, cfg: HolisticConfig | None = None
) -> nn.Linear:
    """Train ``encoder`` (in place) and a new linear head with cross-entropy on labelled source data.

    images (N, C, H, W) in [0, 1], labels (N,) → the trained ``nn.Linear(encoder.feature_dim,
    num_classes)``. The standard supervised recipe: SGD nesterov (momentum ``cfg.momentum``) at
    ``cfg.source_lr`` with linear warm-up and cosine decay over ``cfg.source_steps`` steps of
    ``cfg.source_batch_size``, weight decay ``cfg.source_weight_decay``, label smoothing
    ``cfg.source_label_smoothing`` and, with ``cfg.source_augment``, a fresh random view of every
    image per step (:data:`SOURCE_AUGMENT`). Seeded by ``cfg.seed``; both modules are left in eval
    mode. (Without augmentation a TinyConvNet trained on MNIST predicts one class for every UCI
    digit: see :func:`start_check`.)

    ``images`` may instead be a :class:`uft.data.stream.StreamSource` (``labels=None``): the
    batches then come from the stream (seeded epochs of shard order + window shuffle, labels
    from the shards), so the source is never whole in memory.
    """
    from uft.data.augment import AugmentConfig, augment

    from uft.data.stream import StreamSource

    cfg = cfg or HolisticConfig()
    streamed = isinstance(images, StreamSource)
    if not streamed:
        x = _images(images, "source images")
        y = _labels(labels, len(x), num_classes, "source labels")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        head = nn.Linear(encoder.feature_dim, num_classes)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 7919)  # own stream: the batch order is the same either way
    aug_cfg = AugmentConfig(**SOURCE_AUGMENT)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=cfg.source_lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                          weight_decay=cfg.source_weight_decay)
    steps = cfg.source_steps
    encoder.train()
    head.train()
    if streamed:
        batches = _stream_batches(images, num_classes, cfg.source_batch_size, steps, cfg.seed)
    else:
        batches = ((x[idx], y[idx]) for idx in _batches(len(x), cfg.source_batch_size, steps, gen))
    for t, (xb, yb) in enumerate(batches):
        for g in opt.param_groups:
            g["lr"] = cfg.source_lr * _warmup_cosine(t, steps, cfg.source_warmup)
        xb = augment(xb, aug_cfg, aug_gen) if cfg.source_augment else xb
        loss = F.cross_entropy(head(encoder(xb)), yb, label_smoothing=cfg.source_label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    encoder.eval()
    head.eval()
    return head


def _stream_batches(source, num_classes: int, batch_size: int, steps: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` (float images (b, C, H, W) in [0, 1], labels (b,)) batches read from a StreamSource."""
    n = source.num_rows()
    if n < 2:
        raise UftError(f"training set has {n} sample(s): BatchNorm training needs at least 2")
    batches = iter(source.open(min(batch_size, n), seed=seed))
    try:
        for _ in range(steps):
            b = next(batches)
            yield b.images.float().div_(255), _labels(b.labels, len(b), num_classes, "source labels")
    finally:
        batches.close()


# ----------------------------------------------------------------------------- degenerate starts

#: Defaults of :func:`start_check`: a start is degenerate below ``CHANCE_MULT ×`` chance accuracy or
#: when one class takes more than ``MAX_CLASS_SHARE`` of the predictions.
CHANCE_MULT = 2.0
MAX_CLASS_SHARE = 0.5


def start_check(predictions, labels, num_classes: int, *, chance_mult: float = CHANCE_MULT,
                max_class_share: float = MAX_CLASS_SHARE) -> dict:
    """Is a starting model's behaviour on the target meaningful? Pure; predictions / labels (N,).

    chance = the accuracy of the best constant prediction (the largest true-class frequency,
    1/C for balanced classes). Degenerate when accuracy < min(chance_mult · chance, (1 + chance)/2)
    (the second term keeps the bar below 1 for two classes), or when the most predicted class takes
    more than max(max_class_share, 1.5 · chance) of the predictions (a collapse onto one class).
    → {"accuracy", "chance", "top_class", "top_class_share", "degenerate", "reasons": [str]}.
    """
    p = np.asarray(torch.as_tensor(predictions).long()).reshape(-1)
    y = np.asarray(torch.as_tensor(labels).long()).reshape(-1)
    if len(p) != len(y) or len(y) == 0:
        raise UftError(f"start_check got {len(p)} predictions and {len(y)} labels: pass one prediction per labelled sample")
    if num_classes < 2 or y.min() < 0 or y.max() >= num_classes or p.min() < 0 or p.max() >= num_classes:
        raise UftError(f"start_check: labels/predictions must be in [0, {num_classes}) with num_classes >= 2")
    acc = float((p == y).mean())
    chance = float(np.bincount(y, minlength=num_classes).max() / len(y))
    counts = np.bincount(p, minlength=num_classes)
    top = int(counts.argmax())
    share = float(counts[top] / len(p))
    acc_bar = min(chance_mult * chance, (1 + chance) / 2)
    share_bar = max(max_class_share, 1.5 * chance)
    reasons = []
    if acc < acc_bar:
        reasons.append(f"accuracy {acc:.3f} < {acc_bar:.3f} ({chance_mult:g}x chance {chance:.3f})")
    if share > share_bar:
        reasons.append(f"class {top} takes {share:.0%} of the predictions (> {share_bar:.0%})")
    return {"accuracy": acc, "chance": chance, "top_class": top, "top_class_share": share,
            "degenerate": bool(reasons), "reasons": reasons}


def check_start(encoder: nn.Module, head: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                batch_size: int = 512) -> dict:
    """:func:`start_check` of the model (encoder, head) on labelled images (N, C, H, W), labels (N,)."""
    x = _images(images, "target images")
    y = _labels(labels, len(x), num_classes, "target labels")
    return start_check(predict(encoder, head, x, batch_size)[1].argmax(1), y, num_classes)


def start_warning(check: dict, what: str = "the source classifier") -> str:
    """One line for logs and reports: why a degenerate start makes the comparison meaningless."""
    return (f"DEGENERATE START: {what} on the target: {'; '.join(check['reasons'])}. Every holistic row is "
            "measured around a broken start; fix the source model (training recipe, framing) before reading them.")


@torch.no_grad()
def adabn(encoder: nn.Module, target_images: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """A copy of ``encoder`` whose BatchNorm running statistics are re-estimated on unlabelled
    target images (N, C, H, W): stats reset, cumulative averaging (``momentum=None``) over
    train-mode forwards without gradients; the original momentum is restored. Returned in eval mode.
    """
    x = _images(target_images, "target images")
    enc = copy.deepcopy(encoder)
    bns = [m for m in enc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    enc.train()
    for i in range(0, len(x), batch_size):
        enc(x[i : i + batch_size])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return enc.eval()


