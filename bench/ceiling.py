"""Ceiling ratio: img/s of the real training step (``uft.ssl.train.train_ssl`` on data read from
Parquet) ÷ img/s of the same model's forward+backward+optimiser on random tensors already in
memory (the hardware ceiling for that model), both measured in this process.

An "image" is one instance of the batch (it enters the loss as two augmented views).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace

import torch

from bench.common import device_name, make_dataset, now, table


@dataclass(frozen=True)
class Case:
    name: str
    device: str
    encoder: str
    size: int
    channels: int
    batch: int = 256
    width: int = 32  # tiny convnet width (ResNet-18 uses its default 64)
    n_images: int = 4096
    method: str = "simclr"
    precision: str = "auto"
    compile: bool = False


CPU_CASES = [Case("cpu tiny-convnet 16px", "cpu", "tiny", 16, 1)]
GPU_CASES = [Case("gpu resnet18 32px", "cuda", "resnet18", 32, 3, n_images=8192),
             Case("gpu resnet18 96px", "cuda", "resnet18", 96, 3, n_images=4096)]


def build(case: Case, seed: int = 0):
    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method

    torch.manual_seed(seed)
    kw = {"width": case.width} if case.encoder == "tiny" else {}
    return build_method(case.method, build_encoder(case.encoder, in_channels=case.channels, **kw))


def train_config(case: Case, steps: int, log_every: int):
    from uft.ssl.train import TrainConfig

    return TrainConfig(steps=steps, batch_size=case.batch, log_every=log_every, checkpoint_every=10**6,
                       warmup_steps=0, precision=case.precision, compile=case.compile)


BLOCK = 2  # steps per timed block: each measurement keeps its fastest block (least disturbed by other jobs)


def real_step_ips(case: Case, uri: str, warmup: int, steps: int) -> tuple[float, float]:
    """(img/s of train_ssl after ``warmup`` steps — its fastest ``BLOCK``-step block —, seconds to
    load the Parquet dataset)."""
    from uft.data.dataset import load_dataset
    from uft.ssl.train import train_ssl

    t0 = now()
    images = load_dataset(uri).images
    load_s = now() - t0
    marks: dict[int, float] = {}
    first = -(-warmup // BLOCK) * BLOCK  # first log point at or after the warm-up
    total = first + max(1, steps // BLOCK) * BLOCK
    # on_log runs after the loss sum is synced to the host, so its clock sees finished GPU work
    train_ssl(build(case), images, train_config(case, total, BLOCK), device=case.device,
              on_log=lambda s, _: marks.__setitem__(s, now()))
    best = min(marks[s + BLOCK] - marks[s] for s in range(first, total, BLOCK))
    return BLOCK * min(case.batch, len(images)) / best, load_s


def ceiling_ips(case: Case, warmup: int, steps: int) -> float:
    """img/s of forward+backward+AdamW+scheduler on fixed random views in device memory, with the
    same precision / memory format / compile settings the training loop uses."""
    from uft.ssl.train import _schedule, amp_dtype, optimizer_step, use_channels_last

    device = torch.device(case.device)
    cfg = train_config(case, warmup + steps, warmup)
    method = build(case).to(device).train()
    amp, cl = amp_dtype(cfg, device), use_channels_last(cfg, device)
    fmt = torch.channels_last if cl else torch.contiguous_format
    method.to(memory_format=fmt)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    loss_fn = torch.compile(method.loss) if cfg.compile else method.loss
    shape = (case.batch, case.channels, case.size, case.size)
    v1 = torch.rand(shape, device=device).contiguous(memory_format=fmt)
    v2 = torch.rand(shape, device=device).contiguous(memory_format=fmt)
    running = torch.zeros((), device=device)
    first = -(-warmup // BLOCK) * BLOCK
    total = first + max(1, steps // BLOCK) * BLOCK
    times = []
    for i in range(total):
        if i >= first and (i - first) % BLOCK == 0:
            float(running)  # same sync point as the training loop's log
            times.append(now())
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = loss_fn(v1, v2)
        optimizer_step(loss, opt, sched, method)
        running += loss.detach()
    float(running)
    times.append(now())
    return BLOCK * case.batch / min(b - a for a, b in zip(times, times[1:]))


def measure(case: Case, warmup: int = 2, steps: int = 8, repeats: int = 3) -> dict:
    """Alternate ceiling and real-step runs ``repeats`` times; keep each one's best (least disturbed)
    ``BLOCK``-step block, since other jobs on a shared machine only ever slow a block down."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = make_dataset(tmp, case.n_images, case.size, case.channels)
        ceil, real, load = 0.0, 0.0, float("inf")
        for _ in range(repeats):
            ceil = max(ceil, ceiling_ips(case, warmup, steps))
            r, l = real_step_ips(case, uri, warmup, steps)
            real, load = max(real, r), min(load, l)
    return {"case": case, "ceiling": ceil, "real": real, "ratio": real / ceil, "load_s": load}


HEADERS = ["case", "device", "batch", "ceiling img/s (fwd+bwd+opt, random tensors)",
           "train_ssl img/s (parquet→augment→step)", "ratio", "goal", "parquet load s"]


def rows(results: list[dict]) -> list[list]:
    out = []
    for r in results:
        c = r["case"]
        if "skipped" in r:
            out.append([c.name, "-", c.batch, "skipped: no GPU", "-", "-", "≥ 0.9", "-"])
        else:
            out.append([c.name, device_name(c.device), c.batch, r["ceiling"], r["real"], r["ratio"], "≥ 0.9", r["load_s"]])
    return out


def run(cases: list[Case] | None = None, *, warmup: int = 2, steps: int = 8, repeats: int = 3) -> tuple[str, list[dict]]:
    """→ (markdown table, raw results). GPU cases become "skipped: no GPU" rows without CUDA."""
    results = []
    for case in cases if cases is not None else CPU_CASES + GPU_CASES:
        if case.device == "cuda" and not torch.cuda.is_available():
            results.append({"case": case, "skipped": True})
        else:
            results.append(measure(case, warmup, steps, repeats))
    return "## Ceiling ratio\n\n" + table(HEADERS, rows(results)), results


def micro(case: Case) -> Case:
    """A tiny version of ``case`` for smoke tests."""
    return replace(case, batch=8, n_images=32, width=8, size=min(case.size, 16))


if __name__ == "__main__":
    print(run()[0])
