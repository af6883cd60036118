"""The kustomize tree renders offline into valid Kubernetes objects that follow the deploy rules.

Each kustomization is rendered with `kubectl kustomize` (client only, no cluster) and every object
is validated against the Kubernetes 1.31 OpenAPI schemas (kubernetes-validate, strict: unknown
fields fail). The remaining tests check what a schema cannot: resources and non-root everywhere,
no secret values outside the dev overlay, and that the pieces agree with each other (bucket,
endpoints, Secret names and keys, Service names and ports).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S_VERSION = "1.31"
KUBECTL = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)
TARGETS = ["base", "overlays/object-store", "overlays/gpu", "overlays/local-dev", "overlays/standalone-kfp",
           "overlays/kubeflow-profile"]
WITH_OBJECT_STORE = ["overlays/object-store", "overlays/local-dev", "overlays/kubeflow-profile"]
WITHOUT_SECRETS = ["base", "overlays/object-store", "overlays/gpu", "overlays/standalone-kfp", "overlays/kubeflow-profile"]
#: Where each target puts everything (standalone KFP runs pipelines in its own namespace).
NAMESPACE = {"overlays/standalone-kfp": "kubeflow"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
_S3_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
#: One S3 identity per client (steps + launcher, MLflow, CI, bucket creation), Postgres, MLflow auth.
SECRET_NAMES = {"uft-s3": _S3_KEYS, "uft-s3-mlflow": _S3_KEYS, "uft-s3-ci": _S3_KEYS, "uft-s3-admin": _S3_KEYS,
                "uft-s3-loader": _S3_KEYS,  # optional: the identity that loads data/ (SeaweedFS overlays)
                "uft-postgres": {"POSTGRES_PASSWORD"},
                "uft-mlflow-auth": {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}}
#: Secrets only the external-S3 overlays use (the bucket Job); local-dev does not generate them.
EXTERNAL_S3_ONLY = {"uft-s3-admin"}
SECRETISH = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", re.I)

# A developer box without kubectl skips these; CI (CI=true) must not skip them silently.
pytestmark = pytest.mark.skipif(
    KUBECTL is None and os.environ.get("CI", "").lower() != "true",
    reason="kubectl is not installed: the manifests are rendered with `kubectl kustomize` (apt install kubectl)",
)


@functools.cache
def render(target: str) -> tuple[dict, ...]:
    """All objects of ``infra/<target>`` as kustomize builds them."""
    return render_dir(INFRA / target)


def render_dir(path: Path) -> tuple[dict, ...]:
    """All objects of the kustomization in ``path`` (any directory, e.g. a test's own overlay)."""
    assert KUBECTL, "kubectl is not installed (CI=true never skips this): apt install kubectl"
    proc = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def namespace_of(target: str) -> str:
    return NAMESPACE.get(target, "uft")


def objects(target: str, kind: str) -> list[dict]:
    return [d for d in render(target) if d["kind"] == kind]


def one(target: str, kind: str, name: str) -> dict:
    found = [d for d in objects(target, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"infra/{target}: expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(target: str) -> Iterator[tuple[str, dict]]:
    for d in render(target):
        if d["kind"] in WORKLOADS:
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def containers(spec: dict, init: bool = True) -> list[dict]:
    return list(spec.get("containers", [])) + (list(spec.get("initContainers", [])) if init else [])


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def providers(target: str) -> dict:
    return yaml.safe_load(one(target, "ConfigMap", "kfp-launcher")["data"]["providers"])


def config(target: str) -> dict[str, str]:
    return one(target, "ConfigMap", "uft-config")["data"]


def service_port(target: str, host: str, client_ns: str | None = None, docs: tuple[dict, ...] | None = None) -> set[int]:
    """Ports of the Service that ``host`` (name, name.ns, name.ns.svc[.cluster.local]) resolves to
    from a pod in ``client_ns`` (default: the target's namespace)."""
    name, *rest = host.split(".")
    ns = rest[0] if rest else (client_ns or namespace_of(target))
    return {
        p["port"]
        for s in (docs if docs is not None else render(target))
        if s["kind"] == "Service" and s["metadata"]["name"] == name and s["metadata"].get("namespace") == ns
        for p in s["spec"]["ports"]
    }


def test_every_kustomization_is_rendered_here():
    dirs = {str(p.parent.relative_to(INFRA)) for p in INFRA.glob("**/kustomization.yaml")}
    components = {d for d in dirs if d.startswith("components/")}
    assert dirs - components == set(TARGETS), "a new base/overlay must be added to TARGETS"
    used = set()
    for t in TARGETS:
        k = yaml.safe_load((INFRA / t / "kustomization.yaml").read_text())
        used |= {str((INFRA / t / c).resolve().relative_to(INFRA)) for c in k.get("components", [])}
    assert components <= used, f"components no overlay uses: {components - used}"


@pytest.mark.parametrize("target", TARGETS)
def test_objects_are_valid_kubernetes(target):
    import kubernetes_validate

    errors = []
    for d in render(target):
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
    assert not errors, "\n".join(errors)
    namespaced = [d for d in render(target) if d["kind"] not in {"Namespace", "PriorityClass"}]
    assert {d["metadata"].get("namespace") for d in namespaced} == {namespace_of(target)}


@pytest.mark.parametrize("target", TARGETS)
def test_containers_are_bounded_non_root_and_pinned(target):
    problems = []
    for owner, spec in pod_specs(target):
        pod_sc = spec.get("securityContext", {})
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{owner}: pod seccompProfile is not RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{owner}: mounts a service account token it does not need")
        for c in containers(spec):
            where = f"{owner}/{c['name']}"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(part, {}))
                if missing:
                    problems.append(f"{where}: no {part} for {sorted(missing)}")
            sc = c.get("securityContext", {})
            if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot is not set")
            if sc.get("runAsUser", pod_sc.get("runAsUser", 0)) == 0:
                problems.append(f"{where}: no non-zero runAsUser")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities are not dropped")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if "@sha256:" not in image and (not re.search(r"\d+\.\d+", tag) or "latest" in tag):
                problems.append(f"{where}: image {image} is not pinned to a version")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_servers_have_probes(target):
    for owner, spec in pod_specs(target):
        if owner.startswith("Job/"):
            continue  # one-shot: nothing to probe
        for c in containers(spec, init=False):
            assert "readinessProbe" in c and "livenessProbe" in c, f"{owner}/{c['name']} lacks probes"


@pytest.mark.parametrize("target", WITHOUT_SECRETS)
def test_no_secret_values_outside_dev(target):
    assert not objects(target, "Secret"), f"infra/{target} must reference Secrets, not create them"
    dev_values = [
        lit.split("=", 1)[1]
        for g in yaml.safe_load((INFRA / "overlays/local-dev/kustomization.yaml").read_text())["secretGenerator"]
        for lit in g["literals"]
    ]
    text = yaml.safe_dump_all(render(target))
    assert not [v for v in dev_values if v in text], "a dev secret value leaked out of overlays/local-dev"
    for owner, spec in pod_specs(target):
        for c in containers(spec):
            for name, e in env_of(c).items():
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if SECRETISH.search(name):
                    assert ref, f"{owner}/{c['name']}: {name} must come from a secretKeyRef"
                if ref:
                    assert ref["key"] in SECRET_NAMES.get(ref["name"], set()), f"{owner}: unknown secret ref {ref}"


def test_dev_overlay_generates_every_referenced_secret_key():
    target = "overlays/local-dev"
    generated = {s["metadata"]["name"]: s for s in objects(target, "Secret")}
    assert set(generated) == set(SECRET_NAMES) - EXTERNAL_S3_ONLY
    for s in generated.values():
        assert s["metadata"]["annotations"]["uft.dev/dev-only"] == "true"
        assert set(s["data"]) == SECRET_NAMES[s["metadata"]["name"]]
    refs = {
        (r["name"], r["key"])
        for _, spec in pod_specs(target)
        for c in containers(spec)
        for e in c.get("env", [])
        if (r := e.get("valueFrom", {}).get("secretKeyRef"))
    }
    assert refs and all(key in generated[name]["data"] for name, key in refs)


@pytest.mark.parametrize("target", TARGETS)
def test_kfp_launcher_config(target):
    root = one(target, "ConfigMap", "kfp-launcher")["data"]["defaultPipelineRoot"]
    assert root.startswith("s3://") and urlparse(root).path.strip("/"), root
    s3 = providers(target)["s3"]["default"]
    assert s3["endpoint"] and s3["region"]
    creds = s3["credentials"]
    assert creds["fromEnv"] is False
    ref = creds["secretRef"]
    assert SECRET_NAMES[ref["secretName"]] == {ref["accessKeyKey"], ref["secretKeyKey"]}
    # The runner's Role must let the launcher read exactly that Secret.
    rules = one(target, "Role", "uft-pipeline-runner")["rules"]
    assert any("secrets" in r["resources"] and ref["secretName"] in r.get("resourceNames", []) for r in rules)


@pytest.mark.parametrize("target", TARGETS)
def test_every_s3_client_uses_one_endpoint_and_bucket(target):
    s3 = providers(target)["s3"]["default"]
    cfg = config(target)
    boto, mlflow_s3 = urlparse(cfg["AWS_ENDPOINT_URL"]), urlparse(cfg["MLFLOW_S3_ENDPOINT_URL"])
    assert boto.netloc == mlflow_s3.netloc == s3["endpoint"]
    assert s3["disableSSL"] is (boto.scheme == "http")
    assert cfg["AWS_DEFAULT_REGION"] == s3["region"]

    assert buckets(render(target)) == {cfg["UFT_BUCKET"]}
    if target in WITH_OBJECT_STORE:
        host, _, port = s3["endpoint"].partition(":")
        assert int(port) in service_port(target, host), f"no Service behind {s3['endpoint']}"
        server = one(target, "StatefulSet", "seaweedfs")["spec"]["template"]["spec"]["containers"][0]
        assert f"-s3.port={port}" in server["args"]


BUCKET_REF = {"configMapKeyRef": {"name": "uft-config", "key": "UFT_BUCKET"}}


def buckets(docs: tuple[dict, ...]) -> set[str]:
    """Every bucket the rendered objects use: the launcher's pipeline root, MLflow's artifact
    destination and SeaweedFS's bucket, each resolved the way Kubernetes would (env from uft-config,
    $(VAR) expanded in args). A literal bucket anywhere else is an error."""
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    cfg = by_kind["ConfigMap", "uft-config"]["data"]
    found = {urlparse(by_kind["ConfigMap", "kfp-launcher"]["data"]["defaultPipelineRoot"]).netloc}
    mlflow = by_kind["Deployment", "mlflow"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(mlflow)["UFT_BUCKET"]["valueFrom"] == BUCKET_REF
    dest = next(a.split("=", 1)[1] for a in mlflow["args"] if a.startswith("--artifacts-destination="))
    assert dest.startswith("s3://$(UFT_BUCKET)/"), f"MLflow's bucket is not UFT_BUCKET: {dest}"
    found.add(cfg["UFT_BUCKET"])
    if ("StatefulSet", "seaweedfs") in by_kind:
        server = by_kind["StatefulSet", "seaweedfs"]["spec"]["template"]["spec"]["containers"][0]
        assert env_of(server)["UFT_BUCKET"]["valueFrom"] == BUCKET_REF
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_mlflow_uses_postgres_with_password_from_secret(target):
    mlflow = one(target, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in mlflow["env"]]
    env = env_of(mlflow)
    uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    m = re.fullmatch(r"postgresql(\+\w+)?://(\w+):\$\((\w+)\)@([\w.-]+):(\d+)/(\w+)", uri)
    assert m, f"backend URI must be postgresql://user:$(VAR)@host:port/db, got {uri}"
    _, user, var, host, port, db = m.groups()
    # Kubernetes expands $(VAR) only from variables declared earlier in the list.
    assert names.index(var) < names.index("MLFLOW_BACKEND_STORE_URI")
    assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "uft-postgres", "key": "POSTGRES_PASSWORD"}
    assert int(port) in service_port(target, host)
    pg = one(target, "StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(pg)["POSTGRES_USER"]["value"] == user and env_of(pg)["POSTGRES_DB"]["value"] == db
    assert env_of(pg)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == env[var]["valueFrom"]["secretKeyRef"]
    tracking = urlparse(config(target)["MLFLOW_TRACKING_URI"])
    assert tracking.port in service_port(target, tracking.hostname)


def _persistent_mount(target: str, name: str) -> str:
    """Mount path of the StatefulSet's claim-template volume (there must be exactly one)."""
    sts = one(target, "StatefulSet", name)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    (mount,) = [m for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                if m["name"] == claim["metadata"]["name"]]
    return mount["mountPath"]


@pytest.mark.parametrize("target", TARGETS)
def test_state_lives_on_persistent_volumes(target):
    pg = one(target, "StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(pg)["PGDATA"]["value"].startswith(_persistent_mount(target, "postgres") + "/")
    if target in WITH_OBJECT_STORE:
        args = one(target, "StatefulSet", "seaweedfs")["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"-dir={_persistent_mount(target, 'seaweedfs')}" in args
    else:
        assert not [s for s in objects(target, "StatefulSet") if s["metadata"]["name"] == "seaweedfs"]


@pytest.mark.parametrize("target", TARGETS)
def test_runner_rbac_is_minimal(target):
    one(target, "ServiceAccount", "uft-pipeline-runner")
    binding = one(target, "RoleBinding", "uft-pipeline-runner")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "uft-pipeline-runner"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "uft-pipeline-runner", "namespace": namespace_of(target)}]
    for rule in one(target, "Role", "uft-pipeline-runner")["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert set(rule["verbs"]) <= {"get", "create", "patch"}, rule
        if set(rule["resources"]) & {"secrets", "configmaps"}:
            assert rule.get("resourceNames"), f"{rule} must name the objects it may read"
    assert not objects(target, "ClusterRole") and not objects(target, "ClusterRoleBinding")


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_select_real_pods(target):
    labels = [d["spec"]["template"]["metadata"]["labels"] for d in render(target) if d["kind"] in WORKLOADS]

    def matches(selector: dict) -> bool:
        want = selector.get("matchLabels", {})
        return any(want.items() <= pod.items() for pod in labels)

    policies = objects(target, "NetworkPolicy")
    assert policies
    for p in policies:
        assert matches(p["spec"]["podSelector"]), p["metadata"]["name"]
        for rule in p["spec"]["ingress"]:
            for peer in rule.get("from", []):
                assert matches(peer["podSelector"]), p["metadata"]["name"]


def test_gpu_overlay_caps_gpus():
    quota = one("overlays/gpu", "ResourceQuota", "uft-gpu")
    assert int(quota["spec"]["hard"]["requests.nvidia.com/gpu"]) >= 1
    (limit,) = one("overlays/gpu", "LimitRange", "uft-gpu")["spec"]["limits"]
    assert int(limit["max"]["nvidia.com/gpu"]) >= 1
    assert one("overlays/gpu", "Namespace", "uft")["metadata"]["labels"]["uft.dev/accelerator"]
    assert not objects("base", "ResourceQuota")


# --- one bucket, any namespace, a registry Secret (issue 13, defects 4, 6 and 7) -------------------

def _replacements(target: str) -> list:
    return yaml.safe_load((INFRA / target / "kustomization.yaml").read_text()).get("replacements", [])


def _overlay_on(tmp_path: Path, target: str, namespace: str | None = None, bucket: str | None = None) -> tuple[dict, ...]:
    """Render an operator's overlay on ``infra/<target>`` that changes only the namespace and/or the
    bucket (one patch of uft-config), with the replacements block copied from the target as the
    docs say; a namespace change also drops the Namespace object, as overlays/standalone-kfp does."""
    k: dict = {"resources": [os.path.relpath(INFRA / target, tmp_path)], "replacements": _replacements(target)}
    if namespace:
        k["namespace"] = namespace
    patches = []
    if bucket:
        patches.append({"target": {"kind": "ConfigMap", "name": "uft-config"},
                        "patch": yaml.safe_dump([{"op": "replace", "path": "/data/UFT_BUCKET", "value": bucket}])})
    if patches:
        k["patches"] = patches
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(k))
    return render_dir(tmp_path)


def test_every_overlay_carries_the_bucket_replacement():
    """Defect 7's wiring: kustomize runs replacements before an overlay's own patches unless they
    sit in the overlay, so each one repeats the base's block verbatim."""
    block = _replacements("base")
    assert block and block[0]["source"] == {"kind": "ConfigMap", "name": "uft-config", "fieldPath": "data.UFT_BUCKET"}
    for target in TARGETS:
        assert _replacements(target) == block, f"infra/{target}/kustomization.yaml lacks the bucket replacement"


@pytest.mark.parametrize("target", TARGETS)
def test_the_bucket_is_one_setting(tmp_path, target):
    """Defect 7: the bucket was hard-coded in about ten places. Changing UFT_BUCKET in uft-config
    must move every user of it (launcher, MLflow, SeaweedFS) and leave the old name nowhere."""
    docs = _overlay_on(tmp_path, target, bucket="team-b-bucket")
    assert buckets(docs) == {"team-b-bucket"}
    assert "uft-artifacts" not in yaml.safe_dump_all(docs)


def test_the_bucket_is_named_once_in_the_code():
    """Defect 7, client side: steps, submit, trigger and the local runner all derive the bucket
    from uft.store.default_bucket() (env UFT_BUCKET, which uft-config sets on the cluster)."""
    hits = [str(p.relative_to(ROOT)) for d in ("src", "pipelines", "components") for p in (ROOT / d).rglob("*.py")
            if re.search(r"[\"']s3://uft-artifacts|[\"']uft-artifacts[\"']", p.read_text())]
    assert hits == ["src/uft/store.py"], hits
    assert (yaml.safe_dump_all(render("base")).count("uft-artifacts")) == 2  # UFT_BUCKET and the replaced root


@pytest.mark.parametrize("target", TARGETS)
def test_a_namespace_change_moves_every_hostname(tmp_path, target):
    """Defect 4: standalone KFP runs pipelines in its own namespace, and the documented way to follow
    it (`namespace:` in an overlay) left `uft` in the service hostnames of uft-config and
    kfp-launcher. Every hostname the steps use must resolve to a Service in the run's namespace."""
    docs = _overlay_on(tmp_path, target, namespace="team-ml")
    text = yaml.safe_dump_all(docs)
    assert ".uft." not in text and ".uft:" not in text, "a hostname still names the uft namespace"
    cfg = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "uft-config")
    assert cfg["metadata"]["namespace"] == "team-ml"
    hosts = [urlparse(cfg["data"]["MLFLOW_TRACKING_URI"])]
    launcher = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kfp-launcher")
    endpoint = yaml.safe_load(launcher["data"]["providers"])["s3"]["default"]["endpoint"]
    for url in (cfg["data"]["AWS_ENDPOINT_URL"], f"http://{endpoint}"):
        if "amazonaws.com" not in url:
            hosts.append(urlparse(url))
    for h in hosts:
        assert h.port in service_port(target, h.hostname, "team-ml", docs), f"{h.geturl()} resolves to no Service in team-ml"


def test_standalone_kfp_overlay_lives_in_the_kfp_namespace():
    """Defect 4: everything a run needs sits where standalone KFP starts the pods, and KFP's
    existing namespace is neither recreated nor relabelled."""
    docs = render("overlays/standalone-kfp")
    assert not [d for d in docs if d["kind"] == "Namespace"]
    assert {d["metadata"]["namespace"] for d in docs} == {"kubeflow"}
    for kind, name in [("ConfigMap", "uft-config"), ("ConfigMap", "kfp-launcher"), ("ServiceAccount", "uft-pipeline-runner"),
                       ("Role", "uft-pipeline-runner"), ("Service", "mlflow")]:
        one("overlays/standalone-kfp", kind, name)


@pytest.mark.parametrize("target", TARGETS)
def test_runner_pulls_images_with_the_registry_secret(target):
    """Defect 6: private images need a pull secret; step pods run as uft-pipeline-runner, so its
    imagePullSecrets apply to every step."""
    sa = one(target, "ServiceAccount", "uft-pipeline-runner")
    assert sa["imagePullSecrets"] == [{"name": "uft-registry"}]


# --- Istio, authentication, least privilege, the bucket ------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_uft_pods_stay_out_of_the_istio_mesh_like_kfp_step_pods(target):
    """A Kubeflow profile namespace is labelled istio-injection=enabled (kubeflow/dashboard
    profile-controller, setNamespaceLabelsAndServiceMesh) and its ns-owner-access-istio policy
    admits callers by mTLS identity; the KFP API server starts every step pod with
    sidecar.istio.io/inject=false (v2_template.go, V2Spec.RunWorkflow). Sidecar-injected MLflow,
    Postgres or SeaweedFS would then reject the steps: every uft pod opts out too, and
    NetworkPolicies decide who connects."""
    from uft.orchestrate.backend import ISTIO_INJECT_ANNOTATION

    key, value = ISTIO_INJECT_ANNOTATION
    for d in render(target):
        if d["kind"] in WORKLOADS:
            annotations = d["spec"]["template"]["metadata"].get("annotations", {})
            assert annotations.get(key) == value, f"{d['kind']}/{d['metadata']['name']} would get an Istio sidecar"


@pytest.mark.parametrize("target", TARGETS)
def test_mlflow_requires_authentication_and_only_its_namespace_reaches_it(target):
    mlflow = one(target, "Deployment", "mlflow")["spec"]["template"]["spec"]
    server = next(c for c in mlflow["containers"] if c["name"] == "mlflow")
    assert "--app-name=basic-auth" in server["args"]
    env = env_of(server)
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "uft-mlflow-auth",
                                                                              "key": "MLFLOW_TRACKING_USERNAME"}
    script = next(c for c in mlflow["initContainers"] if c["name"] == "auth-config")["args"][0]
    assert "default_permission = READ" in script and env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == "/auth/basic_auth.ini"
    policy = one(target, "NetworkPolicy", "mlflow")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {}}], "only pods of MLflow's own namespace"
    assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]


