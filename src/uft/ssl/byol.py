"""BYOL (Grill et al. 2020): online encoder + projector + predictor regress an EMA target."""

from __future__ import annotations

import copy

import torch
from torch import nn

from uft.ssl.base import SSLMethod, mlp, register
from uft.ssl.losses import byol_loss
from uft.ssl.moco import ema_update


@register
class BYOL(SSLMethod):
    """Online: encoder → projector → predictor; target: EMA copies of encoder and projector.

    Knobs:
        tau: target EMA coefficient, ``θ_t ← τ θ_t + (1 − τ) θ_o`` after every step (0.99; the
            paper's cosine schedule of τ towards 1 is left out: finetuning runs are short).

    The loss is symmetric, ``byol_loss(p1, z2) + byol_loss(p2, z1)`` (a sum, as in the paper, so it
    lies in [0, 8]). The target branch receives no gradient. The target is a copy of the encoder
    taken at construction: build the method *after* loading pretrained encoder weights.
    """

    name = "byol"

    def __init__(self, encoder: nn.Module, proj_dim: int = 64, hidden_dim: int = 256, tau: float = 0.99):
        super().__init__(encoder, proj_dim, hidden_dim, tau=tau)
        self.tau = tau
        self.projector = mlp(encoder.feature_dim, hidden_dim, proj_dim)
        self.predictor = mlp(proj_dim, hidden_dim, proj_dim)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for module in (self.target_encoder, self.target_projector):
            for p in module.parameters():
                p.requires_grad_(False)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x1.shape[0]
        h = self.encoder(torch.cat([x1, x2]))
        p1, p2 = self.predictor(self.projector(h)).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_encoder(torch.cat([x1, x2]))).chunk(2)
        return byol_loss(p1, z2) + byol_loss(p2, z1), h[:n]

    @torch.no_grad()
    def after_step(self) -> None:
        """EMA update of the target branch."""
        ema_update(self.encoder, self.target_encoder, self.tau)
        ema_update(self.projector, self.target_projector, self.tau)
