"""Secrets and exposure: a whole (tiny) pipeline run leaves its S3 secret key nowhere — not in the
logs, files, MLflow params/tags/metrics/artifacts or the object store; the local S3 server and the
MLflow UI listen on 127.0.0.1 only; wrong or missing credentials are refused; the compiled pipeline
takes credentials from a Kubernetes Secret, never from a parameter."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.reliability.helpers import WORKER, one_line_error
from uft.errors import UftError

pytestmark = pytest.mark.s3
REPO = Path(__file__).resolve().parents[2]


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh shell: no S3/MLflow/uft settings inherited from the test session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "UFT_"))}
    return {**env, **extra}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny `uft run`-like pipeline run in a subprocess (its own SeaweedFS with generated keys,
    MLflow on sqlite), every step's output captured; then its S3 server started again for scanning."""
    from uft.services import start_seaweedfs

    state = tmp_path_factory.mktemp("scan") / "state"
    log = state.parent / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.run([sys.executable, str(WORKER), "pipeline", str(state)], cwd=REPO, stdout=out,
                              stderr=subprocess.STDOUT, env=_clean_env(UFT_STATE_DIR=str(state)), timeout=900)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    result = json.loads(text.strip().splitlines()[-1])
    creds = json.loads((state / "s3-credentials.json").read_text())
    server = start_seaweedfs(state)
    try:
        yield SimpleNamespace(state=state, log=log, result=result, secret=creds["secret_key"], server=server)
    finally:
        server.stop()


@pytest.fixture
def run_env(tiny_run, monkeypatch):
    for k, v in tiny_run.server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tiny_run.state / 'mlflow.db'}")
    return tiny_run  # cached S3 keys are dropped around every test (tests/conftest.py)


# --- scanning -------------------------------------------------------------------------------------

def scan_files(paths, needle: str, skip=()) -> list[str]:
    """Files under ``paths`` whose bytes contain ``needle``."""
    found = []
    for root in paths:
        for p in [root] if root.is_file() else sorted(root.rglob("*")):
            if p.is_file() and p not in skip and needle.encode() in p.read_bytes():
                found.append(str(p))
    return found


def scan_bucket_objects(client, needle: str) -> tuple[list[str], int]:
    """(keys whose bytes contain ``needle``, number of objects read) over every bucket."""
    found, n = [], 0
    for b in client.list_buckets()["Buckets"]:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
            for o in page.get("Contents", []):
                n += 1
                if needle.encode() in client.get_object(Bucket=b["Name"], Key=o["Key"])["Body"].read():
                    found.append(f"s3://{b['Name']}/{o['Key']}")
    return found, n


def _s3(env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def test_pipeline_run_succeeded(run_env):
    from mlflow.tracking import MlflowClient

    res = run_env.result
    assert res["parent_run_id"] and "ssl_finetune.encoder_uri" in res["artifacts"]
    assert MlflowClient().get_run(res["parent_run_id"]).info.status == "FINISHED"


def test_secret_not_in_logs_or_local_files(tiny_run):
    creds_file = tiny_run.state / "s3-credentials.json"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600  # the one place it is kept: owner-only
    assert "Executing task" in tiny_run.log.read_text()  # the steps' own output was captured
    # The run's log, kfp-root (executor inputs/outputs), mlflow.db, SeaweedFS's data and weed.log.
    assert scan_files([tiny_run.log, tiny_run.state], tiny_run.secret, skip={creds_file}) == []


def test_secret_not_in_mlflow(run_env):
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) >= 10  # the parent and every step
    for r in runs:
        fields = {**r.data.params, **r.data.tags, **{k: str(v) for k, v in r.data.metrics.items()}}
        leaks = [k for k, v in fields.items() if run_env.secret in k or run_env.secret in str(v)]
        assert not leaks, f"run {r.info.run_name}: {leaks}"
    dst = run_env.state.parent / "mlflow-artifacts"
    downloaded = 0
    for r in runs:
        if client.list_artifacts(r.info.run_id):
            mlflow.artifacts.download_artifacts(run_id=r.info.run_id, dst_path=str(dst / r.info.run_id))
            downloaded += 1
    assert downloaded >= 2  # the report and the logged model at least
    assert scan_files([dst], run_env.secret) == []


def test_secret_not_in_object_store(run_env):
    found, n = scan_bucket_objects(_s3(run_env.server.env()), run_env.secret)
    assert n >= 20 and found == []


def test_scanners_find_a_planted_secret(run_env, tmp_path):
    """The scans above can fail: the same code finds the key once it is planted."""
    (tmp_path / "leak.log").write_text(f"oops {run_env.secret} oops")
    assert scan_files([tmp_path], run_env.secret) == [str(tmp_path / "leak.log")]
    s3 = _s3(run_env.server.env())
    s3.create_bucket(Bucket="planted")
    s3.put_object(Bucket="planted", Key="x", Body=f"k={run_env.secret}".encode())
    try:
        assert scan_bucket_objects(s3, run_env.secret)[0] == ["s3://planted/x"]
    finally:
        s3.delete_object(Bucket="planted", Key="x")
        s3.delete_bucket(Bucket="planted")


