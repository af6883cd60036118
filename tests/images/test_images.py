"""The built CPU image, executed: the bundled data is in it, no build-time CA is in any of its
layers, and the compiled pipeline a user submits runs in it end to end — each task in its own
container with only its pod's environment (uft.orchestrate.containers), in the cluster's own
configuration (infra/overlays/local-dev): SeaweedFS with the identity file its init container
writes (tests/infra/object_store.py; the bucket created through `weed shell`, as its postStart
hook does), `mlflow server` with the Deployment's basic-auth app and S3 identity, and each step
with the steps' S3 identity and MLflow credentials its Secrets give it. A call the cluster would
refuse fails the run here. The one difference left: kfp.local keeps the pipeline root (KFP's
typed artifacts) in a local folder, where the cluster's launcher writes `s3://…/pipelines` with
the steps' identity (checked in tests/infra/test_identities.py).

Run by `make test-images` (see docker/README.md); skipped without UFT_TEST_IMAGE.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images.conftest import start_mlflow_server
from tests.infra.object_store import object_store, write_identity_file

ROOT = Path(__file__).resolve().parents[2]
# Small enough for two shared cores; every step still runs and publishes.
TINY = dict(source_limit=300, target_limit=200, pretrain_steps=3, finetune_steps=3, batch_size=32, encoder_width=8,
            holistic_steps=2, holistic_methods="naive", probe_draws=1, label_shots="1", replay_size=40,
            checkpoint_every=2)


def test_bundled_mnist_is_in_the_image(image):
    code = ("from uft.data.sources import load_source; r = load_source('mnist', image_size=16, channels=1); "
            "print(r.images.shape, sorted(set(r.labels.tolist())))")
    proc = subprocess.run(["docker", "run", "--rm", "--network=none", image, "python", "-c", code],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # framing=auto (the default) crops MNIST's 28×28 frame to its 20×20 content box
    assert proc.stdout.strip() == "(10000, 20, 20, 1) [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"


def _certs(pem: str) -> set[str]:
    return set(re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S))


def test_build_ca_is_in_no_layer(image):
    """The extra CA given to the build (EXTRA_CA) is absent from every layer of the saved image."""
    extra_ca = os.environ.get("UFT_TEST_EXTRA_CA", "")
    if not extra_ca:
        pytest.skip("no extra CA was given to this build (EXTRA_CA)")
    own = subprocess.run(["docker", "run", "--rm", "--network=none", "--entrypoint", "cat", image,
                          "/etc/ssl/certs/ca-certificates.crt"], capture_output=True, text=True, check=True).stdout
    added = _certs(Path(extra_ca).read_text()) - _certs(own)  # certificates only the build trusted
    assert added, f"{extra_ca} adds no certificate to the image's own bundle: nothing to look for"
    needles = [c.splitlines()[1].encode() for c in added]  # each certificate's first base64 line
    found: set[bytes] = set()
    with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE) as save:
        tail = b""
        while chunk := save.stdout.read(1 << 22):
            window = tail + chunk
            found.update(n for n in needles if n in window)
            tail = window[-100:]
    assert save.returncode == 0
    assert not found, f"{len(found)} certificate(s) of {extra_ca} are stored in a layer of {image}"


def _kustomize(overlay: str) -> list[dict]:
    import yaml

    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed: the cluster's ConfigMap/Secret are rendered with `kubectl kustomize`"
    out = subprocess.run([kubectl, "kustomize", str(ROOT / overlay)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.timeout(3000)
def test_compiled_pipeline_runs_in_the_image(image, tmp_path, capsys, monkeypatch):
    import boto3
    from mlflow.tracking import MlflowClient

    from uft.orchestrate.containers import cluster_objects, run_compiled

    # The YAML a user submits, compiled in a fresh process for this image (as `uft submit` does).
    pipeline = tmp_path / "uft_pipeline.yaml"
    env = {**os.environ, "UFT_IMAGE": image, "UFT_GPU_IMAGE": image}
    subprocess.run([sys.executable, "-c", "from uft.cli import app; app()", "compile", "--out", str(pipeline)], env=env, check=True,
                   cwd=ROOT, capture_output=True)

    # The dev cluster's objects: SeaweedFS with the overlay's identity file; service URLs → 127.0.0.1.
    manifests = _kustomize("infra/overlays/local-dev")
    as_rendered = cluster_objects(manifests, {})
    bucket = as_rendered.config_maps["uft-config"]["UFT_BUCKET"]
    identities = write_identity_file(manifests, as_rendered, tmp_path / "s3-identities")
    with object_store(tmp_path / "s3", identities, bucket) as s3:
        mlflow_proc, mlflow_url = start_mlflow_server(tmp_path, manifests, cluster_objects(manifests, {"seaweedfs": s3.endpoint}))
        try:
            cluster = cluster_objects(manifests, {"seaweedfs": s3.endpoint, "mlflow": mlflow_url})
            assert cluster.config_maps["uft-config"]["MLFLOW_TRACKING_URI"] == mlflow_url
            run = run_compiled(pipeline, arguments={"experiment": "images-test", **TINY}, cluster=cluster,
                               pipeline_root=tmp_path / "kfp-root", retries=False)
            steps = {t.task: t for t in run.tasks}
            with capsys.disabled():
                print(f"\ncontainer run of {image}: {run.seconds:.0f} s in all")
                for t in run.tasks:
                    print(f"  {t.task:24s} {t.seconds:6.1f} s  {t.status}  {t.resources.get('limits', {})}")
            (ROOT / "build").mkdir(exist_ok=True)
            (ROOT / "build/test-images-run.json").write_text(json.dumps(
                {"image": image, "seconds": run.seconds, "tasks": [t.__dict__ for t in run.tasks]}, indent=1))

            assert all(t.status == "SUCCESS" for t in run.tasks), [(t.task, t.status) for t in run.tasks]
            assert {"ingest", "ingest-2", "pretrain", "ssl-finetune", "report", "finalize"} <= set(steps)
            # The pods the KFP driver would build (pod-spec fields resolved from string values only):
            # the training steps get the run's GPU count as their accelerator limit, holistic one.
            # Collected, not asserted at once: a run can break both backend contracts, and the
            # report should name both (checked at the end).
            backend_problems = []
            gpu_limits = {t.task: t.resources.get("limits", {}).get("nvidia.com/gpu") for t in run.tasks}
            if {k: v for k, v in gpu_limits.items() if v} != {"pretrain": "1", "ssl-finetune": "1", "holistic": "1",
                                                              "holistic-2": "1"}:
                backend_problems.append(f"GPU limits the KFP driver would set: {gpu_limits}")
            # No task saw the developer's environment, only its pod's (S3 and MLflow identities from its Secrets).
            assert {"AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(steps["ingest"].env_keys)
            assert "HOME" not in steps["ingest"].env_keys

            # Artifacts in S3, read back with each writer's own identity: the steps' store
            # (datasets, encoders, report) and MLflow's artifacts.
            def s3_as(secret: str):
                keys = cluster.secrets[secret]
                return boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                                    aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")

            def listed(client, prefix: str) -> list[str]:
                return [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                        for o in page.get("Contents", [])]

            client = s3_as("uft-s3")
            assert listed(client, "uft/"), "no step published to S3"
            # Lineage: the typed artifacts (under the pipeline root) point to manifests in S3 by content hash.
            pointers = {}
            for f in (tmp_path / "kfp-root").glob("*/*/executor_output.json"):
                for name, lst in json.loads(f.read_text()).get("artifacts", {}).items():
                    for a in lst["artifacts"]:
                        if "manifest_uri" in a.get("metadata", {}):
                            pointers[f"{f.parent.name}/{name}"] = a["metadata"]
            assert {"ingest/dataset", "ingest-2/dataset", "pretrain/model", "ssl-finetune/model"} <= set(pointers)
            for where, meta in pointers.items():
                key = meta["manifest_uri"].removeprefix(f"s3://{bucket}/")
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                assert hashlib.sha256(body).hexdigest() == meta["content_hash"], where

            # MLflow (as the pipeline's MLflow identity): the parent run FINISHED, its step runs carry
            # metrics, artifacts went to S3.
            auth = cluster.secrets["uft-mlflow-auth"]
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth["MLFLOW_TRACKING_USERNAME"])
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth["MLFLOW_TRACKING_PASSWORD"])
            mlflow = MlflowClient(tracking_uri=mlflow_url)
            exp = mlflow.get_experiment_by_name("images-test")
            assert exp is not None, "no step reached MLflow"
            runs = mlflow.search_runs([exp.experiment_id], max_results=100)
            parents = [r for r in runs if r.data.tags.get("uft.step") == "pipeline"]
            assert len(parents) == 1, f"{len(parents)} parent runs"
            if parents[0].info.status != "FINISHED":
                backend_problems.append(f"parent run ended {parents[0].info.status} (the exit handler got the "
                                        "backend's final state COMPLETE)")
            assert not backend_problems, "; ".join(backend_problems)
            metrics = {k for r in runs for k in r.data.metrics}
            assert any(k.startswith("linear") for k in metrics) and any(k.startswith("knn") for k in metrics), metrics
            assert listed(s3_as("uft-s3-mlflow"), "mlflow/"), "MLflow stored no artifact in S3"
        finally:
            os.killpg(mlflow_proc.pid, signal.SIGTERM)  # the server and its workers (own session)
            try:
                mlflow_proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(mlflow_proc.pid, signal.SIGKILL)
                mlflow_proc.wait(10)
