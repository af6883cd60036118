"""Data mixing as new instances (METHODS.md §1, UFT arXiv 2110.09510).

A small target set is sparse in image space; mixing target images with source (or other target)
images adds plausible in-between samples. Each mixed image is a **new instance**: the trainer
appends the raw mixed images to the batch and augments them into two views exactly like any other
image, so its two views are positives and everything else negatives. Nothing here augments.

Convention: ``lam`` is always the share of the *target* (anchor) image ``a``:
mixup gives ``lam * a + (1 - lam) * b``; cutmix pastes a box of ``(1 - lam)`` of the area from
``b`` into ``a``. With ``lam ~ Beta(alpha, alpha)`` (symmetric) this matches METHODS.md's
"box of area ratio lam" in distribution.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from uft.errors import UftError

_FIELD_HINTS = {
    "op": "use one of none, mixup, cutmix",
    "alpha": "use a number > 0 (lam ~ Beta(alpha, alpha); 1.0 makes lam uniform)",
    "fraction": "use a number in [0, 1] (mixed instances per batch / target batch size)",
    "pairing": "use target_source (needs replay) or target_target",
}


class MixPlan(BaseModel):
    """How to mix, per batch of ``B`` target images.

    - ``op``: ``"none"`` (off, the default), ``"mixup"`` or ``"cutmix"``.
    - ``alpha``: ``lam ~ Beta(alpha, alpha)``; default 1.0 (uniform lam), the usual mixup choice.
    - ``fraction``: mixed instances per batch as a fraction of ``B``: ``M = round(fraction * B)``
      (halves round up); default 0.5.
    - ``pairing``: partner of each target anchor: a replayed source image (``"target_source"``,
      default, needs replay on) or another target image (``"target_target"``).

    Invalid values raise :class:`UftError` naming the field and the fix.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: Literal["none", "mixup", "cutmix"] = "none"
    alpha: float = Field(1.0, gt=0, allow_inf_nan=False)
    fraction: float = Field(0.5, ge=0, le=1, allow_inf_nan=False)
    pairing: Literal["target_source", "target_target"] = "target_source"

    @model_validator(mode="wrap")
    @classmethod
    def _one_line_errors(cls, data: Any, handler: Any) -> "MixPlan":
        try:
            return handler(data)
        except ValidationError as err:
            raise UftError(_describe(err)) from None

    def to_json(self) -> str:
        """Compact JSON with every field (defaults included), keys in declaration order."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> "MixPlan":
        """Inverse of :meth:`to_json`; a missing field takes its default."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
            raise UftError(f"mix plan JSON is malformed ({err}): pass an object like {cls().to_json()}") from None
        if not isinstance(data, dict):
            raise UftError(f"mix plan JSON is a {type(data).__name__}: pass an object like {cls().to_json()}")
        return cls.model_validate(data)


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"]) or "plan"
        if e["type"] == "extra_forbidden":
            parts.append(f"mix plan field {field!r} is unknown: use only {', '.join(_FIELD_HINTS)}")
            continue
        hint = _FIELD_HINTS.get(field, "fix the value")
        parts.append(f"mix plan field {field!r}={e.get('input')!r} is invalid ({e['msg']}): {hint}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- pure ops


def _check_pair(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, op: str) -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise UftError(
            f"{op} images have shapes {tuple(a.shape)} and {tuple(b.shape)}: pass two (M, C, H, W) "
            "tensors of the same shape"
        )
    if lam.shape != (a.shape[0],):
        raise UftError(f"{op} lam has shape {tuple(lam.shape)}: pass one lam per image, shape ({a.shape[0]},)")


def mixup(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``out[i] = lam[i] * a[i] + (1 - lam[i]) * b[i]``.

    a, b: ``(M, C, H, W)``; lam: ``(M,)`` in ``[0, 1]``. Returns ``(M, C, H, W)`` in a's dtype.
    """
    lam = torch.as_tensor(lam)
    _check_pair(a, b, lam, "mixup")
    w = lam.to(device=a.device, dtype=a.dtype).view(-1, 1, 1, 1)
    return w * a + (1 - w) * b


def cutmix_boxes(lam: torch.Tensor, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Boxes for :func:`cutmix`: ``(M, 4)`` int64 rows ``(top, left, box_h, box_w)``.

    Side lengths keep the image's aspect ratio: ``box_h = round(H * sqrt(1 - lam))``,
    ``box_w = round(W * sqrt(1 - lam))``, so ``box_h * box_w ≈ (1 - lam) * H * W`` up to rounding of
    each side (at most about ``(H + W) / 2`` pixels). The top-left corner is uniform over the
    positions that keep the whole box in the image, i.e. the box is clipped to the image by
    construction. Unlike the original CutMix (uniform centre, box cut at the border, which shrinks the
    pasted area near edges), the area is therefore exactly the requested one, for every position.
    Consumes ``2 * M`` uniform draws of ``generator``.
    """
    lam = torch.as_tensor(lam, dtype=torch.float64).cpu()
    if lam.ndim != 1:
        raise UftError(f"cutmix lam has shape {tuple(lam.shape)}: pass a 1-D tensor, one lam per image")
    if ((lam < 0) | (lam > 1)).any() or not torch.isfinite(lam).all():
        raise UftError("cutmix lam has values outside [0, 1]: pass lam in [0, 1]")
    cut = torch.sqrt(1 - lam)
    box_h = torch.round(cut * height).to(torch.int64).clamp(0, height)
    box_w = torch.round(cut * width).to(torch.int64).clamp(0, width)
    u = torch.rand((lam.shape[0], 2), generator=generator, device=generator.device, dtype=torch.float64).cpu()
    # floor(u * (slots)) is uniform over {0, ..., slots - 1}; the min guards u's upper edge.
    top = torch.minimum(torch.floor(u[:, 0] * (height - box_h + 1)).to(torch.int64), height - box_h)
    left = torch.minimum(torch.floor(u[:, 1] * (width - box_w + 1)).to(torch.int64), width - box_w)
    return torch.stack([top, left, box_h, box_w], dim=1)


def cutmix(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Paste from ``b[i]`` into ``a[i]`` a box covering a ``(1 - lam[i])`` share of the image.

    a, b: ``(M, C, H, W)``; lam: ``(M,)`` in ``[0, 1]``. Returns ``(M, C, H, W)``: inside the box (see
    :func:`cutmix_boxes` for its exact size and position) the pixels of ``b``, outside exactly those
    of ``a``; so a ``lam`` share of the result comes from ``a``, up to rounding of the box's sides.
    """
    lam = torch.as_tensor(lam)
    _check_pair(a, b, lam, "cutmix")
    height, width = a.shape[2], a.shape[3]
    boxes = cutmix_boxes(lam, height, width, generator).to(a.device)
    top, left, bh, bw = (boxes[:, j].view(-1, 1) for j in range(4))
    rows = torch.arange(height, device=a.device).view(1, -1)
    cols = torch.arange(width, device=a.device).view(1, -1)
    in_rows = (rows >= top) & (rows < top + bh)  # (M, H)
    in_cols = (cols >= left) & (cols < left + bw)  # (M, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (M, 1, H, W)
    return torch.where(mask, b, a)


def sample_lam(m: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """``(m,)`` float64 draws of ``Beta(alpha, alpha)``, reproducible from ``generator``.

    ``torch.distributions.Beta.sample`` takes no generator, so one int64 is drawn from ``generator``
    to seed a NumPy ``default_rng``, which draws the Beta samples. The generator advances by exactly
    one draw whatever ``m`` is, and a saved generator state replays the same lam.
    """
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=generator.device).item())
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=m))


def make_mixed_batch(
    target: torch.Tensor,
    source: torch.Tensor | None,
    plan: MixPlan,
    generator: torch.Generator,
) -> torch.Tensor:
    """Mixed raw images to append to the batch as new instances.

    target: ``(B, C, H, W)``; source: ``(S, C, H, W)`` replayed source images or ``None``.
    Returns ``(M, C, H, W)`` with ``M = round(fraction * B)`` (halves up); ``(0, C, H, W)`` when
    ``op == "none"`` or ``M == 0``. The trainer augments the result into two views like any image.

    Draw order from ``generator`` (fixed, so a seed reproduces the batch): lam (one draw, see
    :func:`sample_lam`); anchors = the first ``M`` of a random permutation ``p`` of the target (each
    target image is mixed at most once); partners = ``M`` source rows uniform with replacement
    (``target_source``; the source may be smaller than ``M``) or, for ``target_target``,
    ``p`` shifted by one (``target[p[i + 1 mod B]]``, never the anchor itself when ``B >= 2``);
    finally the cutmix boxes.
    """
    if not isinstance(plan, MixPlan):
        raise UftError(f"mix plan is a {type(plan).__name__}: pass a MixPlan (MixPlan.from_json for JSON)")
    if not isinstance(target, torch.Tensor) or target.ndim != 4 or target.shape[0] == 0:
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise UftError(f"mixing target batch has shape {shape}: pass a non-empty (B, C, H, W) tensor")
    b_size = target.shape[0]
    m = int(math.floor(plan.fraction * b_size + 0.5))
    if plan.op == "none" or m == 0:
        return target.new_empty((0, *target.shape[1:]))

    if plan.pairing == "target_source":
        if source is None or source.shape[0] == 0:
            raise UftError(
                "mix plan pairing='target_source' has no source images: enable replay "
                "(replay_ratio > 0) or set pairing='target_target'"
            )
        if source.ndim != 4 or source.shape[1:] != target.shape[1:]:
            raise UftError(
                f"mixing source images have shape {tuple(source.shape)} but target images "
                f"{tuple(target.shape)}: pass source images with the same (C, H, W)"
            )

    dev = generator.device
    lam = sample_lam(m, plan.alpha, generator)
    perm = torch.randperm(b_size, generator=generator, device=dev).to(target.device)
    anchors = target[perm[:m]]
    if plan.pairing == "target_source":
        pick = torch.randint(0, source.shape[0], (m,), generator=generator, device=dev)  # type: ignore[union-attr]
        partners = source[pick.to(source.device)].to(device=target.device, dtype=target.dtype)  # type: ignore[index]
    else:
        partners = target[torch.roll(perm, -1)[:m]]

    if plan.op == "mixup":
        return mixup(anchors, partners, lam)
    return cutmix(anchors, partners, lam, generator)
