"""Pipeline overhead: per-task cost of the kfp.local runner (a chain of trivial components with
``install_kfp_package=False`` under ``SubprocessRunner(use_venv=False)``), the cost of importing
``uft.steps`` + torch + mlflow in a fresh process, and ``make run``'s wall time when someone has
recorded it in ``bench/results/make_run.txt``."""

# no `from __future__ import annotations`: kfp reads the component's annotations as types

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kfp import dsl

from bench.common import RESULTS, now, table


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def noop(x: int) -> int:
    return x + 1


@contextlib.contextmanager
def _quiet():
    """Send fds 1 and 2 to /dev/null (the local runner and its task subprocesses log there), so
    the report on stdout stays clean."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def kfp_chain_seconds(n_tasks: int, root: str) -> float:
    """Wall time of a local pipeline of ``n_tasks`` chained ``noop`` tasks."""
    from kfp import local

    @dsl.pipeline(name=f"bench-noop-{n_tasks}")
    def chain():
        t = noop(x=0)
        for _ in range(n_tasks - 1):
            t = noop(x=t.output)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root, raise_on_error=True)
    with _quiet():
        t0 = now()
        chain()
        return now() - t0


def import_seconds(code: str, repeats: int = 3) -> float:
    """Best wall time of ``python -c code`` in a fresh process."""
    best = float("inf")
    for _ in range(repeats):
        t0 = now()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        best = min(best, now() - t0)
    return best


def make_run_row(path: Path = RESULTS / "make_run.txt") -> list:
    if path.exists():
        return ["`make run` wall time (after install, measured with `time make run`)", path.read_text().strip(), path.name]
    return ["`make run` wall time (after install)", "not measured here", f"write it to bench/results/{path.name}"]


def run(sizes: tuple[int, int] = (1, 6), repeats: int = 3) -> str:
    lo, hi = sizes
    with tempfile.TemporaryDirectory() as tmp:
        t_lo, t_hi = kfp_chain_seconds(lo, tmp), kfp_chain_seconds(hi, tmp)
    python = import_seconds("pass", repeats)
    imports = import_seconds("import uft.steps, torch, mlflow", repeats)
    rows = [
        [f"kfp.local pipeline, {lo} trivial task(s)", f"{t_lo:.2f} s", "SubprocessRunner(use_venv=False)"],
        [f"kfp.local pipeline, {hi} trivial tasks", f"{t_hi:.2f} s", "install_kfp_package=False"],
        ["per-task overhead", f"{(t_hi - t_lo) / (hi - lo):.2f} s", f"(T{hi} − T{lo}) / {hi - lo}"],
        ["fresh `python -c pass`", f"{python:.2f} s", f"best of {repeats}"],
        ["fresh `import uft.steps, torch, mlflow`", f"{imports:.2f} s", f"best of {repeats}, incl. interpreter start"],
        make_run_row(),
    ]
    return "## Pipeline overhead\n\n" + table(["what", "time", "note"], rows)


if __name__ == "__main__":
    print(run())
