"""Holistic-transfer methods: config, frozen head, LOLSGD leave-out, distillation, AdaBN,
calibration, label hygiene, and a CPU smoke run on sklearn digits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from uft.errors import UftError
from uft.models.encoders import TinyConvNet
from uft.transfer.holistic import (
    HOLISTIC_METHODS,
    HolisticConfig,
    _average_into,
    _loss,
    _recipe,
    adabn,
    apply_calibration,
    feature_rank_entropy,
    filter_seen,
    finetune,
    gamma_alg,
    make_config,
    pick_gamma,
    run_holistic,
    train_source_classifier,
)

torch.set_num_threads(1)

SEEN = [0, 1, 2, 3, 4]
C = 10
METRICS = ("overall", "seen", "unseen", "seen_seen", "unseen_unseen", "ausuc", "ncm", "ncm_seen", "ncm_unseen")


@pytest.fixture(scope="module")
def digits():
    """load_digits 8x8 → 16x16 in [0, 1]; source = first 60%, target = rest with a
    brightness/contrast shift, split in half into target train / test."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    n_src = int(0.6 * len(x))
    xt, yt = (0.8 * x[n_src:] + 0.1).clamp(0, 1), y[n_src:]
    perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(0))
    tr, te = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    return {"source": (x[:n_src], y[:n_src]), "train": (xt[tr], yt[tr]), "test": (xt[te], yt[te])}


@pytest.fixture(scope="module")
def source_model(digits):
    torch.manual_seed(0)
    enc = TinyConvNet(width=16)
    head = train_source_classifier(enc, *digits["source"], C, HolisticConfig(source_steps=120))
    return enc, head


def _cfg(**kw) -> HolisticConfig:
    base = dict(steps=25, batch_size=64, lolsgd_rounds=3, pcv_splits=2)
    return HolisticConfig(**{**base, **kw})


def _seen_data(digits):
    x, y = digits["train"]
    keep = torch.isin(y, torch.tensor(SEEN))
    return x[keep], y[keep]


# ----------------------------------------------------------------------------- config


def test_config_validation_messages():
    with pytest.raises(UftError, match="unknown holistic method 'bogus'.*lolsgd"):
        make_config(method="bogus")
    with pytest.raises(UftError, match="lr"):
        make_config(lr=0)
    with pytest.raises(UftError, match="lolsgd_leave_out"):
        make_config(lolsgd_leave_out=1.0)
    with pytest.raises(UftError, match="calibration"):
        make_config(calibration="platt")
    with pytest.raises(UftError, match="distill_weight=0"):
        make_config(method="distill", distill_weight=0)
    with pytest.raises(UftError, match="stepz"):
        make_config(stepz=3)  # typo'd field names are rejected, not ignored
    assert make_config(method="lolsgd", frozen_head=True, distill_weight=0.5).frozen_head
    assert set(HOLISTIC_METHODS) == {
        "source", "adabn", "naive", "frozen_head", "lolsgd", "distill", "rank_reg", "oracle"
    }


# ----------------------------------------------------------------------------- method mechanics


@pytest.mark.parametrize(
    "kw", [dict(method="frozen_head"), dict(method="lolsgd", frozen_head=True, distill_weight=1.0)]
)
def test_frozen_head_is_bit_identical(digits, source_model, kw):
    enc, head = source_model
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    new_enc, new_head = finetune(enc, head, *_seen_data(digits), SEEN, _cfg(steps=10, lolsgd_rounds=1, **kw))
    assert torch.equal(new_head.weight, head.weight) and torch.equal(new_head.bias, head.bias)
    assert not torch.equal(new_enc.net[0].weight, enc.net[0].weight)  # the encoder did train
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())  # source untouched


def test_naive_moves_the_head(digits, source_model):
    enc, head = source_model
    _, new_head = finetune(enc, head, *_seen_data(digits), SEEN, _cfg(steps=5))
    assert not torch.equal(new_head.weight, head.weight)


