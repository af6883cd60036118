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


def test_s3_sessions_share_parsed_models_but_resolve_credentials_anew(monkeypatch):
    """Every S3 client parsed botocore's S3 model again (0.1 s of its 0.11 s): the sessions share
    the parsed models, and still read the credentials each time (a rotated key is seen at once)."""
    from uft.store import s3_session

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "first-secret")
    a = s3_session()
    a.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated-key")
    b = s3_session()
    b.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    assert a._session.get_component("data_loader") is b._session.get_component("data_loader")
    assert a.get_credentials().access_key == "first-key" and b.get_credentials().access_key == "rotated-key"
