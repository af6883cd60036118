"""The image tests run only when asked: `make test-images` builds the images and sets UFT_TEST_IMAGE.

Without it they are skipped (plain `make test` needs no Docker); with it, a missing engine,
image or kubectl fails them instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

IMAGE = os.environ.get("UFT_TEST_IMAGE", "")


def pytest_collection_modifyitems(config, items):
    if IMAGE:
        return
    skip = pytest.mark.skip(reason="image tests: run `make test-images` (builds the images, sets UFT_TEST_IMAGE)")
    for item in items:
        if "tests/images/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def image() -> str:
    assert shutil.which("docker"), "docker client not found: run docker/ensure-engine.sh"
    proc = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, text=True)
    assert proc.returncode == 0, f"image {IMAGE} not found: build it with `make images`"
    return IMAGE


def start_mlflow_server(state: Path, s3_env: dict[str, str], artifacts: str, timeout: float = 120.0):
    """`mlflow server` on 127.0.0.1 (sqlite backend, artifacts proxied to ``artifacts`` on S3),
    as infra/base/mlflow.yaml runs it on a cluster. → (process, URL)."""
    from uft.services import LOOPBACK, free_port

    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    log = open(state / "mlflow.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}",
         "--artifacts-destination", artifacts, "--host", LOOPBACK, "--port", str(port), "--workers", "1"],
        env={**os.environ, **s3_env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mlflow server exited ({proc.returncode}): see {state / 'mlflow.log'}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise AssertionError(f"mlflow server did not answer on {url} within {timeout:.0f}s: see {state / 'mlflow.log'}")