@pytest.mark.parametrize("target", TARGETS)
def test_each_s3_client_has_its_own_identity(target):
    mlflow = next(c for c in one(target, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
                  if c["name"] == "mlflow")
    assert env_of(mlflow)["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "uft-s3-mlflow"
    assert providers(target)["s3"]["default"]["credentials"]["secretRef"]["secretName"] == "uft-s3"
    if target in WITH_OBJECT_STORE:
        init = one(target, "StatefulSet", "seaweedfs")["spec"]["template"]["spec"]["initContainers"][0]
        names = {e["valueFrom"]["secretKeyRef"]["name"] for e in init["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert names == {"uft-s3", "uft-s3-mlflow", "uft-s3-ci", "uft-s3-loader"}
        assert "Admin" not in init["args"][0]


@pytest.mark.parametrize("target", TARGETS)
def test_overlays_on_external_s3_create_the_bucket(target):
    # named uft-bucket-<content hash> (infra/components/bucket/kustomization.yaml): found by its label
    jobs = [d for d in objects(target, "Job") if d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "uft-bucket"]
    if target in WITH_OBJECT_STORE or target == "base":
        assert not jobs  # SeaweedFS creates it (base alone is not applied)
        return
    (job,) = jobs
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert env["UFT_BUCKET"]["valueFrom"] == BUCKET_REF
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "uft-s3-admin"


def test_kubeflow_profile_overlay_leaves_the_namespace_to_the_profile_and_binds_ci_to_kfp_only():
    """The profile controller owns a profile's namespace (kubeflow/dashboard profile_controller.go,
    Reconcile: creates it, sets istio-injection); the overlay must not create or relabel it. The
    CI identity gets KFP's kubeflow-pipelines-edit in this namespace and nothing else."""
    target = "overlays/kubeflow-profile"
    assert not objects(target, "Namespace")
    rb = one(target, "RoleBinding", "uft-ci-pipelines-edit")
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeflow-pipelines-edit"}
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "uft-ci", "namespace": "uft"}]
    assert one(target, "ServiceAccount", "uft-ci")["automountServiceAccountToken"] is False
