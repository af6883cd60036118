"""RadReg (arXiv 2403.06871): representation-induced Rademacher complexity as a regulariser.

The downstream generalisation gap of a linear head is bounded by the Rademacher complexity of the
head class composed with the representation, measured on the *downstream (target)* inputs. RadReg
adds an estimate of it to any SSL objective, so the trainer should call :func:`radreg_penalty` on
the encoder features of **target** images (for example the features ``SSLMethod.loss`` returns for
the first view, restricted to the target rows of a replay-mixed batch) and add ``μ · penalty``;
the weight μ (swept over {1e-3, 1e-2, 1e-1}) is the trainer's, not this module's.

For linear heads in a norm ball the sup over heads has a closed form
(:func:`uft.ssl.losses.rademacher_complexity`), so no adversarial head is needed. The expectation
over σ is estimated with one fresh draw per call (per batch), as in the paper.

What the head sees: by default (``standardized``) the features are first standardised per
dimension over the batch, as the linear probe's StandardScaler does, so the penalty is the
complexity of norm-ball heads on the *standardised* representation. On raw features (``raw``, the
first version) it is proportional to the feature scale, so the encoder can lower it by shrinking
its output, which the projector's BatchNorm and the standardised probes undo: a feature-norm
penalty with no effect on what a downstream head can fit. After standardisation the scale is gone;
``E_σ‖Φ̃ᵀσ‖² = tr(Φ̃Φ̃ᵀ) = nD`` is constant, so the penalty (``E_σ‖Φ̃ᵀσ‖`` ≤ √(nD) by Jensen) can
only be lowered by concentrating the batch's Gram spectrum ``Φ̃Φ̃ᵀ`` on fewer directions (more
correlated feature dimensions). Whether that helps is an empirical question: see the README.

As the paper uses it (METHODS.md §4): the trainer adds the penalty during *pretraining*, estimated
on a separate set of unlabelled *target* images (``train_ssl(..., radreg_target=...)``), and
optionally during finetuning. Two forms:

- ``closed``: the closed-form sup over linear heads in a norm ball (:func:`radreg_penalty`). On raw
  features it is the paper's formula; on standardised features its expected square is constant, so
  use it raw (``radreg_features="raw"``) to give it something to act on.
- ``adversarial``: the general form, ``sup_h (1/n) Σ σ_i h(φ̃(x_i))`` over a one-hidden-layer ReLU
  head ``h`` whose layers ([W | b]) stay in Frobenius balls: :class:`AdversarialHead` takes a few
  projected gradient-*ascent* steps on each batch's σ (warm-started from the previous batch), then
  the encoder *descends* on the same objective through the features. On standardised features
  (default) a non-linear head's fit to random signs is not fixed by the batch's scale, so this form
  can act on what a probe sees.

:func:`complexity_estimates` measures both on a fixed set of features (for evaluation).
"""

from __future__ import annotations

import torch

from torch import nn

from uft.errors import UftError
from uft.ssl.losses import rademacher_complexity, standardize


def radreg_penalty(
    features: torch.Tensor,
    generator: torch.Generator | None = None,
    bound: float = 1.0,
    n_outputs: int = 1,
    standardized: bool = True,
) -> torch.Tensor:
    """One-draw estimate of ``E_σ sup_h (1/n) Σ_i σ_i h(φ̃(x_i))`` for linear heads.

    features: ``(n, D)`` encoder features of target images; with ``standardized`` (default) each
    column is standardised over the batch first (φ̃, what the linear probe sees; needs n ≥ 2),
    else used raw (φ̃ = φ). σ is drawn uniformly from {−1, +1}
    with shape ``(n,)`` (``n_outputs == 1``: heads ``w`` with ``‖w‖₂ ≤ bound``) or
    ``(n, n_outputs)`` (heads ``W`` with ``‖W‖_F ≤ bound``), from ``generator`` when given (a
    CPU generator; σ is moved to the features' device). Returns a scalar differentiable in
    ``features``.
    """
    if features.dim() != 2 or features.shape[0] < 1:
        raise UftError(f"radreg features of shape {tuple(features.shape)}: pass a non-empty (n, D) batch")
    if standardized and features.shape[0] < 2:
        raise UftError(f"radreg on {features.shape[0]} target image(s): standardising needs at least 2 per batch")
    if n_outputs < 1:
        raise UftError(f"radreg n_outputs={n_outputs}: use a positive number of head outputs")
    shape = (features.shape[0],) if n_outputs == 1 else (features.shape[0], n_outputs)
    sigma = torch.randint(0, 2, shape, generator=generator).mul_(2).sub_(1)
    feats = standardize(features) if standardized else features
    return rademacher_complexity(feats, sigma.to(features.device), bound)


