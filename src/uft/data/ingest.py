"""Ingest: raw images → fixed-size uint8 Parquet shards + ``manifest.json`` in the store.

Rows hold decoded pixels (``image``: HWC uint8 bytes at one resolution) so training reads them
with one ``np.frombuffer`` instead of decoding per sample. The dataset's identity is the sha256 of
its manifest, which is deterministic (sorted JSON, no timestamps), so the same input and options
publish to the same prefix and a rerun finds it already there.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from uft.data.raw import RawImages
from uft.data.resize import resize_images  # noqa: F401  (re-exported: ingest resizes)
from uft.errors import UftError
from uft.store import Store, canonical_json, publish, sha256_bytes

SCHEMA = pa.schema([
    ("row_id", pa.int64()),
    ("label", pa.int16()),
    ("split", pa.string()),
    ("image", pa.binary()),
])
SHARD_ROWS = 4096
FORMAT_VERSION = 1


#: The splits a dataset can have. ``train``: what training (pretraining, finetuning, probes' labels)
#: sees. ``val``: held out from all training, for every decision (label-free promotion signals,
#: label-using gates, hyperparameters, γ, start checks). ``test``: only reports decisions afterwards.
SPLITS = ("train", "val", "test")

#: The split rule, recorded in every manifest (``split_rule``) and with every registered encoder
#: (:mod:`uft.promote.registry`). A row's split is a function of its own content only — never of its
#: position, the file list, the other rows or the run seed — so an image keeps its split for life:
#: growing a folder, re-ingesting with another seed or growing ``train/`` moves no old image.
#: Identical images (same pixels) get the same split, so a duplicate can never sit in train and val.
SPLIT_RULE = "content-blake2b/1"
#: The fixed project key of the keyed hash: the split is not a plain hash of public pixels, so a
#: dataset cannot be arranged (by accident or on purpose) to line up with another tool's split.
#: Changing it re-deals every split: bump :data:`SPLIT_RULE` with it.
SPLIT_KEY = b"uft.split.v1"


def content_keys(images: np.ndarray) -> np.ndarray:
    """Rows ``(N, H, W, C)`` uint8 (as published: decoded, framed, resized) → ``(N, 2)`` uint64 keys.

    blake2b keyed with :data:`SPLIT_KEY` over the row's shape and pixels, 16 bytes per row. Why the
    published pixels, not the file bytes: the key can be recomputed from any published dataset (the
    promotion gate does, to check what an encoder trained on) with no extra column and no access to
    the original files; it survives lossless re-encoding, renaming and moving a file, and bundled
    datasets have no files at all. The cost: another ``image_size``/``channels``/framing gives other
    pixels and so other keys (a new key space; :mod:`uft.promote` says it cannot tell across them).
    Hashing costs ~1 µs a row, small beside decoding.
    """
    n = len(images)
    out = np.empty((n, 2), np.uint64)
    shape = ("x".join(str(d) for d in images.shape[1:]) + ":").encode()
    for i in range(n):
        h = hashlib.blake2b(shape, key=SPLIT_KEY, digest_size=16)
        h.update(np.ascontiguousarray(images[i]).tobytes())
        out[i] = np.frombuffer(h.digest(), np.uint64)
    return out


def _uniform(k: np.ndarray) -> np.ndarray:
    """uint64 → float64 in [0, 1) (the top 53 bits, exactly representable)."""
    return (np.asarray(k, np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def split_by_keys(keys: np.ndarray, test_fraction: float, val_fraction: float = 0.0,
                  given: np.ndarray | None = None) -> np.ndarray:
    """Content keys ``(N, 2)`` → ``(N,)`` "train"/"val"/"test" by :data:`SPLIT_RULE`.

    The key's first word, mapped to ``u ∈ [0, 1)``, decides test (``u < test_fraction``); its second
    word, ``v``, carves val from the rest (``v < val_fraction``). With ``given`` (``(N,)`` "train"/
    "test", data that comes with its own split) the given test rows stay test and only train rows are
    carved by ``v``: the same rule, so val is the same set whichever layout it came from. Each row is
    decided alone, so the per-class fractions are those of a binomial draw (sd ``√(f(1−f)/n)`` for a
    class of ``n``) rather than exact counts: the price of a split that never moves an old row.
    """
    keys = np.asarray(keys, np.uint64).reshape(-1, 2)
    u, v = _uniform(keys[:, 0]), _uniform(keys[:, 1])
    if given is None:
        out = np.where(u < test_fraction, "test", "train").astype(object)
    else:
        out = np.asarray(given).astype(object).copy()
    out[(out == "train") & (v < val_fraction)] = "val"
    return out.astype(str)


def _position_keys(n: int, seed: int) -> np.ndarray:
    """Keys for arrays handed over without images (benchmarks, tests): seeded per position."""
    return np.random.default_rng([seed, 0x5A]).integers(0, 2**64, size=(n, 2), dtype=np.uint64)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = 0, val_fraction: float = 0.0, *,
                     images: np.ndarray | None = None) -> np.ndarray:
    """``(N,)`` labels → ``(N,)`` array of "train"/"val"/"test" by :func:`split_by_keys`.

    ``images`` ``(N, H, W, C)`` uint8: the rows whose content decides (what :func:`ingest` passes;
    ``seed`` is then unused). Without images (arrays with no pixels: benchmarks, tests) each
    position gets a seeded key. Every class gets the fractions in expectation (stratified by
    independence: each row decides alone, whatever its class); unlabelled rows (-1) likewise.
    """
    keys = content_keys(images) if images is not None else _position_keys(len(labels), seed)
    return split_by_keys(keys, test_fraction, val_fraction)


def carve_val(labels: np.ndarray, splits: np.ndarray, val_fraction: float, seed: int = 0, *,
              images: np.ndarray | None = None) -> np.ndarray:
    """Move the "train" rows whose content says so to "val" (``val_fraction`` of each class in
    expectation) → new ``(N,)`` split array; "test" rows are kept as they are.

    Used for data that arrives with its own train/test split (bundled MNIST, ImageFolder train/ and
    test/). ``images``/``seed``: as in :func:`stratified_split`.
    """
    keys = content_keys(images) if images is not None else _position_keys(len(labels), seed)
    return split_by_keys(keys, 0.0, val_fraction, given=np.asarray(splits))


def _shard_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class ShardWriter:
    """Rows in, ``SHARD_ROWS``-row Parquet shards out, one at a time, then one publication.

    ``add`` buffers rows until a shard is full, encodes it, hashes it and stages its bytes in a
    temporary directory (``$TMPDIR``): the dataset's prefix is the hash of every shard, so nothing
    can go to the store before the last shard exists. ``publish`` then copies the staged shards to
    the store one by one and writes the manifest last (:func:`uft.store.publish`). Memory: at most
    one shard of buffered rows plus the batch being added; ``peak_buffered_rows`` records the most
    rows ever held (tests check the bound by behaviour).
    """

    def __init__(self, *, image_shape: tuple[int, int, int], num_classes: int):
        self.image_shape = tuple(int(v) for v in image_shape)
        self.num_classes = num_classes
        self._tmp = tempfile.TemporaryDirectory(prefix="uft-shards-")
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self.num_rows = 0
        self.hashes: dict[str, str] = {}  # shard name → sha256, in write order
        self.class_counts = np.zeros(num_classes, np.int64)
        self.split_counts: Counter[str] = Counter()
        self.peak_buffered_rows = 0

    def add(self, images: np.ndarray, labels: np.ndarray, splits: np.ndarray, row_ids: np.ndarray | None = None) -> None:
        """Append ``images`` ``(n, H, W, C)`` uint8 with ``labels`` ``(n,)`` (-1 = unlabelled),
        ``splits`` ``(n,)`` str and ``row_ids`` ``(n,)`` (default: the running row number)."""
        n = len(images)
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise UftError(f"batch of {images.dtype} {tuple(images.shape)} does not fit the dataset's uint8 "
                           f"{self.image_shape} images: resize and convert it before adding")
        if len(labels) != n or len(splits) != n or (row_ids is not None and len(row_ids) != n):
            raise UftError(f"batch has {n} images but {len(labels)} labels, {len(splits)} splits: they must match")
        labels = np.asarray(labels, np.int64)
        if n and (labels.max() >= self.num_classes or labels.min() < -1):
            raise UftError(f"labels must be -1 (unlabelled) or 0..{self.num_classes - 1} for {self.num_classes} classes")
        ids = np.arange(self.num_rows + self._buffered, self.num_rows + self._buffered + n) if row_ids is None else row_ids
        self._buf.append((images, labels, np.asarray(splits).astype(str), np.asarray(ids, np.int64)))
        self._buffered += n
        self.peak_buffered_rows = max(self.peak_buffered_rows, self._buffered)
        while self._buffered >= SHARD_ROWS:
            self._flush(SHARD_ROWS)

    def _flush(self, rows: int) -> None:
        parts = [np.concatenate(col) for col in zip(*self._buf)]
        images, labels, splits, ids = (p[:rows] for p in parts)
        rest = tuple(p[rows:] for p in parts)
        self._buf = [rest] if len(rest[0]) else []
        self._buffered = len(rest[0])
        table = pa.Table.from_arrays([_fixed(ids, pa.int64()), _fixed(labels.astype(np.int16), pa.int16()),
                                      _variable([s.encode() for s in splits.tolist()], pa.string()),
                                      _binary_rows(images.reshape(len(images), -1))], schema=SCHEMA)
        data = _shard_bytes(table)
        name = f"part-{len(self.hashes):05d}.parquet"
        Path(self._tmp.name, name).write_bytes(data)
        self.hashes[name] = sha256_bytes(data)
        self.num_rows += rows
        labelled = labels[labels >= 0]
        self.class_counts += np.bincount(labelled, minlength=self.num_classes)[: self.num_classes]
        self.split_counts.update(splits.tolist())

    def publish(self, store: Store, *, name: str, classes: Sequence[str], origin: dict, framing: str = "keep") -> str:
        """Flush the last rows, then publish shards + manifest → the manifest URI."""
        if not self.num_rows and not self._buffered:
            raise UftError(f"dataset {name!r} has no images: add rows before publishing")
        if self._buffered:
            self._flush(self._buffered)
        h, w, c = self.image_shape
        manifest = {
            "kind": "dataset",
            "format_version": FORMAT_VERSION,
            "name": name,
            "image_shape": [h, w, c],
            "num_rows": int(self.num_rows),
            "classes": list(classes),
            "class_counts": self.class_counts.tolist() if self.class_counts.any() else [],
            "splits": {k: int(v) for k, v in sorted(self.split_counts.items())},
            "schema": {f.name: str(f.type) for f in SCHEMA},
            "origin": origin,
            "framing": framing,  # uft.data.framing: keep / content_box / box:T,L,H,W (part of the hash)
            "split_rule": SPLIT_RULE,  # how each row's split follows from its content (part of the hash)
        }
        # Content address: the hash of the manifest body and the shard hashes, known before any write.
        fingerprint = sha256_bytes(canonical_json([manifest, sorted(self.hashes.items())]))
        try:
            return publish(store, f"datasets/{fingerprint[:24]}", _StagedFiles(self._tmp.name, list(self.hashes)), manifest)
        finally:
            self._tmp.cleanup()


# Arrow arrays straight from buffers: pa.array() on numpy input imports pandas to test its type
# (2 s and ~100 MB per process) and copies each image into a Python bytes object first.

def _fixed(values: np.ndarray, typ: pa.DataType) -> pa.Array:
    """``(n,)`` numeric → Arrow array of ``typ`` (int16 or int64; no nulls)."""
    values = np.ascontiguousarray(values, dtype={pa.int16(): np.int16, pa.int64(): np.int64}[typ])
    return pa.Array.from_buffers(typ, len(values), [None, pa.py_buffer(values)])


def _binary_rows(rows: np.ndarray) -> pa.Array:
    """``(n, k)`` uint8 → Arrow binary array of ``n`` values of ``k`` bytes each."""
    n, k = rows.shape
    if n * k >= 2**31:  # Arrow binary offsets are int32
        raise UftError(f"a shard of {n} images of {k} bytes exceeds 2 GiB: use a smaller image_size (at most ~400 px RGB)")
    offsets = np.arange(n + 1, dtype=np.int32) * k
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(rows))])


def _variable(values: list[bytes], typ: pa.DataType) -> pa.Array:
    """Encoded strings → Arrow ``string``/``binary`` array."""
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    return pa.Array.from_buffers(typ, len(values), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(values))])


class _StagedFiles(Mapping):
    """Shard name → bytes read from the staging directory on access, so :func:`uft.store.publish`
    holds one shard in memory at a time."""

    def __init__(self, root: str, names: list[str]):
        self.root, self.names = root, names

    def __getitem__(self, name: str) -> bytes:
        if name not in self.names:
            raise KeyError(name)
        return Path(self.root, name).read_bytes()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


Batch = tuple  # (images (n,H,W,C) uint8, labels (n,) int, splits (n,) str[, row_ids (n,) int])


def publish_batches(batches: Iterable[Batch], store: Store, *, name: str, image_shape: tuple[int, int, int],
                    classes: Sequence[str], origin: dict | None = None, framing: str = "keep") -> str:
    """Publish a dataset from an iterator of batches, written shard by shard → the manifest URI.

    Each batch is ``(images, labels, splits)`` or ``(images, labels, splits, row_ids)``: images
    ``(n, H, W, C)`` uint8 with ``(H, W, C) == image_shape``, labels ``(n,)`` in -1..len(classes)-1
    (-1 = unlabelled), splits ``(n,)`` of "train"/"test", row ids ``(n,)`` int (default: the row
    number). Memory is bounded by one shard plus one batch whatever the number of batches; the
    result is the same dataset (same manifest hash) as :func:`ingest` of the concatenated rows.
    """
    writer = ShardWriter(image_shape=image_shape, num_classes=len(classes))
    for batch in batches:
        writer.add(*batch)
    return writer.publish(store, name=name, classes=classes, origin=origin or {}, framing=framing)


#: Mixed into the seed of the row order so it differs from the split's and the subset's draws.
ROW_ORDER_SALT = 0x0D


def ingest(raw: RawImages, store: Store, *, name: str, image_size: int, channels: int,
           test_fraction: float = 0.5, val_fraction: float = 0.0, limit: int = 0, seed: int = 0) -> str:
    """Normalise, split and publish ``raw`` → the manifest URI (``datasets/<sha>/manifest.json``).

    ``raw.images`` may be an in-memory array or a :class:`uft.data.parallel.DiskRows`: rows are
    read, resized and written one shard at a time, so memory stays bounded by a few shards.
    Each row's split follows from its published pixels alone (:data:`SPLIT_RULE`): ``seed`` picks
    the ``limit`` subset and the row order, never a split; ``raw.splits`` (a given train/test) are
    kept and val is carved from their train rows by the same rule.
    """
    if len(raw.images) == 0:
        raise UftError(f"dataset {name!r} has no images: point it at a directory with images")
    if not 0.0 <= test_fraction < 1.0:
        raise UftError(f"test_fraction={test_fraction} for {name!r} is out of range: use a value in [0, 1)")
    if not 0.0 <= val_fraction < 1.0:
        raise UftError(f"val_fraction={val_fraction} for {name!r} is out of range: use a value in [0, 1)")
    if image_size < 4 or image_size > 1024:
        raise UftError(f"image_size={image_size} is out of range: use 4..1024")
    if channels not in (1, 3):
        raise UftError(f"channels={channels} is invalid: use 1 (grey) or 3 (RGB)")
    keep = _subset(raw.labels, limit, seed)
    labels = raw.labels[keep]
    given = raw.splits[keep] if raw.splits is not None else None
    # Rows are written in a seeded random order: an ImageFolder (and the bundled MNIST) lists them
    # class by class, and the streamed reader shuffles only within a window of a few shards, so
    # file order would give single-class batches on large datasets. Row ids keep the file order.
    order = np.random.default_rng([seed, ROW_ORDER_SALT]).permutation(len(keep))
    keep, labels = keep[order], labels[order]
    given = given[order] if given is not None else None

    def batches() -> Iterator[Batch]:
        for start in range(0, len(keep), SHARD_ROWS):
            sl = slice(start, start + SHARD_ROWS)
            rows = raw.images[keep[sl]]
            same = rows.shape[1:] == (image_size, image_size, channels)  # resize_images would be the identity
            rows = rows if same else resize_images(rows, image_size, channels)
            # The split of a row is decided by its published pixels alone (SPLIT_RULE), so it is
            # made here, one batch at a time, with no pass over the whole dataset first.
            splits = split_by_keys(content_keys(rows), test_fraction if given is None else 0.0, val_fraction,
                                   given=None if given is None else given[sl])
            yield rows, labels[sl], splits, keep[sl]

    return publish_batches(batches(), store, name=name, image_shape=(image_size, image_size, channels),
                           classes=raw.classes, origin=raw.info, framing=raw.framing)


def _subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Deterministic class-proportional subset (round-robin over classes in a seeded order)."""
    if limit <= 0 or limit >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    depth = 0
    while len(picked) < limit:
        for idx in per_class:
            if depth < len(idx) and len(picked) < limit:
                picked.append(int(idx[depth]))
        depth += 1
    return np.sort(np.asarray(picked, dtype=np.int64))
