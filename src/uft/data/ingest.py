"""Ingest: raw images → fixed-size uint8 Parquet shards + ``manifest.json`` in the store.

Rows hold decoded pixels (``image``: HWC uint8 bytes at one resolution) so training reads them
with one ``np.frombuffer`` instead of decoding per sample. The dataset's identity is the sha256 of
its manifest, which is deterministic (sorted JSON, no timestamps), so the same input and options
publish to the same prefix and a rerun finds it already there.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from uft.data.sources import RawImages
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


def resize_images(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """``(N, H, W, C)`` uint8 → ``(N, size, size, channels)`` uint8 (area/bilinear, antialiased).

    Channels: 3→1 by luminance, 1→3 by replication, 4 (RGBA) composited on black beforehand.
    """
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    c = x.shape[1]
    if c == 4:
        x = x[:, :3] * (x[:, 3:4] / 255.0)
        c = 3
    if channels == 1 and c == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif channels == 3 and c == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels != c:
        raise UftError(f"cannot convert {c}-channel images to {channels} channels: use channels 1 or 3")
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Deterministic per-class split → array of "train"/"test" (unlabelled rows split uniformly)."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "train", dtype=object)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        split[idx[:n_test]] = "test"
    return split.astype(str)


def _shard_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def ingest(raw: RawImages, store: Store, *, name: str, image_size: int, channels: int,
           test_fraction: float = 0.5, limit: int = 0, seed: int = 0) -> str:
    """Normalise, split and publish ``raw`` → the manifest URI (``datasets/<sha>/manifest.json``)."""
    if len(raw.images) == 0:
        raise UftError(f"dataset {name!r} has no images: point it at a directory with images")
    if not 0.0 <= test_fraction < 1.0:
        raise UftError(f"test_fraction={test_fraction} for {name!r} is out of range: use a value in [0, 1)")
    if image_size < 4 or image_size > 1024:
        raise UftError(f"image_size={image_size} is out of range: use 4..1024")
    if channels not in (1, 3):
        raise UftError(f"channels={channels} is invalid: use 1 (grey) or 3 (RGB)")
    keep = _subset(raw.labels, limit, seed)
    images = resize_images(raw.images[keep], image_size, channels)
    labels = raw.labels[keep]
    splits = raw.splits[keep] if raw.splits is not None else stratified_split(labels, test_fraction, seed)
    row_ids = keep.astype(np.int64)

    files: dict[str, bytes] = {}
    n_shards = max(1, math.ceil(len(images) / SHARD_ROWS))
    flat = images.reshape(len(images), -1)
    for s in range(n_shards):
        sl = slice(s * SHARD_ROWS, (s + 1) * SHARD_ROWS)
        table = pa.table({
            "row_id": pa.array(row_ids[sl], pa.int64()),
            "label": pa.array(labels[sl].astype(np.int16), pa.int16()),
            "split": pa.array(splits[sl].tolist(), pa.string()),
            "image": pa.array([r.tobytes() for r in flat[sl]], pa.binary()),
        }, schema=SCHEMA)
        files[f"part-{s:05d}.parquet"] = _shard_bytes(table)

    split_counts = {str(k): int(v) for k, v in zip(*np.unique(splits, return_counts=True))}
    labelled = labels >= 0
    class_counts = np.bincount(labels[labelled], minlength=len(raw.classes)).tolist() if labelled.any() else []
    manifest = {
        "kind": "dataset",
        "format_version": FORMAT_VERSION,
        "name": name,
        "image_shape": [image_size, image_size, channels],
        "num_rows": int(len(images)),
        "classes": list(raw.classes),
        "class_counts": class_counts,
        "splits": split_counts,
        "schema": {f.name: str(f.type) for f in SCHEMA},
        "origin": raw.info,
        "framing": raw.framing,  # uft.data.framing: keep / content_box / box:T,L,H,W (part of the hash)
    }
    # Content address: the hash of the manifest body and the shard hashes, known before any write.
    fingerprint = sha256_bytes(canonical_json([manifest, sorted((k, sha256_bytes(v)) for k, v in files.items())]))
    return publish(store, f"datasets/{fingerprint[:24]}", files, manifest)


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
