"""The whole DAG through kfp.local (SubprocessRunner) on tiny data, against the real SeaweedFS S3
server and MLflow on sqlite; plus the compiled YAML loaded back and run. The source is the bundled
MNIST; the target is a user ImageFolder tree (train/ and test/, PNG/JPEG/BMP, modes L/RGB/P,
mixed sizes) — the bring-your-own-data path end to end."""

from __future__ import annotations

import pytest
import yaml

from uft.config import validate_config

TINY = dict(source_limit=300, target_limit=200, pretrain_steps=3, finetune_steps=3, batch_size=32, encoder_width=8,
            holistic_steps=2, holistic_source_steps=10, holistic_methods="naive", probe_draws=1, label_shots="1", replay_size=40, checkpoint_every=2)


def _write_imagefolder(root) -> str:
    """UCI digits as an ImageFolder tree: 12 train + 8 test images per class, varied formats."""
    import numpy as np
    from PIL import Image

    from uft.data.sources import load_optdigits

    raw = load_optdigits()
    formats = [("png", "L"), ("jpg", "RGB"), ("bmp", "P"), ("png", "RGB")]
    for c in range(10):
        idx = np.flatnonzero(raw.labels == c)[:20]
        for j, i in enumerate(idx):
            split = "train" if j < 12 else "test"
            ext, mode = formats[j % len(formats)]
            img = Image.fromarray(raw.images[i, :, :, 0]).resize((8 + 4 * (j % 3),) * 2)
            d = root / split / str(c)
            d.mkdir(parents=True, exist_ok=True)
            img.convert(mode).save(d / f"{j}.{ext}")
    return str(root)


@pytest.fixture(scope="module")
def local_run(s3_server, tmp_path_factory):
    import os

    from uft.orchestrate.local import run_local

    tmp = tmp_path_factory.mktemp("pipe")
    TINY["target"] = _write_imagefolder(tmp / "target_images")
    env = {**s3_server.env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "UFT_MLFLOW_ARTIFACTS": "s3://pipe-artifacts/mlflow", "UFT_STATE_DIR": str(tmp / "state"),
           "UFT_FORKSERVER": "1"}  # on, as `uft run` has it: test_every_task_ran_in_the_fork_server checks it
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    from uft.budget import estimate_seconds
    from uft.orchestrate import forkserver

    boto3.client("s3").create_bucket(Bucket="pipe-artifacts")
    # As `uft run` does it: the fork server first, then the pre-run estimate, whose torch import
    # writes TORCHINDUCTOR_CACHE_DIR into this process's environment (torch does that once per
    # process, so cache_dir() repeats it here in case an earlier test already had it done).
    inductor_dir = os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    with forkserver.serving():
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        estimate_seconds(validate_config(TINY))
        cache_dir()
        # Two tasks at a time where the DAG allows (UFT_LOCAL_WORKERS=2, uft.orchestrate.local_dag),
        # as on a cluster: the tests below hold for that too; test_tasks_ran_at_once_in_the_dags_order checks it.
        res = run_local(validate_config(TINY), store_uri="s3://pipe-artifacts/uft", experiment="pipe", workers=2)
    if inductor_dir is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_dir
    yield res, tmp
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_pipeline_runs_and_reports_metrics(local_run):
    res, _ = local_run
    for key in ("base_linear_1shot", "finetuned_linear_1shot", "base_knn", "finetuned_source_knn",
                "holistic_naive_unseen", "holistic_source_overall",
                "holistic_finetuned_naive_unseen", "holistic_finetuned_source_overall"):
        assert 0.0 <= res.metrics[key] <= 1.0, key
    # ...and each is the number the evaluation step computed for that encoder: the run's summary
    # (the report's) against the metrics each linear_eval / knn_eval task logged itself
    _, tmp = local_run
    logged = {k: m for k, m in _artifacts(tmp).items() if k.split("/")[0].startswith(("linear-eval", "knn-eval"))}
    assert len(logged) == 4, sorted(logged)  # base and finetuned, each evaluated by both
    tags = set()
    for task, m in logged.items():
        for name, v in m.items():
            if name.startswith(("base_", "finetuned_")):
                tags.add(name.split("_")[0])
                assert res.metrics[name] == pytest.approx(v), (task, name)
    assert tags == {"base", "finetuned"}
    assert res.parent_run_id
    from mlflow.tracking import MlflowClient

    from uft.config import RunConfig

    # the whole config on the parent run, so `uft compare`/`uft sweep` can group by any field
    params = MlflowClient().get_run(res.parent_run_id).data.params
    assert set(RunConfig.model_fields) <= set(params) and params["finetune_steps"] == str(TINY["finetune_steps"])


