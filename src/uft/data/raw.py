"""What every image loader returns, before ingest normalises and publishes it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from uft.errors import UftError


@dataclass
class RawImages:
    images: np.ndarray  # (N, H, W, C) uint8; ImageFolder data: a uft.data.parallel.DiskRows (rows on disk)
    labels: np.ndarray  # (N,) int64, -1 for unlabelled
    classes: list[str]
    splits: np.ndarray | None = None  # (N,) str, e.g. "train"/"test"; None → made by ingest
    info: dict = field(default_factory=dict)  # what was found / skipped, for the summary
    framing: str = "keep"  # what uft.data.framing applied to ``images`` (recorded in the manifest)
    decode_stats: dict = field(default_factory=dict)  # ImageFolder: workers, chunk, peak_pending (not published)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise UftError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise UftError(f"{len(self.images)} images but {len(self.labels)} labels: they must match")
