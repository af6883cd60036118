"""Object store: the same contract for a local directory and the real SeaweedFS S3 server."""

from __future__ import annotations

import pytest

from uft.errors import UftError
from uft.store import LocalStore, open_store, publish, read_manifest, read_verified


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "bucket")
    bucket = request.getfixturevalue("bucket")
    return open_store(f"s3://{bucket}/prefix")


def test_put_get_list_delete(store):
    store.put("a/b.bin", b"\x00\x01")
    store.put("a/c.bin", b"xyz")
    assert store.get("a/b.bin") == b"\x00\x01"
    assert store.exists("a/c.bin") and not store.exists("a/zzz")
    assert store.list("a/") == ["a/b.bin", "a/c.bin"]
    store.delete("a/b.bin")
    assert store.list("a/") == ["a/c.bin"]


def test_missing_key_is_a_clear_error(store):
    with pytest.raises(UftError, match="does not exist"):
        store.get("nope/never.bin")


def test_publish_then_verify(store):
    uri = publish(store, "ds/1", {"x.bin": b"hello"}, {"kind": "dataset"})
    manifest, st, prefix = read_manifest(uri)
    assert read_verified(st, prefix, manifest, "x.bin", uri) == b"hello"


def test_corrupt_file_is_rejected(store):
    uri = publish(store, "ds/2", {"x.bin": b"hello"}, {"kind": "dataset"})
    store.put("ds/2/x.bin", b"HELLO")
    manifest, st, prefix = read_manifest(uri)
    with pytest.raises(UftError, match="corrupt"):
        read_verified(st, prefix, manifest, "x.bin", uri)


def test_missing_file_is_rejected(store):
    uri = publish(store, "ds/3", {"x.bin": b"hello"}, {"kind": "dataset"})
    store.delete("ds/3/x.bin")
    manifest, st, prefix = read_manifest(uri)
    with pytest.raises(UftError, match="missing"):
        read_verified(st, prefix, manifest, "x.bin", uri)


def test_nonexistent_bucket(s3_env):
    with pytest.raises(UftError, match="does not exist: create it"):
        open_store("s3://no-such-bucket-uft/x")


def test_wrong_credentials_are_refused(bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong")
    with pytest.raises(UftError, match="refused the credentials") as e:
        open_store(f"s3://{bucket}/x")
    assert "definitely-wrong" not in str(e.value)


def test_unsupported_scheme():
    with pytest.raises(UftError, match="unsupported scheme"):
        open_store("gs://bucket/x")