def test_every_task_ran_in_the_fork_server(local_run):
    """No task fell back to a fresh interpreter (seconds of imports each), though the driver's
    environment changed after the server started (the estimate's TORCHINDUCTOR_CACHE_DIR)."""
    res, _ = local_run
    assert res.fallbacks == [], res.fallbacks


def test_tasks_ran_at_once_in_the_dags_order(local_run, tmp_path):
    """With two workers, some tasks overlapped, and none started before every task it depends on in
    the compiled DAG (its ``dependentTasks``, what Argo's ``depends`` is made of) had ended."""
    from kfp import compiler

    from pipelines.uft_pipeline import uft_pipeline

    res, _ = local_run
    spans = res.task_spans
    compiler.Compiler().compile(uft_pipeline, str(tmp_path / "p.yaml"))
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))  # then the platform spec
    (body,) = [c["dag"]["tasks"] for name, c in spec["components"].items() if name.startswith("comp-exit-handler")]
    assert set(body) <= set(spans), sorted(set(body) - set(spans))
    for task, t in body.items():
        for dep in t.get("dependentTasks", []):
            assert spans[task][0] >= spans[dep][1], f"{task} started before {dep} ended"
    names = sorted(body)
    overlapping = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
                   if max(spans[a][0], spans[b][0]) < min(spans[a][1], spans[b][1])]
    assert overlapping, "no two tasks ran at the same time"


def test_identical_rerun_reuses_promote_and_report(local_run, tmp_path, monkeypatch):
    """Same config, code, inputs and registry: kfp.local's task cache answers promote and report
    too (no process, so the decision is not made or recorded again), and the rerun reads the same
    decision and metrics back. (A registry change making promote decide again: tests/unit/test_task_cache.py.)"""
    from mlflow.tracking import MlflowClient

    from uft.orchestrate.local import run_local

    import shutil

    res, tmp = local_run
    # The rerun's own pipeline root (the other tests read the first run's), the first run's task cache.
    shutil.copytree(tmp / "state" / "kfp-cache", tmp_path / "state" / "kfp-cache")
    monkeypatch.setenv("UFT_STATE_DIR", str(tmp_path / "state"))
    client = MlflowClient()
    exp = client.get_experiment_by_name("pipe").experiment_id
    n_runs = len(client.search_runs([exp]))
    again = run_local(validate_config(TINY), store_uri="s3://pipe-artifacts/uft", experiment="pipe")
    assert {"promote", "report"} <= set(again.cached_tasks), again.cached_tasks
    assert again.metrics["promoted"] == res.metrics["promoted"] and again.parent_run_id == res.parent_run_id
    assert len(client.search_runs([exp])) == n_runs and again.fallbacks == []


def test_holistic_runs_on_the_finetuned_encoder_too(local_run):
    """Holistic transfer ran twice, from the base and from the finetuned encoder (each task's input
    encoder is the one its tag names), and the report shows both side by side."""
    import json

    import boto3

    from uft.store import read_manifest

    res, tmp = local_run
    (run_dir,) = (tmp / "state" / "kfp-root").iterdir()
    inputs = {}
    for task in ("holistic", "holistic-2"):
        meta = json.loads((run_dir / task / "executor_output.json").read_text())
        uri = meta["parameterValues"]["Output"]
        metrics = read_manifest(uri)[0]["metrics"]
        inputs[metrics["encoder"]] = metrics
    assert set(inputs) == {"base", "finetuned"}
    assert all(m["start_check"]["split"] == "val" for m in inputs.values())
    assert res.metrics["holistic_finetuned_source_overall"] == inputs["finetuned"]["results"]["source"]["overall"]
    s3 = boto3.client("s3")
    key = next(o["Key"] for o in s3.list_objects_v2(Bucket="pipe-artifacts", Prefix="uft/reports/")["Contents"]
               if o["Key"].endswith("report.md"))
    assert "Base vs finetuned encoder" in s3.get_object(Bucket="pipe-artifacts", Key=key)["Body"].read().decode()


