"""Manifest-last publication: data files are written first and the manifest last, so a crash leaves
nothing a reader trusts; readers reject a manifest whose files are missing or differ by hash; a
rerun of the step repairs damaged output instead of trusting a stale cache record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.helpers import one_line_error
from uft.data.dataset import load_dataset
from uft.data.ingest import ingest
from uft.errors import UftError
from uft.store import LocalStore, S3Store, publish, read_manifest, verify_manifest


class RecordingStore(LocalStore):
    """A LocalStore that logs every put and can crash on the n-th one."""

    def __init__(self, root: Path, crash_on: int = 0):
        super().__init__(root)
        self.puts: list[str] = []
        self.crash_on = crash_on

    def put(self, key: str, data: bytes) -> None:
        if self.crash_on and len(self.puts) + 1 == self.crash_on:
            raise OSError("simulated crash during write")
        self.puts.append(key)
        super().put(key, data)


@pytest.fixture
def published(tmp_path, tiny_raw):
    """A small dataset published to a local store → (its directory as a store, manifest URI, shard key)."""
    uri = ingest(tiny_raw, LocalStore(tmp_path / "store"), name="t", image_size=8, channels=1)
    manifest, store, prefix = read_manifest(uri)
    (shard,) = manifest["files"]
    return store, uri, f"{prefix}/{shard}" if prefix else shard


def test_manifest_is_the_last_write(tmp_path, tiny_raw):
    store = RecordingStore(tmp_path / "s")
    tiny_raw.images = tiny_raw.images.repeat(70, axis=0)  # > 4096 rows → two shards
    tiny_raw.labels = tiny_raw.labels.repeat(70)
    ingest(tiny_raw, store, name="t", image_size=8, channels=1)
    assert len(store.puts) == 3 and store.puts[-1].endswith("/manifest.json")
    assert all(k.endswith(".parquet") for k in store.puts[:-1])


def test_crash_before_manifest_publishes_nothing(tmp_path, tiny_raw):
    store = RecordingStore(tmp_path / "s", crash_on=2)  # the shard lands, the manifest never does
    with pytest.raises(OSError):
        ingest(tiny_raw, store, name="t", image_size=8, channels=1)
    assert store.puts and not any(k.endswith("manifest.json") for k in store.list())
    uri = str(store.root / store.puts[0].rsplit("/", 1)[0] / "manifest.json")
    with pytest.raises(UftError) as e:
        load_dataset(uri)
    one_line_error(e, r"manifest\.json does not exist: check the URI or rerun the step")


def _flip_one_byte(store, shard: str) -> None:
    data = bytearray(store.get(shard))
    data[len(data) // 2] ^= 0xFF
    store.put(shard, bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda store, shard: store.delete(shard),
     r"part-00000\.parquet listed in .*manifest\.json is missing: republish the dataset \(rerun ingest\)"),
    (_flip_one_byte, r"part-00000\.parquet is corrupt \(sha256 differs from .*manifest\.json\): rerun ingest"),
], ids=["missing", "corrupt"])
def test_missing_or_corrupt_shard_is_rejected(published, damage, message):
    store, uri, shard = published
    damage(store, shard)
    for read in (load_dataset, verify_manifest):
        with pytest.raises(UftError) as e:
            read(uri)
        one_line_error(e, message)


def test_truncated_shard_is_rejected(published):
    store, uri, shard = published
    store.put(shard, store.get(shard)[:100])
    with pytest.raises(UftError) as e:
        load_dataset(uri)
    one_line_error(e, r"is corrupt \(sha256 differs")


@pytest.mark.s3
def test_corrupt_shard_on_s3_is_rejected(bucket, tiny_raw):
    store = S3Store(bucket, "p")
    uri = ingest(tiny_raw, store, name="t", image_size=8, channels=1)
    assert load_dataset(uri).images.shape[0] == len(tiny_raw.labels)
    manifest, bucket_store, prefix = read_manifest(uri)  # bucket_store: the bucket root, prefix: the full key prefix
    key = f"{prefix}/{next(iter(manifest['files']))}"
    bucket_store.put(key, bucket_store.get(key) + b"junk")
    with pytest.raises(UftError) as e:
        load_dataset(uri)
    one_line_error(e, rf"s3://{bucket}/p/datasets/.*part-00000\.parquet is corrupt")


@pytest.mark.parametrize("body,pattern", [
    (b"{not json", r"is not valid JSON: republish it"),
    (json.dumps({"kind": "dataset"}).encode(), r"lists no files: republish it"),
    (json.dumps({"kind": "encoder", "files": {}}).encode(), r"is not a dataset manifest \(kind='encoder'\)"),
], ids=["not-json", "no-files", "wrong-kind"])
def test_bad_manifest_is_rejected(tmp_path, body, pattern):
    path = tmp_path / "d" / "manifest.json"
    path.parent.mkdir()
    path.write_bytes(body)
    with pytest.raises(UftError) as e:
        load_dataset(str(path))
    one_line_error(e, pattern)


def test_manifest_lists_hashes_and_sizes(tmp_path):
    store = LocalStore(tmp_path)
    uri = publish(store, "x", {"a.bin": b"abc"}, {"kind": "thing"})
    manifest = json.loads(Path(uri).read_bytes())
    assert manifest["files"]["a.bin"] == {
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "bytes": 3}
    assert verify_manifest(uri)["kind"] == "thing"


def test_rerun_repairs_a_corrupt_cached_output(tmp_path):
    """The ingest cache record points at a dataset whose shard was damaged after publication: the
    rerun must notice, recompute and republish, not hand out the damaged dataset again."""
    from uft import steps

    store_uri = str(tmp_path / "store")
    first = steps.ingest("optdigits", store_uri, role="target", image_size=8, channels=1, limit=60)
    assert not first["cached"]
    manifest, store, prefix = read_manifest(first["dataset_uri"])
    shard = next(iter(manifest["files"]))
    assert store.exists(shard)
    store.put(shard, b"garbage")
    with pytest.raises(UftError):
        load_dataset(first["dataset_uri"])
    again = steps.ingest("optdigits", store_uri, role="target", image_size=8, channels=1, limit=60)
    assert not again["cached"] and again["dataset_uri"] == first["dataset_uri"]
    assert len(load_dataset(again["dataset_uri"])) == 60
    third = steps.ingest("optdigits", store_uri, role="target", image_size=8, channels=1, limit=60)
    assert third["cached"] and third["dataset_sha"] == first["dataset_sha"]
