"""The SSL training loop shared by pretraining and finetuning, with resumable checkpoints.

Per step: B target images (without replacement), ⌈ρ·B⌉ replayed source images drawn from the
fixed replay set, and M mixed images (new instances); each instance gets ``method.n_views``
augmented views (two; multi-view ACT more) and enters the same SSL loss. RadReg (optional) is
computed on the target instances' features, or, when a separate unlabelled target set is given
(``radreg_target``, RadReg during pretraining as its paper uses it), on a batch drawn from it.
All randomness flows from one ``torch.Generator`` whose state is checkpointed, so a killed and
restarted run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from uft.data.augment import AugmentConfig, augment
from uft.errors import UftError
from uft.ssl import ddp
from uft.ssl.base import SSLMethod
from uft.store import Store

if TYPE_CHECKING:
    from uft.data.stream import StreamSource


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(200, ge=1, le=10_000_000)
    batch_size: int = Field(256, ge=2, le=65536)
    lr: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(1e-5, ge=0, le=1)
    warmup_steps: int = Field(10, ge=0)
    replay_ratio: float = Field(0.0, ge=0, le=1, description="⌈ρ·B⌉ replayed source images per B target images")
    radreg_weight: float = Field(0.0, ge=0, description="μ of the Rademacher regulariser on target features")
    radreg_features: Literal["standardized", "raw"] = Field(
        "standardized", description="RadReg on per-dimension standardised features (what a linear probe sees) or raw ones")
    radreg_form: Literal["closed", "adversarial"] = Field(
        "closed", description="closed-form sup over linear heads, or an adversarial ReLU head (uft.ssl.radreg)")
    radreg_head_steps: int = Field(1, ge=1, description="adversarial head: ascent steps per batch")
    radreg_head_lr: float = Field(0.5, gt=0, description="adversarial head: ascent step size")
    radreg_batch: int = Field(128, ge=2, description="target images per step when RadReg reads a separate target set")
    seed: int = 0
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    augment: AugmentConfig = AugmentConfig()
    # Fast path (results stay deterministic for a given device and setting).
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16 autocast: 'auto' = on CUDA only, 'bf16' = on any device, 'fp32' = off")
    channels_last: bool = Field(True, description="NHWC weights and inputs on CUDA (faster cuDNN convs)")
    compile: bool = Field(False, description="torch.compile the loss (pays a compile time up front)")


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training step on ``device`` (None: plain fp32)."""
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.channels_last and device.type == "cuda"


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor → ``device``; pinned and non-blocking on CUDA, so the host does not wait for
    the GPU to drain (safe: ``t`` is never written again by the caller)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass
class Checkpointer:
    """Keeps the latest training state under ``prefix`` in the store (state file first, pointer last)."""

    store: Store
    prefix: str

    def save(self, step: int, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        name = f"ckpt-{step:08d}.pt"
        self.store.put(f"{self.prefix}/{name}", buf.getvalue())
        previous = self._latest()
        self.store.put(f"{self.prefix}/latest.json", json.dumps({"step": step, "file": name}).encode())
        if previous and previous["file"] != name:
            self.store.delete(f"{self.prefix}/{previous['file']}")

    def _latest(self) -> dict | None:
        if not self.store.exists(f"{self.prefix}/latest.json"):
            return None
        return json.loads(self.store.get(f"{self.prefix}/latest.json"))

    def load(self) -> dict[str, Any] | None:
        latest = self._latest()
        if latest is None:
            return None
        blob = self.store.get(f"{self.prefix}/{latest['file']}")
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)


@dataclass
class TrainResult:
    losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: int = 0
    images_seen: int = 0


