"""The streamed evaluation steps (k-NN as a merged top-k over blocks of train features, linear
probes fitted on gathered rows and scored block by block) give the numbers of the dense
implementation they replaced, on the bundled optdigits data: the reference below is that
implementation, written out (all features in memory, one similarity matrix, sklearn on all rows).

Measured here: accuracies are bit-identical (the same float32 / float64 values), and so are the k
neighbour similarities; only neighbours of exactly equal similarity may be listed in another order
(the same labels per row). Blocking could in principle make a float32 dot product round otherwise
(another matrix-product kernel); then a neighbour at a near-tie could change: a tolerance of one
float32 ulp on similarities is what the blocking can cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uft import steps
from uft.evaluate import knn as knn_mod
from uft.evaluate.features import feature_blocks, gather_features, stream_features
from uft.evaluate.linear import few_label_probe, full_probe_rows, linear_probe_accuracy, linear_probes_streamed
from uft.store import open_store

IMG = dict(image_size=16, channels=1)


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """The bundled optdigits data (every row: 20 % test, 20 % of the rest val) and a tiny random encoder, published."""
    from uft.models.artifact import load_encoder, publish_encoder
    from uft.models.encoders import build_encoder

    root = tmp_path_factory.mktemp("eval-streamed")
    store_uri = str(root / "store")
    # tracking is off: tests/conftest.py's _no_ambient_tracking
    tgt = steps.ingest("optdigits", store_uri, role="target", test_fraction=0.2, **IMG)["dataset_uri"]
    torch.manual_seed(0)
    spec = {"name": "tiny", "in_channels": 1, "kwargs": {"width": 8}}
    enc_uri = publish_encoder(open_store(store_uri), "models/x", build_encoder("tiny", in_channels=1, width=8), spec, {})
    enc, _ = load_encoder(enc_uri)
    (ftr, ytr), (fte, yte) = (stream_features(enc, tgt, sp) for sp in ("train", "test"))
    return dict(root=root, store=store_uri, tgt=tgt, enc_uri=enc_uri, enc=enc, ftr=ftr, ytr=ytr, fte=fte, yte=yte)


def _dense_knn(ftr, ytr, fte, num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 2048):
    """The replaced implementation: every train feature normalised at once, (chunk, N) similarities."""
    k = min(k, len(ftr))
    chunk = max(1, min(chunk, 2**26 // max(1, len(ftr))))
    tr = F.normalize(ftr.float(), dim=1)
    preds, sims, labels = [], [], []
    for i in range(0, len(fte), chunk):
        te = F.normalize(fte[i: i + chunk].float(), dim=1)
        sim, idx = (te @ tr.T).topk(k, dim=1)
        votes = torch.zeros(len(te), num_classes)
        votes.scatter_add_(1, ytr[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
        sims.append(sim)
        labels.append(ytr[idx])
    return torch.cat(preds), torch.cat(sims), torch.cat(labels)


def test_knn_eval_equals_the_dense_knn(art, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ftr, ytr, fte, yte = art["ftr"], art["ytr"], art["fte"], art["yte"]
    assert len(ftr) > 1024 and len(fte) > 300  # the whole bundled set: several blocks below
    pred, sims, labels = _dense_knn(ftr, ytr, fte, 10)
    dense = float((pred == yte).float().mean())

    got = steps.knn_eval(art["enc_uri"], art["tgt"], str(tmp_path / "out"), tag="t")["metrics"]["knn"]
    assert got == dense

    # Small blocks: train features one encoder batch at a time (2 blocks), test rows 100 at a time
    # (4 passes over the train split).
    small = knn_mod.knn_accuracy_streamed(lambda: feature_blocks(art["enc"], art["tgt"], "train", block_rows=1),
                                          ((fte[i: i + 100], yte[i: i + 100]) for i in range(0, len(fte), 100)), 10)
    assert small == dense

    s, y = knn_mod.knn_topk(fte, ((ftr[i: i + 700], ytr[i: i + 700]) for i in range(0, len(ftr), 700)), 20)
    assert torch.equal(s, sims)  # the same similarities, bit for bit
    # Neighbours of exactly equal similarity may be listed in another order: the same labels per row.
    assert torch.equal(y.sort(1).values, labels.sort(1).values)
    assert torch.equal(knn_mod.knn_predict(ftr, ytr, fte, 10), pred)


def test_linear_eval_equals_the_dense_probes(art, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ftr, ytr, fte, yte = art["ftr"], art["ytr"], art["fte"], art["yte"]
    shots, draws, seed = [1, 5], 3, 0
    dense: dict[str, float] = {}
    for k in shots:
        dense[f"linear_{k}shot"], dense[f"linear_{k}shot_std"] = few_label_probe(ftr, ytr, fte, yte, k, draws=draws, seed=seed)
    dense["linear_full"] = linear_probe_accuracy(ftr.numpy(), ytr.numpy(), fte.numpy(), yte.numpy())

    got = steps.linear_eval(art["enc_uri"], art["tgt"], str(tmp_path / "out"), tag="t", shots="1,5", draws=draws,
                            seed=seed)["metrics"]
    assert got == dense


def test_gather_features_are_the_rows_of_the_whole_matrix(art):
    rows = np.array([0, 1, 255, 256, 1000, len(art["ftr"]) - 1])
    got = gather_features(art["enc"], art["tgt"], "train", rows)
    assert torch.equal(got, art["ftr"][rows])


def test_full_probe_sample_is_bounded_uniform_and_repeatable(art):
    assert np.array_equal(full_probe_rows(500, 0, cap=1000), np.arange(500))  # small: every row
    a, b = full_probe_rows(1_000_000, 3, cap=1000), full_probe_rows(1_000_000, 3, cap=1000)
    assert np.array_equal(a, b) and len(np.unique(a)) == 1000 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, full_probe_rows(1_000_000, 4, cap=1000))
    assert a.min() < 100_000 and a.max() > 900_000  # spread over the whole range
    # Above the cap, the full probe is the dense probe on exactly the sampled rows.
    ftr, ytr, fte, yte = (x.numpy() for x in (art["ftr"], art["ytr"], art["fte"], art["yte"]))
    rows = full_probe_rows(len(ytr), 0, cap=600)
    from uft.evaluate import linear

    orig = linear.full_probe_rows
    try:
        linear.full_probe_rows = lambda n, seed: orig(n, seed, cap=600)
        got = linear_probes_streamed(ytr, lambda r: ftr[r], [(fte[i: i + 300], yte[i: i + 300]) for i in range(0, len(yte), 300)],
                                     [], 1, 0)
    finally:
        linear.full_probe_rows = orig
    assert got == {"linear_full": linear_probe_accuracy(ftr[rows], ytr[rows], fte, yte)}
