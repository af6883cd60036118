"""docs/deploy.md walks an operator from an empty cluster to a scheduled run: every command in its
``bash`` blocks is checked here, offline (no cluster, no KFP server, no registry).

A command no check matches fails the test, so the page cannot grow an untested command. What each
check does (the page's last table says the same): kubectl object creation runs with
``--dry-run=client``; ``apply -k`` renders and validates the overlay (test_manifests.py); commands
that name uft's objects are checked against the rendered overlays; ``uft submit/schedule/trigger``
run through the real CLI against the fake KFP client of tests/kfp_fake.py and the local S3 server;
the image variables are read by the components in a fresh process. KFP's own objects, ``kubectl
create token`` and ``docker push`` cannot be checked without a cluster or a registry: they are
listed in OFFLINE_UNCHECKABLE, by exact text, with the reason.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from tests.infra.test_manifests import KUBECTL, ROOT, SECRET_NAMES, TARGETS, objects, render
from tests.kfp_fake import FakeClient

DOC = ROOT / "docs" / "deploy.md"
#: Commands that need a live cluster or registry, and why they are still trusted.
OFFLINE_UNCHECKABLE = {
    "kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80": "KFP's own Service (KFP manifests name it so)",
    "kubectl -n kubeflow get deployment ml-pipeline -o jsonpath='{.spec.template.spec.containers[0].image}'":
        "KFP's own API server Deployment",
    'export KFP_TOKEN="$(kubectl -n uft create token default-editor --audience=pipelines.kubeflow.org)"':
        "needs a cluster; sending $KFP_TOKEN as a bearer token is test_version_and_token_go_over_the_real_kfp_client",
    "kubectl -n uft create token uft-ci --audience=pipelines.kubeflow.org --duration=720h":
        "needs a cluster; ServiceAccount uft-ci and its binding are rendered in overlays/kubeflow-profile "
        "(test_manifests), an expired token is refused (tests/contract/test_api_server.py)",
    "docker push registry.example.com/uft:0.1.0-cpu": "needs a registry; the image is built by `make images`",
    "docker push registry.example.com/uft:0.1.0-cuda": "needs a registry; the image is built by `make images`",
}
KINDS = {"statefulset": "StatefulSet", "deployment": "Deployment", "svc": "Service"}
DUMMY_ENV = {"REGISTRY_USER": "doc-user", "REGISTRY_TOKEN": "doc-token",
             **{f"{who}_{part}": f"doc-{who.lower()}-{part.lower()}" for who in ("STEPS", "MLFLOW", "CI", "ADMIN")
                for part in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY")}}

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: the manifests are rendered with it")


def commands() -> list[str]:
    """Every command of the page's ```bash blocks, continuation lines joined, comments dropped."""
    out, in_bash, pending = [], False, ""
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        if not in_bash or not line.strip() or line.lstrip().startswith("#"):
            continue
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        out.append(pending)
        pending = ""
    return out


def _all_objects() -> list[dict]:
    return [d for t in TARGETS for d in render(t)]


def _exists(kind: str, name: str) -> bool:
    return any(d["kind"] == kind and d["metadata"]["name"] == name for d in _all_objects())


def check_kubectl_create(cmd: str) -> None:
    proc = subprocess.run(["bash", "-c", cmd + " --dry-run=client -o yaml"], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "KUBECONFIG": "/nonexistent", **DUMMY_ENV})
    assert proc.returncode == 0, f"{cmd}\n{proc.stderr}"
    obj = yaml.safe_load(proc.stdout)
    if obj["kind"] == "Namespace":
        assert obj["metadata"]["name"] == "uft" and _exists("Namespace", "uft")
        return
    name = obj["metadata"]["name"]
    assert obj["metadata"]["namespace"] == "uft"
    if name == "uft-registry":
        assert obj["type"] == "kubernetes.io/dockerconfigjson"
        for t in TARGETS:
            sa = next(d for d in objects(t, "ServiceAccount") if d["metadata"]["name"] == "uft-pipeline-runner")
            assert {"name": name} in sa["imagePullSecrets"]
        return
    assert set(obj["data"]) == SECRET_NAMES[name], f"{cmd}: keys {sorted(obj['data'])}"
    assert all(v for v in obj["data"].values()), f"{cmd}: an empty value"


def check_object_refs(cmd: str) -> None:
    """rollout/port-forward/exec on uft's objects: what they name exists in the rendered overlays."""
    words = shlex.split(cmd)
    assert words[:3] == ["kubectl", "-n", "uft"]
    refs = [w for w in words[3:] if "/" in w and w.split("/")[0] in KINDS]
    assert refs, cmd
    for ref in refs:
        kind, name = ref.split("/")
        assert _exists(KINDS[kind], name), f"{cmd}: no {KINDS[kind]} {name} in any overlay"
    if words[3] == "port-forward":
        _, remote = words[-1].split(":")
        svc = refs[0].split("/")[1]
        ports = {p["port"] for d in _all_objects() if d["kind"] == "Service" and d["metadata"]["name"] == svc
                 for p in d["spec"]["ports"]}
        assert int(remote) in ports, f"{cmd}: Service {svc} has no port {remote}"
    if "pg_dump" in words:
        user, db = words[words.index("-U") + 1], words[words.index("-U") + 2]
        pg = objects("base", "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in pg["env"]}
        assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == (user, db)


def check_apply(cmd: str) -> None:
    target = cmd.split("-k", 1)[1].strip().removeprefix("infra/")
    assert target in TARGETS, f"{cmd}: infra/{target} is not rendered and validated by test_manifests.py"
    assert render(target)


def check_git_tag(cmd: str) -> None:
    tag = cmd.split()[-1]
    wf = yaml.safe_load((ROOT / ".github/workflows/images.yml").read_text())
    on = wf.get("on", wf.get(True))
    assert any(fnmatch.fnmatch(tag, p) for p in on["push"]["tags"]), f"{cmd}: the images workflow ignores {tag}"


def check_make_images(cmd: str) -> None:
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^images:.*\n\t.*docker/build\.sh cpu \$\(IMAGE_CPU\)\n\t.*docker/build\.sh cuda \$\(IMAGE_CUDA\)",
                     text, re.M)
    for arg in shlex.split(cmd)[2:]:
        assert arg.split("=")[0] in {"IMAGE_CPU", "IMAGE_CUDA"}, arg


