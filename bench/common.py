"""Shared helpers for the benchmarks: a synthetic Parquet dataset, timing, markdown tables."""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
# Benchmarks train hundreds of short runs: per-run progress lines would bury the tables.
os.environ.setdefault("UFT_PROGRESS", "off")


def make_dataset(root: str | Path, n: int, size: int, channels: int, seed: int = 0) -> str:
    """Publish ``n`` random ``size``² images as a uft dataset (Parquet shards + manifest) under
    ``root`` → the manifest URI, read back by ``uft.data.dataset.load_dataset`` like real data."""
    from uft.data.ingest import ingest
    from uft.data.sources import RawImages
    from uft.store import LocalStore

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    raw = RawImages(images, labels, [str(c) for c in range(10)], info={"origin": "bench"})
    return ingest(raw, LocalStore(Path(root)), name="bench", image_size=size, channels=channels, test_fraction=0.0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now() -> float:
    return time.perf_counter()


def load_avg() -> str:
    """``uptime``'s load averages (1, 5, 15 min), to read beside the numbers on a shared machine."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def header(title: str, module: str = "bench.run_all") -> str:
    cmd = " ".join([Path(sys.executable).name, "-m", module, *sys.argv[1:]]) if sys.argv else "?"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"# {title}\n\n- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}\n- command: `{cmd}`\n"
            f"- CPU: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; GPU: {gpu}\n"
            f"- load average at start (1/5/15 min): {load_avg()}\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats get 3 significant digits (or 1 decimal above 100)."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def emit(report: str, out: Path | None) -> str:
    """Print a markdown report and, when ``out`` is given, write it there too → the report."""
    print(report)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
    return report
