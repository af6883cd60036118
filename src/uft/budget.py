"""A training budget that follows the data, and the time it will take, known before the run starts.

The rule (used by :func:`uft.defaults.infer_defaults` for ImageFolder / s3:// data; bundled data
keep the digit demo's fixed 300 / 200 steps at batch 256):

- **batch_size**: a power of two near a quarter of the target's train rows, 32–256: every finetuning
  epoch then has at least four distinct batches, and large data keeps the demo's 256.
- **pretrain_steps**: ``PRETRAIN_EPOCHS`` passes over the source's train rows, **finetune_steps**:
  ``FINETUNE_EPOCHS`` passes over the target's (the demo's 300 steps × 256 are 8.5 passes over
  MNIST's 9k train rows), each × the input factor below and clamped to a sane range.
- **input factor**: ``sqrt(values / 256)`` clamped to [1, ``INPUT_FACTOR_MAX``], where values =
  image_size² × channels (256 for the demo's 16×16×1): bigger inputs get more steps, at most
  ``INPUT_FACTOR_MAX`` × (in ``bench/defaults_rule.py`` twice the steps at 24 px closed most of the
  loss of 24 px against 16 px on clothing; see docs/results.md).

:func:`estimate_seconds` times two real training steps of the chosen encoder on this machine and
scales them to the run's steps: the estimate printed before `uft run` starts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

PRETRAIN_EPOCHS = 8
FINETUNE_EPOCHS = 20
PRETRAIN_RANGE = (100, 3000)
FINETUNE_RANGE = (50, 2000)
BATCH_RANGE = (32, 256)
INPUT_FACTOR_MAX = 2.0
BUDGET_FIELDS = ("pretrain_steps", "finetune_steps", "batch_size")


@dataclass(frozen=True)
class Budget:
    pretrain_steps: int
    finetune_steps: int
    batch_size: int
    reason: str


def input_factor(image_size: int, channels: int) -> float:
    """How many times the demo's steps an input of this size needs (1 for 16×16×1)."""
    return min(max(math.sqrt(image_size * image_size * channels / 256), 1.0), INPUT_FACTOR_MAX)


def infer_budget(source_rows: int, target_rows: int, *, image_size: int, channels: int,
                 source_test_fraction: float = 0.1, target_test_fraction: float = 0.5,
                 batch_size: int | None = None) -> Budget:
    """Image counts of the source and target folders (all splits) → steps and batch size, with why.
    ``batch_size``: the user's, when set (the steps then follow it)."""
    src_train = max(1, round(source_rows * (1 - source_test_fraction)))
    tgt_train = max(1, round(target_rows * (1 - target_test_fraction)))
    batch = 2 ** int(math.floor(math.log2(max(tgt_train / 4, 1))))
    batch = batch_size or min(max(batch, BATCH_RANGE[0]), BATCH_RANGE[1])
    f = input_factor(image_size, channels)

    def steps(epochs: int, rows: int, lo_hi: tuple[int, int]) -> int:
        return min(max(math.ceil(f * epochs * rows / batch), lo_hi[0]), lo_hi[1])

    pre, fin = steps(PRETRAIN_EPOCHS, src_train, PRETRAIN_RANGE), steps(FINETUNE_EPOCHS, tgt_train, FINETUNE_RANGE)
    scale = f" × {f:.2g} for {image_size}×{image_size}×{channels} inputs" if f != 1 else ""
    why_batch = "set by hand" if batch_size else f"≈ ¼ of the target's {tgt_train} train images, {BATCH_RANGE[0]}–{BATCH_RANGE[1]}"
    reason = (f"batch {batch} ({why_batch}); "
              f"pretrain {pre} steps ≈ {PRETRAIN_EPOCHS} passes over {src_train} source images{scale}; "
              f"finetune {fin} steps ≈ {FINETUNE_EPOCHS} passes over {tgt_train} target images{scale}")
    return Budget(pre, fin, batch, reason)


def measure_step_seconds(*, encoder: str, encoder_width: int, image_size: int, channels: int, batch_size: int,
                         method: str = "simclr", device: str | None = None) -> float:
    """Seconds of one SSL training step at this shape and batch, measured here (one warm-up step,
    then two timed) on random images."""
    import torch

    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method
    from uft.ssl.train import TrainConfig, train_ssl

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {"width": encoder_width} if encoder == "tiny" else {}
    m = build_method(method, build_encoder(encoder, in_channels=channels, **kwargs))
    x = torch.randint(0, 256, (batch_size, channels, image_size, image_size), dtype=torch.uint8)
    cfg = TrainConfig(steps=1, batch_size=batch_size, warmup_steps=0)
    train_ssl(m, x, cfg, device=device)
    t0 = time.perf_counter()
    train_ssl(m, x, cfg.model_copy(update={"steps": 2}), device=device)
    return (time.perf_counter() - t0) / 2


def estimate_seconds(cfg) -> tuple[float, str]:
    """A :class:`~uft.config.RunConfig` → (estimated training seconds, one line saying how).

    Pretraining and finetuning dominate a run; the finetune's batch grows by the replayed share.
    Evaluation, holistic transfer and service start-up come on top and are not included."""
    step = measure_step_seconds(encoder=cfg.encoder, encoder_width=cfg.encoder_width, image_size=cfg.image_size,
                                channels=cfg.channels, batch_size=cfg.batch_size, method=cfg.pretrain_method.partition(":")[0])
    replay = cfg.replay_ratio if cfg.replay_size > 0 else 0.0
    pre = 0.0 if cfg.pretrained_encoder else cfg.pretrain_steps * step
    fin = cfg.finetune_steps * step * (1 + replay)
    total = pre + fin
    line = (f"estimated training time: ~{_duration(total)} (pretrain {0 if cfg.pretrained_encoder else cfg.pretrain_steps} "
            f"+ finetune {cfg.finetune_steps} steps at {step:.2f} s/step, measured here; a rerun with the same "
            "inputs is cached; evaluation extra)")
    return total, line


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"