def test_artifacts_land_in_s3(local_run):
    import boto3

    res, _ = local_run
    assert res.artifacts["ssl_finetune.encoder_uri"].startswith("s3://pipe-artifacts/uft/models/finetune/")
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="pipe-artifacts")["Contents"]]
    assert any(k.startswith("uft/datasets/") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("uft/reports/") and k.endswith("accuracy.png") for k in keys)
    assert any(k.startswith("mlflow/") for k in keys), "MLflow artifacts should be stored in the bucket"


def _artifacts(tmp) -> dict[str, dict]:
    """``task/output`` → metadata of every output artifact kfp.local recorded in this run's pipeline root."""
    import json

    (run_dir,) = (tmp / "state" / "kfp-root").iterdir()  # one pipeline run under `uft run`'s root
    out = {}
    for f in run_dir.glob("*/executor_output.json"):
        for name, lst in json.loads(f.read_text()).get("artifacts", {}).items():
            for a in lst["artifacts"]:
                out[f"{f.parent.name}/{name}"] = {**a["metadata"], "_path": a["uri"]}
    return out


def test_data_and_encoders_travel_as_typed_artifacts(local_run):
    """Deliverable 4: ingest/subsample/mix/pretrain/ssl_finetune each emitted a typed artifact whose
    metadata carry the manifest URI and its content hash (equal to the manifest's hash now) and whose
    file is the same pointer; the consumers got their inputs through them (no data URI is passed as a
    string any more), which the published manifests record."""
    import json

    from uft.store import manifest_sha, read_manifest

    _, tmp = local_run
    arts = _artifacts(tmp)
    want = {"ingest/dataset": "dataset", "ingest-2/dataset": "dataset", "subsample-source/replay": "replay",
            "mix/plan": "mix_plan", "pretrain/model": "encoder", "ssl-finetune/model": "encoder"}
    for key, kind in want.items():
        meta = arts[key]
        assert meta["kind"] == kind == read_manifest(meta["manifest_uri"])[0]["kind"], key
        assert meta["content_hash"] == manifest_sha(meta["manifest_uri"]), key
        pointer = json.loads(open(meta.pop("_path")).read())
        assert pointer == meta, key
    roles = {read_manifest(arts[k]["manifest_uri"])[0]["name"].split(":")[0]: arts[k] for k in ("ingest/dataset", "ingest-2/dataset")}
    src, tgt = roles["source"], roles["target"]
    base, ft = arts["pretrain/model"], arts["ssl-finetune/model"]
    # Consumers read what the artifacts point to:
    assert read_manifest(base["manifest_uri"])[0]["info"]["source_sha"] == src["content_hash"]  # pretrain ← source
    ft_info = read_manifest(ft["manifest_uri"])[0]["info"]
    assert ft_info["base"] == base["manifest_uri"] and ft_info["target_sha"] == tgt["content_hash"]  # finetune ← base, target
    replay = read_manifest(arts["subsample-source/replay"]["manifest_uri"])[0]
    assert replay["source_sha"] == src["content_hash"] and replay["size"] == TINY["replay_size"]  # subsample ← source
    assert src["num_rows"] == TINY["source_limit"] and tgt["kind"] == "dataset"
    # The fingerprints ran (never cached) and fed ingest.
    fps = [json.loads((p / "executor_output.json").read_text())["parameterValues"]["Output"]
           for p in (tmp / "state" / "kfp-root").glob("*/fingerprint*")]
    assert len(fps) == 2 and all(len(f) == 64 for f in fps)


def test_parent_run_finished_by_exit_handler(local_run):
    from mlflow.tracking import MlflowClient

    res, _ = local_run
    assert MlflowClient().get_run(res.parent_run_id).info.status == "FINISHED"


