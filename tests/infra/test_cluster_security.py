"""The rendered manifests' security pieces, executed here rather than read: the SeaweedFS identity
file the init container writes (each identity limited to its prefixes), the bucket Job's script,
and MLflow's basic-auth app with the permission the init container configures (only the
pipeline's identity may move a registered model's alias)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import boto3
import botocore.exceptions
import pytest

from tests.infra.test_manifests import KUBECTL, one, render
from uft.orchestrate.containers import cluster_objects

# A developer box without kubectl skips these; under CI=true they run and fail on a missing kubectl
# (`make install-kubectl`), as tests/infra/test_manifests.py does.
pytestmark = pytest.mark.skipif(KUBECTL is None and os.environ.get("CI", "").lower() != "true",
                                reason="kubectl is not installed: the manifests are rendered with it (make install-kubectl)")
DEV = "overlays/local-dev"


def _env(container: dict, cluster) -> dict[str, str]:
    """A container's env as the kubelet resolves it from the rendered Secrets and ConfigMaps."""
    out = {}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        elif ref := e["valueFrom"].get("secretKeyRef"):
            out[e["name"]] = cluster.secrets[ref["name"]][ref["key"]]
        elif ref := e["valueFrom"].get("configMapKeyRef"):
            out[e["name"]] = cluster.config_maps[ref["name"]][ref["key"]]
    return out


def _s3(server, keys: dict[str, str]):
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def _allowed(fn) -> bool:
    try:
        fn()
        return True
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] in {"AccessDenied", "403"}, e
        return False


def test_each_s3_identity_reaches_only_its_prefixes(tmp_path):
    from uft.services import Credentials, SeaweedServer, free_port, weed_binary

    docs = render(DEV)
    cluster = cluster_objects(list(docs), {})
    init = one(DEV, "StatefulSet", "seaweedfs")["spec"]["template"]["spec"]["initContainers"][0]
    conf = tmp_path / "conf"
    conf.mkdir()
    script = init["args"][0].replace("/etc/seaweedfs", str(conf))
    subprocess.run(["sh", "-ec", script], env={"PATH": os.environ["PATH"], **_env(init, cluster)}, check=True)
    bucket = cluster.config_maps["uft-config"]["UFT_BUCKET"]
    steps, mlflow, ci = (cluster.secrets[n] for n in ("uft-s3", "uft-s3-mlflow", "uft-s3-ci"))
    # `weed mini` also makes an admin of the keys in its environment: give it keys of none of ours.
    with SeaweedServer(tmp_path / "s3", Credentials("test-only-admin", "test-only-admin-secret"),
                       s3_config=conf / "s3.json") as server:
        # what the postStart hook does: create the bucket through `weed shell`, no S3 key involved
        ports = server.ports  # host:port.grpcPort: this server's gRPC ports are not port+10000
        shell = [weed_binary(), "shell", f"-master=127.0.0.1:{ports['master.port']}.{ports['master.port.grpc']}",
                 f"-filer=127.0.0.1:{ports['filer.port']}.{ports['filer.port.grpc']}"]
        subprocess.run(shell, input=f"s3.bucket.create -name {bucket}\nexit\n", text=True, check=True, capture_output=True,
                       timeout=60)
        s, m, c = _s3(server, steps), _s3(server, mlflow), _s3(server, ci)
        for _ in range(50):  # the new bucket reaches the S3 gateway through the filer
            if _allowed(lambda: s.put_object(Bucket=bucket, Key="uft/probe", Body=b"1")):
                break
            time.sleep(0.2)
        put = lambda cl, key: _allowed(lambda: cl.put_object(Bucket=bucket, Key=key, Body=b"x"))  # noqa: E731
        get = lambda cl, key: _allowed(lambda: cl.get_object(Bucket=bucket, Key=key))  # noqa: E731
        ls = lambda cl, prefix: _allowed(lambda: cl.list_objects_v2(Bucket=bucket, Prefix=prefix))  # noqa: E731
        assert not put(c, "data/target/a.png")  # CI may not write data
        assert put(s, "uft/datasets/x") and put(s, "pipelines/run/out") and ls(s, "uft/")
        assert not put(s, "mlflow/1/artifact") and not put(s, "data/target/b.png")
        assert put(m, "mlflow/1/artifact") and get(m, "mlflow/1/artifact")
        assert not put(m, "uft/datasets/y") and not get(m, "uft/datasets/x")
        assert not _allowed(lambda: m.create_bucket(Bucket="another"))
        # CI: the trigger lists and reads the target, keeps its state under uft/triggers
        assert ls(c, "data/target/") and put(c, "uft/triggers/abc.json") and get(c, "uft/triggers/abc.json")
        assert not put(c, "uft/datasets/z") and not get(c, "uft/datasets/x") and not put(c, "data/target/c.png")