# --- listening sockets ------------------------------------------------------------------------------

def _group(pgid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # fields after "(comm)": state, ppid, pgrp
                pids.append(int(d.name))
    return pids


def listening_addresses(pids: list[int]) -> list[tuple[str, int]]:
    """(ip, port) of every TCP socket in LISTEN state owned by ``pids``, from /proc/net/tcp{,6}."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A = LISTEN
                continue
            hexip, hexport = cols[1].split(":")
            raw = bytes.fromhex(hexip)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # kernel order: per 32-bit word
            out.append((str(ipaddress.ip_address(raw)), int(hexport, 16)))
    return out


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr.is_loopback or (addr.version == 6 and addr.ipv4_mapped is not None and addr.ipv4_mapped.is_loopback)


def test_listening_socket_parser_sees_a_wildcard_bind():
    with socket.create_server(("0.0.0.0", 0)) as s:
        port = s.getsockname()[1]
        found = dict((p, ip) for ip, p in listening_addresses([os.getpid()]))
        assert found.get(port) == "0.0.0.0" and not _loopback(found[port])


def test_local_s3_server_listens_on_loopback_only(tiny_run):
    server = tiny_run.server
    addresses = listening_addresses(_group(server.proc.pid))
    ports = {p for _, p in addresses}
    assert server.ports["s3.port"] in ports and server.ports["master.port"] in ports, addresses
    assert len(addresses) >= 8
    exposed = [(ip, p) for ip, p in addresses if not _loopback(ip)]
    assert not exposed, f"SeaweedFS listens beyond 127.0.0.1: {exposed}"


def test_mlflow_ui_listens_on_loopback_only(run_env):
    """`uft ui` (MLflow's UI on the local run's state) binds 127.0.0.1 only, in every worker. MLflow's
    UI runs in a session of its own (so `uft ui` can stop all of it): its sockets are found among
    the descendants of `uft ui`, not in its process group."""
    from uft.orchestrate.lifecycle import descendants
    from uft.services import free_port

    port = free_port()
    env = _clean_env(UFT_STATE_DIR=str(run_env.state), **run_env.server.env())  # reuse the running S3
    proc = subprocess.Popen([sys.executable, "-m", "uft.cli", "ui", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                assert proc.poll() is None, "the MLflow UI exited at start"
                assert time.monotonic() < deadline, "the MLflow UI did not answer"
                time.sleep(0.5)
        ui = [proc.pid, *descendants(proc.pid)]
        addresses = listening_addresses(ui)
        assert port in {p for _, p in addresses}, addresses
        assert all(_loopback(ip) for ip, _ in addresses), addresses
    finally:
        below = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)  # `uft ui` stops MLflow's UI (its own session) itself
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in below:  # never leave a UI this test started behind, stopped or not
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- credentials ------------------------------------------------------------------------------------

def test_wrong_or_missing_credentials_are_refused(s3_env, bucket):
    from botocore.exceptions import ClientError

    env = s3_env.env()
    wrong = _s3({**env, "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"] + "x"})
    with pytest.raises(ClientError) as e:
        wrong.list_objects_v2(Bucket=bucket)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    _s3(env).put_object(Bucket=bucket, Key="private", Body=b"data")
    for url in (f"{s3_env.endpoint}/{bucket}/private", f"{s3_env.endpoint}/{bucket}"):  # anonymous requests
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(url, timeout=5)
        assert http.value.code == 403, url


def test_store_takes_credentials_from_the_environment_only(s3_env, bucket, monkeypatch):
    from uft.store import open_store

    store = open_store(f"s3://{bucket}/p")  # keys from AWS_* in the environment
    store.put("a", b"1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-away")  # a changed secret is picked up, not cached
    with pytest.raises(UftError) as e:
        open_store(f"s3://{bucket}/p")
    msg = one_line_error(e, r"S3 refused the credentials for s3://t-\w+")
    assert "rotated-away" not in msg and s3_env.credentials.secret_key not in msg


def test_compiled_pipeline_gets_credentials_from_a_secret(tmp_path):
    from uft.orchestrate.compile import compile_pipeline

    path = compile_pipeline(tmp_path / "p.yaml")
    text = Path(path).read_text()
    import yaml

    docs = list(yaml.safe_load_all(text))
    params = docs[0]["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if any(w in p.lower() for w in ("secret", "password", "access_key", "token"))]
    platform = json.dumps(docs[1])
    assert '"secretAsEnv"' in platform and '"AWS_SECRET_ACCESS_KEY"' in platform and '"uft-s3"' in platform
