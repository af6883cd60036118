"""Adversarial Contrastive Training (ACT, arXiv 2408.08533): alignment + adversarial decorrelation."""

from __future__ import annotations

import torch
from torch import nn

from uft.errors import UftError
from uft.ssl.base import ProjectedPairMethod, register
from uft.ssl.losses import act_multiview_loss


@register
class ACT(ProjectedPairMethod):
    """Encoder → projector → :func:`act_multiview_loss` over ``views`` augmented views per image.

    Knobs (the reference code's convention, ``vincen-github/Adversarial-Contrastive-Training``,
    ``methods/act.py``):
        lam: weight λ of ``⟨C − I, G⟩``; the first view pair's adversary is ``G = C − I`` itself
            (not detached), each later pair takes the previous pair's detached ``C − I``; the loss
            is the mean over pairs. Default 0.05, the reference default. For two views this is the
            detached closed-form adversary of METHODS §2 at 2λ = 0.1 (same gradient).
        views: augmented views per image, V ≥ 2 (V(V−1)/2 pairs). Default 2, the reference's
            ``--num_samples`` default; its published recipes use 4 (6 pairs): ``act:views=4``.
            Each view costs one more encoder forward/backward per image.
    """

    name = "act"

    def __init__(self, encoder: nn.Module, proj_dim: int = 64, hidden_dim: int = 256, lam: float = 0.05,
                 views: int = 2):
        super().__init__(encoder, proj_dim, hidden_dim, lam=lam, views=views)
        if views < 2 or views != int(views):
            raise UftError(f"act views={views}: use a whole number of views >= 2 (the reference recipes use 4)")
        self.lam = lam
        self.n_views = int(views)

    def views_loss(self, zs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return act_multiview_loss(zs, self.lam)
