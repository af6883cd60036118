"""What the compiled pipeline asks of the cluster exists in infra/: every ConfigMap key and Secret
key it loads into a step, and no more GPUs per step than the GPU overlay allows.

A name typo here would otherwise surface only on a real cluster, as pods stuck in
CreateContainerConfigError.
"""

from __future__ import annotations

import importlib.util
import os
import re

import pytest
import yaml

from tests.infra.test_manifests import KUBECTL, SECRET_NAMES, TARGETS, objects, one

# A developer box without kubectl skips these; under CI=true they run and fail on a missing kubectl
# (`make install-kubectl`), as tests/infra/test_manifests.py does.
pytestmark = [
    pytest.mark.skipif(KUBECTL is None and os.environ.get("CI", "").lower() != "true",
                       reason="kubectl is not installed: the manifests are rendered with it (make install-kubectl)"),
    pytest.mark.skipif(importlib.util.find_spec("pipelines.uft_pipeline") is None, reason="no pipeline module yet"),
]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec) of the compiled uft pipeline."""
    from kfp import compiler

    from pipelines.uft_pipeline import uft_pipeline

    out = tmp_path_factory.mktemp("compiled") / "uft.yaml"
    compiler.Compiler().compile(uft_pipeline, str(out))
    spec, platform = list(yaml.safe_load_all(out.read_text()))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("target", TARGETS)
def test_config_maps_and_secrets_the_steps_load_exist(compiled, target):
    _, executors = compiled
    config_maps = {c["metadata"]["name"]: c.get("data", {}) for c in objects(target, "ConfigMap")}
    wanted = 0
    for name, ex in executors.items():
        for cm in ex.get("configMapAsEnv", []):
            for k in cm["keyToEnv"]:
                wanted += 1
                assert k["configMapKey"] in config_maps.get(cm["configMapName"], {}), (
                    f"{name} loads {cm['configMapName']}/{k['configMapKey']}, which infra/{target} lacks"
                )
        for sec in ex.get("secretAsEnv", []):
            for k in sec["keyToEnv"]:
                wanted += 1
                assert k["secretKey"] in SECRET_NAMES.get(sec["secretName"], set()), (
                    f"{name} loads secret {sec['secretName']}/{k['secretKey']}, which no deploy step creates"
                )
    assert wanted, "the pipeline loads no settings from the cluster"


GPU = "nvidia.com/gpu"
PLACEHOLDER = re.compile(r"^\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}$")


def dag_tasks(spec: dict) -> dict[str, dict]:
    """Every step (container task) of the compiled DAG, the exit handler's sub-DAG included, by name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return {n: t for n, t in tasks.items() if "executorLabel" in spec["components"][t["componentRef"]["name"]]}


def executor_of(spec: dict, task: dict) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def task_inputs(spec: dict, task_name: str, gpus: int) -> dict:
    """The input parameter values a step's executor receives in a run with ``gpus``, typed as KFP
    holds them: pipeline parameters as declared (``gpus`` a number), train_resources' outputs (run
    for real) as the strings it declares."""
    from components.resources import train_resources

    task = dag_tasks(spec)[task_name]
    names = ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "gpu_limit")
    outputs = dict(zip(names, train_resources.python_func(gpus)))
    values = {}
    for name, src in task["inputs"].get("parameters", {}).items():
        if src.get("componentInputParameter", "").endswith("gpus"):
            values[name] = gpus
        elif src.get("taskOutputParameter", {}).get("producerTask") == "train-resources":
            values[name] = outputs[src["taskOutputParameter"]["outputParameterKey"]]
    return values


def resolved_resources(spec: dict, task_name: str, gpus: int) -> dict[str, str]:
    """The container resources of ``task_name`` for a run with ``gpus``, resolved as the KFP driver
    does (uft.orchestrate.backend.pod_resources: placeholders from string values only)."""
    from uft.orchestrate.backend import pod_resources

    task = dag_tasks(spec)[task_name]
    res = spec["deploymentSpec"]["executors"][executor_of(spec, task)]["container"].get("resources", {})
    pod = pod_resources(res, task_inputs(spec, task_name, gpus))
    out = {"resourceCpuRequest": pod["requests"].get("cpu"), "resourceCpuLimit": pod["limits"].get("cpu"),
           "resourceMemoryRequest": pod["requests"].get("memory"), "resourceMemoryLimit": pod["limits"].get("memory")}
    out = {k: v for k, v in out.items() if v is not None}
    if GPU in pod["limits"]:
        out[GPU] = pod["limits"][GPU]
    return out


