"""Data path: decoded+augmented img/s of the loader alone — Parquet read once, then per batch
index → uint8 → float → two augmented views (exactly what ``train_ssl`` does before the model) —
against the training step's demand (its img/s)."""

from __future__ import annotations

import tempfile

import torch

from bench.ceiling import CPU_CASES, GPU_CASES, Case, real_step_ips
from bench.common import device_name, make_dataset, now, sync, table


def loader_ips(case: Case, uri: str, warmup: int = 2, steps: int = 10) -> tuple[float, float]:
    """(img/s of the loader on ``case.device``, seconds for the one Parquet read)."""
    from uft.data.augment import AugmentConfig, augment
    from uft.data.dataset import load_dataset
    from uft.ssl.train import to_device

    device = torch.device(case.device)
    t0 = now()
    images = load_dataset(uri).images.to(device)  # as train_ssl: the uint8 set lives on the device
    sync(device)
    load_s = now() - t0
    cfg, g = AugmentConfig(), torch.Generator().manual_seed(0)
    b = min(case.batch, len(images))
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = now()
        idx = to_device(torch.randperm(len(images), generator=g)[:b], device)
        x = images[idx].float().div_(255)
        v1, v2 = augment(x, cfg, g), augment(x, cfg, g)
    sync(device)
    del v1, v2
    return steps * b / (now() - t0), load_s


HEADERS = ["case", "device", "parquet→tensor s", "loader img/s (index→float→2 views)", "train step img/s (demand)",
           "loader ÷ demand", "augment share of step"]


def run(cases: list[Case] | None = None, *, step_ips: dict[str, float] | None = None, warmup: int = 2,
        steps: int = 10) -> str:
    """``step_ips``: the step rate per case name when already measured (e.g. by the ceiling bench)."""
    out = []
    for case in cases if cases is not None else CPU_CASES + GPU_CASES:
        if case.device == "cuda" and not torch.cuda.is_available():
            out.append([case.name, "-", "skipped: no GPU", "-", "-", "-", "-"])
            continue
        with tempfile.TemporaryDirectory() as tmp:
            uri = make_dataset(tmp, case.n_images, case.size, case.channels)
            ips, load_s = loader_ips(case, uri, warmup, steps)
            demand = (step_ips or {}).get(case.name) or real_step_ips(case, uri, 1, max(2, steps // 2))[0]
        # Serial on one device: the step spends 1/ips of each image's time in the data path.
        out.append([case.name, device_name(case.device), load_s, ips, demand, ips / demand, f"{demand / ips:.0%}"])
    return "## Data path\n\n" + table(HEADERS, out)


if __name__ == "__main__":
    print(run())
