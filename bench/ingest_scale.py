"""Ingest at scale: images/s and peak memory of ImageFolder ingestion (issue #16, deliverable 3).

    python -m bench.ingest_scale                         # 10k and 100k images, 1 worker vs all at 100k
    python -m bench.ingest_scale --sizes 10000,100000,1000000 --out bench/results/ingest_scale.md
    python -m bench.ingest_scale --baseline /path/to/other/checkout/src   # adds before/after rows
    python -m bench.ingest_scale --sizes 10000 --compare-at 0 --bookkeeping 100000,1000000  # per-file RSS cost

The data: ``N`` 32×32 RGB JPEGs (quality 90) in 10 class directories, each a smooth random colour
field (a seeded 4×4×3 uint8 noise image upsampled bicubically with PIL), written once by a process
pool and cached under ``--cache`` (default ``~/.cache/uft/bench``; the path is printed), so reruns
reuse it; generation is not timed. Every measurement is a fresh ``python`` subprocess that runs
what ``uft ingest`` / the pipeline's ingest step run — :func:`uft.data.imagefolder.load_imagefolder`
then :func:`uft.data.ingest.ingest` — into a ``file://`` store (a local directory; no SeaweedFS,
so the figures are decode + Parquet cost, not network). It reports wall and CPU time (user+sys of
the ingest process and its decode workers) and peak RSS of the ingest process (``VmHWM``) and of
its largest decode worker (``RUSAGE_CHILDREN`` ``ru_maxrss``). Workers are forked, so a worker's RSS includes the pages it
shares copy-on-write with the ingest process (the listing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.rss import peak_rss_mb

CLASSES = 10
SIZE = 32
DEFAULT_CACHE = Path(os.environ.get("UFT_BENCH_CACHE", "~/.cache/uft/bench")).expanduser()


# --- data ---------------------------------------------------------------------------------------------

def _write_range(args: tuple[str, int, int, int]) -> int:
    """Write images ``start..stop-1`` of the folder (runs in a pool process)."""
    import numpy as np
    from PIL import Image

    root, start, stop, seed = args
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        field = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)
        field.save(Path(root) / str(i % CLASSES) / f"{i:07d}.jpg", quality=90)
    (Path(root) / f".range-{start}").touch()  # this range is whole: an interrupted generation resumes after it
    return stop - start


def make_folder(n: int, cache: Path = DEFAULT_CACHE, seed: int = 0) -> Path:
    """The cached ``n``-image ImageFolder (generated on first use) → its path."""
    from concurrent.futures import ProcessPoolExecutor

    from uft.data.parallel import available_cpus

    root = cache / f"imagefolder-{n}-{SIZE}px-seed{seed}"
    done = root / ".complete"  # hidden: the loader ignores it
    if done.exists():
        return root
    for c in range(CLASSES):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    step = 5000
    with ProcessPoolExecutor(available_cpus()) as pool:
        todo = [(str(root), a, min(a + step, n), seed) for a in range(0, n, step) if not (root / f".range-{a}").exists()]
        list(pool.map(_write_range, todo))
    done.write_text(str(n))
    return root


# --- one measurement, in a fresh process -------------------------------------------------------------

def child(root: str, workers: int) -> dict:
    """Ingest ``root`` with ``workers`` decode processes into a temporary file store → figures."""
    from uft.data.imagefolder import load_imagefolder
    from uft.data.ingest import ingest
    from uft.store import LocalStore, read_manifest

    t0, c0 = time.perf_counter(), _cpu()
    raw = load_imagefolder(root, image_size=SIZE, channels=3, workers=workers, progress=False)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="uft-bench-store-") as store:
        uri = ingest(raw, LocalStore(Path(store)), name="bench", image_size=SIZE, channels=3)
        rows = read_manifest(uri)[0]["num_rows"]
    t2, c2 = time.perf_counter(), _cpu()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = getattr(raw, "decode_stats", None)  # absent in a checkout from before parallel decoding
    return {"rows": rows, "workers": stats["workers"] if stats else "1 (+I/O threads)", "decode_s": t1 - t0, "publish_s": t2 - t1,
            "wall_s": t2 - t0, "cpu_s": c2 - c0, "rss_main_mb": peak_rss_mb(), "rss_worker_mb": kids.ru_maxrss / 1024}


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(root: Path, workers: int, src: Path | None = None) -> dict:
    """:func:`child` in a fresh interpreter (so peak RSS is this ingest's alone), importing ``uft``
    from ``src`` when given (another checkout's ``src/``, for a before/after row)."""
    code = f"import json, bench.ingest_scale as b; print(json.dumps(b.child({str(root)!r}, {workers})))"
    return _fresh(code, src)


def _fresh(code: str, src: Path | None = None) -> dict:
    """Run ``code`` (which prints one JSON line) in a fresh interpreter → the parsed line."""
    path = [str(src)] if src else []
    path += [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bookkeeping(n: int) -> dict:
    """RSS that ingest's per-file bookkeeping adds at ``n`` files, without any file or decoding:
    the listing (``_layout`` entries), the duplicate table (one sha256 per kept file), the kept
    indices, labels and the stratified split. What grows with the dataset when images do not."""
    import hashlib

    import numpy as np

    from uft.data import imagefolder
    from uft.data.ingest import stratified_split

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024

    base = rss_mb()
    entries, _ = imagefolder._layout("/bench", sorted(f"{i % CLASSES}/{i:07d}.jpg" for i in range(n)), False)
    seen = {hashlib.sha256(i.to_bytes(8, "little")).digest(): i for i in range(n)}
    kept = list(range(n))
    labels = np.array([int(entries[i].cls) for i in kept], dtype=np.int64)
    splits = stratified_split(labels, 0.5, 0)
    grown = rss_mb() - base
    assert len(seen) == len(splits) == n
    return {"files": n, "mb": grown, "bytes_per_file": grown * 2**20 / n}


# --- report ---------------------------------------------------------------------------------------------

def run(sizes: list[int], compare_at: int, cache: Path = DEFAULT_CACHE, baseline: Path | None = None,
        bookkeeping_at: list[int] = (), baseline_sizes: list[int] | None = None) -> str:
    from bench.common import load_avg, table
    from uft.data.parallel import available_cpus

    cpus = available_cpus()
    lines = [f"## Ingest at scale (ImageFolder of {SIZE}×{SIZE} RGB JPEGs → Parquet, file:// store)\n",
             f"- CPUs available to this process: {cpus} (`os.sched_getaffinity` / cgroup quota); "
             f"load average at start (1/5/15 min): {load_avg()}",
             f"- data cached under {_shown(cache)} (10 classes of smooth random colour fields, JPEG q90)\n"]
    rows = []
    plan = [(n, cpus, None) for n in sizes] + ([(compare_at, 1, None)] if compare_at and cpus > 1 else [])
    plan += [(n, 1, baseline) for n in (sizes if baseline_sizes is None else baseline_sizes)] if baseline else []
    for n, w, src in plan:
        t = time.perf_counter()
        root = make_folder(n, cache)
        gen = time.perf_counter() - t
        print(f"[ingest_scale] {n} images at {root} (ready in {gen:.0f} s); ingesting with {w} worker(s)…",
              file=sys.stderr, flush=True)
        r = measure(root, w, src)
        rows.append([n, "baseline checkout" if src else "this tree", r["workers"], r["rows"], r["wall_s"], r["decode_s"], r["publish_s"], r["cpu_s"],
                     n / r["wall_s"], n / r["cpu_s"], r["rss_main_mb"], r["rss_worker_mb"]])
    lines.append(table(["images", "code", "workers", "rows published", "wall s", "decode s", "publish s", "CPU s (user+sys)",
                        "images/s (wall)", "images per CPU-s", "peak RSS ingest MB", "peak RSS largest worker MB"], rows))
    if bookkeeping_at:
        book = [_fresh(f"import json, bench.ingest_scale as b; print(json.dumps(b.bookkeeping({n})))") for n in bookkeeping_at]
        lines.append("Per-file bookkeeping alone (listing entries, duplicate table, kept indices, labels, split; no "
                     "files, no decoding — `bookkeeping()`), RSS added in a fresh process:\n")
        lines.append(table(["files", "RSS added MB", "bytes per file"], [[b["files"], b["mb"], b["bytes_per_file"]] for b in book]))
    lines.append(f"load average at end (1/5/15 min): {load_avg()}\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m bench.ingest_scale", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated image counts (add 1000000 for the 1M row)")
    ap.add_argument("--compare-at", type=int, default=100000, help="also ingest this size with 1 worker (0: skip)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where generated ImageFolders are kept")
    ap.add_argument("--baseline", type=Path, help="also measure the uft under this src/ directory (e.g. main's)")
    ap.add_argument("--baseline-sizes", default="", help="sizes for the baseline rows (default: --sizes); "
                    "an in-memory baseline needs ~47 KB of RAM per 32 px image")
    ap.add_argument("--bookkeeping", default="", help="comma-separated file counts for the bookkeeping-only RSS table")
    ap.add_argument("--out", type=Path, help="also write the report to this file")
    args = ap.parse_args(argv)
    from bench.common import emit, header

    report = header("uft ingest at scale").replace("bench.run_all", "bench.ingest_scale") + "\n" + run(
        [int(s) for s in args.sizes.split(",") if s], args.compare_at, args.cache, args.baseline,
        [int(s) for s in args.bookkeeping.split(",") if s],
        [int(s) for s in args.baseline_sizes.split(",") if s] or None)
    return emit(report, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])


def _shown(path: Path) -> str:
    """A path as a result file may show it: relative to the home directory, never a machine path."""
    try:
        return "~/" + str(Path(path).resolve().relative_to(Path.home().resolve()))
    except ValueError:
        return Path(path).name
