"""The streamed reader (uft.data.stream) on a small dataset published in 7 shards of 16 rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uft.data.dataset import load_dataset
from uft.data.stream import StreamSource, load_rows
from uft.errors import UftError


@pytest.fixture
def sharded(tiny_raw, tmp_path, monkeypatch) -> str:
    """60 optdigits + 40 more (flipped) = 100 rows at 8 px, half train / half test, 16 rows a shard."""
    from uft.data import ingest as ingest_mod
    from uft.store import LocalStore

    monkeypatch.setattr(ingest_mod, "SHARD_ROWS", 16)
    raw = tiny_raw
    raw.images = np.concatenate([raw.images, raw.images[:40, ::-1]])
    raw.labels = np.concatenate([raw.labels, raw.labels[:40]])
    return ingest_mod.ingest(raw, LocalStore(tmp_path), name="t", image_size=8, channels=1, test_fraction=0.5, seed=0)


def _rows(stream, n_batches: int | None = None) -> list[list[int]]:
    out = []
    for i, b in enumerate(stream):
        if n_batches is not None and i == n_batches:
            break
        out.append(b.row_ids.tolist())
    return out


def test_one_ordered_pass_equals_load_dataset(sharded):
    ds = load_dataset(sharded)
    batches = list(StreamSource(sharded, split="train").open(10, shuffle=False, epochs=1, drop_last=False))
    tr = ds.subset("train")
    assert torch.equal(torch.cat([b.images for b in batches]), tr.images)
    assert torch.equal(torch.cat([b.labels for b in batches]), tr.labels)
    assert all(b.images.dtype == torch.uint8 and b.images.shape[1:] == (1, 8, 8) for b in batches)
    n = len(tr)  # the train rows (their number follows from the content split rule)
    assert [len(b) for b in batches] == [10] * (n // 10) + ([n % 10] if n % 10 else [])


@pytest.mark.parametrize("split", ["train", "test", None])
def test_every_row_of_the_split_once_per_epoch(sharded, split):
    ds = load_dataset(sharded)
    want = sorted(ds.row_ids.tolist() if split is None else ds.subset(split).row_ids.tolist())
    src = StreamSource(sharded, split=split, window=2)
    for epoch_rows in (_rows(src.open(7, seed=3, epochs=1, drop_last=False)),):
        flat = [r for b in epoch_rows for r in b]
        assert sorted(flat) == want and len(flat) == len(set(flat))
    assert src.num_rows() == len(want)
    # With drop_last, each epoch is a batch-aligned prefix of a permutation: no row twice in an epoch.
    batches = _rows(src.open(7, seed=3), n_batches=3 * (len(want) // 7))
    per_epoch = len(want) // 7
    for e in range(3):
        flat = [r for b in batches[e * per_epoch:(e + 1) * per_epoch] for r in b]
        assert len(flat) == len(set(flat)) == per_epoch * 7 and set(flat) <= set(want)


def test_deterministic_per_seed_and_seeds_differ(sharded):
    src = StreamSource(sharded, window=2)
    a, b = _rows(src.open(8, seed=1), 20), _rows(src.open(8, seed=1), 20)
    c = _rows(src.open(8, seed=2), 20)
    assert a == b and a != c
    assert a[:6] != a[6:12]  # the next epoch is ordered differently (50 rows // 8 = 6 batches an epoch)
    d = _rows(StreamSource(sharded, window=2, prefetch=0).open(8, seed=1), 20)
    assert d == a  # the prefetch thread changes nothing but timing


@pytest.mark.parametrize("cut", [1, 5, 6, 13])
def test_resume_from_state_continues_exactly(sharded, cut):
    src = StreamSource(sharded, window=3)
    full = _rows(src.open(8, seed=4), 20)
    s = src.open(8, seed=4)
    it = iter(s)
    head = [next(it).row_ids.tolist() for _ in range(cut)]
    state = s.state_dict()
    del it
    assert set(state) >= {"epoch", "window", "offset", "seed"} and len(repr(state)) < 400  # small
    resumed = src.open(8, seed=4, state=state)
    assert head + _rows(resumed, 20 - cut) == full
    with pytest.raises(UftError, match="saved with other seed"):
        src.open(8, seed=5, state=state)


@pytest.mark.parametrize("world", [2, 3, 8])
def test_ranks_read_disjoint_rows_covering_the_epoch(sharded, world):
    """7 shards: world 2 and 3 split by shards (rank::world), world 8 by rows of every shard."""
    src = StreamSource(sharded, split="train", window=2)
    seen = [[r for b in _rows(src.open(3, seed=0, epochs=1, drop_last=False, rank=k, world=world)) for r in b]
            for k in range(world)]
    flat = [r for s in seen for r in s]
    assert len(flat) == len(set(flat))  # disjoint
    assert sorted(flat) == sorted(load_dataset(sharded).subset("train").row_ids.tolist())  # covering
    assert all(seen)  # no rank goes empty


def test_corrupt_shard_and_bad_inputs_are_one_line_errors(sharded, tmp_path):
    from pathlib import Path

    with pytest.raises(UftError, match="no val rows"):
        StreamSource(sharded, split="val").num_rows()
    with pytest.raises(UftError, match="fewer than the batch"):
        _rows(StreamSource(sharded, split="test", window=1).open(500, seed=0), 1)
    shard = sorted(Path(sharded).parent.glob("*.parquet"))[2]
    shard.write_bytes(shard.read_bytes()[:-7] + b"garbage")
    with pytest.raises(UftError, match="part-00002.parquet is corrupt"):  # raised in the reader thread, seen here
        _rows(StreamSource(sharded, window=1).open(8, shuffle=False, epochs=1))


def test_load_rows_keeps_only_the_asked_rows(sharded):
    ds = load_dataset(sharded)
    ids = ds.row_ids[[3, 17, 40, 99]]
    got = load_rows(sharded, ids)
    assert torch.equal(got, ds.images[[3, 17, 40, 99]])


def test_stream_features_equal_in_memory_features(sharded):
    from uft.evaluate.features import extract_features, stream_features
    from uft.models.encoders import build_encoder

    torch.manual_seed(0)
    enc = build_encoder("tiny", in_channels=1, width=8)
    ds = load_dataset(sharded)
    for split in ("train", "test"):
        sub = ds.subset(split)
        feats, labels = stream_features(enc, sharded, split, batch_size=12)
        assert torch.equal(feats, extract_features(enc, sub.images, batch_size=12))  # same batches, same numbers
        assert torch.equal(labels, sub.labels) and feats.dtype == torch.float32


def _window_as_before(stream, epoch: int, index: int, names: list[str]):
    """The window as the reader built it before it placed each shard's rows straight into the
    window: filter each shard's table by split (and by rows under DDP), concatenate, shuffle,
    NHWC → NCHW ``.contiguous()``."""
    import io

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from uft.data.dataset import image_rows
    from uft.store import read_verified

    tables = []
    for name in names:
        t = pq.read_table(io.BytesIO(read_verified(stream.store, stream.prefix, stream.manifest, name, "")))
        if stream.by_rows:
            t = t.filter(pa.array(np.arange(t.num_rows) % stream.world == stream.rank))
        if stream.source.split is not None:
            t = t.filter(pc.equal(t.column("split"), stream.source.split))
        tables.append(t)
    t = pa.concat_tables(tables)
    images = torch.from_numpy(image_rows(t, (8, 8, 1), "")).clone()
    labels = torch.from_numpy(t.column("label").to_numpy().astype(np.int64))
    split = t.column("split").to_numpy(zero_copy_only=False).astype(str)
    if stream.shuffle:
        perm = np.random.default_rng([stream.seed, epoch, 1, index]).permutation(t.num_rows)
        images, labels, split = images[torch.from_numpy(perm)], labels[torch.from_numpy(perm)], split[perm]
    return images.permute(0, 3, 1, 2).contiguous(), labels, split


@pytest.mark.parametrize("split,shuffle,rank,world", [("train", True, 0, 1), ("test", True, 0, 1), (None, False, 0, 1),
                                                      ("train", True, 1, 3), ("train", True, 5, 8)])
def test_window_is_what_filter_concat_shuffle_transpose_gave(sharded, split, shuffle, rank, world):
    """Same pixels, labels, splits, dtypes and strides (conv kernels follow the strides, so features
    would differ in their last bits) as the step-by-step window; world 8 > 7 shards splits by rows."""
    stream = StreamSource(sharded, split=split, window=3).open(4, seed=2, shuffle=shuffle, rank=rank, world=world)
    for epoch in (0, 1):
        for index, names in enumerate(stream.windows(epoch)):
            got = stream._load_window(epoch, index, names, last=False)
            images, labels, want_split = _window_as_before(stream, epoch, index, names)
            assert torch.equal(got.images, images) and got.images.stride() == images.stride()
            assert torch.equal(got.labels, labels) and got.split.tolist() == want_split.tolist()
            assert got.split.dtype == want_split.dtype and got.row_ids.dtype == torch.int64


def test_image_rows_reads_a_one_chunk_shard_in_place(sharded):
    """A shard's pixels are viewed where Parquet decoded them, not copied first (the streamed
    window then holds one copy of its pixels, not two, while it is built)."""
    import io
    from pathlib import Path

    import pyarrow.parquet as pq

    from uft.data.dataset import image_rows

    table = pq.read_table(io.BytesIO(sorted(Path(sharded).parent.glob("*.parquet"))[0].read_bytes()))
    chunk = table.column("image").chunk(0)
    assert table.column("image").num_chunks == 1
    rows = image_rows(table, (8, 8, 1), "shard 0")
    assert rows.ctypes.data == chunk.buffers()[2].address + int(np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset])
    assert rows.shape == (table.num_rows, 8, 8, 1)


def test_split_labels_reads_labels_per_split(sharded):
    from uft.data.stream import split_labels

    ds = load_dataset(sharded)
    got = split_labels(sharded)
    assert sorted(got) == ["test", "train"]
    for split, labels in got.items():
        assert np.array_equal(labels, ds.subset(split).labels.numpy())


def test_knn_similarity_block_cap_keeps_predictions(monkeypatch):
    from uft.evaluate import knn

    g = torch.Generator().manual_seed(0)
    tr, te = torch.randn(300, 8, generator=g), torch.randn(50, 8, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    whole = knn.knn_predict(tr, y, te, 3, k=5)
    monkeypatch.setattr(knn, "SIM_BLOCK", 7 * 300)  # 7 test rows per similarity block
    assert torch.equal(knn.knn_predict(tr, y, te, 3, k=5), whole)


def test_split_rows_and_streamed_replay_selection_match_in_memory(sharded, tmp_path, monkeypatch):
    """subsample_source reads labels/row ids from the small columns and features from the stream:
    the replay set it picks is the one the in-memory path picks."""
    import json

    from uft import steps
    from uft.data.stream import split_rows
    from uft.evaluate.features import extract_features
    from uft.models.artifact import publish_encoder
    from uft.models.encoders import build_encoder
    from uft.store import LocalStore, read_manifest, read_verified
    from uft.transfer.replay import select_replay

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ds = load_dataset(sharded)
    tr = ds.subset("train")
    labels, row_ids = split_rows(sharded)["train"]
    assert np.array_equal(labels, tr.labels.numpy()) and np.array_equal(row_ids, tr.row_ids)
    torch.manual_seed(0)
    enc = build_encoder("tiny", in_channels=1, width=8)
    store = tmp_path / "out"
    enc_uri = publish_encoder(LocalStore(store), "models/e", enc, {"name": "tiny", "in_channels": 1, "kwargs": {"width": 8}}, {})
    out = steps.subsample_source(sharded, "sha", str(store), rule="kmeans", size=12, seed=3, encoder_uri=enc_uri)
    manifest, st, prefix = read_manifest(out["replay_uri"])
    got = json.loads(read_verified(st, prefix, manifest, "row_ids.json", out["replay_uri"]))
    want = tr.row_ids[select_replay("kmeans", 12, seed=3, labels=tr.labels.numpy(),
                                    source_features=extract_features(enc, tr.images).numpy())].tolist()
    assert got == want and len(got) == 12


def test_promote_source_sample_is_read_without_loading_the_source(tiny_raw, tmp_path):
    """promote's held-out source sample (labels from the small columns, pixels of the picks only)
    equals the sample the in-memory code draws: memory from the train split, queries from val."""
    from uft.data import ingest as ingest_mod
    from uft.promote.signals import _source_eval
    from uft.store import LocalStore

    uri = ingest_mod.ingest(tiny_raw, LocalStore(tmp_path), name="t", image_size=8, channels=1, test_fraction=0.2,
                            val_fraction=0.4, seed=0)
    ds = load_dataset(uri)
    got = _source_eval(uri, max_images=10, seed=2)
    lab = ds.labels >= 0
    tr, va = ds.where(lab.numpy() & (ds.split == "train")), ds.where(lab.numpy() & (ds.split == "val"))
    g = np.random.default_rng(2)
    i = torch.from_numpy(np.sort(g.permutation(len(tr))[:20]))
    j = torch.from_numpy(np.sort(g.permutation(len(va))[:10]))
    want = (tr.images[i], tr.labels[i], va.images[j], va.labels[j], 10)
    assert all(torch.equal(a, b) for a, b in zip(got[:4], want[:4])) and got[4] == 10
