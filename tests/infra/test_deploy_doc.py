"""docs/deploy.md walks an operator from an empty cluster to a scheduled run: every command in its
``bash`` blocks is checked here, offline (no cluster, no KFP server, no registry).

A command no check matches fails the test, so the page cannot grow an untested command. What each
check does (the page's last table says the same): the key ``export`` lines run in bash and define
every key the page uses; kubectl object creation runs with ``--dry-run=client`` on those keys;
``apply -k`` renders and validates the overlay (test_manifests.py); commands that name uft's
objects are checked against the rendered overlays (one resource per command, present in every
overlay unless the page names the overlays, and in ``kubeflow`` for standalone-kfp); ``uft
submit/schedule/trigger`` run through the real CLI against the fake KFP client of
tests/kfp_fake.py and the local S3 server; the image variables are read by the components in a
fresh process; the order of the page (Profile before anything in its namespace, token before the
first submit, port-forward before the trigger's endpoint) is checked too. What needs a cluster or
a registry is listed in OFFLINE_UNCHECKABLE, by exact text, with the reason.
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

from tests.infra.test_manifests import (KUBECTL, ROOT, SECRET_NAMES, TARGETS, WITH_OBJECT_STORE, namespace_of, objects,
                                        render)
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
    "kubectl wait --for=jsonpath='{.status.phase}'=Active namespace/uft --timeout=120s":
        "needs a cluster with Kubeflow's profile controller (it creates the namespace of the Profile applied before)",
    "docker push registry.example.com/uft:0.1.0-cpu": "needs a registry; the image is built by `make images`",
    "docker push registry.example.com/uft:0.1.0-cuda": "needs a registry; the image is built by `make images`",
}
KINDS = {"statefulset": "StatefulSet", "deployment": "Deployment", "svc": "Service"}
#: Objects only some overlays have, with the overlays; the page must name them where it uses them.
OVERLAY_ONLY = {("StatefulSet", "seaweedfs"): set(WITH_OBJECT_STORE), ("Service", "seaweedfs"): set(WITH_OBJECT_STORE)}
OVERLAYS = [t for t in TARGETS if t.startswith("overlays/")]
#: Not secret keys, not defined by the page: a registry login for the optional pull Secret.
REGISTRY_ENV = {"REGISTRY_USER": "doc-user", "REGISTRY_TOKEN": "doc-token"}
KEY_VAR = re.compile(r"\$\{?([A-Z]+_(?:ACCESS_KEY_ID|SECRET_ACCESS_KEY))\b")

# A developer box without kubectl skips these; CI (CI=true) must not skip them silently.
pytestmark = pytest.mark.skipif(KUBECTL is None and os.environ.get("CI", "").lower() != "true",
                                reason="kubectl is not installed: the manifests are rendered with it (apt install kubectl)")


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


def key_exports() -> dict[str, str]:
    """The page's ``export …_ACCESS_KEY_ID=…`` lines, run in bash: the variables they define."""
    lines = [c for c in commands() if c.startswith("export ") and "_ACCESS_KEY_ID=" in c and "AWS_ENDPOINT_URL" not in c]
    assert lines, "the page defines no S3 key variables"
    script = "\n".join(lines) + "\nenv -0"
    proc = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    env = dict(kv.split("=", 1) for kv in proc.stdout.split("\0") if "=" in kv)
    return {k: v for k, v in env.items() if KEY_VAR.fullmatch("$" + k)}


def check_key_exports(cmd: str) -> None:
    """Every key variable any command of the page uses is defined by the export lines, and the
    values are keys SeaweedFS accepts (letters, digits, - and _)."""
    keys = key_exports()
    used = {v for c in commands() for v in KEY_VAR.findall(c)}
    assert used <= set(keys), f"used but never defined on the page: {sorted(used - set(keys))}"
    for name, value in keys.items():
        assert re.fullmatch(r"[A-Za-z0-9_-]+", value), f"{cmd}: {name} is not a valid SeaweedFS key"
    ids = [v for k, v in keys.items() if k.endswith("_ACCESS_KEY_ID")]
    assert len(ids) == len(set(ids)), "two identities share an access key id"


def check_kubectl_create(cmd: str) -> None:
    proc = subprocess.run(["bash", "-c", cmd + " --dry-run=client -o yaml"], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "KUBECONFIG": "/nonexistent", **REGISTRY_ENV, **key_exports()})
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


def check_profile(cmd: str) -> None:
    """The Profile the page applies first: a kubeflow.org/v1 Profile whose name is the namespace the
    kubeflow-profile overlay uses (the profile controller names the namespace after it)."""
    (path,) = [w for w in shlex.split(cmd) if w.endswith(".yaml")]
    prof = yaml.safe_load((ROOT / path).read_text())
    assert (prof["apiVersion"], prof["kind"]) == ("kubeflow.org/v1", "Profile")
    assert prof["metadata"]["name"] == namespace_of("overlays/kubeflow-profile") == "uft"
    assert prof["spec"]["owner"]["kind"] == "User" and "@" in prof["spec"]["owner"]["name"]
    assert not objects("overlays/kubeflow-profile", "Namespace"), "the overlay must leave the namespace to the Profile"


