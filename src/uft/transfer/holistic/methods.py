"""The adaptation methods (:data:`ADAPTERS`) and :func:`finetune`, which dispatches to them."""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
from torch import nn

from uft.errors import UftError
from uft.transfer.holistic.config import BatchHook, HolisticConfig, _images, _labels, _seen
from uft.transfer.holistic.source import adabn
from uft.transfer.holistic.training import _recipe, _sgd


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


