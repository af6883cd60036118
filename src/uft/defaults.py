"""Defaults that follow the user's data: image size, channels and encoder, when not set by hand.

The rule (documented in the README, printed by `uft run`):

- **channels**: 3 when at least ``COLOUR_SHARE`` (10 %) of the sampled source *or* target images
  carry colour (grey pictures stored as RGB do not count, see :func:`uft.data.profile.is_colour`);
  else 1. Both domains go through one encoder, so one setting covers both.
- **image_size**: the target's typical shorter side (median; the source's when the target is
  bundled), rounded down to a size on ``SIZE_LADDER`` and capped at ``CPU_MAX_SIZE`` (32 px) without
  an accelerator — a CPU trains a ResNet-18 at 32 px at ~12 img/s — or ``GPU_MAX_SIZE`` with one.
  Never upsampled beyond the data.
- **encoder**: the tiny convnet on a CPU, or for grey / small (< 32 px) images; with an accelerator
  and colour images of at least 32 px, the ImageNet-pretrained EfficientNet-Lite0 (its weights ship
  in a package) — pretrained features beat anything a short run learns from scratch.

- **budget** (pretrain_steps, finetune_steps, batch_size), when both source and target are folders:
  passes over each domain's train images, scaled by the input size (:mod:`uft.budget`).

Bundled datasets and manifest URIs have a fixed shape: the digit-demo defaults apply to them.
Whatever was chosen, settings that throw away colour or more than half of the resolution are
reported as warnings before the run starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from uft.budget import BUDGET_FIELDS, infer_budget
from uft.data.profile import DataProfile

COLOUR_SHARE = 0.10
SIZE_LADDER = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224)
CPU_MAX_SIZE = 32
GPU_MAX_SIZE = 224
PRETRAINED_COLOUR_ENCODER = "efficientnet_lite0"
INFERRED_FIELDS = ("image_size", "channels", "encoder", *BUDGET_FIELDS)


@dataclass(frozen=True)
class DefaultsChoice:
    """What inference set (``values``), why (``reasons``), and what the final settings lose (``warnings``)."""

    values: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the terminal: the choice, why, and how to override it."""
        if not self.values:
            return "defaults: " + ("; ".join(self.reasons) or "image_size, channels and encoder set by hand")
        chosen = ", ".join(f"{k}={v}" for k, v in self.values.items())
        return (f"inferred from the data: {chosen} — {'; '.join(self.reasons)} "
                f"(override with -p KEY=VALUE, e.g. -p image_size=64 -p pretrain_steps=500 -p batch_size=128)")

    def params(self) -> dict[str, str]:
        """MLflow params recording the choice, so `uft compare` can group by it."""
        return {"defaults_inferred": ",".join(self.values) or "none",
                "defaults_reason": "; ".join(self.reasons)[:500]}


def snap_size(side: int, cap: int) -> int:
    """Largest ladder size ≤ min(side, cap); the smallest ladder size for tinier images."""
    limit = min(side, cap)
    fits = [s for s in SIZE_LADDER if s <= limit]
    return fits[-1] if fits else SIZE_LADDER[0]


def infer_defaults(source: DataProfile | None, target: DataProfile | None, *, explicit: Mapping[str, Any],
                   current: Mapping[str, Any], accelerator: bool) -> DefaultsChoice:
    """Pick image_size / channels / encoder for the fields not in ``explicit``.

    ``current`` holds the config values that apply otherwise (RunConfig defaults or the user's),
    used for the warnings. → :class:`DefaultsChoice`.
    """
    profiles = [p for p in (source, target) if p is not None and p.sampled]
    if not profiles:
        return DefaultsChoice(reasons=["bundled data: the digit-demo defaults (16 px, grey, tiny convnet)"])
    values: dict[str, Any] = {}
    reasons: list[str] = []

    colour = max(p.colour_share for p in profiles)
    if "channels" not in explicit:
        values["channels"] = 3 if colour >= COLOUR_SHARE else 1
        reasons.append(f"{colour:.0%} of sampled images are colour (colour from {COLOUR_SHARE:.0%})")
    channels = values.get("channels", current["channels"])

    ref = target if target is not None and target.sampled else profiles[0]
    side = ref.typical_side
    cap = GPU_MAX_SIZE if accelerator else CPU_MAX_SIZE
    if "image_size" not in explicit:
        values["image_size"] = snap_size(side, cap)
        capped = " (capped for " + ("GPU" if accelerator else "CPU") + " runs)" if side > cap else ""
        reasons.append(f"{'target' if ref is target else 'source'} images are typically {side} px{capped}")
    size = values.get("image_size", current["image_size"])

    if "encoder" not in explicit:
        strong = accelerator and channels == 3 and size >= 32
        values["encoder"] = PRETRAINED_COLOUR_ENCODER if strong else "tiny"
        reasons.append("ImageNet-pretrained encoder for colour images on an accelerator" if strong else
                       "tiny convnet" + ("" if accelerator else " (no accelerator)"))

    if source is not None and source.sampled and target is not None and target.sampled:
        free = [f for f in BUDGET_FIELDS if f not in explicit]
        if free:
            b = infer_budget(source.total, target.total, image_size=size, channels=channels,
                             source_test_fraction=float(current.get("source_test_fraction", 0.1)),
                             target_test_fraction=float(current.get("target_test_fraction", 0.5)),
                             batch_size=int(explicit["batch_size"]) if "batch_size" in explicit else None)
            values.update({f: getattr(b, f) for f in free})
            reasons.append(b.reason)

    warnings = []
    if channels == 1 and colour >= COLOUR_SHARE:
        warnings.append(f"channels=1 discards colour: {colour:.0%} of sampled images are colour "
                        "(-p channels=3 keeps it)")
    for p in profiles:
        if p.typical_side and size < p.typical_side / 2:
            why = " (the CPU cap)" if "image_size" in values and p.typical_side > cap else ""
            warnings.append(f"image_size={size}{why} keeps less than half of the resolution of {p.spec} "
                            f"(typically {p.typical_side} px): -p image_size={snap_size(p.typical_side, GPU_MAX_SIZE)} keeps it")
    return DefaultsChoice(values, reasons, warnings)


def has_accelerator() -> bool:
    """Whether local training would run on a GPU. Without an NVIDIA driver on the machine the
    answer is no, known without importing torch (seconds of `uft run` start-up)."""
    import os
    import sys

    if "torch" not in sys.modules and not any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl")):
        return False
    import torch

    return bool(torch.cuda.is_available())
