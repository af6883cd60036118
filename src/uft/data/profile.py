"""What a dataset's images look like (size, colour), from a small seeded sample, before ingest.

`uft run` uses the profile to pick image size, channels and encoder when the user did not (see
:mod:`uft.defaults`). Reading a sample of a few hundred files takes well under a second locally.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from uft.errors import UftError

#: An image counts as colour when at least this share of its pixels has a chroma (max − min over
#: R, G, B) above CHROMA_MIN: JPEG noise on a grey picture stays under it, any real tint does not.
CHROMA_MIN = 24
COLOUR_PIXEL_SHARE = 0.02
PROBE_PIXELS = 64  # images are reduced to at most 64×64 before the colour test (cheap, enough)


@dataclass(frozen=True)
class DataProfile:
    """A sample's summary. ``sizes`` are ``(width, height)`` of the sampled images."""

    spec: str
    sampled: int
    total: int
    colour: int  # sampled images that are really colour (not grey stored as RGB)
    sizes: tuple[tuple[int, int], ...] = ()
    modes: dict[str, int] = field(default_factory=dict)

    @property
    def colour_share(self) -> float:
        return self.colour / self.sampled if self.sampled else 0.0

    @property
    def typical_side(self) -> int:
        """Median of the shorter side: the resolution most images really have."""
        return int(np.median([min(w, h) for w, h in self.sizes])) if self.sizes else 0

    def describe(self) -> str:
        side = self.typical_side
        kinds = "colour" if self.colour_share >= 0.5 else ("grey" if self.colour == 0 else "mixed grey/colour")
        return (f"{kinds} ({self.colour_share:.0%} colour), typical {side}×{side} px "
                f"(sampled {self.sampled} of {self.total})")


def is_colour(im) -> bool:
    """A PIL image → whether it carries colour (palette, alpha and 16-bit modes handled)."""
    if im.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"):
        return False
    im = im.copy()
    im.thumbnail((PROBE_PIXELS, PROBE_PIXELS))
    rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    if "A" in im.mode or im.mode == "P" and "transparency" in im.info:
        alpha = np.asarray(im.convert("RGBA"))[..., 3] > 0
        chroma = chroma[alpha] if alpha.any() else chroma.ravel()[:0]
    return chroma.size > 0 and float((chroma > CHROMA_MIN).mean()) >= COLOUR_PIXEL_SHARE


def profile_images(images: list[tuple[str, bytes]], *, spec: str, total: int | None = None) -> DataProfile:
    """Encoded images ``[(name, bytes)]`` → :class:`DataProfile`; undecodable files are left out."""
    from PIL import Image

    sizes, modes, colour = [], Counter(), 0
    for _, data in images:
        try:
            im = Image.open(io.BytesIO(data))
            sizes.append(im.size)
            modes[im.mode] += 1
            colour += is_colour(im)
        except Exception:  # noqa: BLE001 — a bad file is ingest's to report, not the profile's
            continue
    return DataProfile(spec, len(sizes), total if total is not None else len(images), colour,
                       tuple(sizes), dict(modes))


def profile_dataset(spec: str, *, sample: int = 256, seed: int = 0, listing: Sequence[str] = ()) -> DataProfile | None:
    """Profile an ImageFolder directory or ``s3://`` prefix from ``sample`` seeded files.

    ``listing``: the folder's relative file paths when already listed (preflight's), else listed here.

    → None for bundled names and manifest URIs (their shape is fixed by the bundle / earlier ingest).
    """
    from uft.data.imagefolder import IMAGE_EXTS, _Reader, _Skip, parse_spec
    from uft.data.sources import BUNDLED

    path, _ = parse_spec(spec)
    if spec in BUNDLED or path.endswith(".json"):
        return None
    reader = _Reader(path)
    files = [f for f in (listing or reader.list()) if Path(f).suffix.lower() in IMAGE_EXTS]
    if not files:
        raise UftError(f"dataset {spec} has no image files: put PNG/JPEG/BMP/GIF/TIFF/WebP images in it")
    picked = random.Random(seed).sample(files, min(sample, len(files)))
    data = []
    for rel in picked:
        try:
            data.append((rel, reader.read(rel)))
        except _Skip:
            continue
    return profile_images(data, spec=spec, total=len(files))
