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

RUN = dict(run_id="ctest", experiment="components")  # cacheable steps: no job id (see uft.tracking.pod_run_key)
RUN_JOB = dict(RUN, job_id="job-1")  # the never-cached promote, report and finalize


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Run the DAG's components in order once; tests inspect the outputs. The MLflow env is set for
    this module only: a leak would switch tracking on for later tests that expect it off."""
    tmp = tmp_path_factory.mktemp("chain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("UFT_MLFLOW_ARTIFACTS", str(tmp / "mlartifacts"))
        yield _run_chain(tmp)


def _art(kind, tmp, name: str):
    """An artifact as KFP hands it to a component: a local file path (KFP's pipeline root) as URI."""
    return kind(name=name, uri=str(tmp / "kfp" / name))


def _run_chain(tmp) -> dict:
    """Each producer fills its typed output artifact; the consumers get nothing but those artifacts."""
    from components.fingerprint import fingerprint
    from components.mix import mix as mix_c
    from components.promote import promote

    store = str(tmp / "store")
    out: dict = {"store": store, "tmp": tmp}
    src, tgt = _art(dsl.Dataset, tmp, "source"), _art(dsl.Dataset, tmp, "target")
    out["fp"] = fingerprint.python_func(spec="mnist")
    ingest.python_func(spec="mnist", fingerprint=out["fp"], store_uri=store, role="source", image_size=16, channels=1,
                       limit=400, test_fraction=0.25, seed=0, dataset=src, **RUN)
    ingest.python_func(spec="optdigits", fingerprint=fingerprint.python_func(spec="optdigits"), store_uri=store,
                       role="target", image_size=16, channels=1, limit=300, test_fraction=0.5, seed=0, dataset=tgt, **RUN)
    out["src"], out["tgt"] = src, tgt
    base, ft = _art(dsl.Model, tmp, "base"), _art(dsl.Model, tmp, "finetuned")
    pretrain.python_func(source=src, store_uri=store, encoder="tiny", encoder_width=8, method="simclr", steps=4,
                         batch_size=32, lr=1e-3, seed=0, pretrained_encoder="", checkpoint_every=2, model=base, **RUN)
    out["base"] = base
    replay = _art(dsl.Dataset, tmp, "replay")
    subsample_source.python_func(source=src, encoder=base, target=tgt, store_uri=store, rule="uniform", size=50, seed=0,
                                 replay=replay, **RUN)
    out["replay"] = replay
    plan = _art(dsl.Artifact, tmp, "plan")
    mix_c.python_func(store_uri=store, op="mixup", alpha=1.0, fraction=0.25, pairing="target_source", plan=plan)
    out["plan"] = plan
    ssl_finetune.python_func(base=base, target=tgt, source=src, replay=replay, plan=plan, store_uri=store,
                             method="simclr", steps=4, batch_size=32, lr=1e-3, replay_ratio=0.5, radreg_weight=0.01,
                             seed=0, checkpoint_every=2, model=ft, **RUN)
    out["ft"] = ft
    metrics = {}
    for tag, enc in (("base", base), ("finetuned", ft)):
        m = dsl.Metrics(name="metrics", uri=str(tmp / f"lin-{tag}"))
        metrics[f"linear_{tag}"] = linear_eval.python_func(encoder=enc, target=tgt, store_uri=store, tag=tag,
                                                           shots="1,5", draws=2, seed=0, metrics=m, **RUN)
        out[f"lin_metrics_{tag}"] = m.metadata
        k = dsl.Metrics(name="metrics", uri=str(tmp / f"knn-{tag}"))
        metrics[f"knn_{tag}"] = knn_eval.python_func(encoder=enc, target=tgt, source=src, store_uri=store, tag=tag,
                                                     k=5, metrics=k, **RUN)
        out[f"knn_metrics_{tag}"] = k.metadata
    h = dsl.Metrics(name="metrics", uri=str(tmp / "hol"))
    out["holistic"] = holistic.python_func(encoder=base, source=src, target=tgt, store_uri=store, seen="0,1,2,3,4",
                                           methods="naive,frozen_head", steps=3, seed=0, source_steps=10, metrics=h, **RUN)
    out["hol_metrics"] = h.metadata
    hf = dsl.Metrics(name="metrics", uri=str(tmp / "hol-ft"))
    out["holistic_finetuned"] = holistic.python_func(encoder=ft, source=src, target=tgt, store_uri=store,
                                                     seen="0,1,2,3,4", methods="naive", steps=3, seed=0,
                                                     source_steps=10, metrics=hf, tag="finetuned", **RUN)
    p = dsl.Metrics(name="metrics", uri=str(tmp / "promote"))
    out["promote"] = promote.python_func(encoder=ft, base_encoder=base, target=tgt, source=src, store_uri=store,
                                         registered_model="ctest-encoder", margin=0.0, retention_tolerance=1.0, seed=0,
                                         metrics=p, **RUN_JOB)
    md = dsl.Markdown(name="markdown", uri=str(tmp / "report.md"))
    ht = dsl.HTML(name="html", uri=str(tmp / "report.html"))
    out["report_kwargs"] = dict(
        linear_base=metrics["linear_base"], knn_base=metrics["knn_base"], linear_finetuned=metrics["linear_finetuned"],
        knn_finetuned=metrics["knn_finetuned"], holistic=out["holistic"],
        holistic_finetuned=out["holistic_finetuned"], source=src, target=tgt, base_encoder=base,
        finetuned_encoder=ft, store_uri=store, ssl_method="simclr", replay_rule="uniform", replay_size=50,
        replay_ratio=0.5, mix_op="mixup", finetune_steps=4, seed=0, **RUN_JOB)
    out["report"] = report.python_func(markdown=md, html=ht, **out["report_kwargs"])
    out["md_path"], out["html_path"] = md.path, ht.path
    return out


def _uri(artifact) -> str:
    return artifact.metadata["manifest_uri"]


def test_ingest_outputs_are_content_addressed_manifests(chain):
    """The typed output artifact points to the manifest: metadata and pointer file carry its URI and hash."""
    from uft.store import manifest_sha, read_manifest

    for name, kind in (("src", "dataset"), ("tgt", "dataset"), ("base", "encoder"), ("ft", "encoder"),
                       ("replay", "replay"), ("plan", "mix_plan")):
        art = chain[name]
        uri, sha = art.metadata["manifest_uri"], art.metadata["content_hash"]
        assert uri.endswith("manifest.json") and uri.startswith(chain["store"]), name
        assert manifest_sha(uri) == sha and len(sha) == 64, name
        assert art.metadata["kind"] == kind == read_manifest(uri)[0]["kind"], name
        assert json.loads(open(art.path).read()) == art.metadata, name  # the pointer file says the same
    assert chain["src"].metadata["num_rows"] == 400 and chain["src"].metadata["num_classes"] == 10
    assert chain["base"].metadata["encoder"] == "tiny"


def test_consumer_refuses_a_pointer_whose_manifest_changed(chain, tmp_path):
    """A stale artifact (the manifest rewritten since the producer ran) fails with a UftError naming the input."""
    import shutil

    from uft.errors import UftError

    from pathlib import Path

    copy = tmp_path / "ds"
    shutil.copytree(Path(_uri(chain["tgt"])).parent, copy)
    moved = dsl.Dataset(name="target", uri=str(tmp_path / "pointer"),
                        metadata={**chain["tgt"].metadata, "manifest_uri": str(copy / "manifest.json")})
    (copy / "manifest.json").write_bytes((copy / "manifest.json").read_bytes() + b" ")
    m = dsl.Metrics(name="metrics", uri=str(tmp_path / "m"))
    with pytest.raises(UftError, match="input artifact target points to .* content hash is now"):
        linear_eval.python_func(encoder=chain["base"], target=moved, store_uri=chain["store"], tag="x", shots="1",
                                draws=1, seed=0, metrics=m, **RUN)


def test_encoders_are_published_and_loadable(chain):
    from uft.models.artifact import load_encoder

    for name in ("base", "ft"):
        enc, manifest = load_encoder(_uri(chain[name]))
        assert manifest["kind"] == "encoder" and enc.feature_dim == 32  # width 8 → 4·8


def test_finetune_changed_the_encoder(chain):
    from uft.models.artifact import load_encoder, state_fingerprint

    assert state_fingerprint(load_encoder(_uri(chain["base"]))[0]) != state_fingerprint(load_encoder(_uri(chain["ft"]))[0])


def test_replay_manifest_lists_row_ids_of_the_source(chain):
    from uft.store import read_manifest, read_verified

    manifest, store, prefix = read_manifest(_uri(chain["replay"]))
    ids = json.loads(read_verified(store, prefix, manifest, "row_ids.json", _uri(chain["replay"])))
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
    # ...and the verdict logged is the rule's (uft.transfer.holistic.source.start_check, defaults) on the
    # accuracy, chance and top-class share the step published: near chance, or one class taking most
    from uft.store import read_manifest

    check = read_manifest(chain["holistic"])[0]["metrics"]["start_check"]
    acc, chance, share = check["accuracy"], check["chance"], check["top_class_share"]
    assert (hol["start_accuracy"], hol["start_top_class_share"]) == (acc, share) and 0 < chance < 1
    rule = acc < min(2.0 * chance, (1 + chance) / 2) or share > max(0.5, 1.5 * chance)
    assert hol["start_degenerate"] == float(rule), check


def test_report_written_with_plot(chain):
    md = open(chain["md_path"]).read()
    assert "Target accuracy" in md and "Holistic transfer" in md
    for plot in ("accuracy", "projection", "loss"):  # embedded, so the KFP UI shows them without the store
        assert f"![{plot}](data:image/png;base64," in md
    assert "## Data" in md
    assert "data:image/png;base64" in open(chain["html_path"]).read()


def test_report_rerun_reads_the_recorded_report(chain, monkeypatch):
    """The same inputs and parent MLflow run → the recorded report, read back (nothing drawn or
    logged again); another input, or a deleted report file → drawn again."""
    import uft.report
    from uft.store import read_manifest

    drawn = []
    real = uft.report.build_report
    monkeypatch.setattr(uft.report, "build_report", lambda *a, **k: drawn.append(1) or real(*a, **k))
    tmp, kw = chain["tmp"], chain["report_kwargs"]

    def again(**changes):
        md, ht = (kind(name=n, uri=str(tmp / f"again-{n}")) for kind, n in ((dsl.Markdown, "md"), (dsl.HTML, "html")))
        uri = report.python_func(markdown=md, html=ht, **{**kw, **changes})
        return uri, open(md.path).read()

    uri, md = again()
    assert drawn == [] and uri == chain["report"] and md == open(chain["md_path"]).read()
    manifest, store, prefix = read_manifest(uri)
    store.delete(f"{prefix}/report.md" if prefix else "report.md")  # no longer verifies: drawn again
    assert again()[0] == uri and drawn == [1]
    assert read_manifest(uri)[0] == manifest
    again(replay_size=51)  # another config value: a new report
    assert drawn == [1, 1]


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
            "knn_eval_finetuned", "holistic_base", "holistic_finetuned", "report"} <= steps
    assert all(r.info.status == "FINISHED" for r in children)
    hol = next(r for r in children if r.data.tags["uft.step"] == "holistic_base")
    assert hol.data.tags["degenerate_start"] == ("true" if hol.data.metrics["start_degenerate"] else "false")
    ft = next(r for r in children if r.data.tags["uft.step"] == "ssl_finetune")
    assert "ssl_loss" in ft.data.metrics and ft.data.params["method"] == "simclr"
    models = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert any(m.source_run_id == ft.info.run_id and m.name == "encoder" for m in models)  # the logged encoder


def test_finalize_ends_parent_run(chain):
    from mlflow.tracking import MlflowClient

    class Status:
        state = "FAILED"

    finalize.python_func(status=Status(), **RUN_JOB)
    client = MlflowClient()
    exp = client.get_experiment_by_name("components")
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("uft.step") == "pipeline"][0]
    assert parent.info.status == "FAILED"


def test_rerun_hits_cache_and_reuses_mlflow_runs(chain):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("components")
    before = len(client.search_runs([exp.experiment_id]))
    again = dsl.Model(name="model", uri=str(chain["tmp"] / "kfp" / "base-again"))
    pretrain.python_func(source=chain["src"], store_uri=chain["store"], encoder="tiny", encoder_width=8, method="simclr",
                         steps=4, batch_size=32, lr=1e-3, seed=0, pretrained_encoder="", checkpoint_every=2, model=again,
                         **RUN)
    assert again.metadata == chain["base"].metadata  # same inputs → the same manifest, hash and pointer
    assert len(client.search_runs([exp.experiment_id])) == before
