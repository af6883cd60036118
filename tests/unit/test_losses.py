"""Each pure SSL loss against a straightforward loop-based reference: values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from uft.errors import UftError
from uft.ssl.losses import (
    act_loss,
    act_multiview_loss,
    barlow_twins_loss,
    byol_loss,
    moco_infonce,
    nt_xent,
    rademacher_complexity,
    standardize,
)
from uft.ssl.radreg import radreg_penalty


# bit-exact reference comparisons: one torch thread, even after a test elsewhere changed it
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum())


def _grads(loss: torch.Tensor, *xs: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, xs, allow_unused=True))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


# ---- NT-Xent -----------------------------------------------------------------------------------

def _nt_xent_ref(z1, z2, t):
    z = [_unit(r) for r in torch.cat([z1, z2])]
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        denom = sum(torch.exp((z[i] * z[j]).sum() / t) for j in range(n2) if j != i)
        total = total - torch.log(torch.exp((z[i] * z[pos]).sum() / t) / denom)
    return total / n2


def test_nt_xent_matches_reference():
    z1, z2 = _rand(5, 4, seed=1), _rand(5, 4, seed=2)
    got, ref = nt_xent(z1, z2, 0.3), _nt_xent_ref(z1, z2, 0.3)
    _close(got, ref)
    for a, b in zip(_grads(got, z1, z2), _grads(ref, z1, z2)):
        _close(a, b)


# ---- MoCo InfoNCE ------------------------------------------------------------------------------

def _moco_ref(q, k, queue, t):
    total = 0.0
    for i in range(q.shape[0]):
        qi = _unit(q[i])
        pos = torch.exp((qi * _unit(k[i].detach())).sum() / t)
        neg = sum(torch.exp((qi * _unit(queue[j].detach())).sum() / t) for j in range(queue.shape[0]))
        total = total - torch.log(pos / (pos + neg))
    return total / q.shape[0]


def test_moco_infonce_matches_reference_and_detaches_keys_and_queue():
    q, k, queue = _rand(4, 3, seed=1), _rand(4, 3, seed=2), _rand(6, 3, seed=3)
    got, ref = moco_infonce(q, k, queue, 0.2), _moco_ref(q, k, queue, 0.2)
    _close(got, ref)
    gq, gk, gqueue = _grads(got, q, k, queue)
    _close(gq, _grads(ref, q)[0])
    assert gk is None and gqueue is None  # keys and queue are constants


# ---- BYOL --------------------------------------------------------------------------------------

def test_byol_loss_matches_reference_and_target_gets_no_grad():
    p, z = _rand(5, 4, seed=1), _rand(5, 4, seed=2)
    got = byol_loss(p, z)
    ref = sum(((_unit(p[i]) - _unit(z[i].detach())) ** 2).sum() for i in range(5)) / 5
    _close(got, ref)
    gp, gz = _grads(got, p, z)
    _close(gp, _grads(ref, p)[0])
    assert gz is None
    assert byol_loss(z, z).item() == pytest.approx(0.0, abs=1e-12)


# ---- Barlow Twins ------------------------------------------------------------------------------

def _barlow_ref(z1, z2, lambd, eps=1e-5):
    n, d = z1.shape

    def standardise(z, j):
        col = [z[i, j] for i in range(n)]
        mean = sum(col) / n
        var = sum((c - mean) ** 2 for c in col) / n
        return [(c - mean) / torch.sqrt(var + eps) for c in col]

    a = [standardise(z1, j) for j in range(d)]
    b = [standardise(z2, j) for j in range(d)]
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][s] * b[j][s] for s in range(n)) / n
            total = total + ((1 - c) ** 2 if i == j else lambd * c**2)
    return total


def test_barlow_twins_matches_reference():
    z1, z2 = _rand(6, 3, seed=1), _rand(6, 3, seed=2)
    got, ref = barlow_twins_loss(z1, z2, lambd=0.3), _barlow_ref(z1, z2, 0.3)
    _close(got, ref)
    for a, b in zip(_grads(got, z1, z2), _grads(ref, z1, z2)):
        _close(a, b)


# ---- ACT ---------------------------------------------------------------------------------------

def _act_parts(x0, x1):
    """Loop reference: Z rows of norm √d, alignment term and the (d, d) matrix C − I."""
    n, d = x0.shape
    z0 = torch.stack([math.sqrt(d) * _unit(x0[i]) for i in range(n)])
    z1 = torch.stack([math.sqrt(d) * _unit(x1[i]) for i in range(n)])
    align = sum(((z0[i] - z1[i]) ** 2).sum() for i in range(n)) / n
    c_diff = [[sum(z0[s, a] * z1[s, b] for s in range(n)) / n - (1.0 if a == b else 0.0) for b in range(d)]
              for a in range(d)]
    return z0, z1, align, c_diff


def test_act_loss_value_matches_reference():
    x0, x1 = _rand(5, 3, seed=1), _rand(5, 3, seed=2)
    _, _, align, c_diff = _act_parts(x0, x1)
    ref = align + 0.05 * sum(v**2 for row in c_diff for v in row)
    _close(act_loss(x0, x1, lam=0.05), ref)


def test_act_gradient_is_the_detached_adversary_form():
    """G = C − I is a constant: dL/dZ0 = 2(Z0 − Z1)/n + λ Z1 Gᵀ/n, dL/dZ1 = −2(Z0 − Z1)/n + λ Z0 G/n,
    chained through Z = √d·normalize(X) (and G gets no gradient)."""
    lam = 0.05
    x0, x1 = _rand(5, 3, seed=1), _rand(5, 3, seed=2)
    n, d = x0.shape
    g0, g1 = _grads(act_loss(x0, x1, lam=lam), x0, x1)

    z0, z1, _, c_diff = _act_parts(x0, x1)
    g_const = torch.stack([torch.stack(row) for row in c_diff]).detach()  # the constant adversary
    with torch.no_grad():
        dz0 = 2 * (z0 - z1) / n + lam * z1 @ g_const.T / n
        dz1 = -2 * (z0 - z1) / n + lam * z0 @ g_const / n
    a0, a1 = torch.autograd.grad([z0, z1], [x0, x1], grad_outputs=[dz0, dz1])
    _close(g0, a0)
    _close(g1, a1)


def test_act_reference_code_form_equals_detached_form_at_twice_lambda():
    """Reference code (first pair): λ·⟨C − I, C − I⟩ with no detach. Same value as ours at λ,
    same gradient as ours at 2λ."""
    lam = 0.05
    x0, x1 = _rand(6, 4, seed=3), _rand(6, 4, seed=4)
    _, _, align, c_diff = _act_parts(x0, x1)
    reference = align + lam * sum(v * v for row in c_diff for v in row)  # G = C − I, not detached
    _close(act_loss(x0, x1, lam=lam), reference)
    ref_grads = _grads(reference, x0, x1)
    for a, b in zip(ref_grads, _grads(act_loss(x0, x1, lam=2 * lam), x0, x1)):
        _close(a, b)
    assert not torch.allclose(_grads(act_loss(x0, x1, lam=lam), x0)[0], ref_grads[0])


def _act_multiview_surrogate(xs, lam):
    """Reference for multi-view ACT with every adversary a precomputed constant: pairs (i<j) in
    order; the first pair's G is 2·(C_1 − I) (the gradient of the undetached square), each later
    pair's G the previous pair's C − I; loss = mean over pairs of align + λ⟨C − I, G⟩. Its gradient is
    the one ACT's min-max prescribes (Danskin); values differ, gradients must not."""
    parts = {}
    pairs = [(i, j) for i in range(len(xs)) for j in range(i + 1, len(xs))]
    for i, j in pairs:
        parts[i, j] = _act_parts(xs[i], xs[j])
    total, prev = 0.0, None
    for p, (i, j) in enumerate(pairs):
        _, _, align, c_diff = parts[i, j]
        c = torch.stack([torch.stack(row) for row in c_diff])
        g = 2 * c.detach() if prev is None else prev
        total = total + align + lam * (c * g).sum()
        prev = c.detach()
    return total / len(pairs)


