"""`uft run` end to end, twice in one fresh state directory: the first run (every task computes) and
the rerun (every task cached), each task's wall and CPU seconds side by side, as markdown.

    python -m bench.local_run                      # the bundled data, as `make run`
    python -m bench.local_run -p pretrain_steps=20 # any pipeline parameter, as `uft run -p`
    python -m bench.local_run --no-task-cache      # the rerun without kfp.local's task cache
    python -m bench.local_run --against a23d64c --rounds 3   # side by side with that commit's code

Side by side (``--against COMMIT``): the commit is checked out into a temporary git worktree and
run with the same venv (``PYTHONPATH`` puts its ``src`` and root first, ahead of the editable
install's finder, and the run starts in it); each round runs the working tree and the commit one
after the other, alternating which goes first, each a first run and a cached rerun in a fresh state
directory, with `make run`'s ``DEMO_BUDGET`` flags (read from the Makefile) unless ``-p`` is given.
The table shows each figure's median, min–max over the rounds, the ratio of the medians, and the
load average before each run (figures from a loaded machine are not comparable: measure on a
quiet one).

Per-task times are the lines `uft run` prints (wall; CPU of the task's process from
RUSAGE_CHILDREN, or "cached" when kfp.local's task cache answered it). The total CPU is that of the
whole `uft run` process tree (the driver, every task, the S3 server it started). "driver and
services" is the total minus the tasks: CLI start-up, preflight, S3 server, compile, MLflow,
collecting the results. On a shared machine wall time is inflated by the other load (the load
average is printed); CPU seconds are the steadier figure."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

_SHELL_PROGRESS = os.environ.get("UFT_PROGRESS")  # before bench.common sets it off for this process

from bench.common import load_avg, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: `uft run` in a fresh process, through the console script's entry point (``uft.cli:main`` in the
#: old single-module CLI and in today's package alike).
UFT = ["-c", "import sys; from uft.cli import main; sys.argv[0] = 'uft'; sys.exit(main())"]
_TASK = re.compile(r"^\s*([✓✗])\s+(\S+)\s+([\d.]+) s\s+(?:cpu\s+([\d.]+) s|(cached))")


@dataclass
class Run:
    """One `uft run`: its wall and CPU seconds, exit code and per-task rows (task → (wall, cpu or None if cached))."""

    wall: float
    cpu: float
    rc: int
    tasks: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    tail: str = ""
    load: float = float("nan")  # 1-min load average when it started

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


#: The line `uft run` ends with when it trained: what training took against the estimate before it.
_ESTIMATE = re.compile(r"training took \d+ s \([^)]*\); estimated before the run: \S+ s(?: \([^)]*\))?")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run_in_terminal(cmd: list[str], env: dict[str, str], cwd: Path | None) -> tuple[int, str]:
    """``cmd`` with a pseudo-terminal as its stdout and stderr, as `make run` typed in a terminal
    runs it (the live status line redraws; tasks see no terminal) → (exit code, output without
    colour and cursor codes)."""
    import pty
    import threading

    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # the terminal's reader: a full pty buffer would block the run
        while True:
            try:
                b = os.read(leader, 65536)
            except OSError:
                return
            if not b:
                return
            chunks.append(b)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, cwd=cwd)
    os.close(follower)
    reader.join(5)
    os.close(leader)
    text = _ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r", "\n")
    return proc.returncode, text


def uft_run(state: Path, params: list[str], env: dict[str, str], cwd: Path | None = None, terminal: bool = True) -> Run:
    """One `uft run` (a fresh process, as `make run` starts it) with ``UFT_STATE_DIR=state``.
    ``terminal``: its output goes to a pseudo-terminal, as when `make run` is typed in one (the
    configuration users time); else to pipes, as in CI."""
    cmd = [sys.executable, *UFT, "run", *[a for p in params for a in ("-p", p)]]
    load = os.getloadavg()[0]
    run_env = {**env, "UFT_STATE_DIR": str(state), "COLUMNS": "200"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    if terminal:
        rc, out = _run_in_terminal(cmd, run_env, cwd)
    else:
        proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True, cwd=cwd)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(wall, cpu, rc, parse_tasks(out), out[-8000:], load)  # the verdict and the gate's line too


def user_env() -> dict[str, str]:
    """This process's environment as `make run` would see it: no AWS/MLflow settings (the run starts
    its own services), and no ``UFT_PROGRESS`` unless the caller's shell set it (importing
    :mod:`bench.common` sets it off for benchmarks, which would change what the tasks print)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    if _SHELL_PROGRESS is None:
        env.pop("UFT_PROGRESS", None)
    else:
        env["UFT_PROGRESS"] = _SHELL_PROGRESS
    return env


