"""Multi-process (DDP) support for :func:`uft.ssl.train.train_ssl`, one process per GPU (or CPU, gloo).

Roles under ``torchrun`` (see :mod:`uft.ssl.ddp_entry`): rank 0 runs the pipeline step as usual
(reads inputs, owns the store and MLflow); when it reaches ``train_ssl`` it broadcasts the job
(method as built, data, config, the checkpoint it resumes from) to the other ranks, which wait in
:func:`serve`. Every rank then trains its slice of each global batch inside
DistributedDataParallel; only rank 0 checkpoints, logs and publishes. When the step returns,
rank 0 calls :func:`finish` so the workers exit. The workers' loop is
:func:`uft.ssl.train.serve` (it trains, so it lives with the trainer). Without an initialised process group of more than
one process everything here is a no-op and ``train_ssl`` runs exactly as before.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) unless ``torch.distributed`` is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_device(device: str | torch.device) -> torch.device:
    """This process's device: ``cuda`` → ``cuda:LOCAL_RANK`` (one GPU per process), others unchanged."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _broadcast(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def send_job(job: dict[str, Any]) -> None:
    """Rank 0: hand the workers a training job (keyword arguments of ``train_ssl`` + ``resume``).

    Called before anything moves to a GPU, so the pickled tensors are CPU tensors."""
    _broadcast(job)


def finish() -> None:
    """Rank 0: no more jobs; the workers' :func:`uft.ssl.train.serve` returns."""
    _broadcast(None)


def next_job() -> dict[str, Any] | None:
    """Workers: the next job rank 0 sends with :func:`send_job`, or None after :func:`finish`."""
    return _broadcast(None)


class _LossModule(nn.Module):
    """Makes ``method.loss`` the ``forward`` DDP hooks into (gradient all-reduce in backward)."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, *views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.method.loss(*views)


def wrap(method: nn.Module, device: torch.device) -> nn.Module:
    """``method`` (with its state loaded) in DDP: rank 0's parameters and buffers are broadcast now,
    gradients are averaged over ranks in every backward, and buffers (BatchNorm statistics, MoCo's
    queue) are re-broadcast from rank 0 at every forward, so all ranks hold the same state."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(_LossModule(method), device_ids=ids, output_device=device if ids else None)


def sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers: after the last forward each rank's BatchNorm statistics
    moved with its own slice (DDP re-syncs them only at the next forward)."""
    for b in module.buffers():
        dist.broadcast(b, src=0)


def local_slice(parts: list[torch.Tensor], rank: int, world: int) -> tuple[torch.Tensor, int]:
    """This rank's share of a global batch given as parts (target, replay, mixed), each split in
    ``world`` near-equal contiguous chunks → (concatenated local batch, local target count)."""
    mine = [torch.tensor_split(p, world)[rank] for p in parts]
    return torch.cat(mine), len(mine[0])


def view_generator(g: torch.Generator, rank: int) -> torch.Generator:
    """A generator for this rank's augmentations (and RadReg signs) of one step.

    Its seed is drawn from the shared ``g`` (same draw on every rank, so ``g`` stays in lockstep and
    its checkpointed state determines the rest of the run) plus the rank, so ranks' views differ."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return torch.Generator().manual_seed(seed + rank)


def gather_batch(local: torch.Tensor, sizes: list[int], device: torch.device) -> torch.Tensor:
    """The global batch on every rank: rank ``r``'s ``local`` ``(sizes[r], ...)`` concatenated in
    rank order → ``(sum(sizes), ...)``. Streamed training reads a different slice on each rank;
    gathering it (a few kB of uint8 per image, small beside the gradient all-reduce) lets replay,
    mixing and :func:`local_slice` work on the same global batch as with in-memory data."""
    top = max(sizes)
    # NCCL gathers device tensors only; gloo host tensors.
    where = device if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros((top, *local.shape[1:]), dtype=local.dtype, device=where)
    padded[: len(local)] = local
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[:n] for o, n in zip(out, sizes)])


def gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (small, picklable), in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean(value: torch.Tensor) -> torch.Tensor:
    """Average of a scalar tensor over ranks (every rank gets the same value)."""
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()