def test_act_multiview_gradient_matches_the_constant_adversary_reference():
    lam = 0.05
    xs = [_rand(5, 3, seed=s) for s in (11, 12, 13, 14)]  # 4 views → 6 pairs, as the reference recipes
    got = _grads(act_multiview_loss(xs, lam), *xs)
    ref = _grads(_act_multiview_surrogate(xs, lam), *xs)
    for a, b in zip(got, ref):
        _close(a, b)
    # value: the first pair's regulariser is λ‖C − I‖², later pairs λ⟨C_p − I, C_{p−1} − I⟩
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    mats = [torch.stack([torch.stack(row) for row in _act_parts(xs[i], xs[j])[3]]) for i, j in pairs]
    aligns = [_act_parts(xs[i], xs[j])[2] for i, j in pairs]
    value = sum(aligns[p] + lam * (mats[p] * (mats[p] if p == 0 else mats[p - 1])).sum() for p in range(6)) / 6
    _close(act_multiview_loss(xs, lam), value)


def test_act_two_views_is_the_detached_form_at_twice_lambda():
    x0, x1 = _rand(6, 4, seed=3), _rand(6, 4, seed=4)
    _close(act_multiview_loss([x0, x1], 0.05), act_loss(x0, x1, 0.05))  # same value at λ
    for a, b in zip(_grads(act_multiview_loss([x0, x1], 0.05), x0, x1), _grads(act_loss(x0, x1, 0.1), x0, x1)):
        _close(a, b)  # same gradient at 2λ
    with pytest.raises(UftError, match="at least 2 views"):
        act_multiview_loss([x0], 0.05)