def test_the_bucket_job_creates_the_bucket_once(tmp_path, s3_server, monkeypatch):
    """The Job of infra/components/bucket, its script run as the pod would (env from uft-config and
    an admin identity) against the local S3 server: it creates UFT_BUCKET, then finds it."""
    (job,) = [d for d in render("overlays/gpu") if d["kind"] == "Job"]  # uft-bucket-<content hash>
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-c"]
    bucket = f"job-{int(time.time() * 1000)}"
    env = {**os.environ, **s3_server.env(), "UFT_BUCKET": bucket, "AWS_DEFAULT_REGION": "us-east-1"}
    first = subprocess.run([sys.executable, "-c", c["args"][0]], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and f"bucket {bucket} created" in first.stdout, first.stderr
    again = subprocess.run([sys.executable, "-c", c["args"][0]], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f"bucket {bucket} exists" in again.stdout, again.stderr


def test_only_the_pipeline_identity_may_move_the_champion_alias(tmp_path):
    """MLflow's basic-auth app as infra/base/mlflow.yaml starts it (--app-name=basic-auth, the
    init container's auth config with its database swapped for SQLite, the admin from Secret
    uft-mlflow-auth): anonymous calls are refused, a reader can read but not set an alias, the
    pipeline's identity can."""
    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient

    from uft.services import LOOPBACK, free_port

    docs = render(DEV)
    cluster = cluster_objects(list(docs), {})
    spec = one(DEV, "Deployment", "mlflow")["spec"]["template"]["spec"]
    init = next(c for c in spec["initContainers"] if c["name"] == "auth-config")
    server = next(c for c in spec["containers"] if c["name"] == "mlflow")
    auth_dir = tmp_path / "auth"
    auth_dir.mkdir()
    subprocess.run(["sh", "-ec", init["args"][0].replace("/auth/", f"{auth_dir}/")],
                   env={"PATH": os.environ["PATH"], **_env(init, cluster)}, check=True)
    ini = (auth_dir / "basic_auth.ini").read_text()
    assert "postgresql+psycopg2://mlflow:" in ini
    (auth_dir / "basic_auth.ini").write_text("\n".join(
        f"database_uri = sqlite:///{tmp_path}/auth.db" if line.startswith("database_uri") else line
        for line in ini.splitlines()) + "\n")
    env = {k: v for k, v in _env(server, cluster).items() if k.startswith("MLFLOW_AUTH_ADMIN") or k == "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    # The tracking database starts from the installed schema template (uft.orchestrate.local), as every
    # local store does: migrating a fresh sqlite schema took ~15 s of the server's start.
    from uft.orchestrate.local import mlflow_schema_template

    if template := mlflow_schema_template():
        shutil.copyfile(template, tmp_path / "mlflow.db")
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    args = [a for a in server["args"] if a.startswith("--app-name")]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", *args, "--host", LOOPBACK, "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
                             "--artifacts-destination", str(tmp_path / "art")],
                            env={**os.environ, **env, "MLFLOW_AUTH_CONFIG_PATH": str(auth_dir / "basic_auth.ini")},
                            stdout=open(tmp_path / "mlflow.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "mlflow.log").read_text()[-2000:])
        with pytest.raises(urllib.error.HTTPError) as anon:
            urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert anon.value.code == 401
        pipeline = cluster.secrets["uft-mlflow-auth"]
        as_pipeline = {"MLFLOW_TRACKING_USERNAME": pipeline["MLFLOW_TRACKING_USERNAME"],
                       "MLFLOW_TRACKING_PASSWORD": pipeline["MLFLOW_TRACKING_PASSWORD"]}
        for k, v in as_pipeline.items():
            os.environ[k] = v
        try:
            AuthServiceClient(url).create_user("reader", "reader-password-123")
            c = MlflowClient(tracking_uri=url, registry_uri=url)
            c.create_registered_model("uft-encoder")
            run = c.create_run(c.create_experiment("uft"))
            v = c.create_model_version("uft-encoder", source=f"runs:/{run.info.run_id}/encoder", run_id=run.info.run_id)
            c.set_registered_model_alias("uft-encoder", "champion", v.version)
        finally:
            for k in as_pipeline:
                os.environ.pop(k)
        os.environ.update(MLFLOW_TRACKING_USERNAME="reader", MLFLOW_TRACKING_PASSWORD="reader-password-123")
        try:
            r = MlflowClient(tracking_uri=url, registry_uri=url)
            assert r.get_model_version_by_alias("uft-encoder", "champion").version == v.version  # READ
            with pytest.raises(Exception, match="PERMISSION_DENIED|403"):
                r.set_registered_model_alias("uft-encoder", "champion", v.version)
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME")
            os.environ.pop("MLFLOW_TRACKING_PASSWORD")
    finally:
        os.killpg(proc.pid, 15)  # the server and its workers (own session)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)
