"""User data: an ImageFolder tree (local directory or ``s3://bucket/prefix``) → :class:`RawImages`.

Layouts (paths relative to the root; hidden files and directories, ``.*``, are ignored):

- ``<class>/<...>/img``: labelled, one directory per class (at least 2), sorted names → labels 0..K-1.
- ``train/<class>/img`` and ``test/<class>/img``: labelled with predefined splits; both splits must
  hold the same classes. With ``train/`` alone the split is left to ingest (stratified, seeded).
- ``img`` directly in the root (or in ``train/`` and ``test/``): unlabelled (label -1).
- Any tree read with the ``unlabelled`` option (``PATH#unlabelled`` or ``unlabelled=True``):
  every image is unlabelled whatever directories it sits in (split directories still count).

Every image (PNG, JPEG, BMP, GIF, TIFF, WebP, PNM, ...; modes 1/L/LA/P/PA/RGB/RGBA/CMYK/I;16/I/F)
becomes uint8 ``(image_size, image_size, channels)``: 16-bit → 8-bit by /257, alpha composited on
black, palette expanded, RGB → grey by ITU-R 601 luma (the weights of ``ingest.resize_images``),
grey → RGB by replication, EXIF orientation applied, then squashed to a square (LANCZOS when
shrinking, BILINEAR when enlarging; no crop, so nothing of the image is lost).

Bad files are skipped and recorded in ``info["skipped"]`` as ``{"file", "reason"}``: files with a
non-image extension, images that fail to decode (corrupt, truncated), images over
``PIL.Image.MAX_IMAGE_PIXELS`` (decompression-bomb guard), loose files beside class directories,
and byte-identical duplicates (the first in sorted order, ``train/`` before ``test/``, is kept).
Loading fails only when no usable image remains. With ``strict`` (``PATH#strict``) the first
skipped file other than a duplicate is an error instead. Layout problems (missing or empty path,
a single class, train/test classes that differ) are always errors.

Scale: files are read, hashed and decoded by a pool of worker processes (one per available CPU
by default), a chunk of files per task, with a bounded number of tasks in flight; results are
taken in file order, so the output never depends on the number of workers or on which finishes
first. Decoded images go to a temporary file (:class:`uft.data.parallel.DiskRows`), so memory
holds a few chunks whatever the dataset's size, and :func:`uft.data.ingest.ingest` reads them
back one shard at a time.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from uft.data.parallel import DiskRows, OrderedPool, chunked, resolve_workers
from uft.data.raw import RawImages
from uft.errors import UftError
from uft.progress import Progress

IMAGE_EXTS = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k",
})
SPLITS = ("train", "test")
OPTIONS = frozenset({"unlabelled", "unlabeled", "strict"})
MAX_SKIPPED_LISTED = 1000  # info["skipped"] is capped (it lands in the manifest); the count is not
LUMA = np.array([0.299, 0.587, 0.114])


class _Skip(Exception):
    """A file that cannot be used; ``str()`` is the reason recorded in ``info["skipped"]``."""


@dataclass(frozen=True, slots=True)  # slots: a 1M-file listing holds a million of these
class _Entry:
    rel: str  # POSIX path relative to the root
    split: str | None  # "train"/"test" for split layouts, else None
    cls: str | None  # class name, None = unlabelled
    skip: str | None = None  # reason decided from the path alone (extension, position)


# --- spec parsing and listing ---------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[str, set[str]]:
    """``"PATH#unlabelled,strict"`` → ``("PATH", {"unlabelled", "strict"})``.

    A local path that really contains ``#`` is taken literally when it exists.
    """
    if "#" not in spec or Path(spec.removeprefix("file://")).exists():
        return spec, set()
    base, _, frag = spec.rpartition("#")
    opts = {o.strip().lower() for o in frag.split(",") if o.strip()}
    unknown = sorted(opts - OPTIONS)
    if unknown:
        raise UftError(f"dataset {spec!r} has unknown option(s) {', '.join(unknown)}: "
                       "use PATH#unlabelled, PATH#strict or PATH#unlabelled,strict")
    return base, {"unlabelled" if o == "unlabeled" else o for o in opts}


class _Reader:
    """Lists relative file paths under a root and reads them; local directory or S3 prefix."""

    def __init__(self, spec: str):
        self.spec = spec
        if spec.startswith("s3://"):
            from uft.store import open_store

            bucket, _, prefix = spec[5:].partition("/")
            if not bucket:
                raise UftError(f"dataset {spec!r} has no bucket: use s3://bucket/prefix")
            self.store = open_store(spec)
            self.root: Path | None = None
        else:
            self.store = None
            self.root = Path(spec.removeprefix("file://")).expanduser()
            if not self.root.exists():
                raise UftError(f"dataset path {self.root} does not exist: pass an ImageFolder directory "
                               "(one sub-directory per class), an s3://bucket/prefix or a manifest URI")
            if not self.root.is_dir():
                raise UftError(f"dataset path {self.root} is a file, not a directory: pass the directory "
                               "that holds the class sub-directories")

    def list(self) -> list[str]:
        if self.store is not None:
            keys = [k for k in self.store.list("") if k and not k.endswith("/")]
            keys = [k for k in keys if not _hidden(k)]
            if not keys:
                raise UftError(f"{self.spec} has no objects: upload the images there "
                               f"({self.spec.rstrip('/')}/<class>/<image>) or fix the prefix")
            return sorted(keys)
        assert self.root is not None
        out: list[str] = []
        try:
            for dirpath, dirnames, filenames in os.walk(self.root, onerror=_raise):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                base = Path(dirpath).relative_to(self.root)
                out += [(base / f).as_posix() for f in filenames if not f.startswith(".")]
        except OSError as e:
            raise UftError(f"cannot read dataset directory {self.root} ({e.strerror or e}): fix its permissions") from None
        if not out:
            raise UftError(f"dataset directory {self.root} is empty: put images in {self.root}/<class>/ "
                           "(labelled) or directly in it (unlabelled)")
        return sorted(out)

    def name(self, rel: str) -> str:
        return self.store.url(rel) if self.store is not None else str(self.root / rel)

    def read(self, rel: str) -> bytes:
        if self.store is not None:
            return self.store.get(rel)
        try:
            return (self.root / rel).read_bytes()  # type: ignore[operator]
        except OSError as e:
            raise _Skip(f"unreadable ({e.strerror or e})") from None


def _raise(e: OSError) -> None:
    raise e


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _layout(spec: str, files: list[str], unlabelled: bool) -> tuple[list[_Entry], str]:
    """Relative paths → entries with split/class, and a name for the layout."""
    images = [f for f in files if Path(f).suffix.lower() in IMAGE_EXTS]
    others = [_Entry(f, None, None, f"not an image file (extension {Path(f).suffix or 'none'!r})")
              for f in files if Path(f).suffix.lower() not in IMAGE_EXTS]
    if not images:
        raise UftError(f"dataset {spec} has no image files ({len(files)} other files): "
                       f"put PNG/JPEG/BMP/GIF/TIFF/WebP images in it")
    top = {f.split("/", 1)[0] for f in images if "/" in f}
    if not top & set(SPLITS):
        entries = _classes(spec, images, None, unlabelled, spec)
        kind = "flat" if all(e.cls is None for e in entries if e.skip is None) else "classes"
        return entries + others, kind

    if "train" not in top:
        raise UftError(f"dataset {spec} has test/ but no train/: add {spec}/train/ or drop the split directories")
    extra = sorted(top - set(SPLITS))
    if extra:
        raise UftError(f"dataset {spec} mixes train/ with other directories ({', '.join(extra[:5])}): move every "
                       "class under train/ and test/, or drop the split directories")
    entries = [_Entry(f, None, None, "outside train/ and test/") for f in images if "/" not in f]
    per_split: dict[str, list[_Entry]] = {}
    for split in SPLITS:
        inside = [f[len(split) + 1:] for f in images if f.startswith(split + "/")]
        if inside:
            per_split[split] = [_Entry(f"{split}/{e.rel}", split, e.cls, e.skip)
                                for e in _classes(f"{spec}/{split}", inside, split, unlabelled, spec)]
    if "test" in per_split:
        cls = {s: {e.cls for e in es if e.skip is None} - {None} for s, es in per_split.items()}
        flat = {s: not c for s, c in cls.items()}
        if flat["train"] != flat["test"]:
            lab, unl = ("train", "test") if flat["test"] else ("test", "train")
            raise UftError(f"dataset {spec}: {lab}/ has class directories but {unl}/ has none: "
                           "give both splits the same class directories (or both none, for unlabelled data)")
        if cls["train"] != cls["test"]:
            only_tr, only_te = sorted(cls["train"] - cls["test"]), sorted(cls["test"] - cls["train"])
            raise UftError(f"dataset {spec}: classes in train/ and test/ differ (only in train: "
                           f"{', '.join(only_tr[:5]) or '-'}; only in test: {', '.join(only_te[:5]) or '-'}): "
                           "use the same class directories in both splits")
    for split in SPLITS:  # train first, so a duplicate that also sits in test/ is kept in train/
        entries += per_split.get(split, [])
    labelled = any(e.cls is not None for e in entries if e.skip is None)
    kind = ("train/test " if "test" in per_split else "train only ") + ("classes" if labelled else "flat")
    return entries + others, kind


def _classes(where: str, images: list[str], split: str | None, unlabelled: bool, root: str) -> list[_Entry]:
    """Images under one root (or split) → entries; files beside class directories are skipped."""
    if unlabelled:
        return [_Entry(f, split, None) for f in images]
    nested = [f for f in images if "/" in f]
    if not nested:
        return [_Entry(f, split, None) for f in images]
    names = sorted({f.split("/", 1)[0] for f in nested})
    if len(names) < 2:
        raise UftError(f"dataset {where} has a single class directory ({names[0]!r}): a labelled dataset needs "
                       f"at least 2 classes; add class directories, or mark it unlabelled ({root}#unlabelled, "
                       "or put the images directly in it)")
    return [_Entry(f, split, f.split("/", 1)[0]) if "/" in f
            else _Entry(f, split, None, "not inside a class directory") for f in images]


# --- decoding ---------------------------------------------------------------------------------------

def decode_image(data: bytes, *, image_size: int, channels: int, framing: str = "keep") -> tuple[np.ndarray, str, str]:
    """Encoded image bytes → ``(image_size, image_size, channels)`` uint8, source mode, format.

    ``framing`` (an applied framing of :mod:`uft.data.framing`, e.g. ``content_box``) crops the
    decoded image before it is resized, so the crop keeps the full resolution.

    Raises ``_Skip`` (reason) for bytes that are not a usable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if limit and w * h > limit:
                raise _Skip(_too_large(f"{w}x{h}", limit))
            fmt, mode = im.format or "?", im.mode
            if framing == "keep":  # a crop needs the full resolution; otherwise JPEGs decode at a reduced scale
                im.draft(im.mode, (image_size, image_size))
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # in place: the default copies every image
            arr = _to_uint8(im)
        except _Skip:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _Skip(_too_large("its size", limit)) from None
        except UnidentifiedImageError:
            raise _Skip("not a recognised image (unknown format or damaged header)") from None
        except Exception as e:  # PIL raises many types for damaged files (OSError, SyntaxError, ValueError…)
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise _Skip(f"corrupt or truncated image ({msg})") from None
    if framing != "keep":
        from uft.data.framing import frame_image

        arr = frame_image(arr, framing)
    return _fit(arr, image_size, channels), mode, fmt


