"""Preflight: what `uft run` checks before any service or task starts (uft.preflight)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from uft import preflight as pf
from uft.config import validate_config
from uft.errors import TransientError, UftError


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("L", (4, 4), 7).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _tree(root: Path, classes=("a", "b"), per=2) -> Path:
    for c in classes:
        for i in range(per):
            _img(root / c / f"{i}.png")
    return root


# --- pure checks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("src,tgt,seen,pattern", [
    (list("0123456789"), list("0123456789"), [0, 1], None),
    (list("0123456789"), list("0123456789"), [0, 12], r"holistic_seen classes \[12\] are not among the 10 target classes"),
    (list("0123456789"), ["cat", "dog"], [0], r"target classes \['cat', 'dog'\] are not among the source classes"),
    (["a", "b", "c"], ["a", "b"], [0], r"source has 3 classes but target 2"),
    (["b", "a"], ["a", "b"], [0], r"different orders"),
])
def test_holistic_class_problem(src, tgt, seen, pattern):
    problem = pf.holistic_class_problem(src, tgt, seen)
    if pattern is None:
        assert problem is None
    else:
        assert problem is not None and __import__("re").search(pattern, problem), problem


@pytest.mark.parametrize("uri,bad", [("s3://b/p", False), ("/srv/x", False), ("file:///srv/x", False), ("", True),
                                     ("gs://b/x", True), ("s3:///x", True)])
def test_store_problem(uri, bad):
    assert (pf.store_problem(uri) is not None) == bad


# --- datasets from listings -----------------------------------------------------------------------

def test_folder_layout_classes_and_counts(tmp_path):
    root = _tree(tmp_path / "d", classes=("dog", "cat"), per=3)
    (root / "cat" / "notes.txt").write_text("x")  # not an image: not counted
    lay = pf.inspect_dataset(str(root), "target", remote=False)
    assert lay.kind == "folder" and lay.classes == ("cat", "dog") and lay.files == 6
    flat = pf.inspect_dataset(str(root) + "#unlabelled", "target", remote=False)
    assert flat.classes is None and flat.files == 6


@pytest.mark.parametrize("make,pattern", [
    (lambda t: str(t / "nope"), r"dataset path .*/nope does not exist"),
    (lambda t: (t / "f.png").write_bytes(b"x") and str(t / "f.png"), r"is a file, not a directory"),
    (lambda t: (t / "e").mkdir() or str(t / "e"), r"dataset directory .*/e is empty"),
    (lambda t: _tree(t / "one", classes=("a",)) and str(t / "one"), r"single class directory \('a'\)"),
    (lambda t: (t / "txt" / "a").mkdir(parents=True) or (t / "txt" / "a" / "x.txt").write_text("x") and str(t / "txt"),
     r"has no image files"),
    (lambda t: "mnistt", r"dataset 'mnistt' is neither bundled"),
    (lambda t: " ", r"the target dataset is empty"),
    (lambda t: str(t / "d") + "#bogus", r"unknown option\(s\) bogus"),
])
def test_bad_dataset_specs(tmp_path, make, pattern):
    spec = make(tmp_path)
    with pytest.raises(UftError, match=pattern):
        pf.inspect_dataset(spec, "target", remote=False)


def test_bundled_data_missing_is_reported(tmp_path, monkeypatch):
    from uft.data import sources

    monkeypatch.setattr(sources, "vendor_dir", lambda: tmp_path / "none")
    monkeypatch.setattr(sources, "FASHION_DIRS", (tmp_path / "none",))
    with pytest.raises(UftError, match=r"source 'mnist': bundled MNIST not found .*make install"):
        pf.inspect_dataset("mnist", "source", remote=False)
    with pytest.raises(UftError, match=r"make install-data"):
        pf.inspect_dataset("fashion_mnist", "source", remote=False)
    assert pf.inspect_dataset("optdigits", "source", remote=False).classes == tuple("0123456789")


def test_s3_specs_wait_for_the_remote_stage():
    assert pf.inspect_dataset("s3://bucket/images", "target", remote=False) is None


def test_manifests_are_checked_for_kind(tmp_path):
    m = tmp_path / "ds" / "manifest.json"
    m.parent.mkdir()
    m.write_text(json.dumps({"kind": "dataset", "classes": ["x", "y"], "files": {}}))
    assert pf.inspect_dataset(str(m), "target", remote=False).classes == ("x", "y")
    cfg = validate_config({"pretrained_encoder": str(m)})
    with pytest.raises(UftError, match=r"^pretrained_encoder .* is not an encoder manifest \(kind='dataset'\)"):
        pf.preflight(cfg, stages=("local",))
    with pytest.raises(UftError, match=r"target .*nope/manifest.json does not exist"):
        pf.inspect_dataset(str(tmp_path / "nope" / "manifest.json"), "target", remote=False)


# --- the whole check ------------------------------------------------------------------------------

def test_typo_in_source_fails_fast_naming_the_input():
    """Fast by construction, not by stopwatch: in a fresh process the path typo is reported before
    the config validation imports torch (seconds) — so nothing slow ran."""
    code = ("import sys\nfrom uft.errors import UftError\nfrom uft import preflight as pf\n"
            "try:\n    pf.check({'source': '/nonexistent', 'target': 'optdigits'}, stages=('local',))\n"
            "except UftError as e:\n    print(e)\nprint('torch imported:', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("source: dataset path /nonexistent does not exist"), out
    assert "torch imported: False" in out, out


def test_class_layouts_must_fit_for_holistic_transfer(tmp_path):
    pets = _tree(tmp_path / "pets", classes=("cat", "dog"))
    with pytest.raises(UftError, match=r"target classes \['cat', 'dog'\] are not among the source classes"):
        pf.check({"source": "optdigits", "target": str(pets), "holistic_seen": "0"}, stages=("local",))
    with pytest.raises(UftError, match=r"holistic_seen classes \[2, 3, 4\] are not among the 2 target classes"):
        pf.check({"source": "optdigits", "target": str(pets)}, stages=("local",))
    digits = _tree(tmp_path / "digits", classes=tuple("0123456789"), per=1)
    with pytest.raises(UftError, match=r"holistic_seen classes \[12\]"):
        pf.check({"source": "optdigits", "target": str(digits), "holistic_seen": "0,12"}, stages=("local",))
    cfg, rep = pf.check({"source": "optdigits", "target": str(digits)}, stages=("local",))
    assert rep.datasets["target"].files == 10 and "target folder (10 classes, 10 image files)" in rep.summary()
    # An unlabelled target is finetuned but not scored: no class check.
    pf.check({"source": "optdigits", "target": str(pets) + "#unlabelled"}, stages=("local",))


def test_config_is_validated_after_the_paths(tmp_path):
    with pytest.raises(UftError, match=r"invalid config — finetune_steps"):
        pf.check({"target": str(_tree(tmp_path / "t")), "finetune_steps": 0}, stages=("local",))
    with pytest.raises(UftError, match=r"store URI 'gs://x/y' has an unsupported scheme"):
        pf.check({}, store_uri="gs://x/y", stages=("local",))


def test_needs_remote(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert not pf.needs_remote(validate_config({}), "")
    assert pf.needs_remote(validate_config({}), "s3://b/p")
    assert pf.needs_remote(validate_config({"target": "s3://b/imgs"}), "")


# --- remote stage against the real local S3 server -----------------------------------------------

@pytest.mark.s3
def test_remote_stage_lists_s3_prefixes(s3_env, bucket):
    import boto3

    s3 = boto3.client("s3")
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="PNG")
    for c in ("0", "1"):
        s3.put_object(Bucket=bucket, Key=f"imgs/{c}/x.png", Body=buf.getvalue())
    cfg = validate_config({"source": "optdigits", "target": f"s3://{bucket}/imgs", "holistic_seen": "0"})
    with pytest.raises(UftError, match=r"target classes \['0', '1'\] are not|source has 10 classes but target 2"):
        pf.preflight(cfg, store_uri=f"s3://{bucket}/store", stages=("remote",))
    cfg = validate_config({"source": f"s3://{bucket}/imgs", "target": f"s3://{bucket}/imgs", "holistic_seen": "0"})
    rep = pf.preflight(cfg, store_uri=f"s3://{bucket}/store", stages=("remote",))
    assert rep.datasets["target"] == pf.DatasetLayout(f"s3://{bucket}/imgs", "s3", ("0", "1"), 2)
    with pytest.raises(UftError, match=rf"target: s3://{bucket}/empty has no objects: upload the images"):
        pf.preflight(validate_config({"target": f"s3://{bucket}/empty"}), stages=("remote",))


@pytest.mark.s3
def test_remote_stage_refuses_bad_keys_and_dead_endpoints_in_seconds(s3_env, bucket, monkeypatch):
    """Bounded, not timed (wall time on a shared 2-core machine proves nothing): a dead endpoint is
    given up after REMOTE_ATTEMPTS tries, each call waiting at most REMOTE_TIMEOUT s."""
    from uft.services import free_port

    live = pf.bounded_s3(bucket, "")
    assert live.attempts == pf.REMOTE_ATTEMPTS == 2
    assert live.client.meta.config.connect_timeout <= pf.REMOTE_TIMEOUT
    assert live.client.meta.config.read_timeout <= pf.REMOTE_TIMEOUT
    cfg = validate_config({"target": f"s3://{bucket}/imgs"})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(UftError, match=rf"target: S3 refused the credentials for s3://{bucket}"):
        pf.preflight(cfg, stages=("remote",))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientError, match=r"store: object store at http://127\.0\.0\.1:\d+ unreachable .* after 2 attempts"):
        pf.preflight(cfg, store_uri=f"s3://{bucket}/x", stages=("remote",))


def test_cluster_preflight_checks_what_it_can_from_here():
    pf.for_cluster({"source": "mnist", "target": "optdigits"})
    pf.for_cluster({"source": "s3://b/x", "target": "/data/on/the/cluster"})  # the pods read these
    with pytest.raises(UftError, match=r"target classes \['0', '1', '2', '3', '4'\] are not among the source classes"):
        pf.for_cluster({"source": "fashion_mnist", "target": "mnist", "holistic_seen": "0"})
    with pytest.raises(UftError, match=r"store URI 'gs://x' has an unsupported scheme"):
        pf.for_cluster({"store_uri": "gs://x"})


def test_uft_submit_runs_the_cluster_preflight(monkeypatch):
    from typer.testing import CliRunner

    from uft.cli import app

    res = CliRunner().invoke(app, ["submit", "--host", "http://127.0.0.1:9", "-p", "source=fashion_mnist",
                                   "-p", "target=mnist", "-p", "holistic_seen=0"])
    assert res.exit_code == 2 and "are not among the source classes" in " ".join(res.output.split())