def test_lolsgd_local_models_never_see_left_out_classes(digits, source_model):
    enc, head = source_model
    seen_batches: list[tuple[torch.Tensor, dict]] = []
    cfg = _cfg(method="lolsgd", lolsgd_rounds=2, lolsgd_local_models=3, lolsgd_leave_out=0.5, batch_size=32)
    finetune(enc, head, *_seen_data(digits), SEEN, cfg, on_batch=lambda yb, info: seen_batches.append((yb, info)))
    locals_ = {(i["round"], i["local"]): i["left_out"] for _, i in seen_batches}
    assert sorted(locals_) == [(r, m) for r in range(2) for m in range(3)]
    for left in locals_.values():
        assert len(left) == 2 and left <= set(SEEN)  # floor(0.5 * 5) classes out
    assert len(set(locals_.values())) > 1  # resampled per local model
    for yb, info in seen_batches:
        assert not set(yb.tolist()) & info["left_out"]
    trained = set().union(*(set(yb.tolist()) for yb, _ in seen_batches))
    assert trained == set(SEEN)  # across local models every seen class is used


def test_average_into_averages_parameters_and_bn_buffers():
    a, b, target = TinyConvNet(width=4), TinyConvNet(width=4), TinyConvNet(width=4)
    with torch.no_grad():
        a.net[1].running_mean.fill_(1.0)
        b.net[1].running_mean.fill_(3.0)
    _average_into(target, [a.state_dict(), b.state_dict()])
    assert torch.allclose(target.net[1].running_mean, torch.full((4,), 2.0))
    assert torch.allclose(target.net[0].weight, (a.net[0].weight + b.net[0].weight) / 2)


def test_finetune_rejects_unseen_labels_except_oracle(digits, source_model):
    enc, head = source_model
    x, y = digits["train"]
    with pytest.raises(UftError, match="unseen classes"):
        finetune(enc, head, x, y, SEEN, _cfg(method="naive"))
    finetune(enc, head, x[:64], y[:64], SEEN, _cfg(method="oracle", steps=1))


def test_distill_term_matches_reference():
    torch.manual_seed(0)
    enc, head = TinyConvNet(width=4).eval(), nn.Linear(16, 6)
    cfg = HolisticConfig(method="distill", distill_temperature=2.0, distill_selective=True, distill_weight=0.7)
    r = _recipe(enc, head, [0, 1, 2], cfg, "distill")  # teacher = copy of the current model
    with torch.no_grad():
        head.weight.add_(torch.randn_like(head.weight))  # student drifts from the teacher
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 3, (8,))
    enc.train()
    got = _loss(enc, head, x, y, r)
    with torch.no_grad():
        t_logits = r.teacher[1](r.teacher[0](x))
    z = head(enc(x))
    p_t = F.softmax(t_logits[:, 3:] / 2, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(z[:, 3:] / 2, 1))).sum(1).mean()
    assert torch.allclose(got, F.cross_entropy(z, y) + 0.7 * 4 * kl, atol=1e-6)
    assert kl > 0


def test_feature_rank_entropy():
    assert feature_rank_entropy(torch.eye(4) * 3) == pytest.approx(math.log(4), abs=1e-5)
    rank1 = torch.ones(5, 1) @ torch.rand(1, 4)
    assert feature_rank_entropy(rank1) < 1e-3


