"""The continuous loop, executed locally: `uft trigger --local` on a target directory that grows and
then changes domain. Each triggered run is a real `uft run` (kfp.local, SeaweedFS S3, MLflow on
sqlite) in a child process; the decisions are read from its output and from the registry.

first target → a run, its finetune beats its base → champion; unchanged target → no run; more
target images → a run and a decision against the champion; a target of another domain → a run
and no promotion, with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

# A small budget: the loop, not the encoder, is under test (image size pinned so all runs share a base).
PARAMS = dict(image_size=16, channels=1, encoder="tiny", encoder_width=16, source_limit=2000, pretrain_steps=60,
              finetune_steps=60, batch_size=128, replay_size=200, holistic_methods="naive", holistic_steps=20,
              holistic_source_steps=50, probe_draws=1, label_shots="5", checkpoint_every=1000)


def _write(root, images: np.ndarray, labels: np.ndarray, per_class: slice) -> None:
    """Write ``images[class c][per_class]`` as ``root/<c>/<i>.png`` (an ImageFolder)."""
    from PIL import Image

    for c in np.unique(labels):
        d = root / str(c)
        d.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == c)[per_class]:
            Image.fromarray(images[i, :, :, 0]).save(d / f"{i}.png")


@pytest.mark.slow  # three pipeline runs: 10-30 min on a busy 2-core machine
@pytest.mark.timeout(3000)
def test_local_trigger_plays_the_continuous_loop(s3_server, tmp_path, monkeypatch):
    import shutil

    import boto3
    from mlflow.tracking import MlflowClient

    from uft.cli import app
    from uft.data.sources import load_fashion_mnist, load_optdigits

    try:
        fashion = load_fashion_mnist()
    except Exception as e:  # Debian's dataset-fashion-mnist (`make install-data`)
        pytest.skip(f"Fashion-MNIST not installed: {e}")
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("UFT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("UFT_BUCKET", "loop")
    monkeypatch.setenv("UFT_PROGRESS", "off")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # `uft run`'s own sqlite in the state dir
    boto3.client("s3").create_bucket(Bucket="loop")
    digits = load_optdigits()
    target = tmp_path / "target"
    _write(target, digits.images, digits.labels, slice(0, 40))
    args = ["trigger", "--local", "--target", str(target), "--experiment", "loop",
            *[a for k, v in PARAMS.items() for a in ("-p", f"{k}={v}")]]
    record = next(iter((tmp_path / "state" / "triggers").glob("local-*.json")), None)

    def trigger() -> dict:
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        rec = json.loads(next((tmp_path / "state" / "triggers").glob("local-*.json")).read_text())
        return {"output": res.output, **rec}

    first = trigger()  # 1. the first target: a run; the finetune beats its base → champion
    assert record is None and "target changed" in first["output"]
    assert first["promoted"] and first["promotion"].startswith("champion — uft-encoder version 1"), first["promotion"]
    assert "base encoder" in first["promotion"]

    same = trigger()  # 2. unchanged target: nothing runs
    assert "target unchanged" in same["output"] and "nothing run" in same["output"]
    assert same["run_id"] == first["run_id"] and same["time"] == first["time"]

    _write(target, digits.images, digits.labels, slice(40, 70))  # 3. more images of the same domain
    grown = trigger()
    assert grown["run_id"] != first["run_id"] and grown["promotion"] is not None
    assert "champion version 1" in grown["promotion"]  # decided against the champion, whichever way

    shutil.rmtree(target)  # 4. the target directory now holds another domain (clothes, not digits)
    _write(target, fashion.images, fashion.labels, slice(0, 40))
    moved = trigger()
    assert moved["run_id"] not in (first["run_id"], grown["run_id"])
    assert not moved["promoted"] and "another domain" in moved["promotion"], moved["promotion"]

    import os

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    try:
        champion = MlflowClient().get_model_version_by_alias("uft-encoder", "champion")
        assert champion.tags["uft.pipeline_run_id"] != moved["run_id"]
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    print(json.dumps({k: (r["run_id"], r["promotion"]) for k, r in
                      (("first", first), ("unchanged", same), ("grown", grown), ("other domain", moved))}, indent=1))
