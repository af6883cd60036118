"""MoCo v2 (He et al. 2020; Chen et al. 2020): momentum key encoder + a queue of negatives."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from uft.errors import UftError
from uft.ssl.base import SSLMethod, mlp, register
from uft.ssl.losses import moco_infonce


@register
class MoCo(SSLMethod):
    """Query branch = encoder + projector; key branch = their EMA copies (no gradient).

    Knobs (MoCo v2 defaults unless said):
        queue_size: negatives kept (4096; MoCo uses 65536, too many for small target sets).
        momentum: key-encoder EMA coefficient m, ``θ_k ← m θ_k + (1 − m) θ_q`` (0.99).
        temperature: InfoNCE T (0.2).
        symmetric: use both view orders and enqueue both key sets (True; MoCo v2 is one-sided,
            the symmetric loss is the common choice for small batches, as in MoCo v3).

    The queue starts as random unit vectors (as in MoCo) and is updated FIFO inside :meth:`loss`
    (training mode only), after the logits are computed. The key encoder's BatchNorm uses the
    key batch's statistics (single-device; no shuffle-BN). The key branch is a copy of the
    encoder taken at construction: build the method *after* loading pretrained encoder weights.
    """

    name = "moco"

    def __init__(
        self,
        encoder: nn.Module,
        proj_dim: int = 64,
        hidden_dim: int = 256,
        queue_size: int = 4096,
        momentum: float = 0.99,
        temperature: float = 0.2,
        symmetric: bool = True,
    ):
        super().__init__(
            encoder, proj_dim, hidden_dim,
            queue_size=queue_size, momentum=momentum, temperature=temperature, symmetric=symmetric,
        )
        if queue_size < 1 or not 0.0 <= momentum <= 1.0:
            raise UftError(
                f"moco queue_size={queue_size}, momentum={momentum}: use queue_size >= 1 and momentum in [0, 1]"
            )
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        self.symmetric = symmetric
        self.projector = mlp(encoder.feature_dim, hidden_dim, proj_dim)
        self.key_encoder = copy.deepcopy(encoder)
        self.key_projector = copy.deepcopy(self.projector)
        for p in self._key_params():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _key_params(self):
        yield from self.key_encoder.parameters()
        yield from self.key_projector.parameters()

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x1.shape[0]
        h = self.encoder(torch.cat([x1, x2]))
        q1, q2 = self.projector(h).chunk(2)
        with torch.no_grad():
            k1, k2 = F.normalize(self.key_projector(self.key_encoder(torch.cat([x1, x2]))), dim=1).chunk(2)
        # A copy: the queue is changed in place below, but autograd needs its values for q's grad.
        negatives = self.queue.clone()
        loss = moco_infonce(q1, k2, negatives, self.temperature)
        if self.symmetric:
            loss = 0.5 * (loss + moco_infonce(q2, k1, negatives, self.temperature))
        if self.training:
            self._enqueue(torch.cat([k2, k1]) if self.symmetric else k2)
        return loss, h[:n]

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """FIFO: overwrite the oldest entries, wrapping around; keeps the last ``queue_size`` keys."""
        keys = keys[-self.queue_size :]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % self.queue_size
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.queue_size)

    @torch.no_grad()
    def after_step(self) -> None:
        """Momentum update of the key branch from the query branch."""
        ema_update(self.encoder, self.key_encoder, self.momentum)
        ema_update(self.projector, self.key_projector, self.momentum)


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``θ_t ← m θ_t + (1 − m) θ_o`` for parameters; buffers (BN running statistics) are copied,
    so the target's eval-mode statistics match the network it tracks. Shared with BYOL."""
    for po, pt in zip(online.parameters(), target.parameters()):
        pt.mul_(momentum).add_(po.detach(), alpha=1 - momentum)
    for bo, bt in zip(online.buffers(), target.buffers()):
        bt.copy_(bo)
