"""Source fingerprints (what makes ingest cacheable), artifact pointers and the one store fallback."""

from __future__ import annotations

import json
import os

import pytest

from uft.data.fingerprint import source_fingerprint
from uft.errors import UftError
from uft.lineage import describe, emit, resolve
from uft.store import LocalStore, manifest_sha, publish, step_store


def _tree(root) -> None:
    for c in ("0", "1"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for j in range(2):
            (root / c / f"{j}.png").write_bytes(bytes([int(c), j]) * 10)


def test_directory_fingerprint_is_stable_and_sees_added_changed_removed_files(tmp_path):
    root = tmp_path / "imgs"
    _tree(root)
    fp = source_fingerprint(str(root))
    assert len(fp) == 64 and source_fingerprint(str(root)) == fp  # stable
    (root / ".DS_Store").write_bytes(b"junk")  # hidden files are not data (the store skips them too)
    assert source_fingerprint(str(root)) == fp

    (root / "1" / "2.png").write_bytes(b"new")  # a file added
    added = source_fingerprint(str(root))
    assert added != fp

    f = root / "0" / "0.png"  # a file changed: same size, new mtime
    st = f.stat()
    f.write_bytes(bytes(reversed(f.read_bytes())))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    changed = source_fingerprint(str(root))
    assert changed not in (fp, added)

    (root / "1" / "2.png").unlink()  # a file removed
    assert source_fingerprint(str(root)) not in (fp, added, changed)


def test_the_spec_is_part_of_the_fingerprint(tmp_path):
    """Entries are relative to the root, but the spec is in the key too: the same files elsewhere are another source."""
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a)
    _tree(b)
    assert source_fingerprint(str(a)) != source_fingerprint(str(b))


def test_bundled_and_manifest_fingerprints(tmp_path):
    assert source_fingerprint("mnist") == source_fingerprint("mnist") != source_fingerprint("optdigits")
    store = LocalStore(tmp_path / "store")
    uri = publish(store, "datasets/x", {"a.bin": b"1"}, {"kind": "dataset"})
    before = source_fingerprint(uri)
    publish(store, "datasets/x", {"a.bin": b"2"}, {"kind": "dataset"})  # republished: new content hash
    assert source_fingerprint(uri) != before


def test_s3_fingerprint_follows_the_listing(s3_env, bucket):
    import boto3

    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="data/0/a.png", Body=b"aa")
    spec = f"s3://{bucket}/data"
    fp = source_fingerprint(spec)
    assert source_fingerprint(spec) == fp
    s3.put_object(Bucket=bucket, Key="data/0/b.png", Body=b"bb")
    added = source_fingerprint(spec)
    s3.put_object(Bucket=bucket, Key="data/0/a.png", Body=b"ab")  # same size, new bytes → new ETag
    changed = source_fingerprint(spec)
    assert len({fp, added, changed}) == 3
    s3.put_object(Bucket=bucket, Key="elsewhere/c.png", Body=b"cc")  # outside the prefix: no change
    assert source_fingerprint(spec) == changed


@pytest.mark.parametrize("spec, match", [("", "empty"), ("/no/such/dir", "neither bundled nor an existing directory")])
def test_bad_specs_are_one_line_errors(spec, match):
    with pytest.raises(UftError, match=match):
        source_fingerprint(spec)


def test_empty_directory_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UftError, match="holds no files"):
        source_fingerprint(str(tmp_path / "empty"))


def test_pointer_round_trip_and_stale_pointer(tmp_path):
    store = LocalStore(tmp_path / "store")
    uri = publish(store, "replay/k", {"row_ids.json": b"[1, 2]"}, {"kind": "replay", "rule": "uniform", "size": 2})
    meta: dict = {}
    emit(tmp_path / "out" / "replay", meta, uri)
    assert meta["manifest_uri"] == uri and meta["content_hash"] == manifest_sha(uri) and meta["size"] == 2
    assert json.loads((tmp_path / "out" / "replay").read_text()) == meta
    assert resolve(meta, None, name="replay") == (uri, manifest_sha(uri))
    assert resolve({}, tmp_path / "out" / "replay", name="replay") == (uri, manifest_sha(uri))  # pointer file only
    with pytest.raises(UftError, match="input artifact replay carries no manifest_uri"):
        resolve({}, tmp_path / "nothing", name="replay")
    publish(store, "replay/k", {"row_ids.json": b"[3]"}, {"kind": "replay", "rule": "uniform", "size": 1})
    with pytest.raises(UftError, match="content hash is now"):
        resolve(meta, None, name="replay")
    assert describe(uri)["size"] == 1


