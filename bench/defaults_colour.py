"""Old fixed defaults vs defaults inferred from the data, on a colour ImageFolder pair.

    .venv/bin/python -m bench.defaults_colour [--per-class 200] [--state DIR]

Builds the scikit-image colour pair (:mod:`bench.colour_pair`), then runs the whole pipeline
(kfp.local, local S3, MLflow) twice on it: with the digit-demo defaults forced (16 px, grey, tiny
convnet: what every ImageFolder run got before) and with no flags (what `uft run` now infers on
this machine). Prints a markdown table of k-NN and few-label probe accuracy of the base and the
finetuned encoder, and each run's wall and CPU time; writes it to bench/results/defaults_colour.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS

OLD = {"image_size": "16", "channels": "1", "encoder": "tiny"}
METRICS = ("knn", "linear_5shot", "linear_10shot")


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pipeline's tasks):
    unlike wall time, it does not grow when other work shares the machine."""
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--state", default="", help="state dir for the local S3/MLflow (default: a temp dir)")
    args = ap.parse_args()

    from bench.colour_pair import build_pair
    from uft.cli import local as cli
    from uft.config import validate_config
    from uft.orchestrate.local import local_services, run_local

    work = Path(args.state or tempfile.mkdtemp(prefix="uft-colour-"))
    os.environ["UFT_STATE_DIR"] = str(work / "state")
    src, tgt = build_pair(work / "data", per_class=args.per_class)
    rows = []
    with local_services(work / "state"):
        for label, params in (("fixed digit defaults", OLD), ("inferred from the data", {})):
            choice = cli.infer_defaults(str(src), str(tgt), dict(params))
            cfg = validate_config({"source": str(src), "target": str(tgt), **choice.values, **params})
            t0, c0 = time.perf_counter(), _cpu_seconds()
            res = run_local(cfg, experiment="bench-defaults", extra_params=choice.params())
            wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
            m = res.metrics
            rows.append([label, f"{cfg.image_size}×{cfg.image_size}×{cfg.channels}", cfg.encoder,
                         *[f"{m.get(f'base_{k}', float('nan')):.3f} → {m.get(f'finetuned_{k}', float('nan')):.3f}"
                           for k in METRICS], f"{wall:.0f}", f"{cpu:.0f}"])
            print(f"{label}: " + " | ".join(rows[-1]), flush=True)  # each row as it lands: a later failure keeps it
    head = ["defaults", "ingested as", "encoder", *[f"{k} (base → finetuned)" for k in METRICS], "wall s", "CPU s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    text = (f"Colour pair from scikit-image photographs ({args.per_class} images per class and domain), "
            f"2-core CPU, `python -m bench.defaults_colour --per-class {args.per_class}`\n\n" + "\n".join(lines) + "\n")
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "defaults_colour.md").write_text(text)


if __name__ == "__main__":
    main()
