"""ImageFolder loading: formats/modes/sizes, layouts, bad files, S3, and the `uft ingest` command."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uft.data.imagefolder import decode_image, load_imagefolder, parse_spec, summary_lines
from uft.errors import UftError

LUMA = np.array([0.299, 0.587, 0.114])


def _solid(mode: str, size: tuple[int, int], value) -> Image.Image:
    """A uniform image (uniform stays uniform under any resize, so pixel checks are exact)."""
    if mode == "P":
        im = Image.new("P", size, 0)
        im.putpalette(list(value) + [0] * (768 - 3))
        return im
    if mode == "I;16":
        return Image.fromarray(np.full(size[::-1], value, dtype=np.uint16))
    return Image.new(mode, size, value)


# file name → (mode, size, value, format, expected grey value after conversion)
TREE = {
    "cat/a.png": ("L", (10, 7), 128, "PNG", 128),
    "cat/b.jpg": ("RGB", (40, 33), (200, 200, 200), "JPEG", 200),  # grey JPEG: chroma-neutral, ±2 for lossy
    "cat/c.bmp": ("RGB", (16, 16), (255, 0, 0), "BMP", round(0.299 * 255)),
    "cat/sub/d.gif": ("P", (9, 20), (0, 0, 255), "GIF", round(0.114 * 255)),
    "dog/a.png": ("RGBA", (12, 12), (255, 255, 255, 0), "PNG", 0),  # fully transparent → black
    "dog/b.png": ("RGBA", (12, 30), (100, 100, 100, 255), "PNG", 100),
    "dog/c.tif": ("I;16", (8, 8), 65535, "TIFF", 255),
    "dog/d.png": ("P", (25, 5), (10, 20, 30), "PNG", round(float(np.dot(LUMA, [10, 20, 30])))),
}


def _write(root: Path, rel: str, spec) -> Path:
    mode, size, value, fmt, _ = spec
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    _solid(mode, size, value).save(p, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return p


def make_tree(root: Path, tree: dict = TREE) -> Path:
    for rel, spec in tree.items():
        _write(root, rel, spec)
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "data")


def _by_file(raw, root: Path) -> dict[str, np.ndarray]:
    """Map kept files back to their rows: loading order is sorted path order."""
    kept = sorted(rel for rel in TREE if (root / rel).exists())
    return dict(zip(kept, raw.images))


def test_formats_modes_sizes_to_one_shape(tree):
    raw = load_imagefolder(str(tree), image_size=16, channels=1, progress=False)
    assert raw.images.shape == (8, 16, 16, 1) and raw.images.dtype == np.uint8
    assert raw.classes == ["cat", "dog"]
    assert raw.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert raw.splits is None
    for rel, img in _by_file(raw, tree).items():
        expected = TREE[rel][4]
        tol = 2 if rel.endswith(".jpg") else 1
        assert np.abs(img.astype(int) - expected).max() <= tol, rel
    info = raw.info
    assert info["dataset"] == str(tree) and info["found"] == 8 and info["loaded"] == 8
    assert info["classes"] == {"cat": 4, "dog": 4} and info["skipped"] == []
    assert set(info["modes"]) >= {"L", "RGB", "RGBA", "P", "I;16"}
    assert set(info["formats"]) == {"PNG", "JPEG", "BMP", "GIF", "TIFF"}
    json.dumps(info)  # it lands in the manifest


def test_three_channels_and_grey_replication(tree):
    raw = load_imagefolder(str(tree), image_size=8, channels=3, progress=False)
    assert raw.images.shape == (8, 8, 8, 3)
    imgs = _by_file(raw, tree)
    assert imgs["cat/c.bmp"][0, 0].tolist() == [255, 0, 0]
    assert imgs["cat/a.png"][0, 0].tolist() == [128, 128, 128]
    assert imgs["dog/d.png"][0, 0].tolist() == [10, 20, 30]


def test_resize_keeps_structure():
    """A left-dark/right-bright image stays so after shrinking (no transposition, no crop)."""
    a = np.zeros((40, 60), np.uint8)
    a[:, 30:] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    img, mode, fmt = decode_image(buf.getvalue(), image_size=6, channels=1)
    assert img.shape == (6, 6, 1) and (mode, fmt) == ("L", "PNG")
    assert img[:, :2].max() < 30 and img[:, 4:].min() > 225


def test_bad_files_are_skipped_with_reasons(tree, monkeypatch):
    (tree / "cat" / "notes.txt").write_text("hello")
    good = (tree / "cat" / "a.png").read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, (30, 30), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    (tree / "cat" / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 3 // 4])  # header intact, data cut
    (tree / "dog" / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    shutil.copy(tree / "dog" / "b.png", tree / "cat" / "zz_copy.png")  # same bytes, other class
    (tree / "loose.png").write_bytes(good)  # beside class directories
    (tree / ".DS_Store").write_bytes(b"\0")  # hidden: ignored silently
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40x33 JPEG (1320 px) becomes "huge" (our check)
    _write(tree, "dog/huge.png", ("L", (50, 50), 7, "PNG", 7))  # 2500 px > 2×1000: PIL's own error
    raw = load_imagefolder(str(tree), image_size=16, channels=1, progress=False)
    reasons = {Path(s["file"]).relative_to(tree).as_posix(): s["reason"] for s in raw.info["skipped"]}
    assert reasons.keys() == {"cat/notes.txt", "cat/trunc.png", "dog/garbage.jpg", "dog/b.png",
                              "loose.png", "cat/b.jpg", "dog/huge.png"}
    assert reasons["cat/notes.txt"].startswith("not an image file")
    assert reasons["cat/trunc.png"].startswith("corrupt or truncated")
    assert reasons["dog/garbage.jpg"].startswith(("not a recognised image", "corrupt"))
    # the first in sorted order is kept, even across classes
    assert reasons["dog/b.png"] == f"duplicate of {tree / 'cat' / 'zz_copy.png'} (same bytes)"
    assert reasons["loose.png"] == "not inside a class directory"
    for big in ("cat/b.jpg", "dog/huge.png"):
        assert "MAX_IMAGE_PIXELS=1000" in reasons[big]
    assert raw.info["loaded"] == len(raw.images) == 7 and raw.info["skipped_count"] == 7
    assert raw.info["classes"] == {"cat": 4, "dog": 3}
    text = "\n".join(summary_lines(raw.info))
    assert "corrupt or truncated image" in text and "duplicate" in text and "dog 3" in text


def test_strict_fails_on_first_bad_file(tree):
    (tree / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(UftError, match=r"bad\.png: .*strict"):
        load_imagefolder(f"{tree}#strict", image_size=8, channels=1, progress=False)
    (tree / "cat" / "bad.png").unlink()
    (tree / "dog" / "zz.txt").write_text("x")  # decided from the path: fails before any decoding
    with pytest.raises(UftError, match=r"zz\.txt: not an image file .*strict"):
        load_imagefolder(str(tree), image_size=8, channels=1, strict=True, progress=False)
    (tree / "dog" / "zz.txt").unlink()
    shutil.copy(tree / "dog" / "b.png", tree / "dog" / "b2.png")  # duplicates are not failures
    assert len(load_imagefolder(str(tree), image_size=8, channels=1, strict=True, progress=False).images) == 8


def test_all_files_bad_is_an_error(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "x.png").write_bytes(b"nope")
    with pytest.raises(UftError, match=r"no usable images \(2 files skipped: 2× "):
        load_imagefolder(str(tmp_path), image_size=8, channels=1, progress=False)


def test_class_with_no_usable_images_is_dropped(tree, tmp_path):
    _write(tree, "emu/x.png", ("L", (4, 4), 1, "PNG", 1))
    (tree / "emu" / "x.png").write_bytes(b"broken")
    raw = load_imagefolder(str(tree), image_size=8, channels=1, progress=False)
    assert raw.classes == ["cat", "dog"]
    assert any(s["reason"] == "class 'emu' has no usable images: dropped" for s in raw.info["skipped"])


def test_splits_flat_and_unlabelled(tmp_path):
    split = tmp_path / "split"
    for s, n in (("train", 3), ("test", 2)):
        for c in ("x", "y"):
            for i in range(n):
                _write(split, f"{s}/{c}/{i}.png", ("L", (6, 6), 10 * i + (c == "y") + (s == "test") * 100, "PNG", 0))
    raw = load_imagefolder(str(split), image_size=8, channels=1, progress=False)
    assert raw.splits.tolist() == ["train"] * 6 + ["test"] * 4 and raw.info["layout"] == "train/test classes"
    assert raw.labels.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1] and raw.info["splits"] == {"train": 6, "test": 4}

    flat = tmp_path / "flat"
    for i in range(4):
        _write(flat, f"{i}.png", ("L", (5, 9), 20 * i, "PNG", 0))
    raw = load_imagefolder(str(flat), image_size=8, channels=1, progress=False)
    assert raw.classes == [] and raw.labels.tolist() == [-1] * 4 and raw.info["layout"] == "flat"

    one = tmp_path / "one"
    for i in range(3):
        _write(one, f"imgs/{i}.png", ("L", (5, 5), 20 * i, "PNG", 0))
    with pytest.raises(UftError, match=r"single class directory \('imgs'\).*at least 2 classes.*#unlabelled"):
        load_imagefolder(str(one), image_size=8, channels=1, progress=False)
    raw = load_imagefolder(f"{one}#unlabelled", image_size=8, channels=1, progress=False)
    assert raw.labels.tolist() == [-1] * 3 and raw.info["dataset"] == f"{one}#unlabelled"

    only_train = tmp_path / "only_train"
    shutil.copytree(split / "train", only_train / "train")
    raw = load_imagefolder(str(only_train), image_size=8, channels=1, progress=False)
    assert raw.splits is None and raw.classes == ["x", "y"]  # ingest makes the split


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, r"dataset path .*missing does not exist: pass an ImageFolder directory"),
    (lambda p: p.mkdir(), r"dataset directory .* is empty: put images in"),
    (lambda p: (p.mkdir(), (p / "a.txt").write_text("x")), r"has no image files \(1 other files\)"),
    (lambda p: (p.parent.mkdir(exist_ok=True), p.write_text("x")), r"is a file, not a directory"),
])
def test_bad_paths(tmp_path, setup, match):
    p = tmp_path / "missing"
    setup(p)
    with pytest.raises(UftError, match=match):
        load_imagefolder(str(p), image_size=8, channels=1, progress=False)


def test_split_layout_errors(tmp_path):
    root = tmp_path / "d"
    for i, rel in enumerate(("train/a/0.png", "train/b/0.png", "test/a/0.png", "test/c/0.png")):
        _write(root, rel, ("L", (4, 4), 10 * i, "PNG", 0))
    with pytest.raises(UftError, match=r"classes in train/ and test/ differ \(only in train: b; only in test: c\)"):
        load_imagefolder(str(root), image_size=8, channels=1, progress=False)
    shutil.rmtree(root / "train" / "b")
    shutil.rmtree(root / "test" / "c")
    with pytest.raises(UftError, match=rf"dataset {root}/train has a single class directory \('a'\).*\({root}#unlabelled"):
        load_imagefolder(str(root), image_size=8, channels=1, progress=False)
    shutil.rmtree(root / "train")
    with pytest.raises(UftError, match=r"has test/ but no train/"):
        load_imagefolder(str(root), image_size=8, channels=1, progress=False)
    _write(root, "train/a/0.png", ("L", (4, 4), 3, "PNG", 0))
    _write(root, "extra/a/0.png", ("L", (4, 4), 4, "PNG", 0))
    with pytest.raises(UftError, match=r"mixes train/ with other directories \(extra\)"):
        load_imagefolder(str(root), image_size=8, channels=1, progress=False)


def test_spec_options_and_argument_checks(tree):
    assert parse_spec("/x/y#strict,unlabeled") == ("/x/y", {"strict", "unlabelled"})
    assert parse_spec("s3://b/p") == ("s3://b/p", set())
    with pytest.raises(UftError, match=r"unknown option\(s\) bogus"):
        parse_spec("/x#bogus")
    with pytest.raises(UftError, match=r"channels=2 is invalid"):
        load_imagefolder(str(tree), image_size=8, channels=2)
    with pytest.raises(UftError, match=r"image_size=2 is out of range"):
        load_imagefolder(str(tree), image_size=2, channels=1)


def test_load_source_and_ingest_roundtrip(tree, tmp_path):
    from uft.data.dataset import load_dataset
    from uft.data.ingest import ingest
    from uft.data.sources import load_source
    from uft.store import open_store

    raw = load_source(str(tree), image_size=12, channels=3)
    uri = ingest(raw, open_store(str(tmp_path / "store")), name="t", image_size=12, channels=3, test_fraction=0.5)
    ds = load_dataset(uri)
    assert tuple(ds.images.shape) == (8, 3, 12, 12) and ds.classes == ["cat", "dog"]
    from uft.data.ingest import content_keys, split_by_keys  # each row's split follows from its pixels alone
    assert (ds.split == split_by_keys(content_keys(ds.images.numpy().transpose(0, 2, 3, 1)), 0.5)).all()


def test_cli_ingest(tree, tmp_path):
    from typer.testing import CliRunner

    from uft.cli import app

    (tree / "dog" / "junk.png").write_bytes(b"junk")
    store = tmp_path / "store"
    res = CliRunner().invoke(app, ["ingest", str(tree), "--store", str(store), "--image-size", "8"])
    assert res.exit_code == 0, res.output
    uri = res.output.strip().splitlines()[-1]
    assert uri.endswith("manifest.json") and Path(uri).is_file()
    assert "cat 4" in res.output and "not a recognised image" in res.output and "junk.png" in res.output
    again = CliRunner().invoke(app, ["ingest", uri, "--store", str(store)])  # a manifest: summary only
    assert again.exit_code == 0 and again.output.strip().splitlines()[-1] == uri
    bad = CliRunner().invoke(app, ["ingest", str(tmp_path / "nope"), "--store", str(store)])
    said = " ".join(bad.output.split())  # the error console wraps long lines
    assert bad.exit_code == 2 and f"{tmp_path / 'nope'} does not exist" in said and "Traceback" not in said


@pytest.mark.s3
def test_s3_matches_local(tree, bucket):
    import boto3

    s3 = boto3.client("s3")
    for p in sorted(tree.rglob("*")):
        if p.is_file():
            s3.put_object(Bucket=bucket, Key=f"imgs/{p.relative_to(tree).as_posix()}", Body=p.read_bytes())
    s3.put_object(Bucket=bucket, Key="imgs/cat/bad.gif", Body=b"GIF89a broken")
    s3.put_object(Bucket=bucket, Key="imgsX/other/x.png", Body=(tree / "cat" / "a.png").read_bytes())  # not under imgs/
    local = load_imagefolder(str(tree), image_size=16, channels=1, progress=False)
    # two decode processes, each with its own S3 client, 3 objects per task
    remote = load_imagefolder(f"s3://{bucket}/imgs", image_size=16, channels=1, progress=False, workers=2, chunk=3)
    assert remote.decode_stats["workers"] == 2
    assert np.array_equal(local.images, remote.images) and np.array_equal(local.labels, remote.labels)
    assert remote.classes == local.classes
    assert [s["file"] for s in remote.info["skipped"]] == [f"s3://{bucket}/imgs/cat/bad.gif"]
    with pytest.raises(UftError, match=rf"s3://{bucket}/nothing has no objects: upload the images there"):
        load_imagefolder(f"s3://{bucket}/nothing", image_size=8, channels=1, progress=False)


# --- parallel decoding ------------------------------------------------------------------------------

def _many(root: Path, n_per_class: int = 12) -> Path:
    """Two classes of small noisy RGB JPEGs/PNGs plus a bad file, a non-image and a duplicate."""
    rng = np.random.default_rng(1)
    for c in ("ant", "bee"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            im = Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).resize((20, 14))
            im.save(root / c / f"{i:02d}.{'jpg' if i % 2 else 'png'}")
    (root / "ant" / "05b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "bee" / "readme.txt").write_text("not an image")
    shutil.copy(root / "ant" / "03.jpg", root / "bee" / "99.jpg")
    return root


def test_worker_count_does_not_change_the_dataset(tmp_path, capsys, monkeypatch):
    from uft.data.ingest import ingest
    from uft.store import LocalStore, manifest_sha

    monkeypatch.delenv("UFT_PROGRESS", raising=False)  # importing bench.common sets it "off" process-wide

    root = _many(tmp_path / "d")
    one = load_imagefolder(str(root), image_size=8, channels=3, progress=False, workers=1, chunk=4)
    two = load_imagefolder(str(root), image_size=8, channels=3, progress=None, workers=2, chunk=4)
    assert one.decode_stats["workers"] == 1 and two.decode_stats["workers"] == 2
    # 27 files in 7 tasks, yet never more than 2×workers in flight: the window bounds memory
    assert two.decode_stats["peak_pending"] == 4
    assert np.array_equal(np.asarray(one.images), np.asarray(two.images)) and one.info == two.info
    assert one.info["skipped_count"] == 3 and one.info["loaded"] == 24
    uris = [ingest(r, LocalStore(tmp_path / f"s{i}"), name="d", image_size=8, channels=3, limit=10, seed=1)
            for i, r in enumerate((one, two))]
    assert manifest_sha(uris[0]) == manifest_sha(uris[1])
    err = capsys.readouterr().err  # progress lines (not a terminal) still come, up to the last file
    assert f"uft-progress reading:{root} 27/27" in err


def test_bad_files_and_limit_with_workers(tmp_path):
    from uft.data.dataset import load_dataset
    from uft.data.ingest import ingest
    from uft.store import LocalStore

    root = _many(tmp_path / "d")
    raw = load_imagefolder(str(root), image_size=8, channels=1, progress=False, workers=2, chunk=3)
    reasons = {Path(s["file"]).relative_to(root).as_posix(): s["reason"] for s in raw.info["skipped"]}
    assert reasons == {"ant/05b.png": reasons["ant/05b.png"], "bee/readme.txt": reasons["bee/readme.txt"],
                       "bee/99.jpg": f"duplicate of {root / 'ant' / '03.jpg'} (same bytes)"}
    assert reasons["ant/05b.png"].startswith(("corrupt", "not a recognised")) and "skipped 1 × duplicate" in \
        "\n".join(summary_lines(raw.info))
    ds = load_dataset(ingest(raw, LocalStore(tmp_path / "s"), name="d", image_size=8, channels=1, limit=10,
                             test_fraction=0.4))
    assert np.bincount(ds.labels.numpy()).tolist() == [5, 5] and set(ds.split) <= {"train", "test"}  # content rule
    (root / "bee" / "readme.txt").unlink()  # else strict fails on it before decoding anything
    with pytest.raises(UftError, match=r"05b\.png: .*strict"):
        load_imagefolder(f"{root}#strict", image_size=8, channels=1, progress=False, workers=2, chunk=3)


def test_disk_rows_behaves_like_an_array():
    from uft.data.parallel import DiskRows

    a = np.random.default_rng(0).integers(0, 256, (9, 2, 3, 1), dtype=np.uint8)
    d = DiskRows((2, 3, 1))
    d.append(a[:4])
    d.append(a[4:])
    assert d.shape == a.shape and len(d) == 9 and d.ndim == 4 and d.dtype == np.uint8
    for idx in (3, -1, slice(2, 7), slice(None, None, 3), np.array([0, 1, 2, 5, 8]), a[:, 0, 0, 0] > 100):
        assert np.array_equal(d[idx], a[idx]), idx
    assert np.array_equal(np.asarray(d), a) and ((d < 128) == (a < 128)).all()
    with pytest.raises(IndexError):
        d[9]


def test_workers_default_to_the_cpus_or_the_environment(monkeypatch):
    import os

    from uft.data.parallel import available_cpus, resolve_workers

    monkeypatch.delenv("UFT_INGEST_WORKERS", raising=False)
    assert resolve_workers(None) == available_cpus() <= len(os.sched_getaffinity(0)) and resolve_workers(3) == 3
    monkeypatch.setenv("UFT_INGEST_WORKERS", "5")
    assert resolve_workers(None) == 5 and resolve_workers(0) == 5 and resolve_workers(2) == 2
    monkeypatch.setenv("UFT_INGEST_WORKERS", "many")
    with pytest.raises(UftError, match="UFT_INGEST_WORKERS='many' is not an integer"):
        resolve_workers(None)


def test_exif_orientation_is_applied():
    """A 6-wide, 4-high image tagged 'rotate 90° clockwise to view' (EXIF 274 = 6): its bright
    left half ends up on top."""
    a = np.zeros((4, 6), np.uint8)
    a[:, :3] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", exif=exif)
    img, _, _ = decode_image(buf.getvalue(), image_size=6, channels=1)
    assert img[:2, :, 0].min() > 200 and img[4:, :, 0].max() < 50


def _die(_task):
    import os

    os._exit(9)  # as an OOM kill would


def test_a_dead_worker_is_one_clear_error():
    from uft.data.parallel import OrderedPool

    with pytest.raises(UftError, match="ingest worker process died .*UFT_INGEST_WORKERS lower"):
        list(OrderedPool(2).map(_die, range(4)))
