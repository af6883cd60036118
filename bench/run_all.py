"""Run every benchmark and print one markdown report (``make bench``).

    python -m bench.run_all                 # CPU cases + GPU cases when CUDA is available (≤ 5 min on 2 cores)
    python -m bench.run_all --gpu           # the GPU benchmark alone: ResNet-18 at 32 px and 96 px
    python -m bench.run_all --out bench/results/perf_cpu.md
    python -m bench.run_all --stream-scale  # + the streamed data path at 10k and 100k images (minutes)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from bench import ceiling, data_path, pipeline_overhead, reference_loop, stream_scale
from bench.common import emit, header, load_avg


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    ap.add_argument("--gpu", action="store_true", help="only the GPU cases (rows say 'skipped: no GPU' without CUDA)")
    ap.add_argument("--cpu", action="store_true", help="only the CPU cases and the pipeline overhead")
    ap.add_argument("--steps", type=int, default=16, help="timed steps per measurement (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--compile", action="store_true", help="also time the GPU cases with torch.compile")
    ap.add_argument("--stream-scale", action="store_true",
                    help="also the streamed data path at 10k and 100k images (bench.stream_scale; minutes)")
    ap.add_argument("--out", type=Path, help="also write the report to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = ([] if args.gpu else ceiling.CPU_CASES) + ([] if args.cpu else ceiling.GPU_CASES)
    if args.compile and not args.cpu:
        cases += [ceiling.replace(c, name=c.name + " compiled", compile=True) for c in ceiling.GPU_CASES]

    parts = [header("uft performance benchmarks")]
    text, results = ceiling.run(cases, steps=args.steps)
    parts.append(text)
    step_ips = {r["case"].name: r["real"] for r in results if "real" in r}
    base = [c for c in cases if not c.compile]
    parts.append(data_path.run(base, step_ips=step_ips, steps=args.steps))
    parts.append(reference_loop.run(base, steps=args.steps))
    if not args.gpu:
        parts.append(pipeline_overhead.run())
    if args.stream_scale:
        parts.append(stream_scale.run([10_000, 100_000], stream_scale.DATA_DIR, device="cuda" if args.gpu else "cpu"))
    parts.append(f"load average at end (1/5/15 min): {load_avg()}\n")
    report = "\n".join(parts)
    return emit(report, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
