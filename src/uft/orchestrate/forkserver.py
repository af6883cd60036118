"""Warm task processes for kfp.local: a fork server (a "zygote") that has already imported what
every step imports (torch, MLflow, kfp's executor, pyarrow, boto3, ``uft``), so a task starts in
milliseconds instead of the 5–10 s a fresh interpreter spends importing them.

kfp.local still runs the real DAG: for each task its SubprocessRunner starts the component's own
command (``sh -ec 'printf … > ephemeral_component.py; python3 -m kfp.dsl.executor_main …'``) and
waits for it. Only ``python3`` in that command is replaced by a small launcher script (the
*shim*): the shim hands its argv, working directory, environment and stdin/stdout/stderr to the
server over a Unix socket; the server forks a waiter, the waiter forks the task, which takes the
shim's file descriptors, directory and environment and runs ``kfp.dsl.executor_main`` as
``__main__`` — what ``python3 -m kfp.dsl.executor_main`` would have run — and exits as Python
exits (non-daemon threads joined, atexit handlers run, streams flushed). The waiter reports the
task's pid (so the shim forwards SIGTERM/SIGHUP to it) and then its exit status and CPU
seconds; the shim exits with that status, so kfp.local sees what it would have seen.

The shim runs the real interpreter instead (``exec``) whenever the server cannot give a faithful
copy: no server, another module than kfp's executor, or an environment variable read at
interpreter start or import time (:data:`STARTUP_ENV`) that differs from the server's. Each such
fallback costs the task seconds of imports, so none is silent: the shim or the server appends its
reason to a file beside the shim, read back with :func:`fallbacks` (``uft run`` prints each
distinct reason once at the end). The driver's own changes to :data:`STARTUP_ENV` after the server
started (importing torch's inductor sets ``TORCHINDUCTOR_CACHE_DIR``) do not reach the tasks:
:func:`tasks_get_startup_env`. The server takes a connection between two imports of its preload;
the tasks of :data:`STAGES` go to frozen copies forked part-way, so they never wait for a long
import. ``UFT_FORKSERVER=0`` turns the server off. On Kubernetes none of this exists: each step is a pod.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

#: What a step imports (the preload): the server pays for it once per run instead of once per task.
PRELOAD = (
    # In the order tasks need them, so a task that arrives mid-preload (the server serves between
    # two imports) rarely waits: a cached rerun's tasks (fingerprint, promote, report, finalize)
    # need only the first half; training and evaluation the rest.
    "kfp.dsl.executor_main", "kfp.dsl", "numpy", "pyarrow", "pyarrow.parquet", "boto3", "botocore.client",
    "uft.store", "pydantic", "uft.lineage", "uft.data.fingerprint", "mlflow", "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store", "uft.tracking", "uft.steps", "uft.promote", "uft.report",
    "PIL.Image", "uft.data.ingest", "torch", "torch.nn.functional", "uft.data.stream", "uft.ssl.train",
    "uft.evaluate.features", "uft.evaluate.linear", "uft.evaluate.knn", "uft.evaluate.label_free",
    "uft.transfer.replay", "uft.transfer.holistic", "uft.models.artifact", "sklearn.linear_model",
    "sklearn.preprocessing", "sklearn.cluster", "sklearn.datasets", "sklearn.decomposition",
    "mlflow.pytorch", "torch._dynamo", "torch.export",  # registering an encoder exports it (pt2)
    "matplotlib.pyplot",
)
#: Called once (module, function): work every task that needs it would otherwise redo; right
#: after the preload imported that module, else once the preload is done. MLflow maps every
#: installed package to its modules (importlib.metadata, 0.3-1 s) the first time a model is logged
#: or loaded (the promote step logs the encoder).
WARM = (("mlflow.utils.requirements_utils", "_init_packages_to_modules_map"),
        ("uft.store", "warm_s3_models"))  # botocore's S3 model, parsed for every client (0.1 s each)
#: Frozen copies of the server, forked when its preload has imported a stage's last module, that
#: serve the stage's tasks (kfp component functions) from then on. The server takes a connection
#: only between two imports, and single imports take seconds (MLflow ~2-3 s, torch ~2-3 s on 2
#: busy cores): a cached rerun's fingerprint and finalize tasks each waited 0.6-1.7 s for one to
#: finish. A staged task that needs a module its stage lacks imports it itself (slower, still right).
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("uft.data.fingerprint", ("fingerprint",)),
    ("uft.data.ingest", ("finalize",)),  # MLflow and uft's light modules, no torch
)
#: Read when an interpreter starts or a module is imported: a task whose value differs from the
#: server's gets a fresh interpreter.
STARTUP_ENV = (
    "PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "PYTHONUNBUFFERED", "PYTHONIOENCODING",
    "PYTHONUTF8", "PYTHONWARNINGS", "PYTHONDONTWRITEBYTECODE", "LD_PRELOAD", "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY", "MPLBACKEND",
    "CUDA_VISIBLE_DEVICES", "_KFP_RUNTIME", "LANG", "LC_ALL", "LC_CTYPE", "HOME", "MPLCONFIGDIR",
    "TORCHINDUCTOR_CACHE_DIR", "TORCH_HOME",
)
ENV_SOCKET = "UFT_FORKSERVER_SOCKET"
#: A line the shim prints after its task: the task's CPU seconds (the task is not the shim's child,
#: so they are not in the runner's RUSAGE_CHILDREN).
CPU_LINE = "uft-task-cpu"
_FALLBACK = -1
#: Beside the shim: one line per task that ran in a fresh interpreter, with why (:func:`fallbacks`).
FALLBACKS_FILE = "fallbacks"

_SHIM = '''#!{python} -S
# uft fork-server shim (uft.orchestrate.forkserver): run `python3 -m kfp.dsl.executor_main …`
# in a fork of the warm server, or exec the real interpreter when that is not possible.
import json, os, signal, socket, struct, sys

REAL = {real!r}


def real(why):
    # Never silent: the reason goes to the file the driver reads back (forkserver.fallbacks).
    try:
        if not why:
            raise OSError
        fd = os.open(os.path.join(os.path.dirname(os.path.abspath(__file__)), {log!r}),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, (why.replace("\\n", " ") + "\\n").encode())  # one write: lines never interleave
        os.close(fd)
    except OSError:
        pass
    os.execv(REAL, [REAL] + sys.argv[1:])


def recv(s, n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            return None
        b += chunk
    return b


addr = os.environ.get({env!r})
STAGES = {stages!r}  # component function -> the socket of the stage server that serves it
if sys.argv[1:3] != ["-m", "kfp.dsl.executor_main"]:
    real("python3 %s is not kfp's executor (python3 -m kfp.dsl.executor_main)" % " ".join(sys.argv[1:3]))
if not addr:
    real("no fork server (it had not bound its socket when the run started)")
args = sys.argv[3:]
fn = args[args.index("--function_to_execute") + 1] if "--function_to_execute" in args[:-1] else ""
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A stage server exists once the preload got past its stage (its socket appears when it listens).
        s.connect(os.path.join(os.path.dirname(addr), STAGES[fn]))
    except (KeyError, OSError):
        s.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr)
    socket.send_fds(s, [b"T"], [0, 1, 2])
    body = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
    s.sendall(struct.pack("!Q", len(body)) + body)
    head = recv(s, 8)
except OSError as e:
    real("could not reach the fork server: %s" % e)
if head is None:
    real("the fork server hung up before answering")
pid = struct.unpack("!q", head)[0]
if pid == {fallback}:
    real("")  # the server wrote its reason itself
# SIGTERM/SIGHUP are forwarded (kfp.local, `timeout` or `uft run` may signal only this process);
# Ctrl-C's SIGINT already reaches the task through the terminal's process group.
signal.signal(signal.SIGINT, signal.SIG_IGN)
for sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, lambda n, f: os.kill(pid, n))
tail = recv(s, 16)
if tail is None:
    sys.stderr.write("uft fork server: lost the task (the server stopped)\\n")
    sys.exit(1)
code, cpu = struct.unpack("!qd", tail)
sys.stdout.write("{cpu_line} %.3f\\n" % cpu)
sys.stdout.flush()
sys.exit(code if code >= 0 else 128 - code)
'''


_RUNNING: list[str] = []  # the shims of the servers this process runs (innermost last)
#: shim → this process's values of :data:`STARTUP_ENV` when it started that shim's server.
_STARTED_WITH: dict[str, dict[str, str | None]] = {}
_PROCESS: dict[str, subprocess.Popen] = {}  # shim → its server process (wait_ready stops waiting on a dead one)


def enabled() -> bool:
    return os.environ.get("UFT_FORKSERVER", "1").strip().lower() not in ("0", "false", "no", "off")


def current() -> str | None:
    """The shim of the fork server this process started and is still running, if any: `uft run`
    starts it first thing, so it warms up while the services start and the DAG is built."""
    return _RUNNING[-1] if _RUNNING else None


def stage_socket(index: int) -> str:
    """The socket name (beside the server's) of :data:`STAGES`' ``index``-th stage server."""
    return f"s{index}"


@contextlib.contextmanager
def serving(preload: tuple[str, ...] = PRELOAD,
            stages: tuple[tuple[str, tuple[str, ...]], ...] = STAGES) -> Iterator[str]:
    """Start a fork server for this process's kfp.local tasks → the shim's path, to use as the
    tasks' ``python3``. Stops the server (and removes its socket) on exit. ``preload``/``stages``:
    what it imports and where it forks stage servers (default :data:`PRELOAD`, :data:`STAGES`)."""
    workdir = Path(tempfile.mkdtemp(prefix="uft-fs-"))  # short: a Unix socket path has ≤ 107 bytes
    sock, shim = workdir / "s", workdir / "python3"
    routes = {fn: stage_socket(i) for i, (_, fns) in enumerate(stages) for fn in fns}
    shim.write_text(_SHIM.format(python=sys.executable, real=sys.executable, env=ENV_SOCKET,
                                 fallback=_FALLBACK, cpu_line=CPU_LINE, log=FALLBACKS_FILE, stages=routes))
    shim.chmod(0o755)
    _STARTED_WITH[str(shim)] = {k: os.environ.get(k) for k in STARTUP_ENV}
    env = {**os.environ, "_KFP_RUNTIME": "true"}  # what the component command sets before python3
    plan = json.dumps({"preload": list(preload), "stages": [after for after, _ in stages]})
    server = subprocess.Popen([sys.executable, "-m", "uft.orchestrate.forkserver", str(sock), str(os.getpid()), plan],
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None,
                              start_new_session=False)
    deadline = time.monotonic() + 30
    while not sock.exists() and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the server binds before it preloads: tasks queue while it warms up
    previous = os.environ.get(ENV_SOCKET)
    if sock.exists():
        os.environ[ENV_SOCKET] = str(sock)
    _RUNNING.append(str(shim))
    _PROCESS[str(shim)] = server
    try:
        yield str(shim)
    finally:
        _RUNNING.remove(str(shim))
        _STARTED_WITH.pop(str(shim), None)
        _PROCESS.pop(str(shim), None)
        if previous is None:
            os.environ.pop(ENV_SOCKET, None)
        else:
            os.environ[ENV_SOCKET] = previous
        with contextlib.suppress(ProcessLookupError):
            server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        if server.poll() is None:
            server.kill()
            server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_ready(shim: str, timeout: float = 300.0) -> bool:
    """Wait until the server behind ``shim`` has preloaded everything → whether it did in time
    (False at once when this process's server for ``shim`` has exited: it never will)."""
    ready, deadline = Path(shim).with_name("ready"), time.monotonic() + timeout
    proc = _PROCESS.get(shim)
    while not ready.exists() and time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return ready.exists()


def fallbacks(shim: str) -> list[str]:
    """Why tasks behind ``shim`` ran in a fresh interpreter instead of a fork of the server: one
    reason per such task, in order (empty: every task was forked). Read it before the server stops
    (:func:`serving` removes the file with its directory)."""
    try:
        text = Path(shim).with_name(FALLBACKS_FILE).read_text()
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def fallback_lines(reasons: list[str]) -> list[str]:
    """Each distinct fallback reason once, with how many tasks it cost: what a run prints at its end."""
    counts: dict[str, int] = {}
    for r in reasons:
        counts[r] = counts.get(r, 0) + 1
    return [f"{n} task{'s' if n > 1 else ''} ran in a fresh interpreter, not the fork server (seconds of imports "
            f"each): {r}" for r, n in counts.items()]


@contextlib.contextmanager
def tasks_get_startup_env(shim: str) -> Iterator[dict[str, tuple[str | None, str | None]]]:
    """Every task kfp.local starts in the block gets this process's :data:`STARTUP_ENV` as it was
    when ``shim``'s server started, whatever this process changed since, before the run or during
    it → yields {variable: (this process's value, the task's)} for what a task's start reset
    (filled as tasks start). This process's own ``os.environ`` is left alone.

    Why the driver and not the server adapts: the server's modules were imported under its start
    environment and cannot be re-imported under another, so a task may be forked only when its
    environment matches; and what the driver changed after the server started is the driver's own
    doing (the pre-run estimate builds an optimizer, which imports torch._dynamo, which writes
    ``TORCHINDUCTOR_CACHE_DIR`` into ``os.environ``), not something the tasks were meant to see: a
    fresh interpreter started without the server would not have seen it either. Per task, not once
    for the run: a change made mid-run (a measurement in a thread beside the tasks made 17 of 18
    tasks fresh interpreters) would otherwise reach every later task. Variables kfp sets for the task itself are kept. A task that
    differs for any other reason still gets a fresh interpreter, and says why (:func:`fallbacks`)."""
    import subprocess

    from kfp.local import subprocess_task_handler as handler

    started = _STARTED_WITH.get(shim, {})
    reset: dict[str, tuple[str | None, str | None]] = {}
    original = handler.run_local_subprocess

    def run_local_subprocess(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        # kfp.local's own (kfp/local/subprocess_task_handler.py run_local_subprocess, kfp 2.17),
        # with the environment built here: it would merge os.environ back over a removed variable.
        env = {**os.environ, **(env_vars or {})}
        for k, v in started.items():
            if k not in (env_vars or {}) and env.get(k) != v:
                reset[k] = (env.get(k), v)
                if v is None:
                    env.pop(k, None)
                else:
                    env[k] = v
        with subprocess.Popen(full_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                              env=env) as process:
            if process.stdout:
                for line in iter(process.stdout.readline, ""):
                    print(line, end="")
                print("\n")
            return process.wait()

    handler.run_local_subprocess = run_local_subprocess
    try:
        yield reset
    finally:
        handler.run_local_subprocess = original


def _why_not_forked(request: dict, nfds: int, startup_env: dict[str, str | None]) -> str | None:
    """Why the server cannot run this request as a faithful fork → one line, or None when it can."""
    if nfds != 3:
        return f"the shim passed {nfds} file descriptors, not 3 (stdin, stdout, stderr)"
    if request["argv"][:2] != ["-m", "kfp.dsl.executor_main"]:
        return f"python3 {' '.join(request['argv'][:2])} is not kfp's executor (python3 -m kfp.dsl.executor_main)"
    env = request["env"]
    differ = [f"{k} (server: {_show(startup_env.get(k))}, task: {_show(env.get(k))})"
              for k in STARTUP_ENV if env.get(k) != startup_env.get(k)]
    return f"start-up environment differs from the server's: {', '.join(differ)}" if differ else None


def _show(value: str | None) -> str:
    return "unset" if value is None else repr(value if len(value) <= 80 else value[:77] + "...")


def launcher_only(full_command: list[str], python: str) -> list[str]:
    """``full_command`` with ``python3`` replaced by ``python`` in the launcher only: the elements up
    to the one that runs the component's code. kfp's own ``replace_python_executable`` rewrites it in
    every element but the code, so a task argument such as a path under ``…/lib/python3.11/…``
    reached the step mangled."""
    out: list[str] = []
    code_at: int | None = None
    for i, el in enumerate(full_command):
        if code_at is None and '"$program_path/ephemeral_component.py"' in el and '"$@"' in el:
            code_at = i + 1  # the next element is the component's code, then its arguments
        out.append(el.replace("python3", python) if code_at is None or i < code_at else el)
    return out


@contextlib.contextmanager
def kfp_tasks_use(python: str | None = None) -> Iterator[None]:
    """Make kfp.local's SubprocessRunner start ``python`` (default: the one kfp.local chose) where a
    component's launcher says ``python3``, leaving the task's arguments as they are."""
    from kfp.local import subprocess_task_handler as handler

    original = handler.replace_python_executable
    handler.replace_python_executable = lambda full_command, executable: launcher_only(full_command,
                                                                                       python or executable)
    try:
        yield
    finally:
        handler.replace_python_executable = original


# ---------------------------------------------------------------- server side (python -m …)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the shim hung up")
        buf += chunk
    return buf


def exit_like_python(code: int) -> None:
    """End the process as the interpreter would — join non-daemon threads, run the atexit handlers
    (MLflow ends its active run there), flush the streams — but without tearing down every module
    (over a second once MLflow, SQLAlchemy and torch are loaded) or, in a forked task, anything
    the server's own exit path would do."""
    import atexit
    import threading

    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx calls first
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(code)


def _run_task(request: dict, fds: list[int]) -> None:
    """In the forked task: become the process the shim stands for, and run kfp's executor."""
    import runpy
    import traceback

    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    argv = request["argv"]  # ["-m", "kfp.dsl.executor_main", *args]
    sys.argv = [argv[1], *argv[2:]]
    if sys.path and sys.path[0] != request["cwd"]:
        sys.path[0] = request["cwd"]  # `python -m` puts the working directory first
    code = 0
    try:
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_like_python(code)


def _serve_one(conn: socket.socket, startup_env: dict[str, str | None], log: Path | None = None) -> int:
    """In the waiter (a fork of the server): read the shim's request, fork the task, report its
    pid, wait for it, report its exit status and CPU seconds; or, when the task cannot be a faithful
    fork, append why to ``log`` and tell the shim to run the real interpreter."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the task; the waiter reports it
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    conn.settimeout(None)
    _, fds, _, _ = socket.recv_fds(conn, 1, 3)
    (n,) = struct.unpack("!Q", _recv_exact(conn, 8))
    request = json.loads(_recv_exact(conn, n))
    why = _why_not_forked(request, len(fds), startup_env)
    if why is not None:
        if log is not None:
            with contextlib.suppress(OSError), open(log, "a") as f:
                f.write(why.replace("\n", " ") + "\n")  # one short write: lines of two waiters never interleave
        conn.sendall(struct.pack("!q", _FALLBACK))
        return 0
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_task(request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    conn.sendall(struct.pack("!q", pid))
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)  # negative: killed by that signal
    with contextlib.suppress(OSError):
        conn.sendall(struct.pack("!qd", code, usage.ru_utime + usage.ru_stime))
    return 0


class _Listener:
    """A bound socket that forks a waiter (:func:`_serve_one`) for each connection."""

    def __init__(self, sock: socket.socket, startup_env: dict[str, str | None], log: Path):
        self.sock, self.startup_env, self.log = sock, startup_env, log
        self.waiters: set[int] = set()

    def serve_pending(self, timeout: float) -> None:
        """Take the connections that arrive within ``timeout`` s (0: only those already waiting)."""
        for pid in list(self.waiters):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    self.waiters.discard(pid)
        self.sock.settimeout(timeout)
        while True:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, BlockingIOError, InterruptedError):
                return
            pid = os.fork()
            if pid == 0:
                self.sock.close()
                code = 1
                try:
                    code = _serve_one(conn, self.startup_env, self.log)
                finally:
                    os._exit(code)
            conn.close()
            self.waiters.add(pid)
            self.sock.settimeout(0.0)  # then only what is already waiting


def _leave(path: Path, stage_servers: list[int] = ()) -> None:
    """End this server now: stop its stage servers, remove its socket, ``os._exit``. From SIGTERM,
    even mid-import: a preload cut short loses nothing, and waiting for torch's import to end
    would hold up the run's exit by seconds. Its waiters and tasks are processes of their own."""
    for pid in stage_servers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(OSError):
        os.unlink(path)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(0)


def _warm(module: str, function: str) -> None:
    import importlib

    try:
        getattr(importlib.import_module(module), function)()
    except Exception as e:  # a task that needs it does the work itself
        print(f"uft fork server: not warmed {module}.{function}: {type(e).__name__}: {e}", file=sys.stderr)


def _fork_stage_server(path: Path, listener: _Listener) -> int:
    """Fork a copy of this server, as loaded so far, that listens on ``path`` (it appears only once
    the copy listens, so a shim never finds it refusing) until SIGTERM or this server is gone → its pid."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    signal.signal(signal.SIGTERM, lambda signum, frame: _leave(path))
    try:
        listener.sock.close()
        tmp = path.with_name(f".{path.name}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp))
        sock.listen(64)
        os.rename(tmp, path)
        own = _Listener(sock, listener.startup_env, listener.log)
        while os.getppid() == parent:
            own.serve_pending(0.2)
    finally:  # whatever ended it: its tasks go to the main server instead
        _leave(path)


def serve(path: str, parent: int, preload: tuple[str, ...] = PRELOAD, stages: tuple[str, ...] = ()) -> None:
    """Bind ``path``, then preload ``preload`` module by module, forking a waiter for each
    connection as it comes (a task that arrives mid-preload gets what is loaded so far and imports
    the rest itself) and a stage server (:data:`STAGES`, socket :func:`stage_socket`) after each
    module in ``stages``, until SIGTERM (at once, see :func:`_leave`) or until ``parent`` (the
    kfp.local driver) is gone (checked every 0.2 s)."""
    import importlib

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(64)
    stage_servers: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: _leave(Path(path), stage_servers))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops the server; Ctrl-C is the tasks'
    listener = _Listener(sock, {k: os.environ.get(k) for k in STARTUP_ENV}, Path(path).with_name(FALLBACKS_FILE))
    try:
        for name in preload:
            try:
                importlib.import_module(name)
            except Exception as e:  # a task that needs it fails with its own error; the rest still gain
                print(f"uft fork server: not preloaded {name}: {type(e).__name__}: {e}", file=sys.stderr)
            for module, function in WARM:
                if module == name:
                    _warm(module, function)
            for i, after in enumerate(stages):
                if after == name:
                    stage_servers.append(_fork_stage_server(Path(path).with_name(stage_socket(i)), listener))
            listener.serve_pending(0.0)
        for module, function in WARM:
            if module not in preload:
                _warm(module, function)
                listener.serve_pending(0.0)
        Path(path).with_name("ready").touch()
        while os.getppid() == parent:
            listener.serve_pending(0.2)
    finally:
        _leave(Path(path), stage_servers)


if __name__ == "__main__":
    _plan = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {"preload": PRELOAD, "stages": []}
    serve(sys.argv[1], int(sys.argv[2]), tuple(_plan["preload"]), tuple(_plan["stages"]))
