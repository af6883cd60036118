"""Every KFP component called through ``.python_func`` (the body that runs in the container), chained
on a tiny slice of the bundled data, against a local-directory store and MLflow on sqlite."""

from __future__ import annotations

import json

import pytest
from kfp import dsl

from components.finalize import finalize
from components.holistic import holistic
from components.ingest import ingest
from components.knn_eval import knn_eval
from components.linear_eval import linear_eval
from components.mix import mix
from components.pretrain import pretrain
from components.report import report
from components.ssl_finetune import ssl_finetune
from components.subsample_source import subsample_source

RUN = dict(run_id="ctest", job_id="job-1", experiment="components")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Run the DAG's components in order once; tests inspect the outputs. The MLflow env is set for
    this module only: a leak would switch tracking on for later tests that expect it off."""
    tmp = tmp_path_factory.mktemp("chain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("UFT_MLFLOW_ARTIFACTS", str(tmp / "mlartifacts"))
        yield _run_chain(tmp)


def _run_chain(tmp) -> dict:
    store = str(tmp / "store")
    out: dict = {"store": store, "tmp": tmp}
    out["src"] = ingest.python_func(spec="mnist", store_uri=store, role="source", image_size=16, channels=1, limit=400,
                                    test_fraction=0.25, seed=0, **RUN)
    out["tgt"] = ingest.python_func(spec="optdigits", store_uri=store, role="target", image_size=16, channels=1,
                                    limit=300, test_fraction=0.5, seed=0, **RUN)
    src_uri, src_sha = out["src"]
    tgt_uri, _ = out["tgt"]
    out["base"] = pretrain.python_func(source_uri=src_uri, source_sha=src_sha, store_uri=store, encoder="tiny",
                                       encoder_width=8, method="simclr", steps=4, batch_size=32, lr=1e-3, seed=0,
                                       pretrained_encoder="", checkpoint_every=2, **RUN)
    out["replay"] = subsample_source.python_func(source_uri=src_uri, source_sha=src_sha, store_uri=store, rule="uniform",
                                                 size=50, seed=0, encoder_uri=out["base"][0], target_uri=tgt_uri, **RUN)
    out["plan"] = mix.python_func(store_uri=store, op="mixup", alpha=1.0, fraction=0.25, pairing="target_source")
    out["ft"] = ssl_finetune.python_func(encoder_uri=out["base"][0], target_uri=tgt_uri, store_uri=store, source_uri=src_uri,
                                         replay_uri=out["replay"][0], plan_uri=out["plan"][0], method="simclr", steps=4,
                                         batch_size=32, lr=1e-3, replay_ratio=0.5, radreg_weight=0.01, seed=0,
                                         checkpoint_every=2, **RUN)
    metrics = {}
    for tag, enc in (("base", out["base"][0]), ("finetuned", out["ft"][0])):
        m = dsl.Metrics(name="metrics", uri=str(tmp / f"lin-{tag}"))
        metrics[f"linear_{tag}"] = linear_eval.python_func(encoder_uri=enc, target_uri=tgt_uri, store_uri=store, tag=tag,
                                                           shots="1,5", draws=2, seed=0, metrics=m, **RUN)
        out[f"lin_metrics_{tag}"] = m.metadata
        k = dsl.Metrics(name="metrics", uri=str(tmp / f"knn-{tag}"))
        metrics[f"knn_{tag}"] = knn_eval.python_func(encoder_uri=enc, target_uri=tgt_uri, store_uri=store, tag=tag,
                                                     source_uri=src_uri, k=5, metrics=k, **RUN)
        out[f"knn_metrics_{tag}"] = k.metadata
    h = dsl.Metrics(name="metrics", uri=str(tmp / "hol"))
    out["holistic"] = holistic.python_func(encoder_uri=out["base"][0], source_uri=src_uri, target_uri=tgt_uri,
                                           store_uri=store, seen="0,1,2,3,4", methods="naive,frozen_head", steps=3, seed=0,
                                           source_steps=10,
                                           metrics=h, **RUN)
    out["hol_metrics"] = h.metadata
    md = dsl.Markdown(name="markdown", uri=str(tmp / "report.md"))
    ht = dsl.HTML(name="html", uri=str(tmp / "report.html"))
    out["report"] = report.python_func(
        linear_base=metrics["linear_base"], knn_base=metrics["knn_base"], linear_finetuned=metrics["linear_finetuned"],
        knn_finetuned=metrics["knn_finetuned"], holistic=out["holistic"], store_uri=store, source_uri=src_uri,
        target_uri=tgt_uri,
        base_encoder_uri=out["base"][0], finetuned_encoder_uri=out["ft"][0], ssl_method="simclr", replay_rule="uniform",
        replay_size=50, replay_ratio=0.5, mix_op="mixup", finetune_steps=4, seed=0, markdown=md, html=ht, **RUN)
    out["md_path"], out["html_path"] = md.path, ht.path
    return out


def test_ingest_outputs_are_content_addressed_manifests(chain):
    uri, sha = chain["src"]
    assert uri.endswith("manifest.json") and len(sha) == 64
    from uft.store import manifest_sha

    assert manifest_sha(uri) == sha


def test_encoders_are_published_and_loadable(chain):
    from uft.models.artifact import load_encoder

    for name in ("base", "ft"):
        enc, manifest = load_encoder(chain[name][0])
        assert manifest["kind"] == "encoder" and enc.feature_dim == 32  # width 8 → 4·8


def test_finetune_changed_the_encoder(chain):
    from uft.models.artifact import load_encoder, state_fingerprint

    assert state_fingerprint(load_encoder(chain["base"][0])[0]) != state_fingerprint(load_encoder(chain["ft"][0])[0])


def test_replay_manifest_lists_row_ids_of_the_source(chain):
    from uft.store import read_manifest, read_verified

    manifest, store, prefix = read_manifest(chain["replay"][0])
    ids = json.loads(read_verified(store, prefix, manifest, "row_ids.json", chain["replay"][0]))
    assert len(ids) == 50 == len(set(ids))


def test_eval_components_log_kfp_metrics(chain):
    for tag in ("base", "finetuned"):
        lin = chain[f"lin_metrics_{tag}"]
        assert {f"{tag}_linear_1shot", f"{tag}_linear_5shot", f"{tag}_linear_full"} <= set(lin)
        assert all(0.0 <= v <= 1.0 for v in lin.values())
        knn = chain[f"knn_metrics_{tag}"]
        assert {f"{tag}_knn", f"{tag}_source_knn"} == set(knn)
    assert {"source_overall", "naive_unseen", "frozen_head_seen"} <= set(chain["hol_metrics"])
    hol = chain["hol_metrics"]  # the start check comes with the rows (a tiny source model here, so either verdict)
    assert 0.0 <= hol["start_accuracy"] <= 1.0 and hol["start_degenerate"] in (0.0, 1.0)


def test_report_written_with_plot(chain):
    md = open(chain["md_path"]).read()
    assert "Target accuracy" in md and "Holistic transfer" in md and "accuracy.png" in md
    assert "## Data" in md and "projection.png" in md and "loss.png" in md
    assert "data:image/png;base64" in open(chain["html_path"]).read()


def test_mlflow_has_one_parent_and_nested_step_runs(chain):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("components")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("uft.step") == "pipeline"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    steps = {r.data.tags["uft.step"] for r in children}
    assert {"ingest_source", "ingest_target", "pretrain", "subsample_source", "ssl_finetune", "linear_eval_base",
            "knn_eval_finetuned", "holistic", "report"} <= steps
    assert all(r.info.status == "FINISHED" for r in children)
    hol = next(r for r in children if r.data.tags["uft.step"] == "holistic")
    assert hol.data.tags["degenerate_start"] == ("true" if hol.data.metrics["start_degenerate"] else "false")
    ft = next(r for r in children if r.data.tags["uft.step"] == "ssl_finetune")
    assert "ssl_loss" in ft.data.metrics and ft.data.params["method"] == "simclr"
    models = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert any(m.source_run_id == ft.info.run_id and m.name == "encoder" for m in models)  # the logged encoder


def test_finalize_ends_parent_run(chain):
    from mlflow.tracking import MlflowClient

    class Status:
        state = "FAILED"

    finalize.python_func(status=Status(), **RUN)
    client = MlflowClient()
    exp = client.get_experiment_by_name("components")
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("uft.step") == "pipeline"][0]
    assert parent.info.status == "FAILED"


def test_rerun_hits_cache_and_reuses_mlflow_runs(chain):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("components")
    before = len(client.search_runs([exp.experiment_id]))
    src_uri, src_sha = chain["src"]
    again = pretrain.python_func(source_uri=src_uri, source_sha=src_sha, store_uri=chain["store"], encoder="tiny",
                                 encoder_width=8, method="simclr", steps=4, batch_size=32, lr=1e-3, seed=0,
                                 pretrained_encoder="", checkpoint_every=2, **RUN)
    assert tuple(again) == tuple(chain["base"])
    assert len(client.search_runs([exp.experiment_id])) == before