def rademacher_signs(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n,)`` float ±1, uniform, from ``generator`` (CPU)."""
    return torch.randint(0, 2, (n,), generator=generator).mul_(2).sub_(1).float()


class AdversarialHead(nn.Module):
    """``h(φ) = w₂ · relu(W₁ φ + b₁)`` with ``‖[W₁ | b₁]‖_F ≤ bound`` and ``‖w₂‖₂ ≤ bound``: the head
    class whose Rademacher complexity RadReg's adversarial form estimates. Not trained by the SSL
    optimiser: :meth:`ascend` moves it (projected gradient ascent), :meth:`correlation` is the penalty."""

    def __init__(self, dim: int, hidden: int = 64, bound: float = 1.0, generator: torch.Generator | None = None):
        super().__init__()
        if dim < 1 or hidden < 1 or bound <= 0:
            raise UftError(f"adversarial RadReg head dim={dim}, hidden={hidden}, bound={bound}: use positive values")
        self.bound = bound
        self.w1 = nn.Parameter(torch.randn(hidden, dim + 1, generator=generator), requires_grad=False)
        self.w2 = nn.Parameter(torch.randn(hidden, generator=generator), requires_grad=False)
        self._project()

    def _project(self) -> None:
        for w in (self.w1, self.w2):
            norm = w.norm()
            if norm > self.bound:
                w.mul_(self.bound / norm)

    @staticmethod
    def _forward(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ w1[:, :-1].T + w1[:, -1]) @ w2

    def correlation(self, features: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``(1/n) Σ_i σ_i h(φ_i)`` for features ``(n, dim)`` and sigma ``(n,)``; differentiable in the
        features only (the head is held fixed)."""
        return (sigma.to(features) * self._forward(features, self.w1.detach(), self.w2.detach())).mean()

    @torch.no_grad()
    def ascend(self, features: torch.Tensor, sigma: torch.Tensor, steps: int = 1, lr: float = 0.5) -> None:
        """``steps`` projected gradient-ascent steps of the correlation on detached ``features``."""
        x, s = features.detach(), sigma.to(features)
        for _ in range(steps):
            with torch.enable_grad():
                w1, w2 = self.w1.detach().requires_grad_(), self.w2.detach().requires_grad_()
                g1, g2 = torch.autograd.grad((s * self._forward(x, w1, w2)).mean(), (w1, w2))
            self.w1.add_(g1, alpha=lr)
            self.w2.add_(g2, alpha=lr)
            self._project()


def adversarial_penalty(features: torch.Tensor, head: AdversarialHead, generator: torch.Generator | None = None,
                        steps: int = 1, lr: float = 0.5, standardized: bool = True) -> torch.Tensor:
    """One-draw estimate of ``sup_h (1/n) Σ σ_i h(φ̃(x_i))`` with the adversarial head: fresh σ
    ``(n,)``, ``steps`` ascent steps of ``head`` on the detached batch, then the correlation as a
    scalar differentiable in ``features`` ``(n, D)`` (standardised per column first by default)."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise UftError(f"radreg features of shape {tuple(features.shape)}: pass an (n, D) batch with n ≥ 2")
    feats = standardize(features) if standardized else features
    sigma = rademacher_signs(features.shape[0], generator).to(features.device)
    head.ascend(feats, sigma, steps=steps, lr=lr)
    return head.correlation(feats, sigma)


@torch.no_grad()
def complexity_estimates(features: torch.Tensor, seed: int = 0, draws: int = 8, head_steps: int = 100,
                         hidden: int = 64) -> dict[str, float]:
    """Both RadReg estimates on fixed features ``(n, D)`` (evaluation, not training), mean over
    ``draws`` σ draws: ``rad_closed_raw`` (linear heads, ‖w‖ ≤ 1, raw features), ``rad_closed_std``
    (the same on standardised features, ≈ √(D/n) whatever the encoder), ``rad_adversarial`` (a fresh
    adversarial head per draw after ``head_steps`` ascent steps, standardised features) and
    ``feature_rms`` (root mean square of the raw features)."""
    g = torch.Generator().manual_seed(seed)
    f = features.float()
    std = standardize(f)
    closed_raw, closed_std, adv = [], [], []
    for _ in range(draws):
        sigma = rademacher_signs(len(f), g)
        closed_raw.append(float(rademacher_complexity(f, sigma)))
        closed_std.append(float(rademacher_complexity(std, sigma)))
        head = AdversarialHead(f.shape[1], hidden, generator=g)
        head.ascend(std, sigma, steps=head_steps)
        adv.append(float(head.correlation(std, sigma)))
    return {"rad_closed_raw": sum(closed_raw) / draws, "rad_closed_std": sum(closed_std) / draws,
            "rad_adversarial": sum(adv) / draws, "feature_rms": float(f.pow(2).mean().sqrt())}