def test_step_store_falls_back_to_the_bucket_setting(monkeypatch, tmp_path):
    """The one place an empty store_uri becomes s3://$UFT_BUCKET/uft (the components no longer do it)."""
    import uft.store as store_mod

    seen = []
    monkeypatch.setattr(store_mod, "open_store", lambda uri, **kw: seen.append((uri, kw)) or uri)
    monkeypatch.setenv("UFT_BUCKET", "team-b")
    step_store("")
    step_store(str(tmp_path))
    assert seen == [("s3://team-b/uft", {"create_bucket": True}), (str(tmp_path), {"create_bucket": True})]


def test_cacheable_steps_key_mlflow_on_the_pod_run_id(monkeypatch):
    from uft.tracking import KFP_RUN_ENV, pod_run_key

    monkeypatch.delenv(KFP_RUN_ENV, raising=False)
    assert pod_run_key("") == "local" and pod_run_key("cfg-1") == "cfg-1"
    monkeypatch.setenv(KFP_RUN_ENV, "6f1c-run")
    assert pod_run_key("") == "6f1c-run" and pod_run_key("cfg-1") == "cfg-1"  # an explicit run id wins


def test_ingest_of_user_data_is_cached_on_its_fingerprint(tmp_path, monkeypatch):
    """With a fingerprint, the store cache serves unchanged user data without re-decoding; a new
    file gives a new fingerprint and a new dataset. Without one, user data are re-read every time."""
    import numpy as np
    from PIL import Image

    from uft import steps

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root, store = tmp_path / "imgs", str(tmp_path / "store")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("0", "1"):
            (root / split / c).mkdir(parents=True)
            for j in range(3):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / split / c / f"{j}.png")
    kw = dict(role="target", image_size=8, channels=1)
    fp = source_fingerprint(str(root))
    first = steps.ingest(str(root), store, fingerprint=fp, **kw)
    again = steps.ingest(str(root), store, fingerprint=source_fingerprint(str(root)), **kw)
    assert first["cached"] is False and again["cached"] is True and again["dataset_uri"] == first["dataset_uri"]
    assert steps.ingest(str(root), store, **kw)["cached"] is False  # no fingerprint: re-read
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / "train" / "1" / "new.png")
    grown = steps.ingest(str(root), store, fingerprint=source_fingerprint(str(root)), **kw)
    assert grown["cached"] is False and grown["num_rows"] == first["num_rows"] + 1


# --- what an encoder trained on -------------------------------------------------------------------

def test_training_record_and_what_can_be_told_about_trained_rows(tiny_raw, tmp_path):
    """The record names each dataset, its split rule and key space; trained rows are proven disjoint
    on the same content-split dataset, compared by content on another of the same key space, and
    cannot be told across key spaces (another image size), for no record, or for a pre-lineage
    version whose dataset is gone."""
    import numpy as np

    from uft.data.dataset import load_dataset
    from uft.data.ingest import SPLIT_RULE, content_keys, ingest
    from uft.lineage import LINEAGE_TAG, dataset_keys, record_from_tags, trained_keys, training_record

    store = LocalStore(tmp_path)
    a = ingest(tiny_raw, store, name="t", image_size=8, channels=1, test_fraction=0.3, val_fraction=0.3)
    b = ingest(tiny_raw, store, name="t", image_size=8, channels=1, test_fraction=0.3, val_fraction=0.1)
    big = ingest(tiny_raw, store, name="t", image_size=12, channels=1, test_fraction=0.3, val_fraction=0.3)
    rec = training_record(a, b)
    assert rec["target"]["split_rule"] == SPLIT_RULE and rec["target"]["space"] == [8, 8, 1, "keep"]
    assert record_from_tags({LINEAGE_TAG: json.dumps(rec)}) == rec

    keys, how = trained_keys(rec, "target", a)
    assert keys == set() and "split by content" in how
    other = {"target": {**rec["target"], "uri": b, "sha": manifest_sha(b)}}
    keys, how = trained_keys(other, "target", a)
    ds = load_dataset(b)
    train = content_keys(np.ascontiguousarray(ds.images.numpy()[ds.split == "train"].transpose(0, 2, 3, 1)))
    assert keys == {k.tobytes() for k in train} == dataset_keys(b) and "compared by content" in how
    assert trained_keys(rec, "target", big)[0] is None and "another size" in trained_keys(rec, "target", big)[1]
    assert trained_keys(None, "target", a)[0] is None
    gone = record_from_tags({"uft.target_uri": str(tmp_path / "gone" / "manifest.json")})
    assert gone["legacy"] and trained_keys(gone, "target", a)[0] is None
    assert trained_keys({"target": "none"}, "target", a) == (set(), "it never trained on target data")
