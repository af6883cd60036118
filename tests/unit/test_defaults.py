"""Defaults that follow the data: the colour test, the profile of a tree, the rule and its printout."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uft.data.profile import DataProfile, is_colour, profile_dataset
from uft.defaults import CPU_MAX_SIZE, infer_defaults, snap_size

RNG = np.random.default_rng(0)
CURRENT = {"image_size": 16, "channels": 1, "encoder": "tiny"}


def _grey(size: int = 40) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 255, (size, size), dtype=np.uint8), "L")


def _colour(size: int = 40) -> Image.Image:
    a = np.zeros((size, size, 3), np.uint8)
    a[..., 0] = 200  # a red picture with some texture
    a[..., 1] = RNG.integers(0, 60, (size, size))
    return Image.fromarray(a, "RGB")


def _save(im: Image.Image, path: Path, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt)


def _reload(im: Image.Image, fmt: str) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("make, expected", [
    (lambda: _grey(), False),
    (lambda: _reload(_grey().convert("RGB"), "JPEG"), False),  # grey stored as RGB JPEG: noise is not colour
    (lambda: _colour(), True),
    (lambda: _reload(_colour(), "JPEG"), True),
    (lambda: _colour().convert("P", palette=Image.Palette.ADAPTIVE), True),  # palette with colours
    (lambda: _grey().convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE), False),  # grey palette
    (lambda: _grey().convert("LA"), False),
    (lambda: Image.merge("RGBA", (*_colour().split(), Image.new("L", (40, 40), 255))), True),
    # colour only where the image is fully transparent: nothing visible is coloured
    (lambda: Image.merge("RGBA", (*_colour().split(), Image.new("L", (40, 40), 0))), False),
    (lambda: Image.fromarray((RNG.integers(0, 65535, (20, 20))).astype(np.uint16)), False),  # 16-bit grey
])
def test_is_colour_across_modes(make, expected):
    assert is_colour(make()) is expected


def _tree(root: Path, n: int, make, classes=("a", "b")) -> Path:
    for i in range(n):
        _save(make(i), root / classes[i % len(classes)] / f"{i}.png")
    return root


def test_profile_of_a_tree_counts_colour_and_sizes(tmp_path):
    root = _tree(tmp_path / "d", 20, lambda i: _colour(64) if i < 5 else _grey(48 if i % 2 else 64))
    (tmp_path / "d" / "a" / "notes.txt").write_text("not an image")
    p = profile_dataset(str(root))
    assert (p.sampled, p.total, p.colour) == (20, 20, 5)
    assert p.colour_share == pytest.approx(0.25)
    assert p.typical_side in (48, 64)
    assert set(p.modes) == {"RGB", "L"}


def test_profile_reuses_preflights_listing(tmp_path):
    """`uft run` lists a folder once: preflight's listing feeds the profile (a file added after the
    listing is not seen, and the layout carries every listed path)."""
    from uft.preflight import inspect_dataset

    root = _tree(tmp_path / "d", 8, lambda i: _grey(32))
    layout = inspect_dataset(str(root), "source", remote=False)
    assert len(layout.listing) == 8 and layout.files == 8
    _save(_colour(32), root / "a" / "late.png")
    p = profile_dataset(str(root), listing=layout.listing)
    assert (p.total, p.colour) == (8, 0)
    assert profile_dataset(str(root)).total == 9


def test_profile_skips_bundled_and_manifests():
    assert profile_dataset("mnist") is None
    assert profile_dataset("s3://bucket/uft/datasets/abc/manifest.json") is None


def _profile(colour: int, sides: list[int], spec: str = "x", total: int | None = None) -> DataProfile:
    return DataProfile(spec, len(sides), total or len(sides), colour, tuple((s, s) for s in sides))


def _shape(c) -> dict:
    """The image part of a choice (the budget part is tested in test_budget.py)."""
    return {k: v for k, v in c.values.items() if k in ("channels", "image_size", "encoder")}


@pytest.mark.parametrize("side, cap, expected", [(64, 32, 32), (28, 32, 24), (8, 32, 8), (5, 32, 8),
                                                 (100, 224, 96), (500, 224, 224)])
def test_snap_size(side, cap, expected):
    assert snap_size(side, cap) == expected


def test_colour_large_images_on_cpu_keep_colour_and_cap_size():
    c = infer_defaults(_profile(90, [96] * 100, "A"), _profile(95, [96] * 100, "B"), explicit={},
                       current=CURRENT, accelerator=False)
    assert _shape(c) == {"channels": 3, "image_size": CPU_MAX_SIZE, "encoder": "tiny"}
    assert any("capped for CPU" in r for r in c.reasons)
    # the cap keeps a third of 96 px: that loss is said before the run starts
    assert any("less than half" in w and "-p image_size=96" in w for w in c.warnings)


def test_colour_on_an_accelerator_gets_the_pretrained_encoder_and_full_size():
    c = infer_defaults(_profile(90, [64] * 10), _profile(90, [64] * 10), explicit={}, current=CURRENT,
                       accelerator=True)
    assert _shape(c) == {"channels": 3, "image_size": 64, "encoder": "efficientnet_lite0"}
    assert c.warnings == []


def test_grey_small_images_keep_the_digit_defaults():
    c = infer_defaults(_profile(0, [16] * 10), _profile(0, [16] * 10), explicit={}, current=CURRENT,
                       accelerator=True)
    assert _shape(c) == {"channels": 1, "image_size": 16, "encoder": "tiny"}


def test_mixed_colour_share_and_mixed_sizes():
    # 5 % colour is grey data with a few tinted outliers; 20 % is colour data
    few = infer_defaults(_profile(5, [20] * 50 + [30] * 50), None, explicit={}, current=CURRENT, accelerator=False)
    many = infer_defaults(None, _profile(20, [20] * 30 + [30] * 70), explicit={}, current=CURRENT, accelerator=False)
    assert few.values["channels"] == 1 and many.values["channels"] == 3
    assert few.values["image_size"] == 24 and many.values["image_size"] == 24  # medians 25 and 30 → 24


def test_explicit_settings_win_but_lossy_ones_are_warned():
    c = infer_defaults(None, _profile(100, [96] * 10, "B"), explicit={"channels": "1", "image_size": "16"},
                       current={"image_size": 16, "channels": 1, "encoder": "tiny"}, accelerator=False)
    assert "channels" not in c.values and "image_size" not in c.values
    assert any("discards colour" in w for w in c.warnings)
    assert any("image_size=16 keeps less than half" in w for w in c.warnings)


def test_bundled_pair_infers_nothing():
    c = infer_defaults(None, None, explicit={}, current=CURRENT, accelerator=False)
    assert c.values == {} and c.warnings == [] and "digit-demo" in c.line()


def test_uft_run_prints_the_choice_and_warnings(tmp_path, capsys):
    """The CLI's one line names each value and how to override it; warnings go to stderr."""
    from uft.cli import local as cli

    src = _tree(tmp_path / "src", 12, lambda i: _colour(96))
    choice = cli.infer_defaults(str(src), "optdigits", {})
    out, errs = capsys.readouterr()
    assert choice.values["channels"] == 3
    assert "channels=3" in out and "image_size=32" in out and "override with -p" in out
    assert "less than half" in errs
    assert choice.params()["defaults_inferred"] == "channels,image_size,encoder"
