"""Label-free signals against straightforward reference computations and known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uft.errors import UftError
from uft.evaluate import label_free as lf


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_effective_rank_known_cases():
    x = _rng().normal(size=(200, 8))
    collapsed = np.tile(x[:1], (200, 1))
    assert lf.effective_rank(collapsed) == pytest.approx(1.0, abs=1e-3)
    assert lf.effective_rank(np.zeros((10, 4))) == 1.0
    # orthonormal rows with equal singular values → the full rank
    assert lf.effective_rank(np.eye(8) * 3.0) == pytest.approx(8.0, rel=1e-4)
    # two equal directions → 2
    two = np.zeros((50, 8))
    two[:25, 0], two[25:, 1] = 1.0, 1.0
    assert lf.effective_rank(two) == pytest.approx(2.0, rel=1e-4)
    # isotropic Gaussian: close to D, and more than a low-rank projection of it
    r = lf.effective_rank(x)
    assert 6.5 < r <= 8.0
    assert lf.effective_rank(x[:, :3] @ _rng(1).normal(size=(3, 8))) < 3.01


def test_effective_rank_matches_reference():
    x = _rng(2).normal(size=(40, 6)) * np.array([5, 3, 1, 1, 0.5, 0.1])
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert lf.effective_rank(torch.tensor(x)) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)


def test_alignment_and_uniformity_reference():
    rng = _rng(3)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    ref_align = np.mean([np.sum((ua[i] - ub[i]) ** 2) for i in range(30)])
    assert lf.alignment(a, b) == pytest.approx(ref_align, rel=1e-9)
    assert lf.alignment(a, 3 * a) == pytest.approx(0.0, abs=1e-12)  # scale-invariant: same direction
    pairs = [np.exp(-2 * np.sum((ua[i] - ua[j]) ** 2)) for i in range(30) for j in range(i + 1, 30)]
    assert lf.uniformity(a) == pytest.approx(np.log(np.mean(pairs)), rel=1e-9)
    assert lf.uniformity(np.tile(a[:1], (30, 1))) == pytest.approx(0.0, abs=1e-9)  # collapsed
    with pytest.raises(UftError, match="two views"):
        lf.alignment(a, b[:10])


def test_view_retrieval():
    rng = _rng(4)
    x = rng.normal(size=(50, 16))
    assert lf.view_retrieval(x, x + 0.01 * rng.normal(size=x.shape)) == 1.0
    unrelated = lf.view_retrieval(x, rng.normal(size=x.shape))
    assert unrelated < 0.1
    const = np.ones((50, 16))
    assert lf.view_retrieval(const, const) <= 2 / 100 + 1e-12  # ties → lowest index: at most one pair


def test_knn_and_neighbourhood_agreement():
    rng = _rng(5)
    x = rng.normal(size=(40, 8))
    idx = lf.knn_indices(x, 3)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = u @ u.T
    for i in range(40):
        ref = [j for j in np.argsort(-sim[i]) if j != i][:3]
        assert set(idx[i]) == set(ref)
    assert lf.neighbourhood_agreement(x, 2 * x, k=5) == 1.0  # cosine ignores scale
    # reference Jaccard for two unrelated feature sets
    y = rng.normal(size=(40, 8))
    ia, ib = lf.knn_indices(x, 5), lf.knn_indices(y, 5)
    ref = np.mean([len(set(ia[i]) & set(ib[i])) / len(set(ia[i]) | set(ib[i])) for i in range(40)])
    assert lf.neighbourhood_agreement(x, y, k=5) == pytest.approx(ref)
    assert ref < 0.5
    with pytest.raises(UftError, match="k=40"):
        lf.knn_indices(x, 40)


def test_snd_reference_and_collapse():
    rng = _rng(6)
    x = rng.normal(size=(20, 4))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    ents = []
    for i in range(20):
        s = np.array([u[i] @ u[j] for j in range(20) if j != i]) / 0.05
        p = np.exp(s - s.max())
        p /= p.sum()
        ents.append(-(p * np.log(p)).sum())
    assert lf.soft_neighbourhood_density(x) == pytest.approx(np.mean(ents), rel=1e-9)
    assert lf.soft_neighbourhood_density(np.ones((20, 4))) == pytest.approx(np.log(19))  # the documented trap


def test_source_retention_separable():
    rng = _rng(7)
    centres = rng.normal(size=(3, 6)) * 5
    y = np.repeat(np.arange(3), 20)
    f = centres[y] + rng.normal(size=(60, 6)) * 0.1
    assert lf.source_retention(f[::2], y[::2], f[1::2], y[1::2], 3, k=5) == 1.0
    assert lf.source_retention(np.ones((30, 6)), y[::2], np.ones((30, 6)), y[1::2], 3, k=5) < 0.5


def test_gate_score_and_collapse_verdict():
    good = {"finite": True, "effective_rank": 20.0, "rank_fraction": 0.3, "view_retrieval": 0.8, "n_views": 100}
    assert lf.gate_score(good) == pytest.approx(0.24)
    assert lf.collapsed(good) == ""
    assert "effective rank" in lf.collapsed({**good, "effective_rank": 1.1})
    assert "chance" in lf.collapsed({**good, "view_retrieval": 0.004})  # chance = 1/200
    assert lf.collapsed({**good, "view_retrieval": 0.012}) == ""  # weak, not collapsed
    assert "diverged" in lf.collapsed({**good, "finite": False})
    assert lf.gate_score({"view_retrieval": float("nan"), "rank_fraction": 0.5}) == 0.0


def test_encoder_signals_orders_sane_over_collapsed(one_torch_thread, tiny_raw):
    from uft.models.encoders import TinyConvNet

    torch.manual_seed(0)
    imgs = torch.from_numpy(tiny_raw.images).permute(0, 3, 1, 2).contiguous()[:48]  # 48 digits, 8×8
    enc = TinyConvNet(1, width=8).eval()
    dead = TinyConvNet(1, width=8).eval()
    with torch.no_grad():
        for p in dead.net[0].parameters():
            p.zero_()  # first conv zeroed: the same feature vector for every image
    y = torch.from_numpy(tiny_raw.labels[:48])
    src = (imgs[::2], y[::2], imgs[1::2], y[1::2], 10)
    s = lf.encoder_signals(enc, imgs, base=enc, source=src, max_images=48)
    d = lf.encoder_signals(dead, imgs, base=enc, max_images=48)
    assert s["n_views"] == 48 and s["neighbourhood_agreement"] == 1.0 and 0 <= s["source_retention"] <= 1
    assert lf.collapsed(s) == "" and lf.collapsed(d) != ""
    assert d["gate_score"] < s["gate_score"]
    with pytest.raises(UftError, match="at least 4"):
        lf.encoder_signals(enc, imgs[:3])


def _digits(per_class: int):
    from uft.data.sources import load_optdigits

    raw = load_optdigits()
    keep = [i for c in range(10) for i in (raw.labels == c).nonzero()[0][:per_class]]
    return torch.from_numpy(raw.images[keep]).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(raw.labels[keep])


class _RankOne(torch.nn.Module):
    """Every image mapped onto one line: ``f(x) = s(x) · w`` (features of rank one)."""

    def __init__(self, enc: torch.nn.Module):
        super().__init__()
        self.enc, self.w = enc, torch.nn.Parameter(torch.randn(enc.feature_dim))

    def forward(self, x):
        return self.enc(x).sum(1, keepdim=True) * self.w


def test_collapse_rule_fires_on_constant_and_rank_one_encoders(one_torch_thread):
    from uft.models.encoders import TinyConvNet

    imgs, y = _digits(10)
    torch.manual_seed(0)
    sane = TinyConvNet(1, width=8).eval()
    constant = TinyConvNet(1, width=8).eval()
    with torch.no_grad():
        for p in constant.parameters():
            p.zero_()
        constant.net[-4].bias.fill_(1.0)  # the last BatchNorm's shift: every image → the same all-ones vector
    rank_one = _RankOne(TinyConvNet(1, width=8)).eval()
    kw = dict(target_labels=y, max_images=100)
    s, c, r = (lf.encoder_signals(e, imgs, **kw) for e in (sane, constant, rank_one))
    assert torch.allclose(constant(imgs[:5].float()), torch.ones(5, 32))
    assert lf.collapsed(s) == ""
    assert "effective rank" in lf.collapsed(c) and "effective rank" in lf.collapsed(r)
    assert c["effective_rank"] < 1.01 and r["effective_rank"] < 1.01


def test_collapse_rule_fires_on_untrained_encoders_where_the_reference_was_good(one_torch_thread):
    """Untrained encoders are not collapsed in the narrow sense (rank ≈ 13, retrieval above chance);
    against a trained reference they are degenerate: no better than the untrained floor."""
    from uft.models.encoders import TinyConvNet
    from uft.ssl.base import build_method
    from uft.ssl.train import TrainConfig, train_ssl

    imgs, y = _digits(30)
    src = (imgs[::2], y[::2], imgs[1::2], y[1::2], 10)
    torch.manual_seed(0)
    m = build_method("simclr", TinyConvNet(1, width=8))
    train_ssl(m, imgs, TrainConfig(steps=100, batch_size=128, lr=5e-3, seed=0, checkpoint_every=10**6))

    def signals(enc):
        return lf.encoder_signals(enc.eval(), imgs, target_labels=y, source=src, max_images=300)

    def untrained(seed):
        torch.manual_seed(seed)
        return TinyConvNet(1, width=8)

    good = signals(m.encoder)
    floor = lf.floor_of([signals(untrained(i)) for i in range(3)])
    kw = dict(floor=floor, reference=good, margin=0.08, probe_margin=0.0125, retention_tolerance=0.026)
    assert lf.collapsed(good, **kw) == ""
    for seed in (7, 8, 9):
        cand = signals(untrained(seed))
        assert lf.collapsed(cand) == ""  # the narrow rule alone misses it
        assert lf.collapsed(cand, **kw).startswith("degenerate"), seed
