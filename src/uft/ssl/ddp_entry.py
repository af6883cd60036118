"""Run a training step (``finetune`` or ``pretrain`` of :mod:`uft.steps`) on N processes with DDP.

    python -m torch.distributed.run --standalone --nproc_per_node N -m uft.ssl.ddp_entry \\
        finetune --kwargs '{"encoder_uri": ..., ...}' --out result.json

or, from Python, :func:`launch` (what the ``ssl_finetune`` component does when ``gpus_per_node`` > 1).
Rank 0 runs the step exactly as the single-process path does and writes its result JSON to
``--out``; the other ranks only train (see :mod:`uft.ssl.ddp`). Backend: NCCL when CUDA is
available (one GPU per process), gloo on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from uft.errors import UftError

STEPS = ("finetune", "pretrain")


def launch(step: str, kwargs: dict[str, Any], nproc: int, *, timeout: float | None = None) -> dict[str, Any]:
    """Run ``uft.steps.<step>(**kwargs)`` under torchrun with ``nproc`` processes; returns rank 0's result."""
    if step not in STEPS:
        raise UftError(f"step {step!r} cannot run under torchrun: use one of {', '.join(STEPS)}")
    if nproc < 1:
        raise UftError(f"nproc={nproc}: use 1 or more processes (gpus_per_node)")
    with tempfile.TemporaryDirectory(prefix="uft-ddp-") as d:
        out = Path(d) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "uft.ssl.ddp_entry", step, "--kwargs", json.dumps(kwargs), "--out", str(out)]
        proc = subprocess.run(cmd, timeout=timeout)
        result = json.loads(out.read_text()) if out.exists() else {}
    if "error" in result:  # rank 0's UftError, re-raised here with its one-line message
        raise UftError(result["error"])
    if proc.returncode != 0 or "result" not in result:
        raise UftError(f"{step} under torchrun with {nproc} processes failed (exit {proc.returncode}): "
                       "see the ranks' logs above")
    return result["result"]


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    from uft.ssl import ddp, train

    p = argparse.ArgumentParser(prog="python -m uft.ssl.ddp_entry", description=__doc__.split("\n")[0])
    p.add_argument("step", choices=STEPS)
    p.add_argument("--kwargs", default="{}", help="the step's keyword arguments as JSON")
    p.add_argument("--out", default="", help="rank 0 writes {'result': ...} or {'error': ...} here")
    args = p.parse_args(argv)
    if "RANK" not in os.environ:
        raise SystemExit("uft.ssl.ddp_entry runs under torchrun: python -m torch.distributed.run --nproc_per_node N -m uft.ssl.ddp_entry ...")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        if rank != 0:
            train.serve(ddp.local_device("cuda" if cuda else "cpu"))
            return 0
        from uft import steps

        try:
            result = getattr(steps, args.step)(**json.loads(args.kwargs))
        except UftError as e:
            # No finish(): the workers may be inside a collective; torchrun stops them when rank 0 exits.
            _write(args.out, {"error": str(e)})
            raise
        ddp.finish()
        _write(args.out, {"result": result})
        return 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _write(path: str, obj: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(obj, default=str))


if __name__ == "__main__":
    sys.exit(main())
