"""The SGD loop every adaptation method shares: recipes, losses, batches, schedules."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from uft.errors import UftError
from uft.transfer.holistic.config import BatchHook, HolisticConfig


@contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@torch.no_grad()
def predict(encoder: nn.Module, head: nn.Module, images: torch.Tensor, batch_size: int = 512):
    """Eval-mode forward: images (N, C, H, W) → (features (N, D), logits (N, num_classes))."""
    feats, logits = [], []
    with _eval_mode(encoder, head):
        for i in range(0, len(images), batch_size):
            f = encoder(images[i : i + batch_size])
            feats.append(f)
            logits.append(head(f))
    return torch.cat(feats), torch.cat(logits)


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` index batches of size min(batch_size, n), walking through fresh permutations."""
    if n < 2:
        raise UftError(f"training set has {n} sample(s): BatchNorm training needs at least 2")
    b = min(batch_size, n)
    buf = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(buf) < b:
            buf = torch.cat([buf, torch.randperm(n, generator=gen)])
        yield buf[:b]
        buf = buf[b:]


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def feature_rank_entropy(feats: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """feats (B, D) → scalar entropy of the normalised singular values ``σ / Σσ`` of the batch
    feature matrix (uncentred). High = features spread over many directions; maximised as a
    rank regulariser (an ablation: the paper's exact formula is unconfirmed)."""
    s = torch.linalg.svdvals(feats)
    p = s / s.sum().clamp_min(eps)
    return -(p * torch.log(p.clamp_min(eps))).sum()


@dataclass
class _Recipe:
    """What the training loss contains, resolved from the config and the method name."""

    frozen_head: bool
    distill_w: float
    feat_w: float
    rank_w: float
    temperature: float
    unseen: torch.Tensor  # (|U|,) class ids that get distilled when selective
    selective: bool
    teacher: tuple[nn.Module, nn.Module] | None


def _recipe(encoder: nn.Module, head: nn.Module, seen: list[int], cfg: HolisticConfig, method: str) -> _Recipe:
    distill_w = cfg.distill_weight if cfg.distill_weight is not None else (1.0 if method == "distill" else 0.0)
    rank_w = cfg.rank_reg_weight if cfg.rank_reg_weight is not None else (0.1 if method == "rank_reg" else 0.0)
    unseen = torch.tensor([c for c in range(head.out_features) if c not in set(seen)], dtype=torch.long)
    if distill_w > 0 and cfg.distill_selective and len(unseen) == 0:
        raise UftError("distill_selective=True but every class is seen: set distill_selective=False")
    teacher = None
    if distill_w > 0 or cfg.feature_distill_weight > 0:
        # The frozen source model: a copy of the model as it enters finetuning, in eval mode.
        t_enc, t_head = copy.deepcopy(encoder).eval(), copy.deepcopy(head).eval()
        for p in [*t_enc.parameters(), *t_head.parameters()]:
            p.requires_grad_(False)
        teacher = (t_enc, t_head)
    return _Recipe(
        frozen_head=cfg.frozen_head or method == "frozen_head",
        distill_w=distill_w,
        feat_w=cfg.feature_distill_weight,
        rank_w=rank_w,
        temperature=cfg.distill_temperature,
        unseen=unseen,
        selective=cfg.distill_selective,
        teacher=teacher,
    )


def _loss(encoder: nn.Module, head: nn.Module, xb: torch.Tensor, yb: torch.Tensor, r: _Recipe) -> torch.Tensor:
    """CE over all C logits + the recipe's regularisers. xb (B, C, H, W), yb (B,) → scalar."""
    feats = encoder(xb)
    logits = head(feats)
    loss = F.cross_entropy(logits, yb)
    if r.teacher is not None:
        with torch.no_grad():
            t_feats = r.teacher[0](xb)
            t_logits = r.teacher[1](t_feats)
        if r.distill_w > 0:
            z, zt = (logits[:, r.unseen], t_logits[:, r.unseen]) if r.selective else (logits, t_logits)
            t = r.temperature
            log_p, log_q = F.log_softmax(z / t, dim=1), F.log_softmax(zt / t, dim=1)
            kl = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")  # KL(teacher ‖ student)
            loss = loss + r.distill_w * t * t * kl
        if r.feat_w > 0:
            loss = loss + r.feat_w * F.mse_loss(feats, t_feats)
    if r.rank_w > 0:
        loss = loss - r.rank_w * feature_rank_entropy(feats)
    return loss


def _sgd(
    encoder: nn.Module,
    head: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    r: _Recipe,
    *,
    lr: float,
    backbone_mult: float,
    cfg: HolisticConfig,
    steps: int,
    gen: torch.Generator,
    progress: Callable[[int], float],
    on_batch: BatchHook | None = None,
    info: dict | None = None,
) -> None:
    """Train ``encoder`` (+ ``head`` unless frozen) in place for ``steps`` SGD steps.

    ``progress(t)`` ∈ [0, 1] sets the cosine lr factor of step t (so LOLSGD rounds share one
    schedule). The head is excluded from the optimiser and has ``requires_grad`` off when frozen.
    """
    groups = [{"params": list(encoder.parameters()), "lr": lr * backbone_mult, "base_lr": lr * backbone_mult}]
    if r.frozen_head:
        head.requires_grad_(False)
    else:
        groups.append({"params": list(head.parameters()), "lr": lr, "base_lr": lr})
    opt = torch.optim.SGD(
        groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay
    )
    encoder.train()
    head.train()
    info = info or {"round": 0, "local": 0, "left_out": frozenset()}
    for t, idx in enumerate(_batches(len(x), cfg.batch_size, steps, gen)):
        xb, yb = x[idx], y[idx]
        if on_batch is not None:
            on_batch(yb, info)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * _cosine(progress(t))
        loss = _loss(encoder, head, xb, yb, r)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    encoder.eval()
    head.eval()


