"""Resumable training: the real pretrain step, SIGKILLed mid-training and started again, resumes from
its last checkpoint in the S3 store and publishes the same encoder, bit for bit, as a run that was
never interrupted (CPU, one thread, fixed seeds)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from tests.reliability.helpers import s3_client, start_worker

pytestmark = pytest.mark.s3


def _latest_checkpoint(bucket: str, prefix: str) -> int | None:
    s3 = s3_client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/checkpoints/").get("Contents", [])]
    latest = [k for k in keys if k.endswith("latest.json")]
    if not latest:
        return None
    return json.loads(s3.get_object(Bucket=bucket, Key=latest[0])["Body"].read())["step"]


def _published_models(bucket: str, prefix: str) -> list[str]:
    s3 = s3_client()
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/models/").get("Contents", [])]


def _finish(proc, timeout: float = 240) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_sigkill_mid_training_resumes_to_identical_encoder(bucket, tmp_path):
    # The uninterrupted reference run goes to its own prefix (same inputs → same step key there).
    reference = start_worker("pretrain", f"s3://{bucket}/ref", str(tmp_path / "ref.pt"))
    victim = start_worker("pretrain", f"s3://{bucket}/run", str(tmp_path / "killed.pt"), "0.15")
    try:
        deadline = time.monotonic() + 180
        while (step := _latest_checkpoint(bucket, "run")) is None:
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    killed_at = _latest_checkpoint(bucket, "run")
    assert killed_at is not None and 5 <= killed_at < 40, killed_at  # really killed mid-training
    assert _published_models(bucket, "run") == [], "a killed step must not publish anything"

    resumed = _finish(start_worker("pretrain", f"s3://{bucket}/run", str(tmp_path / "resumed.pt")))
    ref = _finish(reference)
    assert resumed["info"]["resumed_from"] == killed_at > 0
    assert ref["info"]["resumed_from"] == 0 and not resumed["cached"]

    a, b = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "resumed.pt")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed encoder differs from the uninterrupted one in {different}"
    assert resumed["files"] == ref["files"]  # the published bytes too: encoder.pt and ssl_head.pt
    # The loss curve survives the restart too (the running sum is checkpointed between log points).
    assert resumed["info"]["losses"] == ref["info"]["losses"]
    # Rerunning the finished step is a cache hit: same published encoder, nothing retrained.
    again = _finish(start_worker("pretrain", f"s3://{bucket}/run", str(tmp_path / "again.pt")))
    assert again["cached"] and again["encoder_uri"] == resumed["encoder_uri"]
