"""bench.stream_scale at micro size, in process: the generated dataset is a real, smooth,
class-dependent uft dataset, and the loader/training children measure something."""

from __future__ import annotations

import numpy as np
import torch

from bench import stream_scale


def test_generated_blobs_are_a_published_class_dependent_dataset(tmp_path):
    from uft.data.dataset import load_dataset
    from uft.store import verify_manifest

    uri = stream_scale.make_blobs(tmp_path, 300)
    assert stream_scale.make_blobs(tmp_path, 300) == uri  # reused, not regenerated
    verify_manifest(uri)
    ds = load_dataset(uri)
    assert ds.images.shape == (300, 3, 32, 32) and (ds.split == "test").sum() == 6
    x = ds.images.float()
    # smooth: neighbouring pixels agree far more than in uniform noise (correlation ~0)
    a, b = x[..., :, 1:].flatten(), x[..., :, :-1].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.8
    # class-dependent: per-class mean colours differ by more than the noise would allow
    means = torch.stack([x[ds.labels == c].mean((0, 2, 3)) for c in range(10)])
    assert (means.max(0).values - means.min(0).values).min() > 10


def test_children_measure_loader_and_streamed_training(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setattr(stream_scale, "BATCH", 32)
    uri = stream_scale.make_blobs(tmp_path, 300)
    enc = stream_scale.make_encoder(tmp_path)
    for kind in ("loader", "train_stream"):
        out = stream_scale.child(kind, uri, enc, str(tmp_path / "store"), "cpu", 2)
        assert out["ips"] > 0 and out["rss_mb"] > 0 and np.isfinite(out["cpu_s"])
        assert kind == "loader" or out["cpu_ips"] > 0
    out = stream_scale.child("knn", uri, enc, str(tmp_path / "store"), "cpu", 2)
    assert 0 <= out["knn"] <= 1
