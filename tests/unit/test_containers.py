"""The container harness's pod model, without Docker: which env each task of the compiled YAML
gets from the cluster's Secret and ConfigMap, its tmpfs/limits, and the service URL rewrite."""

from __future__ import annotations

import base64

import pytest

from uft.errors import UftError
from uft.orchestrate.containers import ClusterObjects, cluster_objects, load_compiled, pod_env, pod_run_args

MANIFESTS = [
    {"kind": "ConfigMap", "metadata": {"name": "uft-config"},
     "data": {"AWS_ENDPOINT_URL": "http://seaweedfs.uft.svc.cluster.local:8333", "AWS_DEFAULT_REGION": "us-east-1",
              "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_S3_ENDPOINT_URL": "http://seaweedfs:8333",
              "UFT_MLFLOW_ARTIFACTS": "", "UFT_BUCKET": "uft-artifacts"}},
    {"kind": "Secret", "metadata": {"name": "uft-s3"},
     "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"ak").decode(),
              "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"sk").decode()}},
    {"kind": "Secret", "metadata": {"name": "uft-mlflow-auth"},
     "stringData": {"MLFLOW_TRACKING_USERNAME": "pipeline", "MLFLOW_TRACKING_PASSWORD": "pw"}},
    {"kind": "Deployment", "metadata": {"name": "mlflow"}},
]
SERVICES = {"seaweedfs": "http://127.0.0.1:1111", "mlflow": "http://127.0.0.1:2222"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from uft.orchestrate.compile import compile_pipeline

    return load_compiled(compile_pipeline(tmp_path_factory.mktemp("c") / "p.yaml"))


def test_cluster_objects_decode_the_secret_and_point_services_at_local_endpoints():
    objs = cluster_objects(MANIFESTS, SERVICES)
    assert objs.secrets["uft-s3"] == {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk"}
    assert objs.secrets["uft-mlflow-auth"]["MLFLOW_TRACKING_PASSWORD"] == "pw"  # stringData too
    cfg = objs.config_maps["uft-config"]
    assert cfg["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1111" and cfg["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:1111"
    assert cfg["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:2222" and cfg["UFT_BUCKET"] == "uft-artifacts"
    # A host that is not a known service (a real S3 endpoint) is left alone.
    other = cluster_objects([{"kind": "ConfigMap", "metadata": {"name": "c"},
                              "data": {"U": "https://s3.us-east-1.amazonaws.com"}}], SERVICES)
    assert other.config_maps["c"]["U"] == "https://s3.us-east-1.amazonaws.com"


def test_every_task_of_the_compiled_pipeline_gets_credentials_and_mlflow(compiled):
    """What a pod of each task sees: the exit handler included (a parent run left RUNNING otherwise)."""
    spec, platform = compiled
    objs = cluster_objects(MANIFESTS, SERVICES)
    executors = spec["deploymentSpec"]["executors"]
    assert "exec-finalize" in executors
    for executor in executors:
        env = pod_env(platform, executor, objs)
        assert env.get("AWS_ACCESS_KEY_ID") == "ak", executor
        assert env.get("MLFLOW_TRACKING_URI") == "http://127.0.0.1:2222", f"{executor} cannot reach MLflow"
        assert env.get("MLFLOW_TRACKING_USERNAME") == "pipeline", f"{executor} cannot write to MLflow (basic auth)"


def test_every_task_gets_the_kfp_run_id_from_its_pod_label(compiled):
    """Cacheable steps take no job-id input (it would be in KFP's cache key); the pod label KFP sets,
    pipeline/runid, reaches them as UFT_KFP_RUN_ID (downward API), and the harness models it."""
    from uft.tracking import KFP_RUN_ENV

    spec, platform = compiled
    objs = cluster_objects(MANIFESTS, SERVICES)
    for executor in spec["deploymentSpec"]["executors"]:
        assert pod_env(platform, executor, objs, {"pipeline/runid": "run-42"})[KFP_RUN_ENV] == "run-42", executor
        assert pod_env(platform, executor, objs)[KFP_RUN_ENV] == "", executor  # no label: empty, as the kubelet does
    with pytest.raises(UftError, match="field path 'spec.nodeName' is not supported"):
        pod_env({"x": {"fieldPathAsEnv": [{"name": "N", "fieldPath": "spec.nodeName"}]}}, "x", ClusterObjects())


def test_a_missing_secret_or_key_fails_the_task_unless_optional(compiled):
    spec, platform = compiled
    with pytest.raises(UftError, match="secret 'uft-s3' does not exist"):
        pod_env(platform, "exec-ingest", ClusterObjects(config_maps=cluster_objects(MANIFESTS, {}).config_maps))
    objs = cluster_objects(MANIFESTS, {})
    objs.config_maps["uft-config"].pop("MLFLOW_TRACKING_URI")
    with pytest.raises(UftError, match="no key 'MLFLOW_TRACKING_URI'"):
        pod_env(platform, "exec-ingest", objs)
    optional = {"x": {"secretAsEnv": [{"secretName": "absent", "optional": True,
                                       "keyToEnv": [{"secretKey": "k", "envVar": "K"}]}]}}
    assert pod_env(optional, "x", ClusterObjects()) == {}


def test_pod_run_args_follow_shm_and_limits():
    platform = {"x": {"emptyDirMounts": [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "8Gi"},
                                         {"medium": "Memory", "mountPath": "/scratch", "sizeLimit": "1Gi"},
                                         {"mountPath": "/disk"}]}}
    args = pod_run_args(platform, "x", {"resources": {"resourceCpuLimit": "500m", "resourceMemoryLimit": "8G"}})
    assert args == {"shm_size": 8 * 2**30, "tmpfs": {"/scratch": f"size={2**30}"}, "nano_cpus": 500_000_000,
                    "mem_limit": 8_000_000_000}
    # A limit set from a pipeline parameter is only known at run time: left to the runner.
    assert pod_run_args({}, "x", {"resources": {"resourceCpuLimit": "{{$.inputs.parameters['cpu']}}"}}) == {}


def test_resolved_limits_are_the_ones_docker_gets():
    """The driver's resolution (uft.orchestrate.backend.pod_resources) feeds Docker's limits."""
    res = {"resourceCpuLimit": "{{$.inputs.parameters['cpu']}}", "resourceMemoryLimit": "{{$.inputs.parameters['mem']}}"}
    from uft.orchestrate.backend import pod_resources

    resolved = pod_resources(res, {"cpu": "1", "mem": "2G"})
    assert pod_run_args({}, "x", {"resources": res}, resolved) == {"nano_cpus": 1_000_000_000, "mem_limit": 2_000_000_000}


def test_the_exit_handler_gets_the_status_the_backend_sends():
    """kfp.local hands an exit handler {"state": "SUCCEEDED", "pipeline_task_name": ...}; the
    backend the protojson of PipelineTaskFinalStatus with the DAG's MLMD state (COMPLETE)."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    from uft.orchestrate.containers import backend_arguments

    spec = pipeline_spec_pb2.TaskInputsSpec()
    spec.parameters["status"].task_final_status.producer_task = "exit-handler-1"
    spec.parameters["run_id"].component_input_parameter = "run_id"
    local = {"status": {"state": "SUCCEEDED", "pipeline_task_name": "exit-handler-1", "error": {}}, "run_id": "r"}
    out = backend_arguments(spec, local, "uft-run-1")
    assert out == {"status": {"state": "COMPLETE", "pipelineTaskName": "exit-handler-1",
                              "pipelineJobResourceName": "uft-run-1", "error": {}}, "run_id": "r"}
    assert backend_arguments(spec, {**local, "status": {"state": "FAILED"}}, "x")["status"]["state"] == "FAILED"
