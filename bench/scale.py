"""Issue 16's scale table in one run: for each dataset size, side by side, the peak memory of
ingest, ssl_finetune and an evaluation step (k-NN), ingest's images/s, the training speed streamed
÷ in memory and the loader ÷ step demand.

    python -m bench.scale                                    # 10k and 100k
    python -m bench.scale --sizes 10000,100000,1000000 --out bench/results/scale.md
    python -m bench.scale --eval-only --sizes 10000,100000,1000000   # knn_eval and linear_eval only
    python -m bench.scale --finetune-only --repeats 3 --sizes 10000,100000,1000000   # ssl_finetune only (seconds a size)

Every figure comes from a fresh subprocess running the real code (peak RSS = ``VmHWM`` of that
process), as in the two benches it combines:

- ingest: :mod:`bench.ingest_scale` — an ImageFolder of ``N`` 32×32 RGB JPEGs (smooth random
  colour fields, quality 90, cached under ``~/.cache/uft/bench``; generating 1M takes minutes and
  ~4 GB of disk) → ``load_imagefolder`` + ``ingest`` into a ``file://`` store, all CPUs decoding.
- ssl_finetune, knn_eval, training speed, loader: :mod:`bench.stream_scale` — a generated
  ``N``-row dataset of 32 px RGB colour blobs (ingest's Parquet schema) read by the real
  ``uft.steps.finetune`` / ``uft.steps.knn_eval`` with tracking off. The in-memory training row
  (which loads the whole dataset: what streaming removes) runs up to ``--memory-max`` images.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench import ingest_scale, stream_scale
from bench.common import emit, header, load_avg, table


def _mb(x: dict, key: str = "rss_mb") -> object:
    return round(x[key]) if isinstance(x.get(key), (int, float)) else x.get("error", "-")


def run(sizes: list[int], data_dir: Path, cache: Path, *, steps: int = 8, memory_max: int = 100_000,
        knn_max: int = 1_000_000) -> str:
    from uft.data.parallel import available_cpus

    data_dir.mkdir(parents=True, exist_ok=True)
    encoder = stream_scale.make_encoder(data_dir)
    rows = []
    for n in sizes:
        ing = ingest_scale.measure(ingest_scale.make_folder(n, cache), available_cpus())
        uri = stream_scale.make_blobs(data_dir, n, pool=16 if n > 200_000 else 0)
        store = tempfile.mkdtemp(prefix=f"store-{n}-", dir=data_dir)  # fresh: no cache hits
        try:
            step = {k: stream_scale.run_child(k, uri, encoder, store, "cpu", steps)
                    for k in ("finetune", *(("knn",) if n <= knn_max else ()), "train_stream", "loader",
                              *(("train_memory",) if n <= memory_max else ()))}
        finally:
            shutil.rmtree(store, ignore_errors=True)
        cs, cm = step["train_stream"].get("cpu_ips"), step.get("train_memory", {}).get("cpu_ips")
        ts, ld = step["train_stream"].get("ips"), step["loader"].get("ips")
        rows.append([f"{n:,}", round(ing["rss_main_mb"]), round(ing["rss_worker_mb"]), ing["rows"] / ing["wall_s"],
                     _mb(step["finetune"]), _mb(step["knn"]) if "knn" in step else "not run",
                     step["knn"].get("knn", "-") if "knn" in step else "-",
                     cs / cm if cs and cm else "- (not loaded in memory)", ld / ts if ld and ts else "-"])
        print(f"[bench.scale] {n:,} images done: ingest {ing} · steps {step}", file=sys.stderr, flush=True)
    return "\n".join([
        "## Scale: memory and speed by dataset size (issue 16)\n",
        "Peak RSS (`VmHWM`) of each step in its own fresh process; goal: flat in size, < 3 GB at 1M. "
        "Ingest runs with every CPU decoding (its workers are forked: their RSS counts pages shared with "
        "the ingest process). Streamed ÷ in memory: training images per CPU second (goal ≥ 0.9); loader "
        "÷ step demand: images/s the streamed loader delivers ÷ images/s the training step consumes (goal ≫ 1).\n",
        table(["images", "ingest peak RSS MB", "largest decode worker MB", "ingest img/s (JPEG → Parquet)",
               "ssl_finetune peak RSS MB", "knn_eval peak RSS MB", "k-NN accuracy",
               "train streamed ÷ in memory (img per CPU s)", "loader ÷ step demand"], rows),
    ])


def run_eval(sizes: list[int], data_dir: Path, parallel: bool = False) -> str:
    """The evaluation steps only (knn_eval, linear_eval), each in a fresh process, on the same
    generated datasets as :func:`run`: peak RSS, CPU s and the metric, by dataset size.
    ``parallel``: the two steps of a size run at the same time (each still its own process, so its
    peak RSS is its own; only wall time is shared)."""
    from concurrent.futures import ThreadPoolExecutor

    data_dir.mkdir(parents=True, exist_ok=True)
    encoder = stream_scale.make_encoder(data_dir)
    rows = []
    for n in sizes:
        uri = stream_scale.make_blobs(data_dir, n, pool=16 if n > 200_000 else 0)
        store = tempfile.mkdtemp(prefix=f"store-{n}-", dir=data_dir)  # fresh: no cache hits
        try:
            with ThreadPoolExecutor(2 if parallel else 1) as pool:
                knn, lin = pool.map(lambda k: stream_scale.run_child(k, uri, encoder, store, "cpu", 0), ("knn", "linear"))
        finally:
            shutil.rmtree(store, ignore_errors=True)
        rows.append([f"{n:,}", _mb(knn), knn.get("cpu_s", "-"), knn.get("knn", "-"), _mb(lin), lin.get("cpu_s", "-"),
                     lin.get("linear_full", "-"), lin.get("linear_5shot", "-")])
        print(f"[bench.scale] {n:,} images done: knn {knn} · linear {lin}", file=sys.stderr, flush=True)
    return "\n".join([
        "## Evaluation memory by dataset size\n",
        "Peak RSS (`VmHWM`) of each evaluation step in its own fresh process (the real `uft.steps.knn_eval` "
        "and `uft.steps.linear_eval`, tracking off) on generated 32 px RGB datasets (10 classes, 2 % test); "
        "goal: flat in size (within 10 % from 100k to 1M).\n",
        table(["images", "knn_eval peak RSS MB", "knn_eval CPU s", "k-NN accuracy", "linear_eval peak RSS MB",
               "linear_eval CPU s", "full-label probe accuracy", "5-shot probe accuracy"], rows),
    ])


def run_finetune(sizes: list[int], data_dir: Path, *, steps: int = 8, repeats: int = 3) -> str:
    """ssl_finetune only: its peak RSS, ``repeats`` fresh processes a size (the peak of one process
    varies by tens of MB with where the reader thread's window loads fall between training steps),
    on the same generated datasets as :func:`run`. Cheap at any size: the step trains ``steps``
    batches, whatever the dataset's size; no ingest, k-NN or speed rows."""
    import statistics

    data_dir.mkdir(parents=True, exist_ok=True)
    encoder = stream_scale.make_encoder(data_dir)
    rows, prev = [], None
    for n in sizes:
        uri = stream_scale.make_blobs(data_dir, n, pool=16 if n > 200_000 else 0)
        runs = []
        for _ in range(repeats):
            store = tempfile.mkdtemp(prefix=f"store-{n}-", dir=data_dir)  # fresh: no cache hit
            try:
                runs.append(stream_scale.run_child("finetune", uri, encoder, store, "cpu", steps))
            finally:
                shutil.rmtree(store, ignore_errors=True)
        peaks = [r["rss_mb"] for r in runs if "rss_mb" in r]
        errors = [r["error"] for r in runs if "error" in r]
        top, mid = (max(peaks), statistics.median(peaks)) if peaks else (None, None)
        change = f"{100 * (top / prev[0] - 1):+.1f} % / {100 * (mid / prev[1] - 1):+.1f} %" if prev and top else "-"
        rows.append([f"{n:,}", " · ".join(f"{p:.0f}" for p in peaks) + (f" ({len(errors)} failed: {errors[0]})" if errors else ""),
                     f"{top:.0f}" if top else "-", f"{mid:.0f}" if mid else "-", change,
                     " · ".join(f"{r['cpu_s']:.1f}" for r in runs if "cpu_s" in r)])
        prev = (top, mid) if top else None
        print(f"[bench.scale] {n:,} images done: ssl_finetune {runs}", file=sys.stderr, flush=True)
    return "\n".join([
        "## ssl_finetune memory by dataset size\n",
        f"Peak RSS (`VmHWM`) of the real `uft.steps.finetune` (tracking off, {steps} steps of {stream_scale.BATCH} "
        f"images) in {repeats} fresh processes a size, on generated 32 px RGB datasets (10 classes, 2 % test). "
        "Goal: within 10 % from 100k to 1M.\n",
        table(["images", "peak RSS MB, each run", "max MB", "median MB", "max / median vs the size above",
               "CPU s, each run"], rows),
    ])


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated dataset sizes")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps (after 2 warm-up steps)")
    ap.add_argument("--memory-max", type=int, default=100_000, help="largest size with the in-memory training row")
    ap.add_argument("--knn-max", type=int, default=1_000_000, help="largest size with the k-NN row")
    ap.add_argument("--data-dir", type=Path, default=stream_scale.DATA_DIR, help="generated Parquet datasets (reused)")
    ap.add_argument("--cache", type=Path, default=ingest_scale.DEFAULT_CACHE, help="generated ImageFolders (reused)")
    ap.add_argument("--eval-only", action="store_true", help="only the evaluation steps (knn_eval, linear_eval)")
    ap.add_argument("--parallel", action="store_true", help="with --eval-only: a size's two steps at the same time")
    ap.add_argument("--finetune-only", action="store_true", help="only ssl_finetune's peak RSS (no ingest, k-NN, speed)")
    ap.add_argument("--repeats", type=int, default=3, help="with --finetune-only: fresh processes a size")
    ap.add_argument("--out", type=Path, help="also write the report here")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",") if s]
    report = "\n".join([header("uft at scale", "bench.scale"),
                        run_eval(sizes, a.data_dir, a.parallel) if a.eval_only else
                        run_finetune(sizes, a.data_dir, steps=a.steps, repeats=a.repeats) if a.finetune_only else
                        run(sizes, a.data_dir, a.cache, steps=a.steps, memory_max=a.memory_max, knn_max=a.knn_max),
                        f"load average at end (1/5/15 min): {load_avg()}\n"])
    return emit(report, a.out)


if __name__ == "__main__":
    main(sys.argv[1:])
