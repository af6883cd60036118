"""SSL objectives as pure functions. Every function documents its shapes."""

from __future__ import annotations

from typing import Sequence

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


def act_multiview_loss(zs: Sequence[torch.Tensor], lam: float = 0.05) -> torch.Tensor:
    """ACT over V ≥ 2 views, exactly as the reference code (``methods/act.py``) computes it.

    zs: V projector outputs ``(N, d)``, one per view of the same N images. Pairs ``(i, j)``,
    ``i < j``, are visited in order ((0,1), (0,2), …, (V−2,V−1): ``P = V(V−1)/2`` pairs). With
    ``Z = √d · normalize(X)`` and ``C_p = Z_iᵀ Z_j / N`` for pair p, pair p contributes

        ``mean_n ‖Z_i,n − Z_j,n‖² + lam · ⟨C_p − I, G_p⟩_F``

    where the adversary is ``G_1 = C_1 − I`` itself (*not* detached) for the first pair and
    ``G_p = (C_{p−1} − I).detach()``, the previous pair's, for the others. Returns the mean over the
    P pairs (a scalar).

    Gradient w.r.t. ``C_p``: ``2·lam·(C_1 − I)/P`` for the first pair (the square), ``lam·G_p/P``
    for the others. So for two views this equals :func:`act_loss` with ``2·lam`` (the detached
    closed-form convention of METHODS §2), and ``lam = 0.05`` is the reference default.
    """
    if len(zs) < 2:
        raise UftError(f"ACT needs at least 2 views per image, got {len(zs)}")
    n, d = zs[0].shape
    z = [d**0.5 * F.normalize(x, dim=1) for x in zs]
    eye = torch.eye(d, dtype=z[0].dtype, device=z[0].device)
    total, g, pairs = z[0].new_zeros(()), None, 0
    for i in range(len(z) - 1):
        for j in range(i + 1, len(z)):
            c_diff = z[i].T @ z[j] / n - eye
            adversary = c_diff if g is None else g
            total = total + (z[i] - z[j]).pow(2).sum(dim=1).mean() + lam * (c_diff * adversary).sum()
            g, pairs = c_diff.detach(), pairs + 1
    return total / pairs


def standardize(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(n, D)`` → each column at zero mean and unit (biased) variance over the n rows, as the
    linear probe's StandardScaler does with the training features (``eps`` guards constant columns)."""
    return (features - features.mean(0)) / torch.sqrt(features.var(0, unbiased=False) + eps)


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
