"""Adversarial Contrastive Training (ACT, arXiv 2408.08533): alignment + adversarial decorrelation."""

from __future__ import annotations

import torch
from torch import nn

from uft.ssl.base import ProjectedPairMethod, register
from uft.ssl.losses import act_loss


@register
class ACT(ProjectedPairMethod):
    """Encoder → projector → :func:`act_loss` on the two views.

    Knobs:
        lam: weight λ of the adversarial term ``⟨C − I, G⟩`` with the detached closed-form
            adversary ``G = (C − I).detach()``. Default 0.1: the reference code's default 0.05
            uses a non-detached ``G`` whose gradient equals this convention's at 2 × 0.05 (see
            :func:`act_loss`), so 0.1 reproduces the reference's training signal. (With 0.05 in
            this convention a 32-d projector collapsed in our 30-step toy runs.)
    """

    name = "act"

    def __init__(self, encoder: nn.Module, proj_dim: int = 64, hidden_dim: int = 256, lam: float = 0.1):
        super().__init__(encoder, proj_dim, hidden_dim, lam=lam)
        self.lam = lam

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return act_loss(z1, z2, self.lam)