def demo_budget(makefile: Path = ROOT / "Makefile") -> list[str]:
    """`make run`'s ``DEMO_BUDGET`` (``-p k=v`` flags) from the Makefile → ["k=v", …]."""
    for line in makefile.read_text().splitlines():
        if m := re.match(r"^DEMO_BUDGET\s*\??=\s*(.*)$", line):
            words = shlex.split(m.group(1))
            return [w for flag, w in zip(words, words[1:]) if flag in ("-p", "--param")]
    raise SystemExit(f"no DEMO_BUDGET line in {makefile}: pass the budget with -p")


def old_code_env(env: dict[str, str], worktree: Path) -> dict[str, str]:
    """``env`` with the worktree's packages first on the path: ``uft`` (its src/), ``components`` and
    ``pipelines`` (its root) are imported from there, not from the editable install of the working
    tree (whose finder comes after ``sys.path``), in the driver and in every task it starts."""
    path = [str(worktree / "src"), str(worktree)]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


@contextlib.contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """``commit`` checked out (detached) into a temporary git worktree, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="uft-bench-old-"))
    where = tmp / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(where), commit], check=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], check=False)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def spread(xs: list[float]) -> str:
    """Median and min–max of some seconds: ``"41.2 (39.8–45.0)"``; one value alone."""
    if not xs:
        return "–"
    med = statistics.median(xs)
    return f"{med:.1f}" if len(xs) == 1 else f"{med:.1f} ({min(xs):.1f}–{max(xs):.1f})"


def side_by_side(tree: list[tuple[Run, Run]], old: list[tuple[Run, Run]], commit: str, command: str) -> str:
    """Rounds of (first run, cached rerun) for the working tree and for ``commit`` → markdown: wall
    and CPU seconds as median (min–max), the ratio of the medians, and each run's load average."""
    head = ["", "working tree s", f"{commit} s", "ratio (tree / commit)"]
    rows = []
    for i, what in enumerate(("first run", "cached rerun")):
        for kind in ("wall", "CPU"):
            a = [getattr(r[i], "wall" if kind == "wall" else "cpu") for r in tree]
            b = [getattr(r[i], "wall" if kind == "wall" else "cpu") for r in old]
            ratio = f"{statistics.median(a) / statistics.median(b):.2f}" if a and b and statistics.median(b) > 0 else "–"
            rows.append([f"{what}, {kind}", spread(a), spread(b), ratio])
    loads = [f"{r.load:.1f}" for pair in tree + old for r in pair]
    estimates = [m.group(0) for r in tree if (m := _ESTIMATE.search(r[0].tail))]
    said = ("\nThe working tree's first runs, estimate printed before each against its training: "
            + "; ".join(f"\"{e}\"" for e in estimates) + "\n") if estimates else ""
    return (f"## `make run`'s pipeline side by side: working tree vs {commit}\n\n`{command}` · {len(tree)} rounds, "
            f"alternating · {os.cpu_count()} cores · load average (1 min) before each run: {', '.join(loads)} · "
            f"now {load_avg()}\n\n" + table(head, rows) + said + "\n" + per_task(tree, old, commit))


def per_task(tree: list[tuple[Run, Run]], old: list[tuple[Run, Run]], commit: str) -> str:
    """Each task's wall (CPU) seconds in the first run, median over the rounds, for both codes side
    by side (a task only one code has shows "–"): where the difference between the two lives."""
    def med(runs: list[tuple[Run, Run]], task: str, i: int) -> float | None:
        xs = [r[0].tasks[task][i] for r in runs if task in r[0].tasks and r[0].tasks[task][i] is not None]
        return statistics.median(xs) if xs else None

    def cell(runs: list[tuple[Run, Run]], task: str) -> str:
        w, c = med(runs, task, 0), med(runs, task, 1)
        return "–" if w is None else f"{w:.1f} ({c:.1f})" if c is not None else f"{w:.1f} (cached)"

    names = list(dict.fromkeys([t for r in tree + old for t in r[0].tasks]))
    rows = [[t, cell(tree, t), cell(old, t)] for t in names]
    rows.append(["driver and services, CPU", f"{statistics.median([r[0].cpu - r[0].task_cpu for r in tree]):.1f}" if tree else "–",
                 f"{statistics.median([r[0].cpu - r[0].task_cpu for r in old]):.1f}" if old else "–"])
    return ("First run, per task: wall s (CPU s), median over the rounds\n\n"
            + table(["task", "working tree", commit], rows))


