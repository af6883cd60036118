"""Barlow Twins (Zbontar et al. 2021): cross-correlation of the two views' projections → identity."""

from __future__ import annotations

import torch
from torch import nn

from uft.ssl.base import ProjectedPairMethod, register
from uft.ssl.losses import barlow_twins_loss


@register
class BarlowTwins(ProjectedPairMethod):
    """Encoder → projector (Linear-BN-ReLU-Linear; the paper uses three 8192-wide layers, far too
    large for small target sets) → :func:`barlow_twins_loss`.

    Knobs:
        lambd: weight of the off-diagonal (redundancy-reduction) term (5e-3, the paper's value;
            with a small ``proj_dim`` a larger value such as 1/proj_dim is also reasonable).
    """

    name = "barlow"

    def __init__(self, encoder: nn.Module, proj_dim: int = 64, hidden_dim: int = 256, lambd: float = 5e-3):
        super().__init__(encoder, proj_dim, hidden_dim, lambd=lambd)
        self.lambd = lambd

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return barlow_twins_loss(z1, z2, self.lambd)