def _too_large(size: str, limit: int | None) -> str:
    return (f"image too large ({size} exceeds PIL.Image.MAX_IMAGE_PIXELS={limit}, the decompression-bomb guard): "
            "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted")


def _to_uint8(im) -> np.ndarray:
    """Any PIL mode → ``(H, W, 1 or 3)`` uint8; alpha is composited on black."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        # 16-bit data (I;16, or I from some decoders) → /257 so 65535 → 255; 8-bit-range I is kept.
        a = a / 257.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else a
        return np.clip(np.round(a), 0, 255).astype(np.uint8)[..., None]
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        return np.clip(np.round(a), 0, 255).astype(np.uint8)[..., None]
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA")
    elif mode in ("La", "RGBa"):
        im = im.convert(mode[0] + "A" if mode == "La" else "RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...
    a = np.asarray(im)
    a = a[..., None] if a.ndim == 2 else a
    if im.mode in ("LA", "RGBA"):
        alpha = a[..., -1:].astype(np.float64) / 255.0
        a = np.round(a[..., :-1] * alpha).astype(np.uint8)
    return a


def _fit(a: np.ndarray, size: int, channels: int) -> np.ndarray:
    """``(H, W, 1|3)`` uint8 → ``(size, size, channels)`` uint8."""
    from PIL import Image

    if channels == 1 and a.shape[-1] == 3:
        a = np.clip(np.round(a @ LUMA), 0, 255).astype(np.uint8)[..., None]
    elif channels == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.shape[0] != size or a.shape[1] != size:
        shrink = a.shape[0] * a.shape[1] > size * size
        im = Image.fromarray(a[..., 0] if channels == 1 else a)
        im = im.resize((size, size), Image.Resampling.LANCZOS if shrink else Image.Resampling.BILINEAR)
        a = np.asarray(im).reshape(size, size, channels)
    return np.ascontiguousarray(a)


# --- the loader --------------------------------------------------------------------------------------

CHUNK_BYTES = 8 << 20  # decoded bytes per worker task: bounds memory whatever the image size
IO_THREADS = 8  # concurrent object reads per task (S3 round trips); local reads barely gain


def load_imagefolder(spec: str, *, image_size: int, channels: int, strict: bool = False,
                     unlabelled: bool = False, progress: bool | None = None, workers: int | None = None,
                     framing: str = "keep", chunk: int | None = None) -> RawImages:
    """An ImageFolder tree (directory or ``s3://`` prefix, see the module doc) → :class:`RawImages`.

    ``spec`` may end in ``#unlabelled`` and/or ``#strict`` (comma-separated). ``progress``: True a
    rich bar on stderr, False none, ``None`` a bar on a terminal and plain progress lines
    elsewhere (see :mod:`uft.progress`). Returns images
    ``(N, image_size, image_size, channels)`` uint8, labels ``(N,)`` (-1 = unlabelled), sorted
    class names, splits ``(N,)`` when the tree has ``train/`` and ``test/`` (else ``None``), and
    ``info`` = {dataset, layout, found, loaded, classes: {name: count}, splits, modes, formats,
    skipped: [{file, reason}] (first 1000), skipped_count, image_size, channels}. ``framing``:
    ``keep`` (default), ``content_box`` or ``auto`` (= keep for user data), applied per image
    before resizing (see :mod:`uft.data.framing`) and recorded as ``framing`` on the result.

    Decoding runs in ``workers`` processes (``None``/0: ``$UFT_INGEST_WORKERS``, else every CPU
    available, :func:`uft.data.parallel.available_cpus`), ``chunk`` files per task (default: about
    8 MB of decoded pixels). Results are consumed in file order and the decoded images go to a
    temporary file (``$TMPDIR``), so ``images`` is a :class:`uft.data.parallel.DiskRows` and memory
    stays bounded by a few chunks; the output does not depend on ``workers`` or ``chunk``.
    """
    from uft.data.framing import resolve_framing

    framing = resolve_framing(framing, spec)
    if channels not in (1, 3):
        raise UftError(f"channels={channels} is invalid for {spec}: use 1 (grey) or 3 (RGB)")
    if not 4 <= image_size <= 1024:
        raise UftError(f"image_size={image_size} is out of range for {spec}: use 4..1024")
    path, opts = parse_spec(spec)
    strict, unlabelled = strict or "strict" in opts, unlabelled or "unlabelled" in opts
    reader = _Reader(path)
    files = reader.list()
    found = len(files)
    entries, layout = _layout(path, files, unlabelled)
    del files  # the entries hold the paths; at 1M files every copy costs ~100 MB

    skipped: list[dict[str, str]] = []
    skipped_count = 0
    kept: list[int] = []  # indices into entries, in file order
    seen: dict[bytes, int] = {}  # sha256 → index of the first entry kept with those bytes
    modes: Counter[str] = Counter()
    formats: Counter[str] = Counter()

    def skip(entry: _Entry, reason: str, duplicate: bool = False) -> None:
        nonlocal skipped_count
        if strict and not duplicate:
            raise UftError(f"{reader.name(entry.rel)}: {reason} (strict mode): fix or remove the file, "
                           "or load without strict to skip bad files")
        skipped_count += 1
        if len(skipped) < MAX_SKIPPED_LISTED:  # only the first ones are listed; a million would not fit
            skipped.append({"file": reader.name(entry.rel), "reason": reason})

    if strict:  # fail before decoding anything when the paths alone already show a bad file
        for entry in entries:
            if entry.skip is not None:
                skip(entry, entry.skip)

    n_workers = resolve_workers(workers)
    per_task = chunk or max(16, min(512, CHUNK_BYTES // (image_size * image_size * channels)))
    n_workers = min(n_workers, math.ceil(len(entries) / per_task))  # no idle processes to start
    job = _Job(path, image_size, channels, framing)
    spill = DiskRows((image_size, image_size, channels))
    pool = OrderedPool(n_workers)
    tasks = ((job, [(e.rel, e.skip) for e in part]) for part in chunked(entries, per_task))

    mode = None if progress is None else ("bar" if progress else "off")
    with Progress(f"reading:{path}", len(entries), mode=mode) as bar, _forget_reader(path):
        n = 0
        for results, images in pool.map(_decode_chunk, tasks):
            good = []
            for res in results:
                i, entry = n, entries[n]
                n += 1
                if isinstance(res, str):
                    skip(entry, res)
                    continue
                digest, k, mode_, fmt = res
                if digest in seen:
                    skip(entry, f"duplicate of {reader.name(entries[seen[digest]].rel)} (same bytes)", duplicate=True)
                    continue
                seen[digest] = i
                kept.append(i)
                good.append(k)
                modes[mode_] += 1
                formats[fmt] += 1
            spill.append(images[good])
            bar.update(n)

    if not kept:
        reasons = Counter(s["reason"].split(" (")[0] for s in skipped)
        raise UftError(f"dataset {path} has no usable images ({skipped_count} files skipped: "
                       f"{'; '.join(f'{n}× {r}' for r, n in reasons.most_common(3))}): fix the files or point at another directory")

    # Classes with no usable image left are dropped (and said so); at least 2 must remain.
    counts = Counter(entries[i].cls for i in kept if entries[i].cls is not None)
    for c in listed_classes(entries):
        if c not in counts:
            where = sorted({e.rel.split("/")[0] + ("/" + c if e.split else "") for e in entries if e.cls == c})
            skipped.append({"file": ", ".join(reader.name(w) for w in where), "reason": f"class {c!r} has no usable images: dropped"})
            skipped_count += 1
    classes = sorted(counts)
    labelled = bool(classes)
    if labelled and len(classes) < 2:
        raise UftError(f"dataset {path} has usable images in only one class ({classes[0]!r}): a labelled dataset needs "
                       f"at least 2 classes; fix the other classes' files, or mark it unlabelled ({path}#unlabelled)")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[entries[i].cls] if entries[i].cls is not None else -1 for i in kept], dtype=np.int64)
    has_test = any(entries[i].split == "test" for i in kept)
    splits = np.array([entries[i].split for i in kept]) if has_test else None
    info = {
        "dataset": spec,
        "layout": layout,
        "found": found,
        "loaded": len(kept),
        "classes": {c: counts[c] for c in classes},
        "splits": dict(Counter(str(s) for s in splits)) if splits is not None else {},
        "modes": dict(sorted(modes.items())),
        "formats": dict(sorted(formats.items())),
        "skipped": skipped[:MAX_SKIPPED_LISTED],
        "skipped_count": skipped_count,
        "image_size": image_size,
        "channels": channels,
    }
    return RawImages(spill, labels, classes, splits, info=info, framing=framing,  # type: ignore[arg-type]
                     decode_stats={"workers": n_workers, "chunk": per_task, "peak_pending": pool.peak_pending})


def listed_classes(entries: list[_Entry]) -> list[str]:
    """Class names of the listing (before decoding), sorted."""
    return sorted({e.cls for e in entries if e.cls is not None and e.skip is None})


@dataclass(frozen=True)
class _Job:
    """What every decode task shares (pickled to the worker processes)."""

    path: str
    image_size: int
    channels: int
    framing: str


_READERS: dict[str, _Reader] = {}  # one per worker process and root: S3 clients are not fork/pickle-safe


@contextmanager
def _forget_reader(path: str) -> Iterator[None]:
    """Drop the reader that inline decoding cached in this process: an S3 client must not outlive
    the load (its credentials and endpoint are the environment's at the time)."""
    try:
        yield
    finally:
        _READERS.pop(path, None)


def _decode_chunk(task: tuple[_Job, list[tuple[str, str | None]]]) -> tuple[list, np.ndarray]:
    """Worker: files ``[(rel, skip)]`` → per file a skip reason or ``(sha256, k, mode, format)``,
    and ``(K, S, S, C)`` uint8 images, ``k`` indexing them. Runs in a pool process (or inline)."""
    job, part = task
    reader = _READERS.get(job.path)
    if reader is None:
        reader = _READERS[job.path] = _Reader(job.path)

    def fetch(item: tuple[str, str | None]) -> bytes | str:
        rel, why = item
        if why is not None:
            return why
        try:
            return reader.read(rel)
        except _Skip as e:
            return str(e)

    out: list = []
    images: list[np.ndarray] = []
    for data in _map(fetch, part, IO_THREADS if reader.store is not None else 1):
        if isinstance(data, str):
            out.append(data)
            continue
        try:
            img, mode, fmt = decode_image(data, image_size=job.image_size, channels=job.channels, framing=job.framing)
        except _Skip as e:
            out.append(str(e))
            continue
        out.append((hashlib.sha256(data).digest(), len(images), mode, fmt))
        images.append(img)
    shape = (0, job.image_size, job.image_size, job.channels)
    return out, np.stack(images) if images else np.zeros(shape, np.uint8)


def _map(fn: Callable, entries: list, workers: int) -> Iterator:
    """Ordered map over a thread pool; pending work is cancelled when the consumer stops early."""
    if workers <= 1 or len(entries) < 8:
        yield from map(fn, entries)
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        # A bounded window keeps at most ~4×workers files' bytes in memory ahead of the decoder.
        window = 4 * workers
        futures = [pool.submit(fn, e) for e in entries[:window]]
        for i in range(len(entries)):
            if i + window < len(entries):
                futures.append(pool.submit(fn, entries[i + window]))
            yield futures[i].result()
            futures[i] = None  # type: ignore[call-overload]  # drop the bytes once consumed
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- summary -----------------------------------------------------------------------------------------

def summary_lines(info: dict, *, examples: int = 3) -> list[str]:
    """A human summary of ``RawImages.info`` from :func:`load_imagefolder` (or a bundled loader)."""
    lines = [f"dataset: {info.get('dataset', '?')}" + (f"  (layout: {info['layout']})" if info.get("layout") else "")]
    if "found" in info:
        lines.append(f"files found: {info['found']}, images loaded: {info.get('loaded', '?')}, "
                     f"skipped: {info.get('skipped_count', len(info.get('skipped', [])))}")
    classes = info.get("classes") or {}
    if classes:
        lines.append(f"classes ({len(classes)}): " + ", ".join(f"{c} {n}" for c, n in classes.items()))
    elif "found" in info:
        lines.append("classes: none (unlabelled)")
    if info.get("splits"):
        lines.append("splits: " + ", ".join(f"{s} {n}" for s, n in sorted(info["splits"].items())))
    if info.get("modes"):
        lines.append("modes: " + ", ".join(f"{m} {n}" for m, n in info["modes"].items())
                     + "; formats: " + ", ".join(f"{f} {n}" for f, n in info.get("formats", {}).items()))
    groups: dict[str, list[str]] = {}
    for s in info.get("skipped", []):
        groups.setdefault(_reason_kind(s["reason"]), []).append(s["file"])
    for kind, fs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        more = f" (+{len(fs) - examples} more)" if len(fs) > examples else ""
        lines.append(f"skipped {len(fs)} × {kind}: " + ", ".join(fs[:examples]) + more)
    return lines


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0].split(" of ")[0] if not reason.startswith("class ") else "class dropped"
