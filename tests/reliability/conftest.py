"""Fixtures of the reliability tests (S3/MLflow fixtures come from tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def fast_retries(monkeypatch):
    """Bounded, quick S3 retries for fault tests: 3 attempts, 50 ms backoff, 2 s timeout."""
    monkeypatch.setenv("UFT_S3_ATTEMPTS", "3")
    monkeypatch.setenv("UFT_S3_BACKOFF", "0.05")
    monkeypatch.setenv("UFT_S3_TIMEOUT", "2")


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    """MLflow on one sqlite file for the whole module (creating the schema costs seconds); tests
    keep apart by experiment name. Yields the tracking URI."""
    d = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", uri)
        m.setenv("UFT_MLFLOW_ARTIFACTS", str(d / "artifacts"))
        yield uri