def upstream(tasks: dict[str, dict], name: str) -> set[str]:
    seen, todo = set(), list(tasks[name].get("dependentTasks", []))
    while todo:
        t = todo.pop()
        if t not in seen:
            seen.add(t)
            todo += tasks[t].get("dependentTasks", [])
    return seen


def test_every_step_and_the_exit_handler_get_the_cluster_settings(compiled):
    """Defect 2: the exit handler `finalize` got the S3 Secret but not uft-config, so on a cluster
    it had no MLFLOW_TRACKING_URI and parent runs stayed RUNNING. Every executor, the exit
    handler's included, must load every uft-config key and the S3 keys."""
    from pipelines.uft_pipeline import CONFIG_KEYS, CONFIG_MAP, S3_SECRET

    spec, executors = compiled
    assert "exec-finalize" in spec["deploymentSpec"]["executors"]
    for name in spec["deploymentSpec"]["executors"]:
        ex = executors.get(name, {})
        env = {k["envVar"] for cm in ex.get("configMapAsEnv", []) if cm["configMapName"] == CONFIG_MAP for k in cm["keyToEnv"]}
        assert set(CONFIG_KEYS) <= env, f"{name} lacks {sorted(set(CONFIG_KEYS) - env)} from {CONFIG_MAP}"
        assert {"MLFLOW_TRACKING_URI", "UFT_BUCKET"} <= env
        secrets = {k["envVar"] for s in ex.get("secretAsEnv", []) if s["secretName"] == S3_SECRET for k in s["keyToEnv"]}
        assert secrets == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, name
    # ...and the exit handler is never answered from KFP's cache: it must run to close the MLflow run.
    assert dag_tasks(spec)["finalize"]["cachingOptions"].get("enableCache", False) is False


@pytest.mark.parametrize("gpus", [1, 3, 8])
def test_gpu_count_is_a_run_parameter_that_resources_follow(compiled, gpus):
    """Deliverable 6: `gpus` is a pipeline input (not a compile-time env var); the two DDP steps ask
    for that many GPUs with CPU and memory scaled to it, /dev/shm is memory-backed with no size of
    its own (so it is bounded by that memory limit), and holistic keeps one GPU."""
    from uft.gpus import training_resources

    spec, executors = compiled
    assert spec["root"]["inputDefinitions"]["parameters"]["gpus"] == {"defaultValue": 1, "isOptional": True,
                                                                      "parameterType": "NUMBER_INTEGER"}
    want = training_resources(gpus)
    for name in ("pretrain", "ssl-finetune"):
        r = resolved_resources(spec, name, gpus)
        assert r == {GPU: str(gpus), "resourceCpuRequest": want["cpu_request"], "resourceCpuLimit": want["cpu_limit"],
                     "resourceMemoryRequest": want["memory_request"], "resourceMemoryLimit": want["memory_limit"]}, name
        ex = executors[executor_of(spec, dag_tasks(spec)[name])]
        (shm,) = ex["emptyDirMounts"]
        assert shm["mountPath"] == "/dev/shm" and shm["medium"] == "Memory" and "sizeLimit" not in shm
        task = dag_tasks(spec)[name]
        assert task["inputs"]["parameters"]["gpus_per_node"]["componentInputParameter"].endswith("gpus"), name
    assert resolved_resources(spec, "holistic", gpus)[GPU] == "1"
    assert resolved_resources(spec, "holistic-2", gpus)[GPU] == "1"  # the finetuned encoder's holistic task


def test_a_run_holds_at_most_gpus_gpus_and_fits_the_gpu_overlay(compiled):
    """Defect 8: three GPU steps, two of them concurrent, while docs and quota said one. The GPU
    steps must be ordered one after another (so a run's peak is its `gpus`), every CPU step asks
    for none, and the largest run `uft submit` accepts fits the overlay's LimitRange and quota."""
    from uft.gpus import MAX_GPUS

    spec, executors = compiled
    tasks = dag_tasks(spec)
    gpu_tasks = sorted(n for n in tasks if GPU in resolved_resources(spec, n, MAX_GPUS))
    assert gpu_tasks == ["holistic", "holistic-2", "pretrain", "ssl-finetune"]
    for i, a in enumerate(gpu_tasks):
        for b in gpu_tasks[i + 1:]:
            assert a in upstream(tasks, b) or b in upstream(tasks, a), f"{a} and {b} may hold GPUs at the same time"
    peak = max(int(resolved_resources(spec, n, MAX_GPUS)[GPU]) for n in gpu_tasks)
    assert peak == MAX_GPUS
    (limit,) = one("overlays/gpu", "LimitRange", "uft-gpu")["spec"]["limits"]
    assert int(limit["max"][GPU]) == MAX_GPUS
    assert int(one("overlays/gpu", "ResourceQuota", "uft-gpu")["spec"]["hard"][f"requests.{GPU}"]) >= peak
    for name in gpu_tasks:  # GPU steps must tolerate the taint the docs tell platform engineers to use
        ex = executors[executor_of(spec, tasks[name])]
        assert "nvidia.com/gpu" in {t["key"] for t in ex.get("tolerations", [])}, name