# ---- Rademacher complexity / RadReg ------------------------------------------------------------

def _rad_sum(features, sigma):
    """(1/n) Σ_i σ_i φ_i ⊗ … as an explicit loop: (D,) for sigma (n,), (D, K) for sigma (n, K)."""
    n = features.shape[0]
    if sigma.dim() == 1:
        return sum(float(sigma[i]) * features[i] for i in range(n)) / n
    return sum(torch.outer(features[i], sigma[i].to(features.dtype)) for i in range(n)) / n


def test_rademacher_complexity_matches_loop_and_gradient():
    phi = _rand(7, 3, seed=1)
    for sigma in (torch.tensor([1, -1, 1, 1, -1, -1, 1]), torch.randint(0, 2, (7, 2)) * 2 - 1):
        v = _rad_sum(phi, sigma)
        ref = 2.5 * torch.sqrt((v * v).sum())
        got = rademacher_complexity(phi, sigma, bound=2.5)
        _close(got, ref)
        _close(_grads(got, phi)[0], _grads(ref, phi)[0])


def test_closed_form_is_the_sup_over_linear_heads():
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(9, 3, generator=g, dtype=torch.float64)
    sigma = torch.randint(0, 2, (9,), generator=g) * 2 - 1
    bound = 1.7
    closed = float(rademacher_complexity(phi, sigma, bound))
    v = _rad_sum(phi, sigma)

    def head_value(w):  # (1/n) Σ σ_i h(φ_i) for h(φ) = w·φ
        return float(sum(float(sigma[i]) * (w * phi[i]).sum() for i in range(9)) / 9)

    # Exact: the head B·v/‖v‖ attains the closed form.
    assert head_value(bound * v / v.norm()) == pytest.approx(closed, rel=1e-12)
    # Brute force: random heads on the sphere ‖w‖ = B never exceed it and get within 1 %.
    w = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    w = bound * w / w.norm(dim=1, keepdim=True)
    values = w @ v
    assert float(values.max()) <= closed + 1e-12
    assert float(values.max()) >= 0.99 * closed

    # K = 2 outputs, ‖W‖_F ≤ B: sup_W (1/n) Σ_i σ_iᵀ W φ_i.
    sig2 = torch.randint(0, 2, (9, 2), generator=g) * 2 - 1
    closed2 = float(rademacher_complexity(phi[:, :2], sig2, bound))
    heads = torch.randn(50000, 2, 2, generator=g, dtype=torch.float64)
    heads = bound * heads / heads.flatten(1).norm(dim=1)[:, None, None]
    vals = torch.einsum("hkd,nd,nk->h", heads, phi[:, :2], sig2.double()) / 9
    assert float(vals.max()) <= closed2 + 1e-12
    assert float(vals.max()) >= 0.97 * closed2


