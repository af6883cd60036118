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
        self.n_views = 2  # augmented views per image the trainer passes to :meth:`loss`

    def loss(self, x1: torch.Tensor, x2: torch.Tensor, *more: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_views`` views ``(N, C, H, W)`` (two unless the method says otherwise) → (scalar loss,
        encoder features of ``x1`` ``(N, D)``).

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

    def views_loss(self, zs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Projections of all ``n_views`` views → scalar loss; default: :meth:`pair_loss` of two views."""
        if len(zs) != 2:
            raise UftError(f"{self.name} takes 2 views per image, got {len(zs)}")
        return self.pair_loss(*zs)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor, *more: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = (x1, x2, *more)
        h = self.encoder(torch.cat(views))  # one forward for all views: BN sees the whole batch
        return self.views_loss(self.projector(h).chunk(len(views))), h[: x1.shape[0]]


REGISTRY: dict[str, type[SSLMethod]] = {}


def register(cls: type[SSLMethod]) -> type[SSLMethod]:
    REGISTRY[cls.name] = cls
    return cls


def parse_method_spec(spec: str) -> tuple[str, dict[str, float | int]]:
    """A method spec → (registered name, knob overrides): ``"act"`` → ``("act", {})``,
    ``"act:views=4,lam=0.05"`` → ``("act", {"views": 4, "lam": 0.05})``. Checks the name and that
    each knob is a keyword of the method's constructor; a bad spec raises one UftError line."""
    import inspect

    _load_all()
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in REGISTRY:
        raise UftError(f"unknown SSL method {name!r}: choose one of {', '.join(sorted(REGISTRY))}")
    allowed = [p for p in inspect.signature(REGISTRY[name].__init__).parameters if p not in {"self", "encoder"}]
    knobs: dict[str, float | int] = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        try:
            value = float(raw)
        except ValueError:
            value = None
        if not eq or key not in allowed or value is None:
            raise UftError(f"SSL method spec {spec!r}: write name:knob=number,... with knobs from {', '.join(allowed)}")
        knobs[key] = int(value) if value.is_integer() and "." not in raw and "e" not in raw.lower() else value
    return name, knobs


def build_method(name: str, encoder: nn.Module, **kwargs) -> SSLMethod:
    """Instantiate a registered method from its name or spec (see :func:`parse_method_spec`);
    ``kwargs`` override the spec's knobs. An unknown name lists the valid ones."""
    base, knobs = parse_method_spec(name)
    return REGISTRY[base](encoder, **{**knobs, **kwargs})


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