def compare(commit: str, params: list[str] | None = None, rounds: int = 3, terminal: bool = True) -> str:
    """The working tree and ``commit`` side by side, ``rounds`` rounds → the markdown table.
    Without ``params`` each code runs `make run`'s pipeline as its own Makefile has it (its own
    ``DEMO_BUDGET``); with them, both run those.
    ``terminal``: each run's output goes to a pseudo-terminal, as `make run` typed in one."""
    env = user_env()
    env["UFT_TASK_CACHE"] = "1"
    suffix = " (in a terminal)" if terminal else " (output to pipes)"
    results: dict[str, list[tuple[Run, Run]]] = {"tree": [], "old": []}
    with worktree(commit) as old_root, tempfile.TemporaryDirectory(prefix="uft-bench-sbs-") as tmp:
        budget = {"tree": list(params) if params else demo_budget(),
                  "old": list(params) if params else demo_budget(old_root / "Makefile")}
        how = {"tree": (env, ROOT), "old": (old_code_env(env, old_root), old_root)}
        line = lambda which: " ".join(["uft run", *[f"-p {p}" for p in budget[which]]])  # noqa: E731
        command = (line("tree") + suffix if budget["tree"] == budget["old"]
                   else f"working tree: {line('tree')}; {commit}: {line('old')} (each its own Makefile's DEMO_BUDGET){suffix}")
        for i in range(rounds):
            for which in (("tree", "old") if i % 2 == 0 else ("old", "tree")):  # alternate who goes first
                run_env, cwd = how[which]
                state = Path(tmp) / f"{which}-{i}"
                ps = budget[which]
                pair = (uft_run(state, ps, run_env, cwd, terminal), uft_run(state, ps, run_env, cwd, terminal))
                for r in pair:
                    if r.rc != 0:
                        raise SystemExit(f"`uft run` of the {which} code failed ({r.rc}):\n{r.tail}")
                results[which].append(pair)
                print(f"round {i + 1}/{rounds} {which}: {pair[0].wall:.1f} s, rerun {pair[1].wall:.1f} s", file=sys.stderr)
    return side_by_side(results["tree"], results["old"], commit, command)


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


def run(params: list[str] | None = None, state: Path | None = None, task_cache: bool = True, terminal: bool = True) -> str:
    """Both runs in ``state`` (default: a fresh temporary directory) → the markdown table."""
    env = user_env()
    env["UFT_TASK_CACHE"] = "1" if task_cache else "0"
    params = list(params or [])
    command = (" ".join(["uft run", *[f"-p {p}" for p in params]]) + ("" if task_cache else "  (UFT_TASK_CACHE=0)")
               + (" (in a terminal)" if terminal else " (output to pipes)"))
    with tempfile.TemporaryDirectory(prefix="uft-bench-run-") as tmp:
        where = state or Path(tmp) / "state"
        first = uft_run(where, params, env, terminal=terminal)
        if first.rc != 0:
            raise SystemExit(f"the first `uft run` failed ({first.rc}):\n{first.tail}")
        rerun = uft_run(where, params, env, terminal=terminal)
        if rerun.rc != 0:
            raise SystemExit(f"the rerun failed ({rerun.rc}):\n{rerun.tail}")
    return report(first, rerun, command)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--param", action="append", default=[], help="pipeline parameter KEY=VALUE (repeatable)")
    ap.add_argument("--state", type=Path, default=None, help="state directory (default: a fresh temporary one)")
    ap.add_argument("--no-task-cache", action="store_true", help="rerun without kfp.local's task cache (UFT_TASK_CACHE=0)")
    ap.add_argument("--against", metavar="COMMIT", default="",
                    help="side by side: also time COMMIT's code (a temporary worktree, same venv), alternating")
    ap.add_argument("--rounds", type=int, default=3, help="side-by-side rounds (each: both codes, first run + rerun)")
    ap.add_argument("--pipes", action="store_true",
                    help="output to pipes (as in CI) instead of a pseudo-terminal (as `make run` typed in one)")
    a = ap.parse_args()
    if a.against:
        print(compare(a.against, a.param, a.rounds, terminal=not a.pipes))
    else:
        print(run(a.param, a.state, task_cache=not a.no_task_cache, terminal=not a.pipes))
