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


def start_mlflow_server(state: Path, manifests: list[dict], cluster, timeout: float = 120.0):
    """`mlflow server` on 127.0.0.1 as the rendered Deployment `mlflow` runs it: the basic-auth app
    with the config its `auth-config` init container writes (script run verbatim), its admin, Flask
    secret and S3 identity (`uft-s3-mlflow`) from the Secrets, its artifact flags with ``$(VAR)``
    expanded as the kubelet does. Only what needs Postgres differs: both databases are SQLite files
    in ``state``. ``cluster``: the Secret/ConfigMap data with service URLs already pointing here
    (uft.orchestrate.containers.cluster_objects). → (process, URL)."""
    import re

    from tests.infra.object_store import container_env
    from uft.services import LOOPBACK, free_port

    (dep,) = [d for d in manifests if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    spec = dep["spec"]["template"]["spec"]
    (init,) = [c for c in spec["initContainers"] if c["name"] == "auth-config"]
    (server,) = [c for c in spec["containers"] if c["name"] == "mlflow"]
    auth = state / "mlflow-auth"
    auth.mkdir(parents=True, exist_ok=True)
    subprocess.run(["sh", "-ec", init["args"][0].replace("/auth/", f"{auth}/")],
                   env={"PATH": os.environ["PATH"], **container_env(init, cluster)}, check=True)
    ini = (auth / "basic_auth.ini").read_text()
    assert "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" in ini
    (auth / "basic_auth.ini").write_text("".join(
        f"database_uri = sqlite:///{state / 'mlflow-auth.db'}\n" if line.startswith("database_uri") else line + "\n"
        for line in ini.splitlines()))
    env = container_env(server, cluster)
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(auth / "basic_auth.ini"),
               MLFLOW_BACKEND_STORE_URI=f"sqlite:///{state / 'mlflow.db'}")
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in server["args"]
            if not a.startswith(("--host", "--port", "--workers"))]
    assert "--app-name=basic-auth" in args and any(a.startswith("--artifacts-destination=s3://") for a in args), args
    log = open(state / "mlflow.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", *args, "--host", LOOPBACK, "--port", str(port), "--workers", "1"],
        env={"PATH": os.environ["PATH"], "HOME": str(state), **env}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
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