def check_object_store_env(cmd: str) -> None:
    """The laptop's S3 settings for `uft trigger`: the endpoint is the port the page forwards to
    SeaweedFS's S3 Service, the keys are the CI identity's, the bucket the overlays' one."""
    cmds = commands()
    before = cmds[cmds.index(cmd) - 1]
    assert re.fullmatch(r"kubectl -n uft port-forward svc/seaweedfs (\d+):(\d+)", before), before
    local = before.rsplit(" ", 1)[1].split(":")[0]
    env = dict(kv.split("=", 1) for kv in shlex.split(cmd)[1:])
    assert env["AWS_ENDPOINT_URL"] == f"http://localhost:{local}"
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("$CI_ACCESS_KEY_ID", "$CI_SECRET_ACCESS_KEY")
    assert {c["UFT_BUCKET"] for c in (d["data"] for t in OVERLAYS for d in objects(t, "ConfigMap")
                                      if d["metadata"]["name"] == "uft-config")} == {env["UFT_BUCKET"]}


def _where(kind: str, name: str) -> set[str]:
    """The overlays that render ``kind/name``."""
    return {t for t in OVERLAYS if any(d["kind"] == kind and d["metadata"]["name"] == name for d in render(t))}


def check_object_refs(cmd: str) -> None:
    """rollout/port-forward/exec on uft's objects: one resource per command (kubectl 1.27's
    ``rollout status`` takes one), present in every overlay or in exactly the overlays
    OVERLAY_ONLY lists (which the page names), and in the standalone overlay's namespace."""
    words = shlex.split(cmd)
    assert words[:3] == ["kubectl", "-n", "uft"]
    refs = [w for w in words[3:] if "/" in w and w.split("/")[0] in KINDS]
    assert len(refs) == 1, f"{cmd}: one resource per command, not {refs}"
    kind, name = KINDS[refs[0].split("/")[0]], refs[0].split("/")[1]
    where = _where(kind, name)
    assert where == OVERLAY_ONLY.get((kind, name), set(OVERLAYS)), f"{cmd}: {kind}/{name} exists in {sorted(where)}"
    for t in where:  # the page's `-n uft` is `-n kubeflow` on standalone-kfp
        assert {d["metadata"]["namespace"] for d in render(t) if d["kind"] == kind and d["metadata"]["name"] == name} \
            == {namespace_of(t)}
    if words[3] == "port-forward":
        _, remote = words[-1].split(":")
        ports = {p["port"] for d in _all_objects() if d["kind"] == "Service" and d["metadata"]["name"] == name
                 for p in d["spec"]["ports"]}
        assert int(remote) in ports, f"{cmd}: Service {name} has no port {remote}"
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
    (r"^export [A-Z]+_ACCESS_KEY_ID=", check_key_exports),
    (r"^kubectl (create namespace|-n uft create secret) ", check_kubectl_create),
    (r"^kubectl apply -f infra/overlays/kubeflow-profile/profile\.yaml$", check_profile),
    (r"^export AWS_ENDPOINT_URL=", check_object_store_env),
    (r"^kubectl apply -k infra/", check_apply),
    (r"^kubectl -n uft (rollout (status|restart)|port-forward|exec) ", check_object_refs),
    (r"^git (tag|push origin) v[\d.]+$", check_git_tag),
    (r"^make images ", check_make_images),
    (r"^export UFT_(GPU_)?IMAGE=\S+@sha256:[0-9a-f]{64}$", None),  # compiled below
    (r"^uft (submit|schedule|trigger) ", None),  # run below, in order
    (r"^uft load-target ", None),  # run with the loader identity in real SeaweedFS: tests/infra/test_identities.py
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
    assert ran >= 18


def test_the_page_runs_in_order():
    """What a first-time operator hits in order: the Profile before anything in its namespace (the
    profile controller refuses an existing namespace), the keys before the Secrets that use them,
    the token before the first KFP call, the port-forward before the trigger's endpoint."""
    cmds = commands()
    first = {k: next(i for i, c in enumerate(cmds) if re.search(p, c)) for k, p in (
        ("profile", r"^kubectl apply -f .*profile\.yaml"), ("wait", r"^kubectl wait .*namespace/uft"),
        ("keys", r"^export STEPS_ACCESS_KEY_ID="), ("secret", r"^kubectl -n uft create secret"),
        ("apply", r"^kubectl apply -k "), ("token", r"^export KFP_TOKEN="), ("submit", r"^uft submit "),
        ("endpoint", r"^export AWS_ENDPOINT_URL="), ("trigger", r"^uft trigger "))}
    assert first["profile"] < first["wait"] < first["secret"] < first["apply"]
    assert first["keys"] < first["secret"]
    assert first["token"] < first["submit"], "export KFP_TOKEN before the first uft submit (else a 401)"
    assert first["endpoint"] < first["trigger"]


def test_the_page_names_the_overlays_of_overlay_only_objects():
    text = " ".join(DOC.read_text().split())
    said = [{w.strip() for w in re.split(r",| and ", m)} for m in re.findall(r"the ([\w, -]+?) overlays only", text)]
    for (kind, name), where in OVERLAY_ONLY.items():
        assert {t.split("/")[1] for t in where} in said, f"{kind}/{name}: say on which overlays it exists"


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
    cmds = [c.replace("s3://uft-artifacts/", f"s3://{bucket}/") for c in commands()
            if c.startswith("uft ") and not c.startswith("uft load-target ")]
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
