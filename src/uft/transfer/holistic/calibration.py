"""Post-hoc calibration of the unseen-class logits: ALG and PCV (arXiv 2409.16223)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from uft.errors import UftError
from uft.evaluate.holistic_metrics import flip_points, sweep_regions
from uft.transfer.holistic.config import HolisticConfig, _images, _labels, _seen
from uft.transfer.holistic.methods import finetune
from uft.transfer.holistic.training import predict


def apply_calibration(logits, seen: Sequence[int], gamma: float):
    """logits (N, C) → logits with ``gamma`` added to every class not in ``seen`` (same type)."""
    c = logits.shape[1]
    s = set(_seen(seen, c))
    bias = [0.0 if k in s else float(gamma) for k in range(c)]
    if isinstance(logits, torch.Tensor):
        return logits + torch.tensor(bias, dtype=logits.dtype, device=logits.device)
    return np.asarray(logits) + np.asarray(bias)


def gamma_alg(logits_train, labels_train, seen: Sequence[int]) -> float:
    """ALG γ from finetuning-data logits (N, C) and labels (N,) (all in ``seen``): mean over
    samples of (mean of the non-true seen logits) − (mean of the unseen logits). Needs |S| ≥ 2,
    |U| ≥ 1."""
    z = torch.as_tensor(np.asarray(logits_train) if not isinstance(logits_train, torch.Tensor) else logits_train)
    z = z.detach().double()
    if z.ndim != 2:
        raise UftError(f"logits_train has shape {tuple(z.shape)}: pass (N, C)")
    y = _labels(labels_train, len(z), z.shape[1], "labels_train")
    s = _seen(seen, z.shape[1])
    u = [c for c in range(z.shape[1]) if c not in set(s)]
    if len(s) < 2 or not u or len(y) == 0:
        raise UftError(
            f"gamma_alg got {len(s)} seen / {len(u)} unseen classes, {len(y)} samples: needs ≥2 / ≥1 / ≥1"
        )
    if not bool(torch.isin(y, torch.tensor(s)).all()):
        raise UftError("labels_train contain unseen classes: ALG uses seen-class finetuning data only")
    zs = z[:, s]
    non_true_seen = (zs.sum(1) - z.gather(1, y[:, None]).squeeze(1)) / (len(s) - 1)
    return float((non_true_seen - z[:, u].mean(1)).mean())


def pick_gamma(logits, labels, trained: Sequence[int], heldout_min_acc: float) -> tuple[float, bool]:
    """PCV's γ for one split. logits (N, C) of a model finetuned on classes ``trained``, on images it
    did not train on; labels (N,) from the seen classes (trained half + held-out half). γ is added to
    every class outside ``trained``. → (γ, feasible): the γ maximising overall accuracy subject to
    held-out-half accuracy ≥ ``heldout_min_acc``, or (nan, False) when no γ meets that floor (the
    published rule, ``compute_best_idx_for_better_calibration``, returns no index then). Candidates
    are one γ per region between flip points (exact); ties → the median maximiser.
    """
    z = logits.detach().double().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits, float)
    y = np.asarray(torch.as_tensor(labels).long())
    tmask = np.zeros(z.shape[1], dtype=bool)
    tmask[list(trained)] = True
    g = flip_points(z, trained)
    pred_t = np.where(tmask, z, -np.inf).argmax(1)
    pred_o = np.where(~tmask, z, -np.inf).argmax(1)
    ct, co = pred_t == y, pred_o == y
    held = ~tmask[y]
    order, ends, cands = sweep_regions(g)

    def hits(rows: np.ndarray) -> np.ndarray:  # (K+1,) correct predictions among ``rows`` per region
        a = np.concatenate([[0], np.cumsum((ct & rows)[order])[ends - 1]])
        b = np.concatenate([[0], np.cumsum((co & rows)[order])[ends - 1]])
        return (ct & rows).sum() - a + b

    overall = hits(np.ones_like(held)) / len(y)
    held_acc = hits(held) / max(int(held.sum()), 1)
    ok = held_acc >= heldout_min_acc - 1e-12
    if not ok.any():
        return float("nan"), False
    score = np.where(ok, overall, -np.inf)
    best = np.flatnonzero(score == score.max())
    return float(cands[best[len(best) // 2]]), True


def pcv_halves(seen: Sequence[int], splits: int, seed: int) -> list[list[int]]:
    """The trained half (⌈|S|/2⌉ classes, sorted) of each of ``splits`` seeded random halvings of
    ``seen``, distinct while there are enough distinct halves (5 seen classes have 10; drawn with
    repeats, 3 splits would share a half 28 % of the time, and PCV would average fewer splits)."""
    s = sorted(int(c) for c in seen)
    k = (len(s) + 1) // 2
    gen = torch.Generator().manual_seed(seed * 1009 + 1)
    halves: list[list[int]] = []
    while len(halves) < splits:
        half = sorted(s[i] for i in torch.randperm(len(s), generator=gen)[:k].tolist())
        if half not in halves or len({tuple(h) for h in halves}) >= math.comb(len(s), k):
            halves.append(half)
    return halves


def gamma_pcv(
    source_encoder: nn.Module,
    source_head: nn.Linear,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    seen: Sequence[int],
    cfg: HolisticConfig,
    fallback_gamma: float,
    method: str | None = None,
) -> dict:
    """Pseudo cross-validation γ (arXiv 2409.16223; code OSU-MLB/Fine-Tuning-Is-Fine-If-Calibrated,
    ``py/util/evaluate.py`` ``evaluate_better_calibration``), on labelled seen-class data only.

    train / val: (images (N, C, H, W), labels (N,)), all labels in ``seen``; ``val`` is never trained
    on. ``cfg.pcv_splits`` times (:func:`pcv_halves`) the source model is finetuned with the same
    recipe on the *train* images of the trained half; γ is then picked (:func:`pick_gamma`) on the
    *val* images of all seen classes, none of which the split model trained on, with the floor the
    published code uses: the source model's all-class accuracy on the held-out half (here on those
    same val images). Infeasible splits (no γ reaches the floor) are dropped and γ is the mean over
    the feasible ones, as published; when none is feasible the published code divides by zero, so
    we fall back to ``fallback_gamma`` (ALG's γ of the full model) and say so.

    One deviation, by design: the published code picks γ on the target *training* set (its
    ``oracle_training`` evaluation), where the trained half keeps its training margins; we use
    held-out val images so that γ reflects margins on images the model has not fitted.
    → {"gamma", "fallback" (bool), "feasible_splits", "splits": [{"trained", "floor", "feasible",
    "gamma", "n_val", "n_heldout"}]}.
    """
    x = _images(train[0], "train images")
    y = _labels(train[1], len(x), source_head.out_features, "train labels")
    xv = _images(val[0], "val images")
    yv = _labels(val[1], len(xv), source_head.out_features, "val labels")
    s = _seen(seen, source_head.out_features)
    if len(s) < 2:
        raise UftError(f"PCV needs at least 2 seen classes, got {s}: use calibration 'alg' or 'none'")
    st = torch.tensor(s)
    if not (bool(torch.isin(y, st).all()) and bool(torch.isin(yv, st).all())):
        raise UftError("PCV's train/val labels contain unseen classes: it uses seen-class data only (filter_seen)")
    missing = sorted(set(s) - set(yv.tolist()))
    if missing:
        raise UftError(f"PCV needs val images of every seen class; none for {missing}: ingest with a larger val_fraction")
    _, z_src = predict(source_encoder, source_head, xv, cfg.eval_batch_size)
    splits = []
    for i, trained in enumerate(pcv_halves(s, cfg.pcv_splits, cfg.seed)):
        tt = torch.tensor(trained)
        in_t = torch.isin(y, tt)
        sub = cfg.model_copy(update={"calibration": "none", "seed": cfg.seed + i + 1})
        enc, head = finetune(source_encoder, source_head, x[in_t], y[in_t], trained, sub, method)
        _, z = predict(enc, head, xv, cfg.eval_batch_size)
        held = ~torch.isin(yv, tt)
        floor = float((z_src[held].argmax(1) == yv[held]).double().mean())
        g, ok = pick_gamma(z, yv, trained, floor)
        splits.append({"trained": trained, "floor": floor, "feasible": ok, "gamma": g, "n_val": len(yv),
                       "n_heldout": int(held.sum())})
    feasible = [sp["gamma"] for sp in splits if sp["feasible"]]
    gamma = float(np.mean(feasible)) if feasible else float(fallback_gamma)
    return {"gamma": gamma, "fallback": not feasible, "feasible_splits": len(feasible), "splits": splits}


