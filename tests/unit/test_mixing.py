"""Mixing plan validation and the mixup / cutmix / mixed-batch functions."""

from __future__ import annotations

import math

import pytest
import torch

from uft.errors import UftError
from uft.transfer.mixing import MixPlan, cutmix, cutmix_boxes, make_mixed_batch, mixup, sample_lam


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- MixPlan


def test_plan_defaults_and_json_roundtrip():
    p = MixPlan()
    assert (p.op, p.alpha, p.fraction, p.pairing) == ("none", 1.0, 0.5, "target_source")
    q = MixPlan(op="cutmix", alpha=0.4, fraction=0.25, pairing="target_target")
    assert MixPlan.from_json(q.to_json()) == q
    assert MixPlan.from_json('{"op": "mixup"}') == MixPlan(op="mixup")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(op="blend"), "'op'.*none, mixup, cutmix"),
        (dict(alpha=0.0), "'alpha'.*> 0"),
        (dict(alpha=-1.0), "'alpha'"),
        (dict(fraction=1.5), r"'fraction'.*\[0, 1\]"),
        (dict(fraction=-0.1), "'fraction'"),
        (dict(pairing="source_source"), "'pairing'.*target_target"),
        (dict(ratio=0.1), "'ratio' is unknown"),
    ],
)
def test_plan_errors_name_the_field(kwargs, match):
    with pytest.raises(UftError, match=match):
        MixPlan(**kwargs)


def test_plan_from_bad_json():
    with pytest.raises(UftError, match="malformed"):
        MixPlan.from_json("{op: mixup")
    with pytest.raises(UftError, match="'alpha'"):
        MixPlan.from_json('{"alpha": 0}')
    with pytest.raises(UftError, match="pass an object"):
        MixPlan.from_json("[1, 2]")


# --------------------------------------------------------------------------- mixup / cutmix


