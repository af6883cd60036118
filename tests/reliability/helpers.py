"""Helpers shared by the reliability tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from uft.errors import UftError

WORKER = Path(__file__).with_name("_worker.py")


def worker_env(**extra: str) -> dict[str, str]:
    """The test's environment (S3 endpoint and keys included) without MLflow, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(extra)
    return env


def start_worker(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *args], env=env or worker_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def one_line_error(excinfo: pytest.ExceptionInfo, pattern: str) -> str:
    """Assert the raised UftError is one line and matches ``pattern``; return the message."""
    assert isinstance(excinfo.value, UftError), f"expected UftError, got {type(excinfo.value).__name__}: {excinfo.value}"
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg, repr(msg)
    assert re.search(pattern, msg), f"{msg!r} does not match {pattern!r}"
    return msg


def s3_client():
    """A boto3 S3 client for the endpoint and keys in the environment *now* (boto3's default session
    would keep the first keys it saw, which breaks tests that switch servers or keys)."""
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])
