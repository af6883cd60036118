"""Progress of long loops (image decoding, SSL training) for people and for the local runner.

On a terminal it is a rich bar on stderr. Elsewhere (a kfp task, a CI log, a pod) it is a few
plain lines, about one per tenth of the work::

    uft-progress pretrain 120/300 loss=4.102 eta_s=31

which `uft run` parses from the task logs to show live per-step progress (see
:func:`parse`), and which stays readable in `kubectl logs`.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from uft.errors import UftError

PREFIX = "uft-progress"
_LINE = re.compile(rf"{PREFIX} (\S+) (\d+)/(\d+)((?: \S+=\S+)*)\s*$")


@dataclass
class Event:
    """One parsed progress line."""

    label: str
    done: int
    total: int
    info: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        extra = "".join(f" · {k} {v}" for k, v in self.info.items())
        return f"{self.label} {self.done}/{self.total}{extra}"


def format_line(label: str, done: int, total: int, info: dict[str, Any]) -> str:
    """The plain progress line for ``label`` (no spaces allowed in it) at ``done`` of ``total``."""
    label = re.sub(r"\s+", "_", label)
    extra = "".join(f" {k}={v:.4g}" if isinstance(v, float) else f" {k}={v}" for k, v in info.items())
    return f"{PREFIX} {label} {done}/{total}{extra}"


def parse(line: str) -> Event | None:
    """The event of a progress line (anywhere in ``line``), else None."""
    m = _LINE.search(line)
    if not m:
        return None
    info = dict(kv.split("=", 1) for kv in m.group(4).split())
    return Event(m.group(1), int(m.group(2)), int(m.group(3)), info)


class Progress:
    """``with Progress(label, total) as p: p.update(done, loss=…)``.

    ``mode``: "bar" (rich, transient), "lines" (plain lines at each tenth and at the end), "off",
    or None for the ``UFT_PROGRESS`` environment variable if set, else "bar" on a terminal and
    "lines" otherwise.
    """

    def __init__(self, label: str, total: int, *, mode: str | None = None, stream=None):
        self.stream = stream or sys.stderr
        if mode is None:
            mode = os.environ.get("UFT_PROGRESS") or None
        if mode is None:
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        if mode not in ("bar", "lines", "off"):
            raise UftError(f"progress mode {mode!r} (UFT_PROGRESS) is invalid: use bar, lines or off")
        self.label, self.total, self.mode = label, max(int(total), 0), mode
        self.every = max(self.total // 10, 1)
        self._next_line, self._bar, self._task = self.every, None, None
        self._first: tuple[int, float] | None = None  # (done, time) at the first update: rates count from
        # there, so a loop resumed from a checkpoint does not report an inflated rate

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                            console=Console(file=self.stream), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, info="")
        return self

    def update(self, done: int, **info: Any) -> None:
        """``done`` units of ``total`` finished; ``info`` (e.g. loss) is shown with it."""
        if self.mode == "off":
            return
        if self._first is None:
            self._first = (done, time.perf_counter())
        if self._bar is not None:
            shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
            self._bar.update(self._task, completed=done, info=shown)
            return
        if done < self._next_line and done < self.total:
            return
        while self._next_line <= done:
            self._next_line += self.every
        first_done, t0 = self._first
        if first_done < done < self.total:  # time left at the rate since the first update
            rate = (done - first_done) / max(time.perf_counter() - t0, 1e-9)
            info = {**info, "eta_s": round((self.total - done) / rate)}
        print(format_line(self.label, done, self.total, info), file=self.stream, flush=True)

    def __exit__(self, *exc) -> bool:
        if self._bar is not None:
            self._bar.stop()
        return False
