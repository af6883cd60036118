"""The KFP v2 driver (backend/src/v2/driver) and compiler, read at 2.15.0 and 2.17.0: how the
compiled pipeline's pod-spec fields, exit-handler status, pod labels, timeouts, retries and cache
keys behave on a cluster, checked on the compiled YAML and on the exit handler's own code."""

from __future__ import annotations

import re

import pytest

from tests.contract.conftest import container_tasks, input_type
from uft.orchestrate.backend import (MLMD_STATES, RUN_ID_LABEL, PodSpecError, final_status, mlflow_status,
                                     placeholder_input, pod_resources, resolve_pod_spec_param)

GPU = "nvidia.com/gpu"
POD_SPEC_FIELDS = ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit")


def test_the_driver_resolves_pod_spec_parameters_from_string_values_only():
    """backend/src/v2/driver/resolve.go, resolvePodSpecInputRuntimeParameter (2.15.0 and 2.17.0):
    ``return val.GetStringValue(), nil`` — a number parameter resolves to "". driver.go,
    initPodSpecPatch: the accelerator limit is set only ``if acceleratorType != "" &&
    acceleratorCount != ""``; getPodResource: ``k8sres.ParseQuantity(resolved)`` fails on ""."""
    ph = "{{$.inputs.parameters['pipelinechannel--gpus']}}"
    assert placeholder_input(ph) == "pipelinechannel--gpus"
    assert resolve_pod_spec_param(ph, {"pipelinechannel--gpus": "2"}) == "2"
    assert resolve_pod_spec_param(ph, {"pipelinechannel--gpus": 2}) == ""
    assert resolve_pod_spec_param("4", {}) == "4"
    with pytest.raises(KeyError):
        resolve_pod_spec_param(ph, {})
    acc = {"accelerator": {"resourceType": GPU, "resourceCount": ph}}
    assert pod_resources(acc, {"pipelinechannel--gpus": 2})["limits"] == {}  # silently no GPU limit
    assert pod_resources(acc, {"pipelinechannel--gpus": "2"})["limits"] == {GPU: "2"}
    with pytest.raises(PodSpecError):
        pod_resources({"resourceCpuLimit": ph}, {"pipelinechannel--gpus": 2})


def test_every_pod_spec_placeholder_of_the_pipeline_comes_from_a_string(compiled):
    """Same source: each runtime value in a container's image, resources or accelerator must be a
    STRING parameter, or the driver drops it (accelerator) or fails the task (CPU/memory)."""
    spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    checked = 0
    for name, (parent, task) in container_tasks(spec).items():
        container = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]["container"]
        res = container.get("resources", {})
        fields = [container["image"], *(res.get(k, "") for k in POD_SPEC_FIELDS),
                  res.get("accelerator", {}).get("resourceCount", ""), res.get("accelerator", {}).get("resourceType", "")]
        for value in fields:
            if (param := placeholder_input(value)) is not None:
                checked += 1
                assert input_type(spec, parent, task, param) == "STRING", (
                    f"{name}: {value} comes from a {input_type(spec, parent, task, param)} value, which the KFP driver "
                    "resolves to \"\" (resolvePodSpecInputRuntimeParameter: GetStringValue)")
    assert checked >= 10, "the training steps take their resources from train_resources at run time"


@pytest.mark.parametrize("gpus", [1, 4])
def test_the_gpu_count_reaches_the_training_pods(compiled, gpus):
    """driver.go initPodSpecPatch + resolve.go resolvePodSpecInputRuntimeParameter, applied to the
    values a run with ``gpus`` holds (pipeline parameter a number, train_resources' outputs
    strings): pretrain and ssl_finetune get ``nvidia.com/gpu: gpus``, each holistic step 1."""
    from components.resources import train_resources

    spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    outputs = dict(zip(("cpu_request", "cpu_limit", "memory_request", "memory_limit", "gpu_limit"),
                       train_resources.python_func(gpus)))
    limits = {}
    for name, (parent, task) in container_tasks(spec).items():
        values = {}
        for k, src in task["inputs"].get("parameters", {}).items():
            if src.get("componentInputParameter", "").endswith("gpus"):
                values[k] = gpus  # a NUMBER_INTEGER parameter: a number value, as the driver holds it
            elif src.get("taskOutputParameter", {}).get("producerTask") == "train-resources":
                values[k] = outputs[src["taskOutputParameter"]["outputParameterKey"]]
        res = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]["container"].get("resources", {})
        limits[name] = pod_resources(res, values)["limits"].get(GPU)
    assert {k: v for k, v in limits.items() if v} == {"pretrain": str(gpus), "ssl-finetune": str(gpus), "holistic": "1",
                                                     "holistic-2": "1"}


