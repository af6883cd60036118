"""One holistic run: every method from one start, scored on the target test split."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from uft.errors import UftError
from uft.evaluate.holistic_metrics import ausuc, holistic_accuracies, ncm_logits, per_class_accuracy
from uft.transfer.holistic.calibration import apply_calibration, gamma_alg, gamma_pcv
from uft.transfer.holistic.config import HolisticConfig, _images, _labels, _seen, filter_seen
from uft.transfer.holistic.methods import finetune
from uft.transfer.holistic.training import _eval_mode, predict


def run_holistic(
    method_cfg: HolisticConfig,
    source_encoder: nn.Module,
    source_head: nn.Linear,
    target_train: tuple[torch.Tensor, torch.Tensor],
    target_test: tuple[torch.Tensor, torch.Tensor],
    seen: Sequence[int],
    num_classes: int,
    *,
    target_val: tuple[torch.Tensor, torch.Tensor] | None = None,
    adapted: tuple[nn.Module, nn.Linear] | None = None,
) -> dict:
    """Adapt the source classifier with ``method_cfg`` and evaluate on the full target test set.

    target_train / target_val / target_test: (images (N, C, H, W), labels (N,)) over all classes.
    Splits have one role each: the method trains on the seen-class *train* images; every choice
    (PCV's γ) reads the seen-class *val* images (required for ``calibration="pcv"``, never
    trained on); the *test* split only reports. ALG's γ comes from the finetuning (train) logits,
    as its definition says. Unseen-class train samples reach only the ``oracle`` finetune and the
    NCM probe. ``adapted``: this method's already finetuned (encoder, head) (e.g. to calibrate one
    finetune two ways; finetuning is deterministic in ``seed``, so the rows are the same).

    Returns ``method``, ``overall``, ``seen``, ``unseen``, ``seen_seen``, ``unseen_unseen`` (on
    calibrated logits when calibrating), ``ausuc``, ``ncm`` / ``ncm_seen`` / ``ncm_unseen`` (class
    means of the adapted features over the whole target training set), ``per_class`` (list of
    num_classes floats, nan = no test sample), ``n_test``; when calibrated ``gamma`` and
    ``gamma_split`` (the split γ was chosen on); with PCV also ``gamma_alg``, ``pcv`` (per-split
    floors, feasibility, :func:`gamma_pcv`), ``pcv_fallback`` (1.0 when ALG's γ was used) and
    ``pcv_feasible_splits``. The source modules are not modified.
    """
    cfg = method_cfg
    if source_head.out_features != num_classes:
        raise UftError(
            f"source_head has {source_head.out_features} outputs but num_classes={num_classes}: pass matching values"
        )
    s = _seen(seen, num_classes)
    full_x = _images(target_train[0], "target_train images")
    full_y = _labels(target_train[1], len(full_x), num_classes, "target_train labels")
    test_x = _images(target_test[0], "target_test images")
    test_y = _labels(target_test[1], len(test_x), num_classes, "target_test labels")
    seen_x, seen_y = filter_seen(full_x, full_y, s)  # the only training data non-oracle methods get
    if cfg.calibration == "pcv" and target_val is None:
        raise UftError("calibration 'pcv' picks γ on held-out images: pass target_val (the val split)")

    if adapted is not None:
        enc, head = adapted
    elif cfg.method == "oracle":
        enc, head = finetune(source_encoder, source_head, full_x, full_y, s, cfg)
    else:
        enc, head = finetune(source_encoder, source_head, seen_x, seen_y, s, cfg)

    test_feats, logits = predict(enc, head, test_x, cfg.eval_batch_size)
    out: dict = {"method": cfg.method, "n_test": len(test_y)}
    if cfg.calibration in ("alg", "pcv"):
        g_alg = gamma_alg(predict(enc, head, seen_x, cfg.eval_batch_size)[1], seen_y, s)
        out.update(gamma=g_alg, gamma_split="train")
    if cfg.calibration == "pcv":
        val_x = _images(target_val[0], "target_val images")
        val_y = _labels(target_val[1], len(val_x), num_classes, "target_val labels")
        pcv = gamma_pcv(source_encoder, source_head, (seen_x, seen_y), filter_seen(val_x, val_y, s), s, cfg,
                        fallback_gamma=g_alg)
        out.update(gamma=pcv["gamma"], gamma_alg=g_alg, gamma_split="val" if not pcv["fallback"] else "train (ALG fallback)",
                   pcv=pcv, pcv_fallback=float(pcv["fallback"]), pcv_feasible_splits=pcv["feasible_splits"])
    cal = apply_calibration(logits, s, out["gamma"]) if "gamma" in out else logits
    out.update(holistic_accuracies(cal, test_y, s))
    has_both = bool(torch.isin(test_y, torch.tensor(s)).any()) and not bool(torch.isin(test_y, torch.tensor(s)).all())
    out["ausuc"] = ausuc(logits, test_y, s) if has_both else float("nan")
    out.update(_ncm_probe(enc, full_x, full_y, test_feats, test_y, s, num_classes, cfg.eval_batch_size))
    out["per_class"] = per_class_accuracy(cal, test_y, num_classes).tolist()
    return out


def _ncm_probe(enc, full_x, full_y, test_feats, test_y, seen, num_classes, batch_size) -> dict[str, float]:
    """Analysis probe (uses labels of *all* target training classes, never feeds back into training)."""
    with torch.no_grad(), _eval_mode(enc):
        train_feats = torch.cat([enc(full_x[i : i + batch_size]) for i in range(0, len(full_x), batch_size)])
    acc = holistic_accuracies(ncm_logits(train_feats, full_y, test_feats, num_classes), test_y, seen)
    return {"ncm": acc["overall"], "ncm_seen": acc["seen"], "ncm_unseen": acc["unseen"]}