def limit_range_defaults(limit_range: dict, resources: dict) -> dict:
    """A container's resources after Kubernetes admits it in a namespace with ``limit_range``:
    the API server first defaults a LimitRange item's missing ``default`` to its ``max`` and
    ``defaultRequest`` to ``default`` (SetDefaults_LimitRangeItem), then the LimitRanger admission
    plugin fills every limit and request the container leaves out (a request defaults to the
    container's own limit first, as pod defaulting does)."""
    limits, requests = dict(resources.get("limits", {})), dict(resources.get("requests", {}))
    for k, v in limits.items():
        requests.setdefault(k, v)
    for item in limit_range["spec"]["limits"]:
        if item["type"] != "Container":
            continue
        default = {**item.get("max", {}), **item.get("default", {})}
        default_request = {**default, **item.get("defaultRequest", {})}
        for k, v in default.items():
            limits.setdefault(k, v)
        for k, v in default_request.items():
            requests.setdefault(k, v)
    return {"limits": limits, "requests": requests}


def test_gpu_limit_range_gives_cpu_containers_no_gpu(compiled):
    """Defect 3: with only `max: nvidia.com/gpu: 1`, Kubernetes defaulted every container's GPU
    request and limit to 1: MLflow, Postgres, KFP's driver and launcher, Argo's sidecars. Admit the
    overlay's own containers, the pipeline's CPU steps and a bare sidecar under its LimitRange."""
    lr = one("overlays/gpu", "LimitRange", "uft-gpu")
    spec, _ = compiled
    cpu_containers = {"argo-sidecar (no resources)": {}}
    for d in objects("overlays/gpu", "Deployment") + objects("overlays/gpu", "StatefulSet"):
        for c in d["spec"]["template"]["spec"]["containers"] + d["spec"]["template"]["spec"].get("initContainers", []):
            cpu_containers[f"{d['metadata']['name']}/{c['name']}"] = c.get("resources", {})
    for name in dag_tasks(spec):
        r = resolved_resources(spec, name, 2)
        if r and GPU not in r:
            cpu_containers[f"step {name}"] = {"limits": {"cpu": r["resourceCpuLimit"], "memory": r["resourceMemoryLimit"]}}
    assert len(cpu_containers) > 5
    for where, res in cpu_containers.items():
        admitted = limit_range_defaults(lr, res)
        assert admitted["limits"].get(GPU, "0") == "0" and admitted["requests"].get(GPU, "0") == "0", (
            f"{where} would be given {admitted['limits'].get(GPU)} GPU(s) by the LimitRange")
    # A GPU step keeps what it asked for, within the max.
    gpu = limit_range_defaults(lr, {"limits": {GPU: "4"}})
    assert gpu["limits"][GPU] == gpu["requests"][GPU] == "4"
    # The simulation is not vacuous: the old LimitRange (max only) hands every container a GPU.
    old = {"spec": {"limits": [{"type": "Container", "max": {GPU: "1"}}]}}
    assert limit_range_defaults(old, {})["requests"][GPU] == "1"


