"""RadReg as its paper uses it: the adversarial head form, the complexity estimates, and the
trainer's separate target set (pretraining on source, regulariser on unlabelled target images)."""

from __future__ import annotations

import pytest
import torch

from uft.errors import UftError
from uft.models.encoders import TinyConvNet
from uft.ssl.base import build_method
from uft.ssl.radreg import AdversarialHead, adversarial_penalty, complexity_estimates, rademacher_signs
from uft.ssl.train import Checkpointer, TrainConfig, _target_features, train_ssl
from uft.store import open_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _feats(n: int = 64, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_adversarial_head_ascends_within_its_norm_balls():
    x, g = _feats(), torch.Generator().manual_seed(1)
    sigma = rademacher_signs(len(x), g)
    head = AdversarialHead(8, hidden=16, bound=1.0, generator=g)
    before = float(head.correlation(x, sigma))
    head.ascend(x, sigma, steps=50)
    after = float(head.correlation(x, sigma))
    assert after > before and after > 0.05
    assert float(head.w1.norm()) <= 1.0 + 1e-6 and float(head.w2.norm()) <= 1.0 + 1e-6
    # the bound caps the fit: a head at bound 1 cannot exceed ‖x‖-scale correlations
    assert after <= float(x.norm(dim=1).max()) + 1e-6


def test_adversarial_penalty_backpropagates_to_features_only():
    x = _feats().requires_grad_()
    head = AdversarialHead(8, generator=torch.Generator().manual_seed(0))
    w1 = head.w1.clone()
    pen = adversarial_penalty(x, head, torch.Generator().manual_seed(2), steps=3)
    pen.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert head.w1.grad is None  # the SSL optimiser never moves the head: only ascend() does
    assert not torch.equal(head.w1, w1)  # ascend() did
    with pytest.raises(UftError, match="radreg"):
        adversarial_penalty(torch.zeros(1, 8), head)


def test_complexity_estimates_separate_scale_from_structure():
    x = _feats(128, 8)
    est, scaled = complexity_estimates(x, seed=0), complexity_estimates(3 * x, seed=0)
    # closed form on raw features scales with the features; on standardised ones it does not
    assert scaled["rad_closed_raw"] == pytest.approx(3 * est["rad_closed_raw"], rel=1e-4)
    assert scaled["rad_closed_std"] == pytest.approx(est["rad_closed_std"], rel=1e-3)
    assert scaled["rad_adversarial"] == pytest.approx(est["rad_adversarial"], rel=1e-2)
    # standardised features have Σ‖φ̃_i‖² = nD: the linear estimate sits near √(D/n) whatever the encoder
    assert est["rad_closed_std"] == pytest.approx((8 / 128) ** 0.5, rel=0.15)


def test_target_pass_leaves_batchnorm_running_statistics_alone():
    enc = TinyConvNet(width=4).train()
    bn = next(m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d))
    mean, mom = bn.running_mean.clone(), bn.momentum
    imgs = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    f = _target_features(enc, imgs, 6, torch.Generator().manual_seed(0))
    assert f.shape == (6, enc.feature_dim) and f.requires_grad
    assert torch.equal(bn.running_mean, mean) and bn.momentum == mom


@pytest.mark.parametrize("form", ["closed", "adversarial"])
def test_pretraining_with_target_radreg_trains_and_resumes_identically(tmp_path, form):
    g = torch.Generator().manual_seed(0)
    source = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8, generator=g)
    target = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8, generator=g)
    cfg = TrainConfig(steps=4, batch_size=8, seed=0, radreg_weight=0.1, radreg_form=form, radreg_features="raw"
                      if form == "closed" else "standardized", radreg_batch=8, checkpoint_every=2, log_every=1)

    def fresh():
        torch.manual_seed(0)
        return build_method("simclr", TinyConvNet(width=4), proj_dim=8, hidden_dim=16)

    full = fresh()
    train_ssl(full, source, cfg, radreg_target=target)
    plain = fresh()
    train_ssl(plain, source, cfg.model_copy(update={"radreg_weight": 0.0}), radreg_target=target)
    assert not torch.equal(full.encoder.net[0].weight, plain.encoder.net[0].weight)  # the penalty acted
    # RadReg's own generator: with μ → 0 the run is the plain one (same batches and augmentations)
    tiny = fresh()
    train_ssl(tiny, source, cfg.model_copy(update={"radreg_weight": 1e-12}), radreg_target=target)
    for a, b in zip(tiny.state_dict().values(), plain.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)

    ck = Checkpointer(open_store(str(tmp_path)), "ck")
    half = fresh()

    def crash(step: int, _loss: float) -> None:
        if step == 3:  # after the step-2 checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_ssl(half, source, cfg, radreg_target=target, checkpointer=ck, on_log=crash)
    if form == "adversarial":
        assert "radreg_head" in ck.load()
    resumed = fresh()
    train_ssl(resumed, source, cfg, radreg_target=target, checkpointer=ck)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_pretrain_step_adds_radreg_on_the_target_train_split(tmp_path, monkeypatch):
    from uft import steps
    from uft.models.artifact import load_encoder

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = str(tmp_path / "store")
    src = steps.ingest("optdigits", store, role="source", image_size=8, channels=1, limit=200, test_fraction=0.2)
    tgt = steps.ingest("optdigits", store, role="target", image_size=8, channels=1, limit=120, test_fraction=0.3, seed=1)
    kw = dict(encoder_width=4, steps=3, batch_size=16, seed=0, checkpoint_every=3)
    plain = steps.pretrain(src["dataset_uri"], src["dataset_sha"], store, **kw)
    reg = steps.pretrain(src["dataset_uri"], src["dataset_sha"], store, radreg_weight=0.1, radreg_form="adversarial",
                         radreg_target_uri=tgt["dataset_uri"], **kw)
    assert reg["encoder_uri"] != plain["encoder_uri"]  # its own cache key, and a different encoder
    a, b = load_encoder(plain["encoder_uri"])[0], load_encoder(reg["encoder_uri"])[0]
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(UftError, match="radreg_target_uri"):
        steps.pretrain(src["dataset_uri"], src["dataset_sha"], store, radreg_weight=0.1, **kw)
