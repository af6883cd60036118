"""SimCLR (Chen et al. 2020): projector + NT-Xent."""

from __future__ import annotations

import torch
from torch import nn

from uft.ssl.base import SSLMethod, mlp, register
from uft.ssl.losses import nt_xent


@register
class SimCLR(SSLMethod):
    name = "simclr"

    def __init__(self, encoder: nn.Module, proj_dim: int = 64, hidden_dim: int = 256, temperature: float = 0.2):
        super().__init__(encoder, proj_dim, hidden_dim, temperature=temperature)
        self.temperature = temperature
        self.projector = mlp(encoder.feature_dim, hidden_dim, proj_dim)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.cat([x1, x2]))
        z = self.projector(h)
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.temperature), h[: x1.shape[0]]