def test_the_exit_handler_gets_the_dag_state_and_closes_complete_as_finished(compiled, monkeypatch):
    """resolve.go, resolveInputParameter (TaskFinalStatus case; 2.15.0 and 2.17.0): ``State:
    producer.GetExecution().GetLastKnownState().String()`` — the MLMD name of the exit-handler
    DAG's state, which metadata/client.go, UpdateDAGExecutionsState, sets to COMPLETE or FAILED
    (never SUCCEEDED, kfp.local's word). finalize must end the MLflow run FINISHED on COMPLETE."""
    from kfp import dsl

    import uft.tracking
    from components.finalize import finalize

    spec, _ = compiled
    (parent, task) = container_tasks(spec)["finalize"]
    (status_input,) = [v for v in task["inputs"]["parameters"].values() if "taskFinalStatus" in v]
    assert status_input["taskFinalStatus"]["producerTask"].startswith("exit-handler"), status_input
    assert final_status("SUCCEEDED", "exit-handler-1", "run-x") == {
        "state": "COMPLETE", "pipelineTaskName": "exit-handler-1", "pipelineJobResourceName": "run-x", "error": {}}

    ended = []
    monkeypatch.setattr(uft.tracking, "finish_parent", lambda exp, key, status: ended.append(status))
    for state, want in (("COMPLETE", "FINISHED"), ("FAILED", "FAILED"), ("RUNNING", "FAILED"), ("SUCCEEDED", "FINISHED"),
                        ("CANCELED", "FAILED")):
        finalize.python_func(status=dsl.PipelineTaskFinalStatus(state=state, pipeline_job_resource_name="r",
                                                                pipeline_task_name="exit-handler-1", error_code=None,
                                                                error_message=None),
                             run_id="", job_id="job", experiment="e")
        assert ended[-1] == want, f"finalize ended a {state} run {ended[-1]}"
    assert mlflow_status("complete") == "FINISHED"


def test_steps_read_the_run_id_from_the_pod_label_the_api_server_sets(compiled):
    """backend/src/apiserver/template/v2_template.go, V2Spec.RunWorkflow (2.15.0 and 2.17.0):
    ``executionSpec.SetPodMetadataLabels(util.LabelKeyWorkflowRunId, options.RunID)``;
    common/util/consts.go: ``LabelKeyWorkflowRunId = "pipeline/runid"``."""
    spec, executors = compiled
    for name, (_, task) in container_tasks(spec).items():
        ex = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]
        fields = {f["fieldPath"] for f in ex.get("fieldPathAsEnv", [])}
        assert f"metadata.labels['{RUN_ID_LABEL}']" in fields, name


def test_every_step_has_a_timeout_the_driver_puts_on_the_pod(compiled):
    """kfp-kubernetes 2.17.0 kubernetes.set_timeout → KubernetesExecutorConfig
    ``activeDeadlineSeconds``; backend/src/v2/driver/k8s.go, extendPodSpecPatch (2.15.0 and
    2.17.0): ``if timeout > 0 { podSpec.ActiveDeadlineSeconds = &timeout }``. Every step, the exit
    handler's included, is bounded; a GPU step by at most a day per attempt (retries: test_argo.py)."""
    spec, executors = compiled
    for name, (_, task) in container_tasks(spec).items():
        ex = executors.get(spec["components"][task["componentRef"]["name"]]["executorLabel"], {})
        seconds = int(ex.get("activeDeadlineSeconds", 0))
        assert 0 < seconds <= 24 * 3600, f"{name}: activeDeadlineSeconds {seconds}"
    assert int(executors["exec-finalize"]["activeDeadlineSeconds"]) <= 3600


def test_a_terminated_run_reaches_the_exit_handler_as_failed_or_running_never_canceled(compiled, monkeypatch):
    """backend/src/common/util/execution_spec.go, GetTerminatePatch (2.15.0 and 2.17.0): terminating
    a run patches the workflow with ``"activeDeadlineSeconds": 0``; Argo stops its pods and still
    runs exit hooks (workflow/controller/exit_handler.go: ``onExitTemplate: true``). The exit
    handler's DAG state comes from metadata/client.go, UpdateDAGExecutionsState: COMPLETE, FAILED,
    or left RUNNING ("DAG is still running") when a killed task never reported; CANCELED is only
    what CreateExecution writes for a task that was never triggered. So finalize closes a cancelled
    run FAILED, and nothing in uft claims KILLED."""
    from kfp import dsl

    import uft.tracking
    from components.finalize import finalize

    ended = []
    monkeypatch.setattr(uft.tracking, "finish_parent", lambda exp, key, status: ended.append(status))
    for state in ("FAILED", "RUNNING"):  # what a terminated run's exit-handler DAG can hold
        finalize.python_func(status=dsl.PipelineTaskFinalStatus(state=state, pipeline_job_resource_name="r",
                                                                pipeline_task_name="exit-handler-1", error_code=None,
                                                                error_message=None),
                             run_id="", job_id="job", experiment="e")
    assert ended == ["FAILED", "FAILED"]
    assert {mlflow_status(s) for s in MLMD_STATES} == {"FINISHED", "FAILED"}, "no MLMD state maps to KILLED"


def test_the_cache_key_covers_inputs_so_cached_steps_take_no_per_run_value(compiled):
    """backend/src/v2/cacheutils/cache.go, GenerateCacheKey (2.15.0 and 2.17.0): the key holds
    InputArtifactNames, InputParameterValues, OutputArtifactsSpec, OutputParametersSpec and the
    ContainerSpec (image, command, args). A cached step with a ``{{$.pipeline_job_*}}`` input
    could never hit; the run id reaches steps through the pod label instead (test above)."""
    spec, _ = compiled
    for name, (_, task) in container_tasks(spec).items():
        if not task.get("cachingOptions", {}).get("enableCache"):
            continue
        for p in task["inputs"].get("parameters", {}).values():
            assert "{{$.pipeline_job" not in str(p.get("runtimeValue", {}).get("constant", "")), name


def test_images_are_literal_in_the_pod_spec(compiled):
    """driver.go initPodSpecPatch resolves ``container.Image`` through
    resolvePodSpecInputRuntimeParameter too: uft compiles literal images (pinned by digest at
    submit time, uft.orchestrate.submit.require_pinned_images), never a parameter."""
    spec, _ = compiled
    for ex in spec["deploymentSpec"]["executors"].values():
        assert placeholder_input(ex["container"]["image"]) is None
        assert re.match(r"^[\w.\-/:@]+$", ex["container"]["image"])
