"""Shared fixtures: a real SeaweedFS S3 server (session-wide), a fresh bucket per test, MLflow on sqlite."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # two shared cores: keep tests predictable


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, restoring the previous count (benchmarks under test set it)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session", autouse=True)
def _no_ambient_tracking():
    """Tests never write to the developer's MLflow/S3 (e.g. after `make ui` exported the URI):
    tracking is off unless a fixture switches it on for its own scope."""
    with pytest.MonkeyPatch.context() as mp:
        for k in ("MLFLOW_TRACKING_URI", "UFT_MLFLOW_ARTIFACTS", "MLFLOW_S3_ENDPOINT_URL"):
            mp.delenv(k, raising=False)
        yield


@pytest.fixture(autouse=True)
def _fresh_s3_clients():
    """Every test starts without cached S3 credentials. boto3's default session keeps the first
    keys it resolved, and MLflow caches S3 clients per endpoint (not per key), both for the whole
    process: a test that pointed AWS_* at one server (e.g. through ``bucket``) made a later test
    that points them at another server send the old keys ("The access key ID you provided does not
    exist in our records"), so results depended on the order tests ran in."""
    _drop_s3_client_caches()
    yield
    _drop_s3_client_caches()


@pytest.fixture(autouse=True)
def _progress_env_restored():
    """Importing ``bench.common`` sets ``UFT_PROGRESS=off`` for the process (benchmarks print tables,
    not bars); a test that imports a bench module must not silence a later test's progress lines."""
    import os

    before = os.environ.get("UFT_PROGRESS")
    yield
    if before is None:
        os.environ.pop("UFT_PROGRESS", None)
    else:
        os.environ["UFT_PROGRESS"] = before


@pytest.fixture(autouse=True)
def _no_active_mlflow_experiment():
    """``mlflow.set_experiment`` sets a process-global active experiment and exports it as
    ``MLFLOW_EXPERIMENT_ID``; left behind, it made a later test's ``start_run`` on another store
    fail ("active experiment ID does not match") only when it ran after the promote tests."""
    import os
    import sys

    yield
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None:
        fluent._active_experiment_id = None


def _drop_s3_client_caches() -> None:
    import sys

    if "boto3" in sys.modules:
        sys.modules["boto3"].DEFAULT_SESSION = None
    if "uft.store" in sys.modules:  # split_uri's per-bucket stores (keyed by endpoint and credentials)
        sys.modules["uft.store"]._BUCKETS.clear()
    repo = sys.modules.get("mlflow.store.artifact.s3_artifact_repo")
    if repo is not None and hasattr(repo, "_cached_get_s3_client"):
        repo._cached_get_s3_client.cache_clear()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from uft.services import Credentials, SeaweedServer

    d = tmp_path_factory.mktemp("seaweed")
    creds = Credentials.load_or_create(d / "creds.json")
    server = SeaweedServer(d / "data", creds).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3/MLflow at the test server; yields the server."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server


@pytest.fixture
def bucket(s3_env) -> str:
    """A new empty bucket name on the test server."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    creds = s3_env.credentials
    boto3.session.Session().client(  # a session of its own: keys resolved now, cached nowhere
        "s3", endpoint_url=s3_env.endpoint, region_name="us-east-1", aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key).create_bucket(Bucket=name)
    return name


@pytest.fixture
def mlflow_env(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("UFT_MLFLOW_ARTIFACTS", str(tmp_path / "mlartifacts"))
    return uri


@pytest.fixture
def tiny_raw():
    """60 labelled 8×8 digits (sklearn) as RawImages: fast input for ingest tests."""
    from uft.data.sources import load_optdigits

    raw = load_optdigits()
    keep = [i for c in range(10) for i in (raw.labels == c).nonzero()[0][:6]]
    raw.images, raw.labels = raw.images[keep], raw.labels[keep]
    return raw