def _target_features(encoder: torch.nn.Module, images: torch.Tensor, batch: int, g: torch.Generator) -> torch.Tensor:
    """Encoder features ``(b, D)`` of ``b = min(batch, T)`` images drawn from uint8 ``images`` ``(T, C, H, W)``,
    with gradients; BatchNorm normalises with this batch but its running statistics stay as they were
    (momentum 0 for this pass), so RadReg's target pass does not move what evaluation uses."""
    idx = torch.randperm(len(images), generator=g)[:min(batch, len(images))].to(images.device)
    bns = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        return encoder(images[idx].float().div_(255))
    finally:
        for m, (mom, tracked) in zip(bns, saved):
            m.momentum = mom
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _schedule(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, sched: Any, method: SSLMethod) -> None:
    """One update: gradients of ``loss``, the optimizer and schedule steps, then the method's own
    after-step update (a momentum encoder, a queue)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    method.after_step()


def train_ssl(
    method: SSLMethod,
    target: "torch.Tensor | StreamSource",
    cfg: TrainConfig,
    *,
    replay: torch.Tensor | None = None,
    mix_plan: Any = None,
    checkpointer: Checkpointer | None = None,
    device: str | torch.device = "cpu",
    on_log: Callable[[int, float], None] | None = None,
    resume: dict[str, Any] | None = None,
    radreg_target: torch.Tensor | None = None,
) -> TrainResult:
    """Train ``method`` in place. ``target``/``replay``: uint8 ``(N, C, H, W)`` images, or for the
    target a :class:`~uft.data.stream.StreamSource` read shard by shard (never whole in memory):
    then each step takes the stream's next batch (epochs of a seeded shard order and window
    shuffle, see :mod:`uft.data.stream`) instead of drawing ``B`` of ``N`` in-memory images, and the
    stream's position goes into every checkpoint so a resumed run reads the same batches.

    Stops after ``cfg.steps`` optimiser steps, resuming from ``checkpointer`` if it holds a state
    (else from ``resume``, a checkpoint's state dict).

    Under torchrun (``torch.distributed`` initialised with world size > 1, see ``uft.ssl.ddp``) the
    caller is rank 0: it resumes from its checkpoint and hands the other ranks the same job; every
    rank draws the same global batch, trains its slice with its own augmentations in
    DistributedDataParallel, and only rank 0 checkpoints and calls ``on_log``.

    ``radreg_target``: uint8 ``(T, C, H, W)`` unlabelled target images; with ``cfg.radreg_weight > 0``
    each step draws ``min(radreg_batch, T)`` of them (no augmentation) and RadReg is computed on their
    encoder features (BatchNorm running statistics untouched by that pass) instead of on the batch's
    target rows. Single process only.
    """
    from uft.data.stream import StreamSource
    from uft.ssl.radreg import AdversarialHead, adversarial_penalty, radreg_penalty
    from uft.transfer.mixing import MixPlan, make_mixed_batch

    streamed = isinstance(target, StreamSource)
    n_target = target.num_rows() if streamed else len(target)
    if n_target < 2:
        raise UftError(f"the training set has {n_target} images: SSL needs at least 2 (check the target data)")
    if cfg.replay_ratio > 0 and (replay is None or len(replay) == 0):
        raise UftError(f"replay_ratio={cfg.replay_ratio} but the replay set is empty: set replay_size > 0 or replay_ratio 0")
    plan = mix_plan or MixPlan()
    rank, world = ddp.rank_world()
    if radreg_target is not None and (world > 1 or len(radreg_target) < 2):
        raise UftError("radreg_target needs ≥ 2 images and a single training process: pass more target images "
                       "or run without torchrun")
    state = checkpointer.load() if checkpointer is not None and rank == 0 else resume
    if world > 1:
        if min(cfg.batch_size, n_target) < 2 * world:
            raise UftError(f"batch_size {min(cfg.batch_size, n_target)} is too small for {world} processes: "
                           f"use at least {2 * world} (each process trains on batch_size/processes images)")
        if rank == 0:  # the other ranks wait in ddp.serve for this job and its resume point
            ddp.send_job({"method": method, "target": target, "cfg": cfg, "replay": replay, "mix_plan": mix_plan,
                          "resume": state})
        device = ddp.local_device(device)
    device = torch.device(device)
    method.to(device).train()
    amp, channels_last = amp_dtype(cfg, device), use_channels_last(cfg, device)
    if channels_last:  # before any DDP wrap, which must see the final parameter layout
        method.to(memory_format=torch.channels_last)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    g = torch.Generator().manual_seed(cfg.seed)
    # RadReg on a separate target set draws its images and signs from its own generator, so the SSL
    # batches and augmentations are the same with and without it (μ → 0 recovers the plain run).
    rg = torch.Generator().manual_seed(cfg.seed + 7919) if radreg_target is not None and cfg.radreg_weight > 0 else None
    adv_head = (AdversarialHead(method.encoder.feature_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
                if cfg.radreg_weight > 0 and cfg.radreg_form == "adversarial" else None)
    result = TrainResult()
    start = 0
    if state is not None:
        method.load_state_dict(state["method"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["rng"])
        if rg is not None and "radreg_rng" in state:
            rg.set_state(state["radreg_rng"])
        start = result.resumed_from = state["step"]
        if adv_head is not None and "radreg_head" in state:
            adv_head.load_state_dict(state["radreg_head"])
        result.losses = list(state["losses"])
        resumed_running = state.get("running", 0.0)  # loss sum since the last log point
    else:
        resumed_running = 0.0

    b = min(cfg.batch_size, n_target)
    if streamed:  # each rank reads its own shards and its tensor_split share of the global batch
        local_b = [len(c) for c in torch.arange(b).tensor_split(world)]
        saved = state.get("stream") if state is not None else None
        if state is not None and saved is None:
            raise UftError("the checkpoint holds no stream position (written by in-memory training): delete it to restart")
        if saved is not None and len(saved) != world:
            raise UftError(f"the checkpoint was written by {len(saved)} training processes, this run has {world}: "
                           "resume with the same number of processes or delete the checkpoint")
        stream = target.open(local_b[rank], seed=cfg.seed, rank=rank, world=world,
                             state=saved[rank] if saved is not None else None)
        batches = iter(stream)
    else:
        target_f = target.to(device)
    replay_f = replay.to(device) if replay is not None else None
    radreg_f = radreg_target.to(device) if radreg_target is not None and cfg.radreg_weight > 0 else None
    if adv_head is not None:
        adv_head.to(device)
    # Mixing partners come from the whole replay set (floats once), not only this batch's replays.
    mix_source = replay_f.float().div(255) if replay_f is not None and plan.op != "none" else None
    k = math.ceil(cfg.replay_ratio * b) if replay_f is not None else 0
    running = torch.full((), float(resumed_running), device=device)
    n_views = getattr(method, "n_views", 2)
    model = ddp.wrap(method, device) if world > 1 else None
    loss_fn = model if model is not None else method.loss
    if cfg.compile:
        loss_fn = torch.compile(loss_fn)
    for step in range(start, cfg.steps):
        if streamed:
            xt_u8 = next(batches).images
            if world > 1:  # every rank gets the global batch, so replay/mixing/slicing run as in memory
                xt_u8 = ddp.gather_batch(xt_u8, local_b, device)
            xt = to_device(xt_u8, device).float().div_(255)
        else:
            t_idx = to_device(torch.randperm(len(target_f), generator=g)[:b], device)
            xt = target_f[t_idx].float().div_(255)
        parts = [xt]
        xs = None
        if k > 0:
            r_idx = to_device(torch.randint(len(replay_f), (k,), generator=g), device)
            xs = replay_f[r_idx].float().div_(255)
            parts.append(xs)
        if plan.op != "none":
            parts.append(make_mixed_batch(xt, mix_source, plan, g))
        if world > 1:  # g drew the same global batch on every rank: train this rank's slice, own views
            x, nb = ddp.local_slice(parts, rank, world)
            ga = ddp.view_generator(g, rank)
        else:
            x, nb, ga = torch.cat(parts), b, g
        views = [augment(x, cfg.augment, ga) for _ in range(n_views)]
        if channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, feats = loss_fn(*views)
            if cfg.radreg_weight > 0:
                rfeats = feats[:nb] if radreg_f is None else _target_features(method.encoder, radreg_f, cfg.radreg_batch, rg)
                standardized = cfg.radreg_features == "standardized"
                sg = ga if rg is None else rg
                if adv_head is not None:
                    penalty = adversarial_penalty(rfeats.float(), adv_head, generator=sg, steps=cfg.radreg_head_steps,
                                                  lr=cfg.radreg_head_lr, standardized=standardized)
                else:
                    penalty = radreg_penalty(rfeats.float(), generator=sg, standardized=standardized)
                loss = loss + cfg.radreg_weight * penalty
        optimizer_step(loss, opt, sched, method)
        running += loss.detach()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            n_since = cfg.log_every if done % cfg.log_every == 0 else done % cfg.log_every
            # one host sync per log interval, not per step; under DDP the mean over ranks
            value = float(ddp.mean(running) if world > 1 else running) / n_since
            if not math.isfinite(value):
                raise UftError(f"SSL loss became {value} at step {done}: lower lr (now {cfg.lr}) or check the data")
            result.losses.append((done, value))
            if on_log and rank == 0:
                on_log(done, value)
            running.zero_()
        if world > 1 and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            partial = float(ddp.mean(running))  # the ranks' mean, so a resumed run logs what an uninterrupted one would
            positions = ddp.gather_object(stream.state_dict()) if streamed else None
        elif streamed and world == 1:
            positions = [stream.state_dict()]
        if checkpointer is not None and rank == 0 and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            checkpointer.save(done, {
                "method": method.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": g.get_state(), "step": done, "losses": result.losses,
                # Without it, a checkpoint between log points would make the next logged mean differ
                # from an uninterrupted run's.
                "running": float(running) if world == 1 else partial,
                **({"radreg_head": adv_head.state_dict()} if adv_head is not None else {}),
                **({"radreg_rng": rg.get_state()} if rg is not None else {}),
                # Where each rank's stream stands (epoch, window, offset): a resumed run reads on from there.
                **({"stream": positions} if streamed else {}),
            })
    if streamed:
        batches.close()  # stops the stream's read-ahead thread now, not at garbage collection
    if world > 1:
        ddp.sync_buffers(method)
    result.images_seen = (cfg.steps - start) * (b + k)
    method.eval()
    return result


def serve(device: str | torch.device) -> list[tuple[torch.nn.Module, Any]]:
    """DDP workers (rank > 0): train every job rank 0 sends until :func:`uft.ssl.ddp.finish`.

    Returns (trained method, TrainResult) per job; they equal rank 0's, which alone publishes."""
    done = []
    while (job := ddp.next_job()) is not None:
        method = job.pop("method")
        done.append((method, train_ssl(method, job.pop("target"), job.pop("cfg"), device=device, **job)))
    return done
