"""A local run's life on this machine: one run per state directory, signals that unwind cleanly,
and the kfp.local tasks stopped with it."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

from uft.errors import UftError


@contextlib.contextmanager
def run_lock(state: Path, what: str = "uft run") -> Iterator[None]:
    """At most one run (or local sweep) per state directory at a time: two would share MLflow run
    keys and step outputs mid-write. The second is refused at once with a message naming the
    first; ``flock`` releases the lock when its holder dies, so a killed run never blocks the next."""
    import fcntl
    import json

    state.mkdir(parents=True, exist_ok=True)
    path = state / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            since = time.strftime("%H:%M:%S", time.localtime(holder["since"])) if "since" in holder else "?"
            raise UftError(
                f"another {holder.get('what', 'uft run')} (pid {holder.get('pid', '?')}, started {since}) is running in {state}: "
                "wait for it to finish, or run this one with its own state, e.g. UFT_STATE_DIR=.uft-2 "
                "(`make ui` may stay open: it shares the services)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "what": what, "since": time.time()}).encode(), 0)
        yield
    finally:
        os.close(fd)


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP turned into an exception, so cleanup (``finally``) runs as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """In the main thread: SIGTERM and SIGHUP raise :class:`Interrupted` (once; a repeat during
    cleanup is ignored so the cleanup can finish). Python's default would die without cleanup."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGTERM, signal.SIGHUP)

    def handler(signum, frame):
        for s in sigs:
            signal.signal(s, signal.SIG_IGN)
        # Tell the tasks now: kfp.local's Popen block would otherwise wait for the running one to end.
        for p in _session_tasks():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def descendants(pid: int | None = None) -> list[int]:
    """Pids of every process below ``pid`` (default: this one), from /proc, children first."""
    root = pid or os.getpid()
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(children.get(root, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo += children.get(p, [])
    return out


def _session_tasks() -> list[int]:
    """Live descendants in this process's session: kfp.local's tasks (services run in their own)."""
    from uft.services import pid_alive

    sid, out = os.getsid(0), []
    for p in descendants():
        with contextlib.suppress(OSError):
            if os.getsid(p) == sid and pid_alive(p):
                out.append(p)
    return out


@contextlib.contextmanager
def paused_tasks() -> Iterator[list[int]]:
    """Stop (SIGSTOP) every process this run started in its session for the block, then let them
    go on (SIGCONT): the fork server, its preload and the tasks running, not the services (their
    own sessions). Yields the pids stopped. For a measurement of a fraction of a second (the
    estimate's timed steps) that must not share the CPUs with them."""
    import signal

    stopped: list[int] = []
    try:
        for p in _session_tasks():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
                stopped.append(p)
        yield stopped
    finally:
        for p in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)


def stop_tasks(grace: float = 15.0) -> list[int]:
    """SIGTERM the running kfp.local tasks (descendants in this process's session; services run in
    their own sessions and are stopped by their owners), SIGKILL what is left after ``grace`` s."""
    import signal

    found = _session_tasks()
    for p in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (left := _session_tasks()) and time.monotonic() < deadline:
        for p in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p, os.WNOHANG)
        time.sleep(0.2)
    for p in _session_tasks():
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return found
