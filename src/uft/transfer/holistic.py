"""Holistic transfer (METHODS.md §3; arXiv 2311.01420 and its calibration follow-up 2409.16223).

A source classifier is an encoder (images ``(N, C, H, W)`` float in [0, 1] → ``(N, D)``) plus an
``nn.Linear`` head over all ``num_classes`` classes. The target training set is labelled only for
the seen classes ``S``; the goal is to adapt to the target domain without destroying the unseen
classes ``U = C \\ S``. Evaluation uses the full target test set.

Methods (:data:`HOLISTIC_METHODS`, dispatched through :data:`ADAPTERS`):

- ``source``: no adaptation. ``adabn``: BatchNorm statistics re-estimated on (unlabelled,
  seen-class) target training images.
- ``naive``: SGD on cross-entropy over all C logits with the seen-class data.
- ``frozen_head``: naive with the head left out of the optimiser (bit-identical afterwards).
- ``lolsgd``: leave-out local SGD, see :func:`_adapt_lolsgd`.
- ``distill``: naive + ``T²·KL(softmax(z_src/T) ‖ softmax(z/T))`` from the frozen source model,
  optionally only over the unseen logits (``distill_selective``), plus optional feature MSE.
- ``rank_reg``: naive − ``rank_reg_weight ·`` :func:`feature_rank_entropy` of the batch features.
- ``oracle``: naive on data of *all* classes (the only method allowed to see unseen labels).

Modifiers compose with the SGD methods: ``frozen_head=True``, ``distill_weight > 0`` /
``feature_distill_weight > 0``, ``rank_reg_weight > 0`` (e.g. ``method="lolsgd", frozen_head=True,
distill_weight=1``), and post-hoc ``calibration`` ("alg" or "pcv") for every method.

Label hygiene is structural: :func:`run_holistic` filters the target training set to the seen
classes on entry (:func:`filter_seen`); everything except the ``oracle`` finetune and the NCM
analysis probe receives only that filtered set, and :func:`finetune` refuses unseen labels for
any method but ``oracle``.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from uft.choices import one_of
from uft.errors import UftError
from uft.evaluate.holistic_metrics import (
    ausuc,
    flip_points,
    holistic_accuracies,
    ncm_logits,
    per_class_accuracy,
    sweep_regions,
)

HOLISTIC_METHODS = ("source", "adabn", "naive", "frozen_head", "lolsgd", "distill", "rank_reg", "oracle")
CALIBRATIONS = ("none", "alg", "pcv")

#: ``on_batch(labels (B,), info)`` is called before every training step; ``info`` holds
#: ``round``, ``local`` (LOLSGD indices, 0 otherwise) and ``left_out`` (frozenset of class ids).
BatchHook = Callable[[torch.Tensor, dict], None]


class HolisticConfig(BaseModel):
    """Knobs for one holistic-transfer run. Defaults suit a TinyConvNet on 16×16 digits on a CPU.

    The paper's baseline (ResNet-50, Office-Home) is SGD lr 1e-3, momentum 0.9 nesterov, wd 5e-4,
    batch 64, cosine schedule, backbone at 0.1× the head's lr; we keep everything but the lr and
    the step count, which are scaled for a small network trained from a toy source model.
    ``distill_weight`` / ``rank_reg_weight`` left at ``None`` mean 1.0 / 0.1 for the methods
    ``distill`` / ``rank_reg`` and 0 otherwise. LOLSGD ignores ``steps``: it runs
    ``lolsgd_rounds`` rounds of ``lolsgd_local_steps`` steps (``None`` = one pass over each local
    subset). Build from untrusted input with :func:`make_config` (raises ``UftError``).
    """

    model_config = ConfigDict(extra="forbid")

    method: str = "naive"
    # finetuning recipe
    lr: float = Field(0.05, gt=0, description="head lr; the backbone gets lr * backbone_lr_mult")
    backbone_lr_mult: float = Field(0.1, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    steps: int = Field(100, ge=1, description="SGD steps (cosine schedule to 0)")
    batch_size: int = Field(64, ge=2, description="≥ 2 because the encoder has BatchNorm")
    seed: int = 0
    # source model training (train_source_classifier): the standard supervised recipe
    source_lr: float = Field(0.05, gt=0, description="peak lr (SGD nesterov), linear warm-up then cosine to 0")
    source_steps: int = Field(600, ge=1)
    source_batch_size: int = Field(128, ge=2)
    source_warmup: float = Field(0.05, ge=0, lt=1, description="fraction of source_steps of linear lr warm-up")
    source_weight_decay: float = Field(5e-4, ge=0)
    source_label_smoothing: float = Field(0.1, ge=0, lt=1)
    source_augment: bool = Field(True, description="random resized crop / rotation / photometric jitter (SOURCE_AUGMENT)")
    # modifiers
    frozen_head: bool = False
    lolsgd_local_models: int = Field(4, ge=1, description="M local models per round")
    lolsgd_leave_out: float = Field(0.5, ge=0, lt=1, description="fraction of seen classes each local model drops")
    lolsgd_rounds: int = Field(10, ge=1)
    lolsgd_local_steps: int | None = Field(None, ge=1, description="K; None = one pass over the local subset")
    distill_weight: float | None = Field(None, ge=0)
    distill_temperature: float = Field(2.0, gt=0)
    distill_selective: bool = Field(False, description="distil only the unseen logits")
    feature_distill_weight: float = Field(0.0, ge=0, description="weight of MSE to the source features")
    rank_reg_weight: float | None = Field(None, ge=0)
    calibration: Literal["none", "alg", "pcv"] = "none"
    pcv_splits: int = Field(3, ge=1)
    eval_batch_size: int = Field(512, ge=1)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return one_of(v, HOLISTIC_METHODS, "holistic method")

    @model_validator(mode="after")
    def _consistent(self) -> "HolisticConfig":
        if self.method == "distill" and self.distill_weight == 0 and self.feature_distill_weight == 0:
            raise ValueError("method 'distill' with distill_weight=0 and feature_distill_weight=0: set one > 0")
        if self.method == "rank_reg" and self.rank_reg_weight == 0:
            raise ValueError("method 'rank_reg' with rank_reg_weight=0: set it > 0 or use method 'naive'")
        return self


#: The source-classifier recipe (version + default source_* knobs + augmentation): part of the
#: pipeline's holistic cache key, so a changed recipe is never answered from a cache of the old
#: one. Bump the version when train_source_classifier changes in a way the knobs do not show.
SOURCE_RECIPE = "2:" + ",".join(f"{k}={v}" for k, v in sorted(HolisticConfig().model_dump().items())
                                if k.startswith("source_"))


def make_config(**kwargs) -> HolisticConfig:
    """Validated :class:`HolisticConfig`; bad fields raise a one-line ``UftError`` naming them."""
    try:
        return HolisticConfig(**kwargs)
    except ValidationError as err:
        parts = [f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors()]
        raise UftError(f"holistic config invalid ({'; '.join(parts)}): fix these fields") from None


# ----------------------------------------------------------------------------- input checks


def _images(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 4 or not x.is_floating_point():
        raise UftError(f"{name} has shape {tuple(x.shape)} dtype {x.dtype}: pass float images (N, C, H, W) in [0, 1]")
    return x


def _labels(y, n: int, num_classes: int, name: str) -> torch.Tensor:
    y = torch.as_tensor(y).long()
    if y.shape != (n,):
        raise UftError(f"{name} has shape {tuple(y.shape)}: pass one label per image, shape ({n},)")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UftError(f"{name} spans [{int(y.min())}, {int(y.max())}]: labels must be in [0, {num_classes})")
    return y


def _seen(seen: Sequence[int], num_classes: int) -> list[int]:
    s = sorted(int(c) for c in seen)
    if not s or len(set(s)) != len(s) or s[0] < 0 or s[-1] >= num_classes:
        raise UftError(f"seen classes {list(seen)}: pass distinct class ids in [0, {num_classes}), at least one")
    return s


def filter_seen(images: torch.Tensor, labels: torch.Tensor, seen: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only samples whose label is in ``seen``: images (N, ...), labels (N,) → (n, ...), (n,)."""
    keep = torch.isin(labels, torch.as_tensor(list(seen), dtype=labels.dtype))
    return images[keep], labels[keep]


