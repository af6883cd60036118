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
scales them to the run's steps: the estimate printed before `uft run` starts. The measured step
time is kept per shape and machine (``memo``), so a rerun does not import torch and train again
just to say what it said before; :func:`estimate_vs_actual` holds the estimate against the training
time the run then took.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


@dataclass(frozen=True)
class StepTime:
    """What one training process costs at a shape: ``step_s`` per steady step, plus ``warmup_s``
    once (building the optimizer and the first step's one-time work, beyond a steady step)."""

    step_s: float
    warmup_s: float = 0.0

    def training(self, steps: float) -> float:
        """Seconds of one training process of ``steps`` steady steps."""
        return self.warmup_s + steps * self.step_s


def measure_step_seconds(*, encoder: str, encoder_width: int, image_size: int, channels: int, batch_size: int,
                         method: str = "simclr", device: str | None = None,
                         before_timing: Callable[[], object] | None = None) -> StepTime:
    """One SSL training step at this shape and batch, measured here on random images: ``step_s`` the
    median gap between the ends of the last :data:`TIMED_STEPS` of :data:`MEASURED_STEPS`
    consecutive steps; ``warmup_s`` how much longer than a steady step the training call took to
    end its first step (the optimizer's construction, which imports torch._dynamo, and the first
    step's one-time work), which every training task pays once.

    The steady state, not the first steps: a process's first training step is many times slower
    than the rest (tiny encoder, batch 256, 16 px, 2 cores, quiet: 1.1 s, then 0.045 s each), and
    the two steps after one warm-up step that this used to time had put the demo's training at
    355 s when it took 45 s; leaving the first step out altogether put it between +16 and -39 %
    (10 demo first runs, 2026-12-07, 3 outside ±30 %), since each of the run's two training tasks pays it too.

    ``before_timing`` is called once the untimed steps are done, right before the timed ones (e.g.
    to pause other work that would share the CPUs: only the timed steps need them alone)."""
    import statistics

    import torch

    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method
    from uft.ssl.train import TrainConfig, train_ssl

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {"width": encoder_width} if encoder == "tiny" else {}
    m = build_method(method, build_encoder(encoder, in_channels=channels, **kwargs))
    x = torch.randint(0, 256, (batch_size, channels, image_size, image_size), dtype=torch.uint8)
    ends: list[float] = []
    cfg = TrainConfig(steps=MEASURED_STEPS, batch_size=batch_size, warmup_steps=0, log_every=1)
    untimed = MEASURED_STEPS - TIMED_STEPS  # the timed gaps run from the end of this step on

    def step_ended(_step, _loss) -> None:
        if before_timing is not None and len(ends) == untimed - 1:
            before_timing()  # before the clock: its own cost is not part of a step
        ends.append(time.perf_counter())

    started = time.perf_counter()
    train_ssl(m, x, cfg, device=device, on_log=step_ended)
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    step = statistics.median(gaps[-TIMED_STEPS:])
    return StepTime(step, max(0.0, ends[0] - started - step))


#: How long a step time measured on this machine is reused before it is measured again.
MEMO_DAYS = 7
#: Bumped when :func:`measure_step_seconds` measures differently: kept times of the old way are not reused.
MEASURE_VERSION = 4  # 4: the warm-up is kept too
#: Steps :func:`measure_step_seconds` trains, and how many of the last it times.
MEASURED_STEPS, TIMED_STEPS = 8, 3


def _memo_key(shape: dict) -> str:
    """The shape, plus what makes a step time this machine's: torch's version, CPUs, host, an NVIDIA
    driver or not (known without importing torch, as :func:`uft.defaults.has_accelerator` does)."""
    import importlib.metadata
    import platform

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "?"
    return json.dumps({**shape, "torch": torch_version, "cpus": os.cpu_count(), "host": platform.node(),
                       "nvidia": any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl")),
                       "how": MEASURE_VERSION}, sort_keys=True)