def test_adabn_reestimates_bn_statistics(source_model):
    enc, _ = source_model
    x = torch.rand(40, 1, 16, 16) * 0.5
    before = enc.net[1].running_mean.clone()
    new = adabn(enc, x, batch_size=64)
    with torch.no_grad():
        conv = enc.net[0]((x - 0.5) / 0.5)  # TinyConvNet normalises its input first
    assert torch.allclose(new.net[1].running_mean, conv.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(new.net[1].running_var, conv.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert torch.equal(enc.net[1].running_mean, before) and not new.training
    assert new.net[1].momentum == enc.net[1].momentum


# ----------------------------------------------------------------------------- calibration


def test_gamma_alg_constructed():
    # S = {0, 1, 2}, U = {3, 4}.
    logits = torch.tensor([[5.0, 1.0, 3.0, 0.0, 2.0], [0.0, 4.0, 2.0, -1.0, -3.0]])
    labels = torch.tensor([0, 1])
    # sample 0: non-true seen mean (1+3)/2 = 2, unseen mean 1 → 1; sample 1: (0+2)/2 = 1, mean -2 → 3
    assert gamma_alg(logits, labels, [0, 1, 2]) == pytest.approx(2.0)
    with pytest.raises(UftError, match="unseen"):
        gamma_alg(logits, torch.tensor([0, 3]), [0, 1, 2])


def test_apply_calibration_shifts_only_unseen():
    z = torch.zeros(2, 4)
    assert torch.equal(apply_calibration(z, [1, 2], 1.5), torch.tensor([[1.5, 0, 0, 1.5]] * 2))
    assert (apply_calibration(z.numpy(), [1, 2], -1.0) == [[-1, 0, 0, -1]] * 2).all()


def test_pick_gamma_exact_regions_and_heldout_floor():
    # trained = {0}, held out = {1}; logits [g, 0] so the flip point of each sample is g.
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    # Any γ in (1, 2) gets both right; the candidate there is the midpoint 1.5.
    assert pick_gamma(logits, torch.tensor([0, 1]), [0], 0.0) == (pytest.approx(1.5), True)
    # Both labelled 1: best needs γ above every flip point → max + 1.
    assert pick_gamma(logits, torch.tensor([1, 1]), [0], 0.0) == (pytest.approx(3.0), True)
    # Trained samples flip at 2, 3, 4 and a held-out one at 3.5. Unconstrained, γ < 2 is best
    # (3/4 right); a floor of 1.0 on held-out accuracy forces γ into (3.5, 4) (2/4 right).
    logits = torch.tensor([[2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [3.5, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    assert pick_gamma(logits, labels, [0], 0.0) == (pytest.approx(1.0), True)
    assert pick_gamma(logits, labels, [0], 1.0) == (pytest.approx(3.75), True)


def test_pick_gamma_says_when_no_gamma_meets_the_floor():
    """The held-out sample is only right with γ ≥ 3.5 (accuracy 1.0 there), so no γ reaches a floor
    above 1: infeasible, no γ (the old rule silently maximised held-out accuracy instead)."""
    logits = torch.tensor([[2.0, 0.0], [3.5, 0.0]])
    g, ok = pick_gamma(logits, torch.tensor([0, 1]), [0], 1.01)
    assert not ok and math.isnan(g)


def _val_split(digits, frac: float = 0.3):
    """Carve a val split (every class) from the target train set → (train, val)."""
    x, y = digits["train"]
    n = int(frac * len(y))
    return (x[n:], y[n:]), (x[:n], y[:n])


def test_pcv_picks_gamma_on_val_images_and_records_floor_and_fallback(digits, source_model):
    """PCV's split models are scored on val images (never trained on): γ moves when only the val
    images change, not when the train images of the held-out classes do; each split records its
    floor and feasibility; with an unreachable floor (every split infeasible) ALG's γ is used."""
    from uft.transfer.holistic import gamma_pcv, pcv_halves

    enc, head = source_model
    tr, va = _val_split(digits)
    tr, va = filter_seen(*tr, SEEN), filter_seen(*va, SEEN)
    cfg = _cfg(pcv_splits=2, steps=15)
    out = gamma_pcv(enc, head, tr, va, SEEN, cfg, fallback_gamma=-7.0)
    assert len(out["splits"]) == 2 and out["splits"][0]["trained"] == pcv_halves(SEEN, 2, cfg.seed)[0]
    for sp in out["splits"]:
        assert 0.0 <= sp["floor"] <= 1.0 and sp["n_val"] == len(va[1]) and 0 < sp["n_heldout"] < len(va[1])
        assert sp["feasible"] == (not math.isnan(sp["gamma"]))
    feas = [sp["gamma"] for sp in out["splits"] if sp["feasible"]]
    assert out["fallback"] == (not feas)
    assert out["gamma"] == pytest.approx(sum(feas) / len(feas) if feas else -7.0)
    shifted = gamma_pcv(enc, head, tr, ((va[0] * 0.5).clamp(0, 1), va[1]), SEEN, cfg, fallback_gamma=-7.0)
    assert [sp["floor"] for sp in shifted["splits"]] != [sp["floor"] for sp in out["splits"]]
    one = cfg.model_copy(update={"pcv_splits": 1})
    held = ~torch.isin(tr[1], torch.tensor(pcv_halves(SEEN, 1, cfg.seed)[0]))
    noisy = tr[0].clone()
    noisy[held] = torch.rand(noisy[held].shape, generator=torch.Generator().manual_seed(3))
    assert gamma_pcv(enc, head, (noisy, tr[1]), va, SEEN, one, 0.0) == gamma_pcv(enc, head, tr, va, SEEN, one, 0.0)
    with pytest.raises(UftError, match="val images of every seen class"):
        gamma_pcv(enc, head, tr, filter_seen(*va, [0, 1]), SEEN, cfg, fallback_gamma=0.0)


def test_pcv_falls_back_to_alg_when_no_split_is_feasible(monkeypatch, digits, source_model):
    import uft.transfer.holistic as h

    enc, head = source_model
    tr, va = _val_split(digits)
    monkeypatch.setattr(h, "pick_gamma", lambda *a, **k: (float("nan"), False))
    res = run_holistic(_cfg(method="naive", calibration="pcv", pcv_splits=1, steps=10), enc, head, tr, digits["test"],
                       SEEN, C, target_val=va)
    assert res["pcv_fallback"] == 1.0 and res["gamma"] == res["gamma_alg"] and res["gamma_split"].startswith("train")
    with pytest.raises(UftError, match="target_val"):
        run_holistic(_cfg(method="naive", calibration="pcv"), enc, head, tr, digits["test"], SEEN, C)


# ----------------------------------------------------------------------------- label hygiene


def _corrupt_unseen(digits):
    """Target train set whose unseen-class samples have noise images and permuted unseen labels."""
    x, y = (t.clone() for t in digits["train"])
    unseen = ~torch.isin(y, torch.tensor(SEEN))
    g = torch.Generator().manual_seed(1)
    x[unseen] = torch.rand(x[unseen].shape, generator=g)
    y[unseen] = 5 + (y[unseen] - 5 + 1 + torch.randint(0, 4, (int(unseen.sum()),), generator=g)) % 5
    assert not torch.equal(y, digits["train"][1])
    return x, y


@pytest.mark.parametrize(
    "kw",
    [
        dict(method="naive", calibration="alg"),
        dict(method="lolsgd", lolsgd_rounds=1, calibration="pcv", pcv_splits=1, steps=10),
        dict(method="distill", frozen_head=True),
        dict(method="adabn"),
    ],
)
def test_non_oracle_methods_never_use_unseen_training_samples(digits, source_model, kw):
    enc, head = source_model
    cfg = _cfg(**kw)
    tr, va = _val_split(digits)
    clean = run_holistic(cfg, enc, head, tr, digits["test"], SEEN, C, target_val=va)
    dirty = run_holistic(cfg, enc, head, _val_split({"train": _corrupt_unseen(digits)})[0], digits["test"], SEEN, C,
                         target_val=_val_split({"train": _corrupt_unseen(digits)})[1])
    for k in ("overall", "seen", "unseen", "seen_seen", "unseen_unseen", "ausuc", "per_class", "gamma"):
        assert clean.get(k) == dirty.get(k), k
    assert clean["ncm"] != dirty["ncm"]  # the NCM probe does use all labels (analysis only)


def test_oracle_does_use_unseen_training_samples(digits, source_model):
    enc, head = source_model
    cfg = _cfg(method="oracle", steps=10)
    clean = run_holistic(cfg, enc, head, digits["train"], digits["test"], SEEN, C)
    dirty = run_holistic(cfg, enc, head, _corrupt_unseen(digits), digits["test"], SEEN, C)
    assert clean["overall"] != dirty["overall"]


# ----------------------------------------------------------------------------- smoke run


def test_smoke_digits(digits, source_model):
    enc, head = source_model
    res = {
        m: run_holistic(_cfg(method=m), enc, head, digits["train"], digits["test"], SEEN, C)
        for m in ("source", "adabn", "naive", "frozen_head", "lolsgd", "distill")
    }
    alg_cfg = _cfg(method="naive", calibration="alg")
    res["naive+alg"] = run_holistic(alg_cfg, enc, head, digits["train"], digits["test"], SEEN, C)
    for name, r in res.items():
        for k in METRICS:
            assert 0.0 <= r[k] <= 1.0, (name, k, r[k])
        assert len(r["per_class"]) == C
    assert res["source"]["overall"] > 0.3  # chance is 0.1
    # the source recipe's photometric augmentation covers this brightness/contrast shift, so
    # re-estimating the BN statistics neither helps nor hurts much here (0.90 vs 0.93 measured)
    assert abs(res["adabn"]["overall"] - res["source"]["overall"]) < 0.1
    assert res["naive"]["seen"] > res["source"]["seen"]  # finetuning on seen classes helps them
    assert res["frozen_head"]["unseen"] > res["naive"]["unseen"]  # the paper's point, on this toy
    # ALG: γ > 0 (finetuning inflates seen logits) trades seen for unseen accuracy
    alg = res["naive+alg"]
    assert alg["gamma"] > 0
    assert alg["unseen"] >= res["naive"]["unseen"] and alg["seen"] <= res["naive"]["seen"]
    assert alg["ausuc"] == pytest.approx(res["naive"]["ausuc"])
