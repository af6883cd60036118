"""Why tests/conftest.py drops cached S3 clients around every test: boto3's default session keeps
the first keys it resolved for the whole process, so a test pointing AWS_* at another server sent
the earlier server's key ("The access key ID you provided does not exist in our records": how
test_security.py::test_secret_not_in_mlflow failed when it ran after a test using ``bucket``)."""

from __future__ import annotations

import pytest

from tests.conftest import _drop_s3_client_caches
from uft.services import Credentials, SeaweedServer

pytestmark = pytest.mark.s3


def test_keys_cached_for_one_server_are_not_sent_to_the_next(s3_env, tmp_path, monkeypatch):
    import boto3
    from botocore.exceptions import ClientError

    boto3.client("s3").list_buckets()  # the default session now holds the session server's keys
    other = SeaweedServer(tmp_path / "b", Credentials.load_or_create(tmp_path / "b.json")).start()
    try:
        for k, v in other.env().items():
            monkeypatch.setenv(k, v)
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):
            boto3.client("s3").list_buckets()  # the old key, sent to the new server
        _drop_s3_client_caches()  # what the autouse fixture does before and after every test
        assert isinstance(boto3.client("s3").list_buckets()["Buckets"], list)
    finally:
        other.stop()