def test_compiled_yaml_has_kubernetes_settings_and_rerun_reuses_everything(local_run, tmp_path):
    """Compile and check the platform spec; then load the YAML back and run it with kfp.local under
    the same run key: every step is a cache hit and no MLflow run is added. (One rerun serves both
    checks: a fully cached run still pays ~5 s of process start per task.)"""
    from kfp import components, local
    from mlflow.tracking import MlflowClient

    from uft.orchestrate.compile import compile_pipeline
    from uft.orchestrate.local import collect, derive_run_id

    path = compile_pipeline(tmp_path / "uft.yaml")
    docs = list(yaml.safe_load_all(path.read_text()))
    spec, platform = docs[0], docs[1]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    ft = k8s["exec-ssl-finetune"]
    assert ft["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert ft["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert ft["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    assert {e["envVar"] for s in ft["secretAsEnv"] for e in s["keyToEnv"]} == {
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    res = spec["deploymentSpec"]["executors"]["exec-ssl-finetune"]["container"]["resources"]
    # The GPU count is the run's `gpus` parameter (default 1), not a compile-time constant; it reaches
    # the pod as train-resources' string output (the KFP driver drops a number: tests/contract).
    assert res["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--train-resources-gpu_limit']}}"
    assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert spec["root"]["inputDefinitions"]["parameters"]["gpus"]["defaultValue"] == 1
    ft_task = spec["root"]["dag"]["tasks"]["exit-handler-1"]["componentRef"]["name"]
    inner = spec["components"][ft_task]["dag"]["tasks"]["ssl-finetune"]
    assert inner["retryPolicy"]["maxRetryCount"] == 1  # GPU steps retry once (pipelines.uft_pipeline.RETRIES)
    text = path.read_text()
    assert "SECRET_ACCESS_KEY\"" not in text.replace("secretKey: AWS_SECRET_ACCESS_KEY", "")  # only references

    res_run, state = local_run
    cfg = validate_config(TINY)
    assert derive_run_id(cfg, "s3://pipe-artifacts/uft") == res_run.run_id  # `uft run` again → same key
    client = MlflowClient()
    exp = client.get_experiment_by_name("pipe").experiment_id
    n_before = len(client.search_runs([exp]))
    loaded = components.load_component_from_file(str(path))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(state / "yaml-root"))
    loaded(store_uri="s3://pipe-artifacts/uft", experiment="pipe", run_id=res_run.run_id, **cfg.model_dump())
    runs = client.search_runs([exp])
    assert len(runs) == n_before
    cached = {r.data.tags["uft.step"]: r.data.tags.get("cached") for r in runs}
    assert cached["ssl_finetune"] == "True" and cached["pretrain"] == "True"
    again = collect(res_run.run_id, "pipe")
    assert again.parent_run_id == res_run.parent_run_id
    assert again.metrics["finetuned_linear_1shot"] == res_run.metrics["finetuned_linear_1shot"]
    # the promotion gate: the first run registered its encoder; the identical rerun (same run key)
    # reports that recorded decision again and adds no version
    from uft.promote import CHAMPION, DEFAULT_MODEL, version_by_alias

    # (whether the tiny run's encoder clears the noise margins against its base is the gate's call;
    # the rerun's own promote task must report the decision and reasons the first run wrote on the
    # version it registered — the parent run's `promoted` is one metric both runs share)
    import json

    from uft.store import read_manifest

    (out,) = (state / "yaml-root").glob("*/promote/executor_output.json")
    rerun = read_manifest(json.loads(out.read_text())["parameterValues"]["Output"])[0]["metrics"]
    first = client.get_model_version(DEFAULT_MODEL, "1").tags  # set when the first run applied its decision
    assert rerun["version"] == "1" and rerun["decision"] == first["uft.decision"]
    assert " | ".join(rerun["reasons"])[:4900] == first["uft.reasons"] != ""
    assert again.metrics["promoted"] == res_run.metrics["promoted"] == float(first["uft.decision"] == CHAMPION)
    assert len(client.search_model_versions(f"name = '{DEFAULT_MODEL}'")) == 1
    champion = version_by_alias(DEFAULT_MODEL, CHAMPION, client)
    assert (champion is not None and str(champion.version) == "1") == (res_run.metrics["promoted"] == 1.0)
