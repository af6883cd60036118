"""Adversarial Contrastive Training (ACT, arXiv 2408.08533): alignment + adversarial decorrelation."""

from __future__ import annotations

import torch
from torch import nn

from uft.ssl.base import SSLMethod, mlp, register
from uft.ssl.losses import act_loss


@register
class ACT(SSLMethod):
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
        self.projector = mlp(encoder.feature_dim, hidden_dim, proj_dim)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.cat([x1, x2]))
        z1, z2 = self.projector(h).chunk(2)
        return act_loss(z1, z2, self.lam), h[: x1.shape[0]]