def test_mixup_exact_values():
    a = torch.full((2, 1, 2, 2), 4.0)
    b = torch.full((2, 1, 2, 2), 8.0)
    out = mixup(a, b, torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(out[0], torch.full((1, 2, 2), 0.25 * 4 + 0.75 * 8))
    torch.testing.assert_close(out[1], a[1])
    a2, b2 = torch.rand(3, 2, 4, 4), torch.rand(3, 2, 4, 4)
    lam = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(mixup(a2, b2, lam), lam.view(-1, 1, 1, 1) * a2 + (1 - lam.view(-1, 1, 1, 1)) * b2)


@pytest.mark.parametrize("lam_value", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_cutmix_area_and_outside_pixels(lam_value):
    m, h, w = 16, 12, 9
    a = torch.zeros(m, 3, h, w)
    b = torch.ones(m, 3, h, w)
    lam = torch.full((m,), lam_value)
    out = cutmix(a, b, lam, _gen(1))
    assert out.shape == a.shape
    # every pixel is exactly a's or b's, the same across channels
    assert torch.all((out == 0) | (out == 1))
    assert torch.all(out == out[:, :1])
    area_b = out[:, 0].mean(dim=(1, 2))
    # sides are rounded separately: error at most (H + W) / 2 + 1/4 pixels
    tol = ((h + w) / 2 + 0.25) / (h * w)
    assert torch.all((area_b - (1 - lam_value)).abs() <= tol + 1e-9)
    # the b-region is one axis-aligned box matching cutmix_boxes for the same generator state
    boxes = cutmix_boxes(lam, h, w, _gen(1))
    for i in range(m):
        top, left, bh, bw = boxes[i].tolist()
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
        expect = torch.zeros(h, w)
        expect[top : top + bh, left : left + bw] = 1
        torch.testing.assert_close(out[i, 0], expect)


def test_cutmix_keeps_a_outside_box_with_real_images():
    a, b = torch.rand(5, 1, 8, 8), torch.rand(5, 1, 8, 8)
    lam = torch.tensor([0.2, 0.4, 0.6, 0.8, 0.9])
    out = cutmix(a, b, lam, _gen(2))
    boxes = cutmix_boxes(lam, 8, 8, _gen(2))
    for i in range(5):
        top, left, bh, bw = boxes[i].tolist()
        inside = torch.zeros(8, 8, dtype=torch.bool)
        inside[top : top + bh, left : left + bw] = True
        assert torch.equal(out[i, 0][~inside], a[i, 0][~inside])
        assert torch.equal(out[i, 0][inside], b[i, 0][inside])
        assert bh == round(8 * math.sqrt(1 - lam[i].item())) == bw


def test_cutmix_box_positions_vary():
    boxes = cutmix_boxes(torch.full((200,), 0.75), 10, 10, _gen(3))  # 5x5 boxes, 6x6 positions
    assert set(boxes[:, 2].tolist()) == {5}
    assert set(boxes[:, 0].tolist()) == set(range(6))
    assert set(boxes[:, 1].tolist()) == set(range(6))


def test_shape_errors():
    with pytest.raises(UftError, match="same shape"):
        mixup(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5), torch.ones(2))
    with pytest.raises(UftError, match="one lam per image"):
        cutmix(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.ones(3), _gen())
    with pytest.raises(UftError, match=r"\[0, 1\]"):
        cutmix_boxes(torch.tensor([1.5]), 4, 4, _gen())


# --------------------------------------------------------------------------- mixed batch


def test_sample_lam_reproducible_and_in_range():
    x, y = sample_lam(1000, 0.5, _gen(5)), sample_lam(1000, 0.5, _gen(5))
    torch.testing.assert_close(x, y)
    assert x.min() >= 0 and x.max() <= 1
    assert not torch.equal(x, sample_lam(1000, 0.5, _gen(6)))
    assert abs(x.mean().item() - 0.5) < 0.05  # Beta(a, a) is symmetric around 1/2
    # Beta(0.5, 0.5) is U-shaped: more mass near the ends than Beta(5, 5)
    assert ((x < 0.1) | (x > 0.9)).float().mean() > ((sample_lam(1000, 5.0, _gen(5)) - 0.5).abs() > 0.4).float().mean()


@pytest.mark.parametrize("op", ["mixup", "cutmix"])
@pytest.mark.parametrize("pairing", ["target_source", "target_target"])
def test_mixed_batch_shapes_and_reproducibility(op, pairing):
    torch.manual_seed(0)
    target, source = torch.rand(10, 3, 8, 8), torch.rand(4, 3, 8, 8)
    plan = MixPlan(op=op, fraction=0.25, alpha=1.0, pairing=pairing)
    out1 = make_mixed_batch(target, source, plan, _gen(7))
    out2 = make_mixed_batch(target, source, plan, _gen(7))
    assert out1.shape == (3, 3, 8, 8)  # round(0.25 * 10) = round(2.5) -> 3 (halves up)
    assert out1.dtype == target.dtype
    torch.testing.assert_close(out1, out2)
    assert not torch.equal(out1, make_mixed_batch(target, source, plan, _gen(8)))


def test_mixed_batch_follows_documented_draw_order():
    # Rebuild the output by hand from the documented draw order: lam, permutation, partners, boxes.
    target, source = torch.rand(6, 2, 5, 5), torch.rand(3, 2, 5, 5)
    plan = MixPlan(op="mixup", fraction=0.5, alpha=0.7)
    out = make_mixed_batch(target, source, plan, _gen(11))
    g = _gen(11)
    lam = sample_lam(3, 0.7, g)
    perm = torch.randperm(6, generator=g)
    pick = torch.randint(0, 3, (3,), generator=g)
    torch.testing.assert_close(out, mixup(target[perm[:3]], source[pick], lam))

    plan_tt = MixPlan(op="cutmix", fraction=1.0, alpha=0.5, pairing="target_target")
    out_tt = make_mixed_batch(target, None, plan_tt, _gen(12))
    g = _gen(12)
    lam = sample_lam(6, 0.5, g)
    perm = torch.randperm(6, generator=g)
    partner = torch.roll(perm, -1)
    assert torch.all(partner != perm)  # never mixed with itself
    torch.testing.assert_close(out_tt, cutmix(target[perm], target[partner], lam, g))


def test_mixed_batch_none_and_zero():
    target = torch.rand(4, 2, 5, 5)
    assert make_mixed_batch(target, None, MixPlan(op="none", pairing="target_target"), _gen()).shape == (0, 2, 5, 5)
    assert make_mixed_batch(target, None, MixPlan(op="none"), _gen()).shape == (0, 2, 5, 5)
    assert make_mixed_batch(target, None, MixPlan(op="mixup", fraction=0.0), _gen()).shape == (0, 2, 5, 5)


def test_mixed_batch_errors():
    target = torch.rand(4, 1, 5, 5)
    with pytest.raises(UftError, match="enable replay.*target_target"):
        make_mixed_batch(target, None, MixPlan(op="mixup"), _gen())
    with pytest.raises(UftError, match="enable replay"):
        make_mixed_batch(target, torch.rand(0, 1, 5, 5), MixPlan(op="mixup"), _gen())
    with pytest.raises(UftError, match="same"):
        make_mixed_batch(target, torch.rand(3, 1, 6, 6), MixPlan(op="mixup"), _gen())
    with pytest.raises(UftError, match=r"\(B, C, H, W\)"):
        make_mixed_batch(torch.rand(4, 5, 5), None, MixPlan(op="mixup", pairing="target_target"), _gen())
    with pytest.raises(UftError, match="MixPlan"):
        make_mixed_batch(target, None, {"op": "mixup"}, _gen())  # type: ignore[arg-type]
