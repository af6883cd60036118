"""A colour ImageFolder domain pair built from the photographs that ship inside scikit-image.

Classes are the colour photographs in ``skimage/data`` (astronaut, coffee, rocket, …: every RGB
picture of at least 256 px in the wheel, nothing downloaded). Each image of a class is a random
crop of its photograph, resized to ``size`` px:

- **source** ("camera A"): crops of 30–60 % of the shorter side, as they are;
- **target** ("camera B"): tighter crops (15–30 %), a warm colour cast, a slight blur and JPEG
  compression at quality 40 — a real shift in scale, colour and sharpness.

The task (which scene a patch comes from) needs colour and detail, so it shows what grey 16 px
ingestion throws away. Build it with ``python -m bench.colour_pair OUT_DIR``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def photographs(min_side: int = 256) -> dict[str, Image.Image]:
    """The colour photographs of the installed scikit-image, by name (sorted)."""
    try:
        import skimage
    except ImportError as e:
        raise SystemExit("the colour pair needs scikit-image: .venv/bin/pip install scikit-image") from e
    out = {}
    for path in sorted((Path(skimage.__file__).parent / "data").glob("*")):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        im = Image.open(path)
        if im.mode != "RGB" or min(im.size) < min_side:
            continue
        a = np.asarray(im, dtype=np.int16)
        if (a.max(-1) - a.min(-1)).mean() < 10:  # grey stored as RGB
            continue
        out[path.stem] = im.copy()
    return out


def _crop(im: Image.Image, rng: np.random.Generator, lo: float, hi: float, size: int) -> Image.Image:
    side = int(min(im.size) * rng.uniform(lo, hi))
    x = int(rng.integers(0, im.size[0] - side + 1))
    y = int(rng.integers(0, im.size[1] - side + 1))
    return im.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)


def _camera_b(im: Image.Image) -> Image.Image:
    a = np.asarray(im, dtype=np.float32) * np.array([1.12, 1.0, 0.82], dtype=np.float32)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=40)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def build_pair(out: Path, per_class: int = 200, size: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """Write ``out/source/<class>/*.png`` and ``out/target/<class>/*.png`` → the two roots."""
    rng = np.random.default_rng(seed)
    photos = photographs()
    for domain in ("source", "target"):
        for name, photo in photos.items():
            d = out / domain / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                if domain == "source":
                    patch = _crop(photo, rng, 0.30, 0.60, size)
                else:
                    patch = _camera_b(_crop(photo, rng, 0.15, 0.30, size))
                patch.save(d / f"{i:04d}.png")
    return out / "source", out / "target"


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "build/colour_pair")
    src, tgt = build_pair(root)
    print(f"source: {src}\ntarget: {tgt}\nclasses: {', '.join(sorted(p.name for p in src.iterdir()))}")
