"""Read a published dataset (verified against its manifest) into memory as uint8 tensors."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from uft.errors import UftError
from uft.store import read_manifest, read_verified, sha256_bytes, canonical_json


@dataclass
class ImageDataset:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64, -1 = unlabelled
    split: np.ndarray  # (N,) str
    row_ids: np.ndarray  # (N,) int64, stable ids from ingest
    classes: list[str]
    uri: str
    sha: str

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, mask: np.ndarray | torch.Tensor) -> "ImageDataset":
        m = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
        mn = m.numpy()
        return ImageDataset(self.images[m], self.labels[m], self.split[mn], self.row_ids[mn], self.classes, self.uri, self.sha)

    def subset(self, split: str) -> "ImageDataset":
        out = self.where(self.split == split)
        if len(out) == 0:
            raise UftError(f"dataset {self.uri} has no {split!r} rows: ingest it with a {split} split")
        return out

    def floats(self) -> torch.Tensor:
        """Images as float32 in [0, 1], ``(N, C, H, W)``."""
        return self.images.float().div_(255.0)


def image_rows(table: pa.Table, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """The ``image`` column of a shard table → uint8 ``(n, H, W, C)``, a view of one contiguous
    buffer (rows have a fixed size, so no per-row Python work). ``where`` names it in the error."""
    h, w, c = shape
    chunks = table.column("image")
    # one chunk (a shard as written): its buffer as it is; combine_chunks would copy even that
    col = chunks.chunk(0) if chunks.num_chunks == 1 else chunks.combine_chunks()
    n = len(col)
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[col.offset: col.offset + n + 1]
    data = np.frombuffer(col.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[-1]]
    if len(data) != n * h * w * c:
        raise UftError(f"{where} has rows of the wrong size for image_shape {[h, w, c]}: rerun ingest")
    return data.reshape(n, h, w, c)


def load_dataset(uri: str) -> ImageDataset:
    """Load and verify every shard listed in the manifest at ``uri``."""
    manifest, store, prefix = read_manifest(uri)
    if manifest.get("kind") != "dataset":
        raise UftError(f"{uri} is not a dataset manifest (kind={manifest.get('kind')!r}): pass the output of ingest")
    h, w, c = manifest["image_shape"]
    images, labels, splits, row_ids = [], [], [], []
    for name in sorted(manifest["files"]):
        table = pq.read_table(io.BytesIO(read_verified(store, prefix, manifest, name, uri)))
        images.append(image_rows(table, (h, w, c), f"{name} in {uri}"))
        labels.append(table.column("label").to_numpy().astype(np.int64))
        splits.append(table.column("split").to_numpy(zero_copy_only=False).astype(str))
        row_ids.append(table.column("row_id").to_numpy())
    img = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).contiguous()
    sha = sha256_bytes(canonical_json(manifest))
    return ImageDataset(img, torch.from_numpy(np.concatenate(labels)), np.concatenate(splits),
                        np.concatenate(row_ids), list(manifest["classes"]), uri, sha)
