"""Every backend statement the contract suite relies on, as (file, function, quoted line), checked
against a kubeflow/pipelines git checkout at both releases uft reads (and the Argo lines against
argoproj/argo-workflows, UFT_ARGO_SOURCE): set UFT_KFP_SOURCE to its git
directory (e.g. a bare clone) to run this; without one it is skipped, the quotes stay the record.
When KFP changes one of these lines, this names the place to re-read."""

from __future__ import annotations

import os
import subprocess

import pytest

from uft.orchestrate.backend import READ_AT

SOURCE = os.environ.get("UFT_KFP_SOURCE", "")

#: (file, function, line quoted from it at every release of READ_AT)
CITATIONS = [
    ("backend/src/v2/driver/resolve.go", "resolvePodSpecInputRuntimeParameter", "return val.GetStringValue(), nil"),
    ("backend/src/v2/driver/driver.go", "initPodSpecPatch",
     "acceleratorCount, err = resolvePodSpecInputRuntimeParameter(accelerator.GetResourceCount(), executorInput)"),
    ("backend/src/v2/driver/driver.go", "initPodSpecPatch", 'if acceleratorType != "" && acceleratorCount != "" {'),
    ("backend/src/v2/driver/driver.go", "getPodResource", "resolved, err = resolvePodSpecInputRuntimeParameter(new, executorInput)"),
    ("backend/src/v2/driver/resolve.go", "resolveInputParameter (TaskFinalStatus)",
     "State:                   producer.GetExecution().GetLastKnownState().String(),"),
    ("backend/src/v2/metadata/client.go", "UpdateDAGExecutionsState", 'case "COMPLETE":'),
    ("backend/src/v2/driver/k8s.go", "extendPodSpecPatch", "podSpec.ActiveDeadlineSeconds = &timeout"),
    ("backend/src/v2/cacheutils/cache.go", "GenerateCacheKey", "InputParameterValues: make(map[string]*structpb.Value),"),
    ("backend/src/apiserver/template/v2_template.go", "V2Spec.RunWorkflow",
     "executionSpec.SetPodMetadataLabels(util.LabelKeyWorkflowRunId, options.RunID)"),
    ("backend/src/apiserver/template/v2_template.go", "V2Spec.RunWorkflow",
     "executionSpec.SetAnnotationsToAllTemplatesIfKeyNotExist(util.AnnotationKeyIstioSidecarInject, "
     "util.AnnotationValueIstioSidecarInjectDisabled)"),
    ("backend/src/common/util/consts.go", "LabelKeyWorkflowRunId", '"pipeline/runid"'),
    ("backend/src/apiserver/main.go", "/apis/v1beta1/healthz handler", "tag_name"),
    ("backend/src/apiserver/main.go", "/apis/v1beta1/healthz handler", "multi_user"),
    ("frontend/server/handlers/healthz.ts", "getHealthzHandler", "healthzStats.apiServerTagName = serverStatus.tag_name;"),
    ("frontend/server/handlers/healthz.ts", "getHealthzHandler", "healthzStats.apiServerMultiUser = serverStatus.multi_user;"),
    ("backend/src/apiserver/server/pipeline_upload_server.go", "UploadPipeline",
     "pipelineNamespace := r.URL.Query().Get(NamespaceStringQuery)"),
    ("backend/src/apiserver/validation/namespace.go", "ValidateNamespaceRequired",
     'return util.NewInvalidInputError("Namespace is required for pipeline operations")'),
    ("backend/src/apiserver/resource/resource_manager.go", "ReplaceNamespace", "if common.IsMultiUserMode() {"),
    # retries: the task's retryPolicy becomes Argo's retryStrategy, backoffMaxDuration its maxDuration
    ("backend/src/v2/compiler/argocompiler/container.go", "getTaskRetryStrategyFromInput",
     "MaxDuration: backOffMaxDuration,"),
    ("backend/src/v2/compiler/argocompiler/container.go", "getTaskRetryParametersWithValues",
     "retryBackOffMaxDuration := wfapi.AnyStringPtr(retryPolicy.GetBackoffMaxDuration().Seconds)"),
    # cancellation: terminating patches the workflow's deadline; the DAG state is COMPLETE or FAILED
    ("backend/src/common/util/execution_spec.go", "GetTerminatePatch", '"activeDeadlineSeconds": 0,'),
    ("backend/src/v2/metadata/client.go", "UpdateDAGExecutionsState", 'glog.V(4).Infof("DAG is still running")'),
    ("backend/src/v2/metadata/client.go", "CreateExecution (NotTriggered)", "e.LastKnownState = pb.Execution_CANCELED.Enum()"),
    # the UI keeps its last API server answer and only flips apiServerReady
    ("frontend/server/handlers/healthz.ts", "getHealthzHandler", "healthzStats.apiServerReady = false;"),
    # the profile controller's kfp-launcher, created once and never updated (OnDelete)
    ("manifests/kustomize/base/installs/multi-user/pipelines-profile-controller/sync.py", "Controller.sync",
     '"defaultPipelineRoot": f"minio://{S3_BUCKET_NAME}/private-artifacts/{namespace}/v2/artifacts",'),
    ("manifests/kustomize/base/installs/multi-user/pipelines-profile-controller/decorator-controller.yaml",
     "attachments (configmaps)", "method: OnDelete"),
]
#: Only at the newest release (the rule came with it).
NEWEST_ONLY = [
    ("backend/src/apiserver/server/pipeline_server.go", "canAccessPipeline",
     "resourceAttributes.Namespace = common.GetPodNamespace()"),
    # KFP's MLflow plugin (2.17+): the step container gets the plugin's nested run
    ("backend/src/v2/common/plugins/mlflow/handler.go", "RetrieveUserContainerEnvVars",
     '{Name: "MLFLOW_RUN_ID", Value: h.nestedRunID},'),
    ("backend/src/v2/common/plugins/mlflow/handler.go", "RetrieveUserContainerEnvVars",
     '{Name: "MLFLOW_EXPERIMENT_ID", Value: h.runtimeCfg.ExperimentID},'),
    # plugin variables first, the task's ConfigMap/Secret env appended after them (extendPodSpecPatch)
    ("backend/src/v2/driver/driver.go", "initPodSpecPatch", "userEnvVar = append(userEnvVar, pluginEnvVarSlice...)"),
    ("backend/src/v2/driver/k8s.go", "extendPodSpecPatch",
     "podSpec.Containers[0].Env = append(podSpec.Containers[0].Env, configMapEnvVar)"),
]