CHECKS = [
    (r"^kubectl (create namespace|-n uft create secret) ", check_kubectl_create),
    (r"^kubectl apply -k infra/", check_apply),
    (r"^kubectl -n uft (rollout (status|restart)|port-forward|exec) ", check_object_refs),
    (r"^git (tag|push origin) v[\d.]+$", check_git_tag),
    (r"^make images ", check_make_images),
    (r"^export UFT_(GPU_)?IMAGE=\S+@sha256:[0-9a-f]{64}$", None),  # compiled below
    (r"^uft (submit|schedule|trigger) ", None),  # run below, in order
]


def test_every_command_has_a_check():
    cmds = commands()
    assert len(cmds) >= 15
    unmatched = [c for c in cmds if c not in OFFLINE_UNCHECKABLE and not any(re.search(p, c) for p, _ in CHECKS)]
    assert not unmatched, "commands in docs/deploy.md with no check:\n" + "\n".join(unmatched)
    assert set(OFFLINE_UNCHECKABLE) <= set(cmds), "OFFLINE_UNCHECKABLE lists a command the page no longer has"


def test_kubectl_git_and_make_commands():
    ran = 0
    for cmd in commands():
        for pattern, check in CHECKS:
            if check is not None and re.search(pattern, cmd):
                check(cmd)
                ran += 1
    assert ran >= 12


def test_exported_images_are_the_ones_the_pipeline_runs():
    """The exported variables, in a fresh process (they are read when the components are imported):
    every GPU step runs UFT_GPU_IMAGE, every other step UFT_IMAGE."""
    env = dict(os.environ)
    exports = [c.split(" ", 1)[1].split("=", 1) for c in commands() if c.startswith("export UFT_") and "IMAGE=" in c]
    assert {k for k, _ in exports} == {"UFT_IMAGE", "UFT_GPU_IMAGE"}
    env.update(dict(exports))
    code = ("import importlib, pathlib, yaml; from kfp import dsl; out = {}\n"
            "for p in sorted(pathlib.Path('components').glob('*.py')):\n"
            "    m = importlib.import_module('components.' + p.stem)\n"
            "    for v in vars(m).values():\n"
            "        if hasattr(v, 'component_spec') and v.component_spec.implementation.container:\n"
            "            out[v.component_spec.name] = v.component_spec.implementation.container.image\n"
            "print(yaml.safe_dump(out))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    images = yaml.safe_load(proc.stdout)
    gpu_steps = {"pretrain", "ssl-finetune", "holistic"}
    exported = dict(exports)
    assert gpu_steps < set(images) and len(images) >= 10
    assert {images[k] for k in gpu_steps} == {exported["UFT_GPU_IMAGE"]}
    assert {v for k, v in images.items() if k not in gpu_steps} == {exported["UFT_IMAGE"]}


def test_uft_commands_run_against_a_fake_kfp(bucket, monkeypatch):
    """submit → schedule → trigger, as the page runs them, through the real CLI; the KFP API is the
    fake client, S3 the local server, and the page's bucket is this test's bucket."""
    # The exported digests are not what this process compiled with (components read the image
    # variables once, at import): the digest rule itself is test_orchestrate's.
    monkeypatch.setenv("UFT_ALLOW_UNPINNED_IMAGES", "1")
    import boto3
    from typer.testing import CliRunner

    from uft.cli import app

    monkeypatch.setenv("UFT_BUCKET", bucket)
    boto3.client("s3").put_object(Bucket=bucket, Key="data/target/0/a.png", Body=b"a")
    client = FakeClient(version="2.15.0")
    cmds = [c.replace("s3://uft-artifacts/", f"s3://{bucket}/") for c in commands() if c.startswith("uft ")]
    assert [c.split()[1] for c in cmds] == ["submit", "schedule", "trigger"]
    with mock.patch("uft.orchestrate.submit.kfp_client", return_value=client), \
            mock.patch("uft.orchestrate.trigger.kfp_client", return_value=client):
        for cmd in cmds:
            r = CliRunner().invoke(app, shlex.split(cmd)[1:])
            assert r.exit_code == 0, f"{cmd}\n{r.output}"
    submitted, triggered = client.runs
    assert submitted["arguments"] == {"target": f"s3://{bucket}/data/target", "gpus": 1, "experiment": "uft-prod"}
    assert submitted["experiment_name"] == "uft-prod" and submitted["service_account"] == "uft-pipeline-runner"
    (rr,) = client.recurring
    assert rr["job_name"] == "uft-nightly" and rr["cron_expression"] == "0 0 3 * * *"
    assert rr["version_id"] == submitted["version_id"] == triggered["version_id"]  # one pipeline version, reused
    assert triggered["arguments"]["target"] == f"s3://{bucket}/data/target"
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="uft/triggers/")
    assert listing.get("KeyCount") == 1, "the trigger keeps its state under s3://$UFT_BUCKET/uft/triggers"
