"""Streamed data path at scale: peak memory of the real steps, streamed ÷ in-memory training speed,
and loader ÷ step demand, on generated datasets of 10k, 100k (and, with ``--million``, 1M) images.

    python -m bench.stream_scale                     # 10k and 100k, CPU
    python -m bench.stream_scale --million           # + 1M (~3 GB of pixels; generating it takes minutes)
    python -m bench.stream_scale --device cuda       # the training/loader rows on a GPU

Data: 32 px RGB, 10 classes, published as a real uft dataset (ingest's Parquet schema and zstd
shards of 4,096 rows, manifest last) in a local directory store (``file://``) under ``--data-dir``,
written shard by shard so generating 1M never holds it all. Each image is a class-coloured
background plus three Gaussian colour blobs (class palette, random centre and width) plus
uniform noise ±12: smooth, compressible and class-dependent, not pure noise. 2 % of rows are the
test split.

Every step runs in a fresh subprocess (``python -m bench.stream_scale --child ...``) that reports
its own peak RSS (``VmHWM``, :func:`bench.common.peak_rss_mb`) and CPU seconds, so one row's memory
never leaks into the next. Rows:

- ``ssl_finetune`` (streamed): the real ``uft.steps.finetune`` step (tracking off).
- ``knn_eval`` (streamed): the real ``uft.steps.knn_eval`` step.
- ``linear_eval`` (streamed): the real ``uft.steps.linear_eval`` step (bench.scale's ``--eval-only``).
- ``knn_eval in memory (before)``: what knn_eval did before streaming: ``load_dataset`` + features.
- ``train in memory`` / ``train streamed``: ``train_ssl`` on ``load_dataset(...).images`` vs on the
  ``StreamSource``, same config; img/s of the fastest 2-step block after 2 warm-up steps.
- loader: img/s of the streamed loader alone (next batch → device → float → two augmented views,
  what ``train_ssl`` does before the model) ÷ the streamed training step's img/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import device_name, emit, header, load_avg, table
from bench.rss import peak_rss_mb

SIZE, CHANNELS, CLASSES = 32, 3, 10
TEST_EVERY = 50  # 2 % test rows
WIDTH = 16  # tiny convnet width (feature_dim 64)
BATCH = 256
DATA_DIR = Path(tempfile.gettempdir()) / "uft-stream-bench"  # generated datasets, reused between runs


# --- generated dataset ------------------------------------------------------------------------------

def _blob_images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """(n,) labels → (n, 32, 32, 3) uint8: class background + 3 Gaussian blobs of the class palette + noise."""
    palette = np.random.default_rng(1234).integers(30, 226, (CLASSES, 4, 3)).astype(np.float32)  # fixed per class
    n = len(labels)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    img = np.broadcast_to(palette[labels, 0][:, None, None, :] * 0.5, (n, SIZE, SIZE, 3)).copy()
    for j in range(1, 4):
        cy, cx = rng.uniform(4, SIZE - 4, (2, n, 1, 1)).astype(np.float32)
        sigma = rng.uniform(3, 7, (n, 1, 1)).astype(np.float32)
        w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        img += w[..., None] * palette[labels, j][:, None, None, :]
    img += rng.uniform(-12, 12, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_blobs(root: Path, n: int, seed: int = 0, pool: int = 0) -> str:
    """Publish ``n`` generated images under ``root`` (a local store) → the manifest URI; reused when
    already there. Shards are written one at a time (ingest's schema and writer), the manifest last.

    ``pool`` > 0: only the first ``pool`` shards' pixels (and labels) are generated; later shards
    reuse them in turn with their own row ids and splits (so 1M rows cost ``pool`` shards of
    generation, not 245; the reader does the same work per row either way)."""
    import pyarrow as pa

    from uft.data.ingest import FORMAT_VERSION, SCHEMA, SHARD_ROWS, _shard_bytes
    from uft.store import LocalStore, canonical_json, sha256_bytes

    store, prefix = LocalStore(root), f"datasets/blobs-{n}-{seed}" + (f"-pool{pool}" if pool else "")
    if store.exists(f"{prefix}/manifest.json"):
        return store.url(f"{prefix}/manifest.json")
    rng = np.random.default_rng(seed)
    entries, class_counts, splits = {}, np.zeros(CLASSES, np.int64), {"train": 0, "test": 0}
    made: list[tuple[np.ndarray, np.ndarray]] = []
    for s, start in enumerate(range(0, n, SHARD_ROWS)):
        rows = np.arange(start, min(n, start + SHARD_ROWS))
        if pool and s >= pool:
            labels, flat = (a[: len(rows)] for a in made[s % pool])
        else:
            labels = rng.integers(0, CLASSES, len(rows))
            flat = _blob_images(rng, labels).reshape(len(rows), -1)
            if pool:
                made.append((labels, flat))
        split = np.where(rows % TEST_EVERY == 0, "test", "train")
        data = _shard_bytes(pa.table({
            "row_id": pa.array(rows, pa.int64()), "label": pa.array(labels.astype(np.int16), pa.int16()),
            "split": pa.array(split.tolist(), pa.string()), "image": pa.array([r.tobytes() for r in flat], pa.binary()),
        }, schema=SCHEMA))
        name = f"part-{s:05d}.parquet"
        store.put(f"{prefix}/{name}", data)
        entries[name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        class_counts += np.bincount(labels, minlength=CLASSES)
        for k in splits:
            splits[k] += int((split == k).sum())
    manifest = {"kind": "dataset", "format_version": FORMAT_VERSION, "name": f"blobs-{n}" + (f"-pool{pool}" if pool else ""), "image_shape": [SIZE, SIZE, CHANNELS],
                "num_rows": n, "classes": [str(c) for c in range(CLASSES)], "class_counts": class_counts.tolist(),
                "splits": splits, "schema": {f.name: str(f.type) for f in SCHEMA}, "origin": {"origin": "bench.stream_scale"},
                "framing": "keep", "files": entries}
    store.put(f"{prefix}/manifest.json", canonical_json(manifest))
    return store.url(f"{prefix}/manifest.json")


def make_encoder(root: Path) -> str:
    import torch

    from uft.models.artifact import publish_encoder
    from uft.models.encoders import build_encoder
    from uft.store import LocalStore

    torch.manual_seed(0)
    enc = build_encoder("tiny", in_channels=CHANNELS, width=WIDTH)
    spec = {"name": "tiny", "in_channels": CHANNELS, "kwargs": {"width": WIDTH}}
    return publish_encoder(LocalStore(root), "models/bench-base", enc, spec, {"origin": "bench.stream_scale"})


# --- children (one fresh process per measurement) ------------------------------------------------------

def _train_ips(target, device: str, steps: int) -> tuple[float, float]:
    """(img/s of train_ssl's fastest 2-step block after 2 warm-up steps (other jobs only slow a block),
    img per CPU second of this process over all timed steps, read-ahead thread included: steadier
    than wall time on a shared machine)."""
    import torch

    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method
    from uft.ssl.train import TrainConfig, train_ssl

    torch.manual_seed(0)
    method = build_method("simclr", build_encoder("tiny", in_channels=CHANNELS, width=WIDTH))
    marks: dict[int, tuple[float, float]] = {}
    cfg = TrainConfig(steps=2 + steps, batch_size=BATCH, log_every=2, checkpoint_every=10**6, warmup_steps=0)
    train_ssl(method, target, cfg, device=device,
              on_log=lambda s, _: marks.__setitem__(s, (time.perf_counter(), time.process_time())))
    wall = 2 * BATCH / min(marks[s + 2][0] - marks[s][0] for s in range(2, 2 + steps, 2))
    return wall, steps * BATCH / (marks[2 + steps][1] - marks[2][1])


def _loader_ips(uri: str, device: str, steps: int) -> float:
    import torch

    from uft.data.augment import AugmentConfig, augment
    from uft.data.stream import StreamSource
    from uft.ssl.train import to_device

    dev, cfg, g = torch.device(device), AugmentConfig(), torch.Generator().manual_seed(0)
    batches = iter(StreamSource(uri).open(BATCH, seed=0))
    for i in range(2 + steps):
        if i == 2:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
        x = to_device(next(batches).images, dev).float().div_(255)
        v1, v2 = augment(x, cfg, g), augment(x, cfg, g)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    del v1, v2
    return steps * BATCH / (time.perf_counter() - t0)


def child(kind: str, uri: str, encoder_uri: str, store: str, device: str, steps: int) -> dict:
    import torch

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # tracking off: measure the step, not MLflow
    if os.environ.get("UFT_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["UFT_BENCH_THREADS"]))
    out: dict = {}
    if kind == "finetune":
        from uft import steps as st

        st.finetune(encoder_uri, uri, store, steps=steps, batch_size=BATCH, checkpoint_every=10**6, run_id="bench")
    elif kind == "knn":
        from uft import steps as st

        out["knn"] = st.knn_eval(encoder_uri, uri, store, tag="bench", run_id="bench")["metrics"]["knn"]
    elif kind == "linear":
        from uft import steps as st

        m = st.linear_eval(encoder_uri, uri, store, tag="bench", run_id="bench")["metrics"]
        out["linear_full"], out["linear_5shot"] = m["linear_full"], m["linear_5shot"]
    elif kind == "knn_memory":  # the pre-streaming knn_eval: whole dataset in memory, then features
        from uft.data.dataset import load_dataset
        from uft.evaluate.features import extract_features
        from uft.evaluate.knn import knn_accuracy
        from uft.models.artifact import load_encoder

        enc, _ = load_encoder(encoder_uri)
        ds = load_dataset(uri)
        tr, te = ds.subset("train"), ds.subset("test")
        out["knn"] = knn_accuracy(extract_features(enc, tr.images, device=device), tr.labels,
                                  extract_features(enc, te.images, device=device), te.labels, len(ds.classes))
    elif kind == "train_memory":
        from uft.data.dataset import load_dataset

        out["ips"], out["cpu_ips"] = _train_ips(load_dataset(uri).subset("train").images, device, steps)
    elif kind == "train_stream":
        from uft.data.stream import StreamSource

        out["ips"], out["cpu_ips"] = _train_ips(StreamSource(uri), device, steps)
    elif kind == "loader":
        out["ips"] = _loader_ips(uri, device, steps)
    else:
        raise SystemExit(f"unknown child {kind}")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {**out, "rss_mb": peak_rss_mb(), "cpu_s": ru.ru_utime + ru.ru_stime, "threads": torch.get_num_threads()}


def run_child(kind: str, uri: str, encoder_uri: str, store: str, device: str, steps: int) -> dict:
    cmd = [sys.executable, "-m", "bench.stream_scale", "--child", kind, uri, encoder_uri, store, device, str(steps)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "UFT_PROGRESS": "off"})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - t0}


# --- the report -------------------------------------------------------------------------------------

def _mb(r: dict) -> object:
    return r.get("error", f"{r['rss_mb']:.0f}")


def run(sizes: list[int], data_dir: Path, *, device: str = "cpu", steps: int = 8, repeats: int = 2,
        memory_baseline: int = 200_000, knn_max: int = 200_000, pool_above: int = 200_000, pool: int = 16) -> str:
    """``memory_baseline``: the in-memory rows run only up to this size (above it they would need the
    whole dataset, several GB, in RAM: the thing this path removes). ``knn_max``: the k-NN rows run
    only up to this size (k-NN on 1M features is CPU-hours here). Above ``pool_above`` images the
    data reuses ``pool`` generated shards of pixels (see :func:`make_blobs`)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    encoder_uri = make_encoder(data_dir)
    mem_rows, speed_rows, gen_rows = [], [], []
    for n in sizes:
        t0, c0 = time.perf_counter(), time.process_time()
        uri = make_blobs(data_dir, n, pool=pool if n > pool_above else 0)
        gen_rows.append([f"{n:,}", time.perf_counter() - t0, time.process_time() - c0,
                         sum(p.stat().st_size for p in Path(uri).parent.glob("*.parquet")) / 2**20])
        # A fresh step store per run: a store from an earlier run would turn the steps into cache hits.
        store = tempfile.mkdtemp(prefix=f"store-{n}-", dir=data_dir)
        r = {k: run_child(k, uri, encoder_uri, store, device, steps) for k in ("finetune",) + (("knn",) if n <= knn_max else ())}
        if n <= memory_baseline and n <= knn_max:
            r["knn_memory"] = run_child("knn_memory", uri, encoder_uri, store, device, steps)
        # Training speed: in-memory and streamed alternate `repeats` times, each keeping its best run
        # (other jobs on a shared machine only ever slow a run down).
        for _ in range(repeats):
            for k in ("train_memory", "train_stream") if n <= memory_baseline else ("train_stream",):
                x = run_child(k, uri, encoder_uri, store, device, steps)
                if k not in r or x.get("ips", 0) > r[k].get("ips", 0):
                    r[k] = x
        r["loader"] = run_child("loader", uri, encoder_uri, store, device, steps)
        for k in ("finetune", "knn", "knn_memory", "train_memory", "train_stream", "loader"):
            if k in r:
                x = r[k]
                mem_rows.append([f"{n:,}", k, _mb(x), x.get("cpu_s", "-"), x.get("wall_s", "-"),
                                 x.get("knn", x.get("ips", "-"))])
        shutil.rmtree(store, ignore_errors=True)
        ts, tm, ld = r["train_stream"].get("ips"), r.get("train_memory", {}).get("ips"), r["loader"].get("ips")
        cs, cm = r["train_stream"].get("cpu_ips"), r.get("train_memory", {}).get("cpu_ips")
        speed_rows.append([f"{n:,}", device_name(device), tm or "-", ts or "-", ts / tm if ts and tm else "-",
                           cm or "-", cs or "-", cs / cm if cs and cm else "-", "≥ 0.9",
                           ld or "-", ld / ts if ld and ts else "-", "≫ 1"])
    return "\n".join([
        "## Streamed data path at scale\n",
        "Generated 32 px RGB colour-blob datasets (10 classes, 2 % test), local `file://` store. "
        "Peak RSS per step in a fresh process (`VmHWM`); goal: flat in size, < 3 GB at 1M.\n",
        table(["images", "generate wall s", "generate CPU s", "shards MB"], gen_rows),
        table(["images", "step (fresh process)", "peak RSS MB", "CPU s", "wall s", "k-NN acc / img/s"], mem_rows),
        table(["images", "device", "train img/s in memory", "train img/s streamed", "streamed ÷ in memory (wall)",
               "img per CPU s in memory", "img per CPU s streamed", "streamed ÷ in memory (CPU)", "goal",
               "loader img/s (stream→float→2 views)", "loader ÷ step demand", "goal"], speed_rows),
    ])


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m bench.stream_scale", description=__doc__.split("\n")[0])
    ap.add_argument("--million", action="store_true", help="also 1M images (generation and k-NN take minutes)")
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated dataset sizes")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (training and loader rows)")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps (after 2 warm-up steps)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each training-speed row (best kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in every measured process (0: default)")
    ap.add_argument("--knn-max", type=int, default=200_000, help="largest size with k-NN rows")
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR, help="generated data (reused)")
    ap.add_argument("--out", type=Path, help="also write the report here")
    ap.add_argument("--child", nargs=6, metavar=("KIND", "URI", "ENCODER", "STORE", "DEVICE", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, uri, enc, store, device, steps = args.child
        print(json.dumps(child(kind, uri, enc, store, device, int(steps))), flush=True)
        return ""
    sizes = [int(s) for s in args.sizes.split(",") if s] + ([1_000_000] if args.million else [])
    if args.threads:
        os.environ["UFT_BENCH_THREADS"] = str(args.threads)  # read by the children
        import torch

        torch.set_num_threads(args.threads)  # so the report's device column says so too
    report = "\n".join([header("uft streamed data path", "bench.stream_scale"), run(sizes, args.data_dir, device=args.device, steps=args.steps, repeats=args.repeats,
                                                          knn_max=args.knn_max),
                        f"load average at end (1/5/15 min): {load_avg()}\n"])
    return emit(report, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
