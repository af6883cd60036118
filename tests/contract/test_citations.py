"""Every backend statement the contract suite relies on, as (file, function, quoted line), checked
against a kubeflow/pipelines git checkout at both releases uft reads: set UFT_KFP_SOURCE to its git
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
]
#: Only at the newest release (the rule came with it).
NEWEST_ONLY = [
    ("backend/src/apiserver/server/pipeline_server.go", "canAccessPipeline",
     "resourceAttributes.Namespace = common.GetPodNamespace()"),
]


def _show(tag: str, path: str) -> str:
    return subprocess.run(["git", f"--git-dir={SOURCE}", "show", f"{tag}:{path}"], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(not SOURCE, reason="set UFT_KFP_SOURCE to a kubeflow/pipelines git directory")
@pytest.mark.parametrize("tag", READ_AT)
def test_quoted_backend_lines_are_in_the_source(tag):
    rows = CITATIONS + (NEWEST_ONLY if tag == READ_AT[-1] else [])
    missing = [(path, func, line) for path, func, line in rows if line not in _show(tag, path)]
    assert not missing, f"at {tag} these lines moved or changed: re-read them: {missing}"
