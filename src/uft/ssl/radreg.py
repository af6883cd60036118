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
"""

from __future__ import annotations

import torch

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
