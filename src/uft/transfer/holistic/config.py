"""Names, the configuration of a holistic run and the checks of its inputs."""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from uft.choices import BUILTIN_HOLISTIC_METHODS, one_of
from uft.errors import UftError


HOLISTIC_METHODS = BUILTIN_HOLISTIC_METHODS  # the names live in uft.choices, below the configuration
CALIBRATIONS = ("none", "alg", "pcv")

#: ``on_batch(labels (B,), info)`` is called before every training step; ``info`` holds
#: ``round``, ``local`` (LOLSGD indices, 0 otherwise) and ``left_out`` (frozenset of class ids).
BatchHook = Callable[[torch.Tensor, dict], None]


class HolisticConfig(BaseModel):
    """Knobs for one holistic-transfer run. Defaults suit a TinyConvNet on 16×16 digits on a CPU.

    The paper's baseline (ResNet-50, Office-Home) is SGD lr 1e-3, momentum 0.9 nesterov, wd 5e-4,
    batch 64, cosine schedule, backbone at 0.1× the head's lr; we keep everything but the lr and
    the step count, which are scaled for a small network trained from a toy source model.
    ``distill_weight`` / ``rank_reg_weight`` left at ``None`` mean 1.0 / 0.1 for the methods
    ``distill`` / ``rank_reg`` and 0 otherwise. LOLSGD ignores ``steps``: it runs
    ``lolsgd_rounds`` rounds of ``lolsgd_local_steps`` steps (``None`` = one pass over each local
    subset). Build from untrusted input with :func:`make_config` (raises ``UftError``).
    """

    model_config = ConfigDict(extra="forbid")

    method: str = "naive"
    # finetuning recipe
    lr: float = Field(0.05, gt=0, description="head lr; the backbone gets lr * backbone_lr_mult")
    backbone_lr_mult: float = Field(0.1, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    steps: int = Field(100, ge=1, description="SGD steps (cosine schedule to 0)")
    batch_size: int = Field(64, ge=2, description="≥ 2 because the encoder has BatchNorm")
    seed: int = 0
    # source model training (train_source_classifier): the standard supervised recipe
    source_lr: float = Field(0.05, gt=0, description="peak lr (SGD nesterov), linear warm-up then cosine to 0")
    source_steps: int = Field(600, ge=1)
    source_batch_size: int = Field(128, ge=2)
    source_warmup: float = Field(0.05, ge=0, lt=1, description="fraction of source_steps of linear lr warm-up")
    source_weight_decay: float = Field(5e-4, ge=0)
    source_label_smoothing: float = Field(0.1, ge=0, lt=1)
    source_augment: bool = Field(True, description="random resized crop / rotation / photometric jitter (SOURCE_AUGMENT)")
    # modifiers
    frozen_head: bool = False
    lolsgd_local_models: int = Field(4, ge=1, description="M local models per round")
    lolsgd_leave_out: float = Field(0.5, ge=0, lt=1, description="fraction of seen classes each local model drops")
    lolsgd_rounds: int = Field(10, ge=1)
    lolsgd_local_steps: int | None = Field(None, ge=1, description="K; None = one pass over the local subset")
    distill_weight: float | None = Field(None, ge=0)
    distill_temperature: float = Field(2.0, gt=0)
    distill_selective: bool = Field(False, description="distil only the unseen logits")
    feature_distill_weight: float = Field(0.0, ge=0, description="weight of MSE to the source features")
    rank_reg_weight: float | None = Field(None, ge=0)
    calibration: Literal["none", "alg", "pcv"] = "none"
    pcv_splits: int = Field(3, ge=1)
    eval_batch_size: int = Field(512, ge=1)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return one_of(v, HOLISTIC_METHODS, "holistic method")

    @model_validator(mode="after")
    def _consistent(self) -> "HolisticConfig":
        if self.method == "distill" and self.distill_weight == 0 and self.feature_distill_weight == 0:
            raise ValueError("method 'distill' with distill_weight=0 and feature_distill_weight=0: set one > 0")
        if self.method == "rank_reg" and self.rank_reg_weight == 0:
            raise ValueError("method 'rank_reg' with rank_reg_weight=0: set it > 0 or use method 'naive'")
        return self


#: The source-classifier recipe (version + default source_* knobs + augmentation): part of the
#: pipeline's holistic cache key, so a changed recipe is never answered from a cache of the old
#: one. Bump the version when train_source_classifier changes in a way the knobs do not show.
SOURCE_RECIPE = "2:" + ",".join(f"{k}={v}" for k, v in sorted(HolisticConfig().model_dump().items())
                                if k.startswith("source_"))


def make_config(**kwargs) -> HolisticConfig:
    """Validated :class:`HolisticConfig`; bad fields raise a one-line ``UftError`` naming them."""
    try:
        return HolisticConfig(**kwargs)
    except ValidationError as err:
        parts = [f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors()]
        raise UftError(f"holistic config invalid ({'; '.join(parts)}): fix these fields") from None


def _images(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 4 or not x.is_floating_point():
        raise UftError(f"{name} has shape {tuple(x.shape)} dtype {x.dtype}: pass float images (N, C, H, W) in [0, 1]")
    return x


def _labels(y, n: int, num_classes: int, name: str) -> torch.Tensor:
    y = torch.as_tensor(y).long()
    if y.shape != (n,):
        raise UftError(f"{name} has shape {tuple(y.shape)}: pass one label per image, shape ({n},)")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UftError(f"{name} spans [{int(y.min())}, {int(y.max())}]: labels must be in [0, {num_classes})")
    return y


def _seen(seen: Sequence[int], num_classes: int) -> list[int]:
    s = sorted(int(c) for c in seen)
    if not s or len(set(s)) != len(s) or s[0] < 0 or s[-1] >= num_classes:
        raise UftError(f"seen classes {list(seen)}: pass distinct class ids in [0, {num_classes}), at least one")
    return s


def filter_seen(images: torch.Tensor, labels: torch.Tensor, seen: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only samples whose label is in ``seen``: images (N, ...), labels (N,) → (n, ...), (n,)."""
    keep = torch.isin(labels, torch.as_tensor(list(seen), dtype=labels.dtype))
    return images[keep], labels[keep]


