"""Framing: how much of the frame an object fills, made consistent across domains at ingest.

Two digit datasets can differ in framing alone: MNIST centres each digit in a 20×20 box inside a
28×28 frame (a 4-pixel margin), UCI optdigits fill their 8×8 frame. Resized whole to 16 px the
MNIST digit is ~11 px tall and the UCI digit 16 px, a domain gap that no augmentation of the
source fully closes. The ``framing`` option removes it at ingest:

- ``keep``: images unchanged.
- ``content_box``: each image is cropped to the square around the bounding box of its
  non-background content (the background is the per-channel median of the border pixels; content
  is any pixel that differs from it by more than ``tol``). The square is centred on the box and
  padded with the background colour where it leaves the image, so aspect ratios are kept. A
  blank image is kept whole.
- ``auto``: the dataset's known framing: bundled MNIST → its central 20×20 content box (the
  box the MNIST authors normalised every digit into); everything else → ``keep`` (user images may
  be photographs, where cropping to "content" is not meaningful).

What was applied is recorded in the dataset manifest (``framing``), so it is part of the content
hash: the same images framed differently are different datasets.
"""

from __future__ import annotations

import numpy as np

from uft.choices import FRAMINGS
from uft.errors import UftError

#: Fixed crops ``(top, left, height, width)`` that ``auto`` applies to bundled datasets.
KNOWN_BOXES: dict[str, tuple[int, int, int, int]] = {"mnist": (4, 4, 20, 20)}


def check_framing(framing: str) -> str:
    if framing not in FRAMINGS:
        raise UftError(f"framing {framing!r} is unknown: choose one of {', '.join(FRAMINGS)}")
    return framing


def resolve_framing(framing: str, spec: str) -> str:
    """Requested framing + dataset spec → what is applied: ``keep``, ``content_box`` or
    ``box:TOP,LEFT,H,W`` (a fixed crop, for ``auto`` on a bundled dataset with a known box)."""
    check_framing(framing)
    if framing != "auto":
        return framing
    if spec in KNOWN_BOXES:
        return "box:" + ",".join(str(v) for v in KNOWN_BOXES[spec])
    return "keep"


def background(img: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` → ``(C,)`` per-channel median of the one-pixel border."""
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]]).reshape(-1, img.shape[-1])
    return np.median(border.astype(np.float64), axis=0)


def content_box(img: np.ndarray, tol: float | None = None) -> tuple[int, int, int, int]:
    """``(H, W, C)`` uint8 → square ``(top, left, side, side)`` around the non-background content.

    Content: pixels whose largest per-channel distance to :func:`background` exceeds ``tol``
    (default: 10 % of the image's largest such distance, at least 8 grey levels, so faint
    anti-aliasing and JPEG noise do not widen the box). The square's side is the box's longer
    side; it is centred on the box and may extend beyond the image (:func:`crop` pads). A blank
    image → the whole frame (as a square around its centre).
    """
    if img.ndim != 3:
        raise UftError(f"content_box needs an (H, W, C) image, got shape {img.shape}: pass one image at a time")
    h, w = img.shape[:2]
    dist = np.abs(img.astype(np.float64) - background(img)).max(axis=-1)
    peak = float(dist.max())
    thr = max(8.0, 0.1 * peak) if tol is None else float(tol)
    rows, cols = np.flatnonzero((dist > thr).any(1)), np.flatnonzero((dist > thr).any(0))
    if peak <= thr or not len(rows):
        y0, y1, x0, x1 = 0, h, 0, w
    else:
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    side = max(y1 - y0, x1 - x0)
    top = (y0 + y1 - side) // 2
    left = (x0 + x1 - side) // 2
    return top, left, side, side


def crop(img: np.ndarray, box: tuple[int, int, int, int], fill: np.ndarray | None = None) -> np.ndarray:
    """``(H, W, C)`` → ``(bh, bw, C)`` crop at ``box = (top, left, bh, bw)``; the parts outside the
    image are filled with ``fill`` (``(C,)``, default :func:`background`)."""
    top, left, bh, bw = box
    h, w, c = img.shape
    if 0 <= top and 0 <= left and top + bh <= h and left + bw <= w:
        return img[top: top + bh, left: left + bw]
    fill = background(img) if fill is None else fill
    out = np.empty((bh, bw, c), dtype=img.dtype)
    out[:] = np.round(fill).astype(img.dtype)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + bh, h), min(left + bw, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - top: sy1 - top, sx0 - left: sx1 - left] = img[sy0:sy1, sx0:sx1]
    return out


def frame_image(img: np.ndarray, applied: str) -> np.ndarray:
    """One ``(H, W, C)`` image framed by an *applied* framing (see :func:`resolve_framing`)."""
    if applied == "keep":
        return img
    if applied == "content_box":
        return crop(img, content_box(img))
    if applied.startswith("box:"):
        box = _box(applied)
        if box[0] + box[2] > img.shape[0] or box[1] + box[3] > img.shape[1]:
            raise UftError(f"framing {applied} does not fit {img.shape[0]}×{img.shape[1]} images: use framing keep or content_box")
        return crop(img, box)
    raise UftError(f"framing {applied!r} is unknown: choose one of {', '.join(FRAMINGS)}")


def frame_images(images: np.ndarray, applied: str, size: int) -> np.ndarray:
    """``(N, H, W, C)`` uint8 → ``(N, H', W', C)`` uint8 framed images.

    ``keep`` and fixed boxes return one array of the crop size; ``content_box`` crops differ in
    size per image, so each is resized to ``size × size`` (area/bilinear, antialiased, as ingest).
    """
    if applied == "keep":
        return images
    if applied.startswith("box:"):
        t, l, h, w = _box(applied)
        if t + h > images.shape[1] or l + w > images.shape[2]:
            raise UftError(f"framing {applied} does not fit {images.shape[1]}×{images.shape[2]} images: use framing keep or content_box")
        return np.ascontiguousarray(images[:, t: t + h, l: l + w])
    if applied == "content_box":
        from uft.data.resize import resize_images

        c = images.shape[-1]
        return np.stack([resize_images(frame_image(im, applied)[None], size, c)[0] for im in images]) if len(images) \
            else images
    raise UftError(f"framing {applied!r} is unknown: choose one of {', '.join(FRAMINGS)}")


def _box(applied: str) -> tuple[int, int, int, int]:
    try:
        t, l, h, w = (int(v) for v in applied.removeprefix("box:").split(","))
    except ValueError:
        raise UftError(f"framing {applied!r} is not box:TOP,LEFT,H,W: use auto, content_box or keep") from None
    return t, l, h, w