# ----------------------------------------------------------------------------- model helpers


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


# ----------------------------------------------------------------------------- source model / AdaBN



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


# ----------------------------------------------------------------------------- adapters (registry)

Adapter = Callable[
    [nn.Module, nn.Linear, torch.Tensor, torch.Tensor, list[int], HolisticConfig, str, "BatchHook | None"],
    tuple[nn.Module, nn.Linear],
]


def _adapt_source(encoder, head, x, y, seen, cfg, method, on_batch):
    return encoder.eval(), head.eval()


def _adapt_adabn(encoder, head, x, y, seen, cfg, method, on_batch):
    return adabn(encoder, x, cfg.eval_batch_size), head.eval()


def _adapt_sgd(encoder, head, x, y, seen, cfg, method, on_batch):
    """naive / frozen_head / distill / rank_reg / oracle: one SGD run with the resolved recipe."""
    r = _recipe(encoder, head, seen, cfg, method)
    gen = torch.Generator().manual_seed(cfg.seed)
    _sgd(encoder, head, x, y, r, lr=cfg.lr, backbone_mult=cfg.backbone_lr_mult, cfg=cfg, steps=cfg.steps,
         gen=gen, progress=lambda t: t / cfg.steps, on_batch=on_batch)
    return encoder, head


def _n_left_out(n_seen: int, frac: float) -> int:
    """floor(frac · |S|), at least 1 when frac > 0, at most |S| − 1 (each local model keeps data)."""
    if frac <= 0 or n_seen < 2:
        return 0
    return min(n_seen - 1, max(1, int(math.floor(frac * n_seen))))


