"""SSL method classes: registry, gradient-flow rules (MoCo/BYOL), queue/EMA updates, and a short
CPU fit of every method on real data (sklearn digits) that must lower the loss without collapse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uft.models.encoders import TinyConvNet
from uft.ssl.base import build_method, method_names
from uft.errors import UftError
from uft.ssl.base import parse_method_spec
from uft.ssl.losses import act_multiview_loss, barlow_twins_loss
from uft.ssl.radreg import radreg_penalty

METHODS = ["simclr", "moco", "byol", "barlow", "act"]


# bit-exact reference comparisons: one torch thread, even after a test elsewhere changed it
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _views(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.rand(n, 1, 8, 8, generator=g)


def _build(name: str, **kw):
    torch.manual_seed(0)
    return build_method(name, TinyConvNet(in_channels=1, width=4), proj_dim=8, hidden_dim=16, **kw)


def test_registry_lists_all_methods():
    assert set(METHODS) <= set(method_names())


@pytest.mark.parametrize("name", METHODS)
def test_loss_returns_scalar_and_x1_features_and_trains_encoder(name):
    m = _build(name)
    x1, x2 = _views()
    loss, feats = m.loss(x1, x2)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert feats.shape == (6, m.encoder.feature_dim)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())


def test_barlow_and_act_apply_their_loss_to_projector_outputs():
    x1, x2 = _views()
    for name, fn in [("barlow", lambda a, b: barlow_twins_loss(a, b, 5e-3)), ("act", lambda a, b: act_multiview_loss([a, b], 0.05))]:
        m = _build(name)
        loss, _ = m.loss(x1, x2)
        z1, z2 = m.projector(m.encoder(torch.cat([x1, x2]))).chunk(2)
        torch.testing.assert_close(loss, fn(z1, z2))


def test_multiview_act_projects_all_views_in_one_batch():
    m = _build("act:views=4")
    assert m.n_views == 4 and m.lam == 0.05
    g = torch.Generator().manual_seed(1)
    xs = [torch.rand(6, 1, 8, 8, generator=g) for _ in range(4)]
    loss, feats = m.loss(*xs)
    zs = m.projector(m.encoder(torch.cat(xs))).chunk(4)
    torch.testing.assert_close(loss, act_multiview_loss(zs, 0.05))
    assert feats.shape == (6, m.encoder.feature_dim)
    with pytest.raises(UftError, match="2 views"):
        _build("simclr").loss(*xs)


def test_method_specs_parse_and_reject_unknown_knobs():
    assert parse_method_spec("act") == ("act", {})
    assert parse_method_spec("act:views=4,lam=0.1") == ("act", {"views": 4, "lam": 0.1})
    for bad in ("act:bogus=1", "act:views", "act:views=four", "nope:views=4"):
        with pytest.raises(UftError, match="SSL method"):
            parse_method_spec(bad)
    with pytest.raises(UftError, match="act views=1"):
        _build("act:views=1")


def test_multiview_act_trains_with_the_trainer():
    from uft.ssl.train import TrainConfig, train_ssl

    m = _build("act:views=3")
    x = (torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    res = train_ssl(m, x, TrainConfig(steps=2, batch_size=8, log_every=1, warmup_steps=0))
    assert len(res.losses) == 2 and all(torch.isfinite(torch.tensor(v)) for _, v in res.losses)


# ---- MoCo --------------------------------------------------------------------------------------

def _keys(m, x1, x2):
    """Keys as MoCo computes them: both views through the key branch in one batch."""
    with torch.no_grad():
        return F.normalize(m.key_projector(m.key_encoder(torch.cat([x1, x2]))), dim=1).chunk(2)


def test_moco_key_branch_gets_no_grad_and_queue_is_fifo():
    m = _build("moco", queue_size=8, symmetric=False)
    initial = m.queue.clone()
    batches = [_views(3, seed=s) for s in range(3)]
    expected = []
    for x1, x2 in batches:
        expected.append(_keys(m, x1, x2)[1])  # one-sided MoCo enqueues the keys of view 2
        loss, _ = m.loss(x1, x2)
        loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in m.key_encoder.parameters())
    assert all(p.grad is None for p in m.key_projector.parameters())
    assert m.projector[0].weight.grad is not None

    # 9 keys into 8 slots: slots 0-7 got keys 0-7, then key 8 overwrote slot 0 (the oldest).
    k = torch.cat(expected)
    torch.testing.assert_close(m.queue[1:], k[1:8])
    torch.testing.assert_close(m.queue[0], k[8])
    assert int(m.queue_ptr) == 1
    assert not torch.allclose(m.queue, initial)

    m.eval()  # evaluation must not touch the queue
    before = m.queue.clone()
    m.loss(*batches[0])
    torch.testing.assert_close(m.queue, before)


def test_moco_symmetric_enqueues_both_views():
    m = _build("moco", queue_size=16)
    x1, x2 = _views(3)
    k1, k2 = _keys(m, x1, x2)
    m.loss(x1, x2)
    torch.testing.assert_close(m.queue[:6], torch.cat([k2, k1]))
    assert int(m.queue_ptr) == 6


def test_moco_momentum_update():
    m = _build("moco", momentum=0.9)
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(1.0)
    old_key = [p.clone() for p in m.key_encoder.parameters()]
    m.after_step()
    for po, pk, old in zip(m.encoder.parameters(), m.key_encoder.parameters(), old_key):
        torch.testing.assert_close(pk, 0.9 * old + 0.1 * po)


# ---- BYOL --------------------------------------------------------------------------------------

def test_byol_target_gets_no_grad_and_ema_update():
    m = _build("byol", tau=0.8)
    loss, _ = m.loss(*_views())
    loss.backward()
    assert all(p.grad is None for p in m.target_encoder.parameters())
    assert all(p.grad is None for p in m.target_projector.parameters())
    assert all(p.grad is not None for p in m.predictor.parameters())

    with torch.no_grad():
        for p in m.projector.parameters():
            p.mul_(-2.0)
    old = [p.clone() for p in m.target_projector.parameters()]
    m.after_step()
    for po, pt, o in zip(m.projector.parameters(), m.target_projector.parameters(), old):
        torch.testing.assert_close(pt, 0.8 * o + 0.2 * po)


# ---- CPU smoke fits on real data ---------------------------------------------------------------

@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    return F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to ±2 px (zero fill), brightness scaling, Gaussian noise."""
    n, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (n,), generator=g), torch.randint(0, 5, (n,), generator=g)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    out = out * (0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))
    return (out + 0.1 * torch.randn(out.shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize(
    "name, radreg_weight",
    [("simclr", 0.0), ("moco", 0.0), ("byol", 0.0), ("barlow", 0.0), ("act", 0.0), ("simclr", 0.1)],
    ids=["simclr", "moco", "byol", "barlow", "act", "simclr+radreg"],
)
def test_short_fit_lowers_loss_without_collapse(digits, name, radreg_weight):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    kw = {"queue_size": 256} if name == "moco" else {}
    m = build_method(name, TinyConvNet(in_channels=1, width=16), proj_dim=32, hidden_dim=64, **kw)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)

    def batch():
        x = digits[torch.randint(0, digits.shape[0], (64,), generator=g)]
        return _augment(x, g), _augment(x, g)

    if name == "moco":
        # Fill the queue with real keys first: against the initial random unit vectors the loss is
        # artificially low, which would hide the trend.
        with torch.no_grad():
            for _ in range(2):
                m.loss(*batch())

    losses = []
    for _ in range(30):
        loss, feats = m.loss(*batch())
        if radreg_weight:
            loss = loss + radreg_weight * radreg_penalty(feats, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step()
        losses.append(loss.item())

    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    m.eval()
    with torch.no_grad():
        feats = m.encoder(digits[:256])
    assert torch.isfinite(feats).all()
    assert feats.std(dim=0).mean() > 1e-3
