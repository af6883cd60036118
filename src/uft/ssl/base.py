"""The SSL method interface and the registry that selects a method by name.

A method owns everything the objective needs beyond the encoder (projector, predictor, momentum
encoder, queue) and turns two augmented views into a scalar loss. Losses themselves are pure
functions in ``uft.ssl.losses`` so they can be tested against reference computations.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import nn

from uft.errors import UftError


def mlp(in_dim: int, hidden: int, out: int, last_bn: bool = False) -> nn.Sequential:
    """Projector/predictor head: Linear-BN-ReLU-Linear (optionally a final affine-free BN)."""
    layers: list[nn.Module] = [
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out),
    ]
    if last_bn:
        layers.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*layers)


class SSLMethod(nn.Module):
    """Base class. Subclasses set ``name`` and implement :meth:`loss`.

    ``encoder`` maps images ``(N, C, H, W)`` in [0, 1] to features ``(N, encoder.feature_dim)``.
    """

    name: ClassVar[str] = ""

    def __init__(self, encoder: nn.Module, proj_dim: int = 64, hidden_dim: int = 256, **params: float):
        super().__init__()
        self.encoder = encoder
        self.proj_dim = proj_dim
        self.hidden_dim = hidden_dim
        self.params = dict(params)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views ``(N, C, H, W)`` → (scalar loss, encoder features of ``x1`` ``(N, D)``).

        The features are returned so regularisers (RadReg) reuse the forward pass.
        """
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self) -> None:
        """Hook after each optimiser step (EMA / momentum updates). Default: nothing."""


class ProjectedPairMethod(SSLMethod):
    """Encoder → MLP projector → a loss on the two views' projections (SimCLR, Barlow, ACT).

    Subclasses implement :meth:`pair_loss`; methods with extra branches (MoCo, BYOL) override
    :meth:`loss` instead.
    """

    def __init__(self, encoder: nn.Module, proj_dim: int = 64, hidden_dim: int = 256, **params: float):
        super().__init__(encoder, proj_dim, hidden_dim, **params)
        self.projector = mlp(encoder.feature_dim, hidden_dim, proj_dim)

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Projections ``(N, proj_dim)`` of view 1 and view 2 → scalar loss."""
        raise NotImplementedError

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.cat([x1, x2]))  # one forward for both views: BN sees the whole batch
        z1, z2 = self.projector(h).chunk(2)
        return self.pair_loss(z1, z2), h[: x1.shape[0]]


REGISTRY: dict[str, type[SSLMethod]] = {}


def register(cls: type[SSLMethod]) -> type[SSLMethod]:
    REGISTRY[cls.name] = cls
    return cls


def build_method(name: str, encoder: nn.Module, **kwargs) -> SSLMethod:
    """Instantiate a registered method; an unknown name lists the valid ones."""
    _load_all()
    if name not in REGISTRY:
        raise UftError(f"unknown SSL method {name!r}: choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](encoder, **kwargs)


def method_names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


def _load_all() -> None:
    # Importing the modules registers them; done lazily to keep import of uft.ssl cheap.
    import importlib
    import pkgutil

    import uft.ssl as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in {"base", "losses", "train"}:
            importlib.import_module(f"uft.ssl.{mod.name}")


LossFn = Callable[..., torch.Tensor]
