"""The issue-4 sweep's core on a micro config: the grid of rows it reports and that its numbers are accuracies."""

from __future__ import annotations

import pytest

from bench.uft_sweep import (
    DEFAULT_VARIANTS,
    METRICS,
    SweepConfig,
    aggregate,
    markdown_table,
    paired_vs_naive,
    render,
    run_sweep,
    target_subset,
)
from tests.micro_pair import register_micro_pair


@pytest.fixture
def micro_pair(monkeypatch):
    return register_micro_pair(monkeypatch, source_limit=300, target_limit=400, target_test_fraction=0.4)


def test_micro_sweep_rows_and_ranges(tmp_path, micro_pair, monkeypatch):
    cfg = SweepConfig(pairs=[micro_pair], sizes=[40], seeds=[0], objectives=["simclr"], pretrain_steps=2,
                      pretrain_batch=32, finetune_steps=2, batch_size=32, replay_mult=2, draws=2, threads=1,
                      image_size=8)
    result = run_sweep(cfg, str(tmp_path / "store"), log=lambda s: None)
    cells = result["cells"]
    VARIANTS = DEFAULT_VARIANTS
    assert [(c["variant"], c["size"], c["seed"]) for c in cells] == [(v, 40, 0) for v in VARIANTS]
    for c in cells:
        assert set(METRICS) <= set(c["metrics"])
        for m in METRICS:
            assert 0.0 <= c["metrics"][m] <= 1.0, (c["variant"], m, c["metrics"][m])
    # Finetuned variants produce different encoders than the base (so the comparison is not vacuous).
    by_variant = {c["variant"]: c["metrics"] for c in cells}
    assert any(by_variant[v] != by_variant["none"] for v in VARIANTS[1:])

    rows = aggregate(cells, shared_base=False)  # default: each objective its own base
    assert [(r["objective"], r["variant"]) for r in rows] == [("simclr", v) for v in VARIANTS]
    for r in rows:
        for m in METRICS:
            mean, std, n = r["stats"][m]
            assert 0.0 <= mean <= 1.0 and std == 0.0 and n == 1
    table = markdown_table(rows)
    assert len(table.splitlines()) == 2 + len(VARIANTS)
    assert result["timing"]["total"] > 0
    paired = paired_vs_naive(cells).splitlines()[2:]  # one row per non-naive variant, naive − naive left out
    assert [line.split(" | ")[2] for line in paired] == [v for v in VARIANTS if v != "naive"]

    # The table lands in MLflow as one run: a metric per cell (the same numbers) and the md/json.
    from mlflow.tracking import MlflowClient

    from bench.uft_sweep import log_to_mlflow, metric_key

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("UFT_MLFLOW_ARTIFACTS", str(tmp_path / "mlartifacts"))
    run_id = log_to_mlflow(result, cfg, "cmd", experiment="sweep-test")
    run = MlflowClient().get_run(run_id)
    for r in rows:
        assert run.data.metrics[f"{metric_key(r, 'knn')}_mean"] == pytest.approx(r["stats"]["knn"][0])
    assert "micro/40/simclr/replay_mixing/linear_1shot_mean" in run.data.metrics
    assert run.data.params["sizes"] == "40" and run.data.tags["uft.kind"] == "sweep"
    assert {"uft_sweep.md", "uft_sweep.json"} <= {f.path for f in MlflowClient().list_artifacts(run_id)}


def test_seeds_are_independent_and_foreign_bases_are_labelled(tmp_path, micro_pair):
    """Each seed pretrains its own base and draws its own replay set; an objective finetuned on
    another objective's base is labelled so, and its SSL head is fresh (naive_fresh_head always)."""
    cfg = SweepConfig(pairs=[micro_pair], sizes=[40], seeds=[0, 1], objectives=["act"], pretrain_method="simclr",
                      variants=["none", "naive", "replay"], pretrain_steps=2, pretrain_batch=32, finetune_steps=2,
                      batch_size=32, replay_mult=2, draws=1, shots="1", threads=1, image_size=8)
    cells = run_sweep(cfg, str(tmp_path / "store"), log=lambda s: None)["cells"]
    none = [c["metrics"] for c in cells if c["variant"] == "none"]
    assert len(none) == 2 and none[0] != none[1]  # two bases (seed 0 and 1), not one shared
    assert {c["base_method"] for c in cells} == {"simclr"}
    assert all(c["ssl_head"] == "fresh head: base pretrained with simclr, finetuning with act"
               for c in cells if c["variant"] != "none")
    rows = aggregate(cells, shared_base=True)
    assert [(r["objective"], r["variant"]) for r in rows] == [
        ("—", "none"), ("simclr base → act finetune", "naive"), ("simclr base → act finetune", "replay")]
    assert all(r["stats"]["knn"][2] == 2 for r in rows)  # n = seeds
    text = render({"cells": cells, "timing": {"ingest": 0, "pretrain": 0, "finetune": 0, "eval": 0}}, cfg, "cmd")
    assert "| simclr base → act finetune | replay − naive |" not in text  # the objective is its own column
    assert "| micro | simclr base → act finetune | replay |" in text and "(seeds > 0 / seeds)" in text

    from uft.store import read_manifest

    stores = tmp_path / "store" / "replay"
    replay_sets = {read_manifest(str(m))[0]["files"]["row_ids.json"]["sha256"] for m in stores.rglob("manifest.json")}
    assert len(replay_sets) == 2  # one replay set per seed


def test_target_subset_is_nested_unlabelled_and_checks_size(tmp_path, micro_pair):
    from uft import steps
    from uft.data.dataset import load_dataset
    from uft.errors import UftError

    store = str(tmp_path / "store")
    tgt = steps.ingest("optdigits", store, role="target", image_size=8, channels=1, limit=200, test_fraction=0.5)
    small = load_dataset(target_subset(tgt["dataset_uri"], store, 20, image_size=8))
    big = load_dataset(target_subset(tgt["dataset_uri"], store, 50, image_size=8))
    assert len(small) == 20 and len(big) == 50
    assert (small.labels == -1).all() and set(small.split) == {"train"}
    big_rows = {bytes(x.numpy().tobytes()) for x in big.images}
    assert all(bytes(x.numpy().tobytes()) in big_rows for x in small.images)  # 20 ⊂ 50
    with pytest.raises(UftError, match="exceeds the target train split"):
        target_subset(tgt["dataset_uri"], store, 150, image_size=8)