def step_seconds(memo: Path | None = None, before_timing: Callable[[], object] | None = None,
                 **shape) -> tuple[StepTime, float | None]:
    """:func:`measure_step_seconds` for ``shape``, reusing a measurement kept in ``memo`` (a JSON
    file) for the same shape on this machine within :data:`MEMO_DAYS` → (the step's time, when it
    was measured, or None when measured now). ``before_timing``: see :func:`measure_step_seconds`
    (not called when the time is kept)."""
    key = _memo_key(shape)
    kept: dict = {}
    if memo is not None:
        try:
            kept = json.loads(memo.read_text())
        except (OSError, ValueError):
            kept = {}
        hit = kept.get(key)
        if isinstance(hit, dict) and time.time() - float(hit.get("at", 0)) < MEMO_DAYS * 86400:
            return StepTime(float(hit["step_s"]), float(hit.get("warmup_s", 0.0))), float(hit["at"])
    step = measure_step_seconds(**shape, before_timing=before_timing)
    if memo is not None:
        kept[key] = {"step_s": step.step_s, "warmup_s": step.warmup_s, "at": time.time()}
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
            tmp.write_text(json.dumps(kept, indent=1))
            os.replace(tmp, memo)  # whole or not at all
        except OSError:
            pass  # an estimate that cannot be kept is measured again next time
    return step, None


def estimate_seconds(cfg, memo: Path | None = None, before_timing: Callable[[], object] | None = None
                     ) -> tuple[float, str]:
    """A :class:`~uft.config.RunConfig` → (estimated training seconds, one line saying how): per
    training task (pretrain unless an encoder is given, finetune) its warm-up plus its steps.
    ``memo``: where measured step times are kept (:func:`step_seconds`; None: always measure);
    ``before_timing``: see :func:`measure_step_seconds`.

    Pretraining and finetuning dominate a run; the finetune's batch grows by the replayed share.
    Evaluation, holistic transfer and service start-up come on top and are not included."""
    step, at = step_seconds(memo, before_timing, encoder=cfg.encoder, encoder_width=cfg.encoder_width, image_size=cfg.image_size,
                            channels=cfg.channels, batch_size=cfg.batch_size,
                            method=cfg.pretrain_method.partition(":")[0])
    replay = cfg.replay_ratio if cfg.replay_size > 0 else 0.0
    skipped = bool(cfg.pretrained_encoder or getattr(cfg, "encoder_weights", ""))  # a given encoder: no pretraining
    pre = 0.0 if skipped else step.training(cfg.pretrain_steps)
    fin = step.training(cfg.finetune_steps * (1 + replay))
    total = pre + fin
    when = "measured here" if at is None else f"measured here {time.strftime('%Y-%m-%d %H:%M', time.localtime(at))}"
    line = (f"estimated training time: ~{_duration(total)} (pretrain {0 if skipped else cfg.pretrain_steps} "
            f"+ finetune {cfg.finetune_steps} steps at {step.step_s:.2f} s/step + {step.warmup_s:.1f} s of warm-up "
            f"per training task, {when}; a rerun with the same inputs is cached; evaluation extra)")
    return total, line


#: How far the estimate may be from the training time a run then takes before the run says so.
HONEST = 0.30


def estimate_vs_actual(estimate_s: float | None, trained_s: dict[str, float]) -> str:
    """The estimate printed before the run against what its training took → one line for the end
    of `uft run` ("" when there is nothing to compare).

    ``trained_s``: seconds of each training step that trained in this run ({"pretrain": 41.2,
    "ssl_finetune": 30.5}); a step answered from a cache is left out, so a fully cached rerun
    says it trained nothing."""
    if estimate_s is None and not trained_s:
        return ""
    est = "unknown" if estimate_s is None else f"{estimate_s:.0f} s"
    if not trained_s:
        return f"training: none this run (cached); the estimate before it was {est}"
    took = sum(trained_s.values())
    parts = " + ".join(f"{k} {v:.0f} s" for k, v in trained_s.items())
    line = f"training took {took:.0f} s ({parts}); estimated before the run: {est}"
    if estimate_s is None or estimate_s <= 0 or len(trained_s) < 2:
        return line  # one step cached, the other trained: the estimate covered both, no fair ratio
    off = estimate_s / took - 1
    verdict = "within" if abs(off) <= HONEST else "outside"
    return f"{line} ({off:+.0%}, {verdict} ±{HONEST:.0%})"


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"