def _average_into(module: nn.Module, states: list[dict[str, torch.Tensor]]) -> None:
    """Load the mean of ``states`` (parameters and float buffers, e.g. BN running stats) into
    ``module``; integer buffers (``num_batches_tracked``) are taken from the first state."""
    avg = {}
    for k, v in module.state_dict().items():
        vals = [s[k] for s in states]
        avg[k] = torch.stack(vals).mean(0).to(v.dtype) if v.is_floating_point() else vals[0].clone()
    module.load_state_dict(avg)


def _adapt_lolsgd(encoder, head, x, y, seen, cfg, method, on_batch):
    """Leave-out local SGD. Each of ``lolsgd_rounds`` rounds copies the current model into M local
    models; local model m draws its own random set of ``_n_left_out`` seen classes, trains K steps
    (fresh optimiser) on the target data without them, and the M models' parameters and BN buffers
    are averaged. A frozen head is never averaged (stays bit-identical). The cosine lr runs over
    the whole schedule: round r, local step t of K → progress (r + t/K) / rounds.
    """
    r = _recipe(encoder, head, seen, cfg, method)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_out = _n_left_out(len(seen), cfg.lolsgd_leave_out)
    seen_t = torch.tensor(seen, dtype=torch.long)
    for rnd in range(cfg.lolsgd_rounds):
        enc_states, head_states = [], []
        for m in range(cfg.lolsgd_local_models):
            left = seen_t[torch.randperm(len(seen), generator=gen)[:n_out]]
            keep = ~torch.isin(y, left)
            xi, yi = x[keep], y[keep]
            k = cfg.lolsgd_local_steps or math.ceil(len(yi) / min(cfg.batch_size, max(len(yi), 1)))
            enc_m, head_m = copy.deepcopy(encoder), copy.deepcopy(head)
            info = {"round": rnd, "local": m, "left_out": frozenset(left.tolist())}
            _sgd(enc_m, head_m, xi, yi, r, lr=cfg.lr, backbone_mult=cfg.backbone_lr_mult, cfg=cfg, steps=k,
                 gen=gen, progress=lambda t, rnd=rnd, k=k: (rnd + t / k) / cfg.lolsgd_rounds,
                 on_batch=on_batch, info=info)
            enc_states.append(enc_m.state_dict())
            head_states.append(head_m.state_dict())
        _average_into(encoder, enc_states)
        if not r.frozen_head:
            _average_into(head, head_states)
    return encoder.eval(), head.eval()


#: Method name → adapter ``(encoder, head, x, y, seen, cfg, method, on_batch) → (encoder, head)``.
#: Adapters may modify the modules they get; :func:`finetune` hands them copies.
ADAPTERS: dict[str, Adapter] = {
    "source": _adapt_source,
    "adabn": _adapt_adabn,
    "naive": _adapt_sgd,
    "frozen_head": _adapt_sgd,
    "lolsgd": _adapt_lolsgd,
    "distill": _adapt_sgd,
    "rank_reg": _adapt_sgd,
    "oracle": _adapt_sgd,
}


def finetune(
    encoder: nn.Module,
    head: nn.Linear,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    seen: Sequence[int],
    cfg: HolisticConfig,
    method: str | None = None,
    on_batch: BatchHook | None = None,
) -> tuple[nn.Module, nn.Linear]:
    """Adapt copies of (encoder, head) with ``method`` (default ``cfg.method``); inputs untouched.

    train_images (N, C, H, W), train_labels (N,). Every method but ``oracle`` requires all labels
    in ``seen`` (raises otherwise); ``oracle`` expects data of all classes. ``on_batch`` observes
    each training batch's labels (see :data:`BatchHook`). Returns eval-mode modules.
    """
    method = method or cfg.method
    if method not in ADAPTERS:
        raise UftError(f"unknown holistic method {method!r}: choose one of {', '.join(ADAPTERS)}")
    x = _images(train_images, "train_images")
    y = _labels(train_labels, len(x), head.out_features, "train_labels")
    s = _seen(seen, head.out_features)
    if method != "oracle" and not bool(torch.isin(y, torch.tensor(s)).all()):
        bad = sorted(set(y.tolist()) - set(s))
        raise UftError(
            f"train_labels contain unseen classes {bad}: pass seen-class data only (filter_seen) or use method 'oracle'"
        )
    return ADAPTERS[method](copy.deepcopy(encoder), copy.deepcopy(head), x, y, s, cfg, method, on_batch)


# ----------------------------------------------------------------------------- calibration


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


# ----------------------------------------------------------------------------- one run


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
