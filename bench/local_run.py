"""`uft run` end to end, twice in one fresh state directory: the first run (every task computes) and
the rerun (every task cached), each task's wall and CPU seconds side by side, as markdown.

    python -m bench.local_run                      # the bundled data, as `make run`
    python -m bench.local_run -p pretrain_steps=20 # any pipeline parameter, as `uft run -p`
    python -m bench.local_run --no-task-cache      # the rerun without kfp.local's task cache

Per-task times are the lines `uft run` prints (wall; CPU of the task's process from
RUSAGE_CHILDREN, or "cached" when kfp.local's task cache answered it). The total CPU is that of the
whole `uft run` process tree (the driver, every task, the S3 server it started). "driver and
services" is the total minus the tasks: CLI start-up, preflight, S3 server, compile, MLflow,
collecting the results. On a shared machine wall time is inflated by the other load (the load
average is printed); CPU seconds are the steadier figure."""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import load_avg, table

_TASK = re.compile(r"^\s*([✓✗])\s+(\S+)\s+([\d.]+) s\s+(?:cpu\s+([\d.]+) s|(cached))")


@dataclass
class Run:
    """One `uft run`: its wall and CPU seconds, exit code and per-task rows (task → (wall, cpu or None if cached))."""

    wall: float
    cpu: float
    rc: int
    tasks: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    tail: str = ""

    @property
    def task_cpu(self) -> float:
        return sum(c for _, c in self.tasks.values() if c is not None)


def parse_tasks(text: str) -> dict[str, tuple[float, float | None]]:
    """The per-task lines of `uft run`'s output → task → (wall s, cpu s, or None when cached)."""
    out: dict[str, tuple[float, float | None]] = {}
    for line in text.splitlines():
        if m := _TASK.match(line):
            out[m.group(2)] = (float(m.group(3)), None if m.group(5) else float(m.group(4)))
    return out


def uft_run(state: Path, params: list[str], env: dict[str, str]) -> Run:
    """One `uft run` (a fresh process, as `make run` starts it) with ``UFT_STATE_DIR=state``."""
    cmd = [sys.executable, "-m", "uft.cli", "run", *[a for p in params for a in ("-p", p)]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**env, "UFT_STATE_DIR": str(state), "COLUMNS": "200"}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(wall, cpu, proc.returncode, parse_tasks(proc.stdout), (proc.stdout + proc.stderr)[-3000:])


def _cell(v: tuple[float, float | None] | None) -> tuple[str, str]:
    if v is None:
        return "–", "–"
    return f"{v[0]:.1f}", "cached" if v[1] is None else f"{v[1]:.1f}"


def report(first: Run, rerun: Run, command: str) -> str:
    names = list(first.tasks) + [t for t in rerun.tasks if t not in first.tasks]
    rows = [[t, *_cell(first.tasks.get(t)), *_cell(rerun.tasks.get(t))] for t in names]
    rows.append(["driver and services", "", f"{first.cpu - first.task_cpu:.1f}", "", f"{rerun.cpu - rerun.task_cpu:.1f}"])
    rows.append(["**total**", f"**{first.wall:.1f}**", f"**{first.cpu:.1f}**", f"**{rerun.wall:.1f}**", f"**{rerun.cpu:.1f}**"])
    head = ["task", "first run wall s", "first run CPU s", "cached rerun wall s", "cached rerun CPU s"]
    return (f"## `uft run`: first run and cached rerun\n\n`{command}` · load average {load_avg()} · "
            f"{os.cpu_count()} cores\n\n" + table(head, rows))


def run(params: list[str] | None = None, state: Path | None = None, task_cache: bool = True) -> str:
    """Both runs in ``state`` (default: a fresh temporary directory) → the markdown table."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env["UFT_TASK_CACHE"] = "1" if task_cache else "0"
    params = list(params or [])
    command = " ".join(["uft run", *[f"-p {p}" for p in params]]) + ("" if task_cache else "  (UFT_TASK_CACHE=0)")
    with tempfile.TemporaryDirectory(prefix="uft-bench-run-") as tmp:
        where = state or Path(tmp) / "state"
        first = uft_run(where, params, env)
        if first.rc != 0:
            raise SystemExit(f"the first `uft run` failed ({first.rc}):\n{first.tail}")
        rerun = uft_run(where, params, env)
        if rerun.rc != 0:
            raise SystemExit(f"the rerun failed ({rerun.rc}):\n{rerun.tail}")
    return report(first, rerun, command)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--param", action="append", default=[], help="pipeline parameter KEY=VALUE (repeatable)")
    ap.add_argument("--state", type=Path, default=None, help="state directory (default: a fresh temporary one)")
    ap.add_argument("--no-task-cache", action="store_true", help="rerun without kfp.local's task cache (UFT_TASK_CACHE=0)")
    a = ap.parse_args()
    print(run(a.param, a.state, task_cache=not a.no_task_cache))