#: Argo Workflows, at the release each KFP version builds with (go.mod: KFP 2.15.0 → v3.7.3,
#: 2.17.0 → v4.0.5); checked against an argoproj/argo-workflows git directory in UFT_ARGO_SOURCE.
ARGO_READ_AT = ("v3.7.3", "v4.0.5")
ARGO_CITATIONS = [
    ("workflow/controller/operator.go", "processNodeRetries", "maxDurationDeadline = firstChildNode.StartedAt.Add(maxDuration)"),
    ("workflow/controller/operator.go", "processNodeRetries", '"Max duration limit exceeded"'),
    ("workflow/controller/operator.go", "processNodeRetries", '"Backoff would exceed max duration limit"'),
    ("workflow/controller/operator.go", "processNodeRetries", "opts.executionDeadline = maxDurationDeadline"),
    ("workflow/controller/workflowpod.go", "createWorkflowPod (ARGO_DEADLINE)",
     "{Name: common.EnvVarDeadline, Value: woc.getDeadline(opts).Format(time.RFC3339)},"),
    ("workflow/executor/executor.go", "monitorDeadline", 'message = "Step exceeded its deadline"'),
    ("workflow/controller/exit_handler.go", "runOnExitNode (exit hooks run past the workflow deadline)",
     "onExitTemplate: true,"),
]
ARGO_SOURCE = os.environ.get("UFT_ARGO_SOURCE", "")


def _show(tag: str, path: str, source: str = SOURCE) -> str:
    return subprocess.run(["git", f"--git-dir={source}", "show", f"{tag}:{path}"], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(not SOURCE, reason="set UFT_KFP_SOURCE to a kubeflow/pipelines git directory")
@pytest.mark.parametrize("tag", READ_AT)
def test_quoted_backend_lines_are_in_the_source(tag):
    rows = CITATIONS + (NEWEST_ONLY if tag == READ_AT[-1] else [])
    missing = [(path, func, line) for path, func, line in rows if line not in _show(tag, path)]
    assert not missing, f"at {tag} these lines moved or changed: re-read them: {missing}"


@pytest.mark.skipif(not ARGO_SOURCE, reason="set UFT_ARGO_SOURCE to an argoproj/argo-workflows git directory")
@pytest.mark.parametrize("tag", ARGO_READ_AT)
def test_quoted_argo_lines_are_in_the_source(tag):
    missing = [(path, func, line) for path, func, line in ARGO_CITATIONS if line not in _show(tag, path, ARGO_SOURCE)]
    assert not missing, f"at Argo {tag} these lines moved or changed: re-read them: {missing}"