def test_radreg_penalty_draws_fresh_sigma_and_matches_closed_form():
    phi = _rand(8, 4, seed=5)
    sigma = torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(3)) * 2 - 1
    raw = radreg_penalty(phi, torch.Generator().manual_seed(3), bound=2.0, standardized=False)
    _close(raw, rademacher_complexity(phi, sigma, 2.0))
    # default: on the batch-standardised features, computed here by hand (biased variance, eps 1e-5)
    mu = sum(phi[i] for i in range(8)) / 8
    var = sum((phi[i] - mu) ** 2 for i in range(8)) / 8
    std_ref = torch.stack([(phi[i] - mu) / torch.sqrt(var + 1e-5) for i in range(8)])
    std = radreg_penalty(phi, torch.Generator().manual_seed(3), bound=2.0)
    _close(std, rademacher_complexity(std_ref, sigma, 2.0))
    _close(_grads(std, phi)[0], _grads(rademacher_complexity(std_ref, sigma, 2.0), phi)[0])
    assert _grads(raw, phi)[0].abs().sum() > 0

    g = torch.Generator().manual_seed(0)
    draws = torch.stack([radreg_penalty(phi.detach(), g, n_outputs=3) for _ in range(4)])
    assert draws.unique().numel() > 1  # one new σ per call

    # E_σ ‖Σ_i σ_i φ_i‖² = Σ_i ‖φ_i‖² (cross terms vanish): check the draws' average.
    sq = torch.stack([(8 * radreg_penalty(phi.detach(), g, standardized=False)) ** 2 for _ in range(4000)])
    assert float(sq.mean()) == pytest.approx(float((phi.detach() ** 2).sum()), rel=0.05)


def test_standardized_radreg_ignores_what_a_standardised_probe_ignores():
    """Per-dimension scale and shift of the features (e.g. a shrinking last layer) change the raw
    penalty but not the standardised one, which is what a StandardScaler + linear probe sees."""
    phi = _rand(16, 5, seed=7).detach()
    scale, shift = torch.linspace(0.1, 3.0, 5, dtype=torch.float64), torch.linspace(-2, 2, 5, dtype=torch.float64)
    for standardized, same in ((True, True), (False, False)):
        a = radreg_penalty(phi, torch.Generator().manual_seed(1), standardized=standardized)
        b = radreg_penalty(phi * scale + shift, torch.Generator().manual_seed(1), standardized=standardized)
        assert torch.allclose(a, b, rtol=1e-4) == same
    from sklearn.preprocessing import StandardScaler

    ours = standardize(phi).numpy()
    assert abs(ours - StandardScaler().fit_transform(phi.numpy())).max() < 1e-4


def test_radreg_rejects_bad_input():
    with pytest.raises(UftError, match="radreg"):
        radreg_penalty(torch.zeros(4))
    with pytest.raises(UftError, match="n_outputs"):
        radreg_penalty(torch.zeros(4, 2), n_outputs=0)
    with pytest.raises(UftError, match="standardising needs at least 2"):
        radreg_penalty(torch.zeros(1, 2))
    with pytest.raises(UftError, match="sigma"):
        rademacher_complexity(torch.zeros(4, 2), torch.ones(3))
