"""Exact k-NN backends for the streamed evaluation, side by side: the torch top-k merged over
blocks of train features (:func:`uft.evaluate.knn.knn_topk`) vs faiss-cpu (``IndexFlatIP`` per
block, the same merge). Same synthetic L2-normalised features for both; each backend in a fresh
process reporting wall s, CPU s and peak RSS.

    python -m bench.knn_backend --train 300000 --test 20000   # faiss-cpu importable (installed, or on PYTHONPATH)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import emit, header, load_avg, table
from bench.rss import peak_rss_mb

DIM, K, BLOCK = 64, 20, 16_384


def _blocks(n: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    for i in range(0, n, BLOCK):
        b = min(BLOCK, n - i)
        yield torch.nn.functional.normalize(torch.randn(b, DIM, generator=g), dim=1), torch.randint(0, 10, (b,), generator=g)


def child(backend: str, n: int, m: int) -> dict:
    import torch

    from uft.evaluate.knn import knn_topk

    te = next(_blocks(m, 1))[0] if m <= BLOCK else torch.cat([f for f, _ in _blocks(m, 1)])
    t0, c0 = time.perf_counter(), time.process_time()
    if backend == "torch":
        s, y = knn_topk(te, _blocks(n, 0), K)
    else:
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        best_s, best_y = torch.empty(m, 0), torch.empty(m, 0, dtype=torch.int64)
        for f, lab in _blocks(n, 0):
            index = faiss.IndexFlatIP(DIM)
            index.add(f.numpy())
            d, i = index.search(te.numpy(), K)
            s, pick = torch.cat([best_s, torch.from_numpy(d)], 1).topk(min(K, best_s.shape[1] + K), dim=1)
            best_y = torch.cat([best_y, lab[torch.from_numpy(i)]], 1).gather(1, pick)
            best_s = s
        s, y = best_s, best_y
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "rss_mb": peak_rss_mb(),
            "checksum": float(s.double().sum()), "threads": torch.get_num_threads(), "total_cpu_s": ru.ru_utime + ru.ru_stime}


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m bench.knn_backend", description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=300_000)
    ap.add_argument("--test", type=int, default=20_000)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), int(a.child[2]))))
        return ""
    rows = []
    for backend in ("torch", "faiss"):
        cmd = [sys.executable, "-m", "bench.knn_backend", "--child", backend, str(a.train), str(a.test)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        r = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {"error": p.stderr.strip().splitlines()[-1]}
        rows.append([backend, a.train, a.test, K, r.get("wall_s", r.get("error")), r.get("cpu_s", "-"), r.get("rss_mb", "-"),
                     r.get("checksum", "-")])
    report = "\n".join([header("exact k-NN backends (streamed top-k)", "bench.knn_backend"),
                        f"Synthetic L2-normalised {DIM}-d features, train in blocks of {BLOCK:,} rows, k = {K}. "
                        "Checksum: sum of the k similarities of every test row (equal: the same neighbours).\n",
                        table(["backend", "train rows", "test rows", "k", "wall s", "CPU s", "peak RSS MB", "checksum"], rows),
                        f"load average at end (1/5/15 min): {load_avg()}\n"])
    return emit(report, a.out)


if __name__ == "__main__":
    main(sys.argv[1:])
