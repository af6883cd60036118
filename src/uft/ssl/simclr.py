"""SimCLR (Chen et al. 2020): projector + NT-Xent."""

from __future__ import annotations

import torch
from torch import nn

from uft.ssl.base import ProjectedPairMethod, register
from uft.ssl.losses import nt_xent


@register
class SimCLR(ProjectedPairMethod):
    name = "simclr"

    def __init__(self, encoder: nn.Module, proj_dim: int = 64, hidden_dim: int = 256, temperature: float = 0.2):
        super().__init__(encoder, proj_dim, hidden_dim, temperature=temperature)
        self.temperature = temperature

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent(z1, z2, self.temperature)