@pytest.mark.parametrize("gpus", [1, 4])
def test_training_components_run_ddp_with_the_gpu_count(gpus, monkeypatch):
    """Deliverable 6: `gpus` > 1 runs pretrain and ssl_finetune under torchrun with one process per
    GPU (uft.ssl.ddp_entry.launch, tested end to end in tests/unit/test_ddp.py); 1 runs in-process.
    The kwargs handed to launch() must be exactly what the step functions accept."""
    import inspect

    from kfp import dsl

    from components.pretrain import pretrain
    from components.ssl_finetune import ssl_finetune
    from uft import lineage, steps
    from uft.ssl import ddp_entry

    calls = []

    # Each fake records which way the step ran: ("torchrun", nproc) or ("in-process",): a launch with
    # one process is not the in-process run that gpus=1 asks for.
    def fake_launch(step, kwargs, nproc, **kw):
        inspect.signature(getattr(steps, step)).bind(**kwargs)
        calls.append((step, "torchrun", nproc, kwargs["store_uri"]))
        return {"encoder_uri": f"s3://b/{step}/manifest.json", "encoder_sha": "0" * 64}

    def in_process(step):
        def run(*args, **kwargs):
            inspect.signature(getattr(steps, step)).bind(*args, **kwargs)
            calls.append((step, "in-process", kwargs.get("store_uri", args[2] if len(args) > 2 else None)))
            return {"encoder_uri": f"s3://b/{step}/manifest.json", "encoder_sha": "0" * 64}
        return run

    monkeypatch.setattr(ddp_entry, "launch", fake_launch)
    monkeypatch.setattr(steps, "pretrain", in_process("pretrain"))
    monkeypatch.setattr(steps, "finetune", in_process("finetune"))
    # The artifacts point to fake manifests: resolve/emit are uft.lineage's (tested in tests/unit/test_lineage.py).
    monkeypatch.setattr(lineage, "resolve", lambda metadata, path, name: (metadata["manifest_uri"], "0" * 64))
    monkeypatch.setattr(lineage, "emit", lambda path, metadata, uri, sha="": metadata.update(manifest_uri=uri))
    common = dict(store_uri="", run_id="r", experiment="e", seed=0, lr=1e-3, batch_size=8, checkpoint_every=2)

    def art(kind, uri):
        return kind(name="a", uri="/unused", metadata={"manifest_uri": uri})

    model = art(dsl.Model, "")
    pretrain.python_func(source=art(dsl.Dataset, "s3://b/d/manifest.json"), encoder="tiny", encoder_width=8,
                         method="simclr", steps=2, pretrained_encoder="", gpus_per_node=gpus, model=model, **common)
    assert model.metadata["manifest_uri"] == "s3://b/pretrain/manifest.json"
    ssl_finetune.python_func(base=art(dsl.Model, "s3://b/e/manifest.json"), target=art(dsl.Dataset, "s3://b/t/manifest.json"),
                             source=art(dsl.Dataset, ""), replay=art(dsl.Dataset, ""), plan=art(dsl.Artifact, ""),
                             method="simclr", steps=2, replay_ratio=0.0, radreg_weight=0.0, gpus_per_node=gpus,
                             model=art(dsl.Model, ""), **common)
    # the component passes store_uri through; the step resolves "" (uft.store.step_store, one place)
    way = ("torchrun", gpus) if gpus > 1 else ("in-process",)
    assert calls == [("pretrain", *way, ""), ("finetune", *way, "")]


def test_cacheable_steps_have_no_per_run_inputs(compiled):
    """KFP's cache key (backend cacheutils.GenerateCacheKey) hashes every resolved input parameter and
    the MLMD id of every input artifact. A step with a per-run input (``{{$.pipeline_job_uuid}}``) is
    never a hit, and a never-cached producer gives its consumers a new artifact id every run. So:
    caching on for every step but the fingerprints, promote, report and finalize; none of the cached
    ones takes a run placeholder; each ingest is fed by a (never cached) fingerprint; every artifact
    a cached step consumes comes from a cached step. (Reasoned from source; no cluster here.)"""
    spec, executors = compiled
    tasks = dag_tasks(spec)
    cached = {n for n, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")}
    assert set(tasks) - cached == {"fingerprint", "fingerprint-2", "promote", "report", "finalize"}
    for name in cached:
        for param in tasks[name]["inputs"].get("parameters", {}).values():
            const = str(param.get("runtimeValue", {}).get("constant", ""))
            assert "{{$.pipeline_job" not in const, f"{name} has a per-run input: it can never be a cache hit"
        for art in tasks[name]["inputs"].get("artifacts", {}).values():
            assert art["taskOutputArtifact"]["producerTask"] in cached, name
    for ingest, fp in (("ingest", "fingerprint"), ("ingest-2", "fingerprint-2")):
        assert tasks[ingest]["inputs"]["parameters"]["fingerprint"]["taskOutputParameter"]["producerTask"] == fp
    # ...and every step still learns its run: the pod label reaches it as env (not part of the key).
    for name in cached:
        fields = executors[executor_of(spec, tasks[name])].get("fieldPathAsEnv", [])
        assert {"name": "UFT_KFP_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"} in fields, name
