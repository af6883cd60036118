"""What every ``uft`` subcommand shares: the Typer app, the consoles, parameter parsing, the error
exit and the live task log of a local run."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from uft.errors import UftError
from uft.orchestrate.forkserver import CPU_LINE

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, help="Unsupervised finetuning of vision encoders, as a Kubeflow pipeline.")
console = Console()
err = Console(stderr=True)


def parse_params(pairs: list[str]) -> dict[str, str]:
    """``--param KEY=VALUE`` options → {KEY: VALUE} (values stay strings; RunConfig types them)."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise UftError(f"--param {p!r} is not KEY=VALUE: write e.g. --param finetune_steps=100")
        k, v = p.split("=", 1)
        out[k.strip()] = v
    return out


def absolute_spec(spec: str) -> str:
    """A data spec naming an existing local path (``PATH#options``) made absolute: the tasks run in
    other working directories. Bundled names and URIs pass through."""
    path, sep, opts = spec.partition("#")
    return str(Path(path).resolve()) + sep + opts if path and "://" not in path and Path(path).exists() else spec


def fail(e: UftError) -> None:
    """Print ``e`` as one red line on stderr and exit with code 2."""
    err.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(2)


class TaskLog:
    """One line per finished task (its wall time, the CPU seconds of its process, or "cached" when
    kfp.local's task cache answered it) above a status line showing the running task and its
    progress (pretrain 120/300 · loss 4.1 · eta_s 20)."""

    def __init__(self, status, quiet_tasks: bool = False, label: str = "running the pipeline (kfp.local)"):
        self.status, self.started, self.done, self.quiet_tasks, self.label = status, {}, 0, quiet_tasks, label
        self.rows: list[tuple[str, str, float, float]] = []  # (task, outcome, wall s, cpu s) in finishing order
        self.forked_cpu: dict[str, float] = {}

    def __call__(self, task: str, text: str) -> None:
        import time

        if text == "started":
            self.started[task] = (time.perf_counter(), children_cpu())
            text = "…"
        elif text.startswith(CPU_LINE):  # a task forked by the fork server: its CPU, as it ended
            self.forked_cpu[task] = self.forked_cpu.get(task, 0.0) + float(text.split()[1])
            return
        elif text in ("success", "failure", "cached"):
            t0, c0 = self.started.pop(task, (time.perf_counter(), children_cpu()))
            # A task's process has been waited for when kfp reports its end: its CPU is in
            # RUSAGE_CHILDREN, or (forked by the fork server, not our child) reported by its shim.
            took, cpu = time.perf_counter() - t0, children_cpu() - c0 + self.forked_cpu.pop(task, 0.0)
            self.rows.append((task, text, took, cpu))
            self.done += text != "failure"
            if not self.quiet_tasks or text == "failure":
                mark = "[red]✗[/]" if text == "failure" else "[green]✓[/]"
                how = "cached (no process)" if text == "cached" else f"cpu {cpu:5.1f} s"
                self.status.console.print(f"  {mark} {task:<22} {took:6.1f} s  [dim]{how}[/]")
            return
        self.status.update(f"{self.label} · {self.done} tasks done · {task}: {text}")


def children_cpu() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
