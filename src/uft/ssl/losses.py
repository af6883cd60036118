"""SSL objectives as pure functions. Every function documents its shapes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uft.errors import UftError


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent loss.

    z1, z2: ``(N, d)`` projections of two views; row i of each is a positive pair, the other
    ``2N - 2`` samples are negatives. Returns a scalar, the mean over all ``2N`` anchors.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE loss (He et al. 2020; v2 settings: T = 0.2).

    q: ``(N, d)`` queries (online branch); k: ``(N, d)`` keys of the other view (momentum branch);
    queue: ``(K, d)`` keys of earlier batches, the negatives. All three are L2-normalised here
    (a no-op when already normalised). ``k`` and ``queue`` are constants: they are detached, so only
    ``q`` receives gradient. Each query's positive is its own key, its negatives are all K queue
    entries (no in-batch negatives). Returns the mean over the N queries of
    ``-log softmax([q·k, q·queue_1, …, q·queue_K] / T)[0]``.
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    queue = F.normalize(queue.detach(), dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    l_neg = q @ queue.T  # (N, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss (Grill et al. 2020), one direction.

    p: ``(N, d)`` online predictions; z: ``(N, d)`` target projections of the other view, detached
    (the target network receives no gradient). Returns ``mean_i (2 - 2 cos(p_i, z_i))`` = the mean
    squared distance of the L2-normalised vectors, in [0, 4].
    """
    cos = F.cosine_similarity(p, z.detach(), dim=1)
    return (2 - 2 * cos).mean()


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021): drive the cross-correlation of two views to identity.

    z1, z2: ``(N, d)`` projections. Each column is standardised over the batch (biased variance,
    ``eps`` inside the square root, as an affine-free BatchNorm); ``C = z1nᵀ z2n / N`` is ``(d, d)``.
    Returns ``Σ_i (1 - C_ii)² + lambd · Σ_{i≠j} C_ij²`` (a sum over dimensions, as in the paper,
    so the scale grows with d).
    """
    n = z1.shape[0]
    z1n = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
    z2n = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
    c = z1n.T @ z2n / n
    diag = torch.diagonal(c)
    on_diag = (1 - diag).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return on_diag + lambd * off_diag


def act_loss(x0: torch.Tensor, x1: torch.Tensor, lam: float = 0.05) -> torch.Tensor:
    """Adversarial Contrastive Training loss (ACT, arXiv 2408.08533), two views.

    x0, x1: ``(N, d)`` projector outputs of two views. Rows are rescaled to norm √d,
    ``Z = √d · normalize(X)``; ``C = Z0ᵀ Z1 / N`` is ``(d, d)``. Returns

        ``mean_i ‖Z0_i − Z1_i‖² + lam · ⟨C − I, G⟩_F``  with  ``G = (C − I).detach()``.

    Convention ("detached closed-form adversary"): ACT is ``min_θ max_G  mean‖Z0−Z1‖² +
    lam·(⟨C−I, G⟩ − ½‖G‖²_F)``; the inner max is attained at ``G* = C − I``. By Danskin's
    theorem the gradient of the min-max objective is the gradient with ``G*`` held fixed, which is
    exactly what detaching gives: ``∂/∂C = lam · (C − I)``. The returned *value* is
    ``mean‖Z0−Z1‖² + lam·‖C−I‖²_F`` (twice the regulariser's value at the saddle,
    ``lam·½‖C−I‖²``; only the gradient is the min-max one).

    Relation to the reference code (``methods/act.py``): for the first view pair it uses the
    non-detached ``G = C − I``, i.e. ``lam_ref·‖C−I‖²_F`` with gradient ``2·lam_ref·(C − I)``.
    Its value equals ours at ``lam = lam_ref``, but its gradient equals ours at
    ``lam = 2·lam_ref``: the reference default 0.05 corresponds to ``lam = 0.1`` here.
    (For further pairs of a multi-view batch the reference passes the previous pair's detached
    ``C − I``; this function handles two views only.)
    """
    n, d = x0.shape
    z0 = d**0.5 * F.normalize(x0, dim=1)
    z1 = d**0.5 * F.normalize(x1, dim=1)
    c_diff = z0.T @ z1 / n - torch.eye(d, dtype=z0.dtype, device=z0.device)
    align = (z0 - z1).pow(2).sum(dim=1).mean()
    return align + lam * (c_diff * c_diff.detach()).sum()


def rademacher_complexity(features: torch.Tensor, sigma: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """Empirical Rademacher complexity of norm-bounded linear heads, for one draw of σ (RadReg).

    features: ``(n, D)`` representations φ(x_i). sigma: ``(n,)`` or ``(n, K)`` of ±1.
    ``sup_{‖w‖₂ ≤ B} (1/n) Σ_i σ_i w·φ_i = B · ‖(1/n) Σ_i σ_i φ_i‖₂`` for sigma ``(n,)``;
    for K outputs ``h(φ) = Wφ`` with ``‖W‖_F ≤ B``, ``sup (1/n) Σ_i σ_iᵀ W φ_i =
    B · ‖(1/n) Φᵀ σ‖_F``. Returns a scalar, differentiable in ``features``.
    """
    if sigma.shape[0] != features.shape[0] or sigma.dim() not in (1, 2) or features.dim() != 2:
        raise UftError(
            f"rademacher_complexity features {tuple(features.shape)} / sigma {tuple(sigma.shape)}: "
            "pass features (n, D) and sigma (n,) or (n, K) with the same n"
        )
    sigma = sigma.to(features.dtype)
    if sigma.dim() == 1:
        sigma = sigma[:, None]
    return bound * torch.linalg.matrix_norm(features.T @ sigma / features.shape[0], ord="fro")
