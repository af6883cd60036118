"""KFP's profile controller and the ``kfp-launcher`` ConfigMap in a profile namespace, as
manifests/kustomize/base/installs/multi-user/pipelines-profile-controller reads at 2.15.0 and
2.17.0 (quoted lines: test_citations.py). sync.py, ``Controller.sync``, wants a ``kfp-launcher``
in every namespace labelled ``pipelines.kubeflow.org/enabled`` with ``defaultPipelineRoot:
minio://mlpipeline/private-artifacts/<namespace>/v2/artifacts`` (2.17.0 adds ``clusterDomain``),
hard-coded (``S3_BUCKET_NAME = 'mlpipeline'``, no setting); decorator-controller.yaml attaches
ConfigMaps with ``updateStrategy: method: OnDelete``: metacontroller creates a missing one and
never updates an existing one. So the overlay's ConfigMap, applied after the Profile, replaces
the keys it sets and keeps them; a deleted one comes back as the controller's. No cluster runs
here: this checks that what the overlay applies overrides every key the controller's copy sets
that matters to a run, and that the page tells the operator how to see which one is live."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from tests.infra.test_manifests import KUBECTL, ROOT, one

pytestmark = pytest.mark.skipif(KUBECTL is None and os.environ.get("CI", "").lower() != "true",
                                reason="kubectl is not installed: the manifests are rendered with it")
PROFILE = "overlays/kubeflow-profile"


def controller_launcher(namespace: str) -> dict[str, str]:
    """The data of the profile controller's kfp-launcher (sync.py, 2.17.0)."""
    return {"defaultPipelineRoot": f"minio://mlpipeline/private-artifacts/{namespace}/v2/artifacts",
            "clusterDomain": ".svc.cluster.local"}


def applied_over(existing: dict[str, str], ours: dict[str, str]) -> dict[str, str]:
    """``kubectl apply`` of our ConfigMap onto one it did not create (no last-applied annotation):
    a patch that sets every key of ours and removes none of the others."""
    return {**existing, **ours}


def test_the_overlay_s_kfp_launcher_replaces_the_controller_s_pipeline_root():
    ours = one(PROFILE, "ConfigMap", "kfp-launcher")
    bucket = one(PROFILE, "ConfigMap", "uft-config")["data"]["UFT_BUCKET"]
    live = applied_over(controller_launcher(ours["metadata"]["namespace"]), ours["data"])
    assert live["defaultPipelineRoot"] == f"s3://{bucket}/pipelines"
    assert yaml.safe_load(live["providers"])["s3"]["default"]["credentials"]["secretRef"]["secretName"] == "uft-s3"
    # what the controller's copy alone would do: artifacts in KFP's own store, silently
    assert controller_launcher("uft")["defaultPipelineRoot"].startswith("minio://mlpipeline/")


def test_the_page_says_how_the_controller_behaves_and_how_to_check():
    text = " ".join((ROOT / "docs" / "deploy.md").read_text().split())
    assert "updateStrategy: OnDelete" in text and "minio://mlpipeline/private-artifacts/uft/v2/artifacts" in text
    check = re.search(r"`(kubectl -n uft get configmap kfp-launcher -o jsonpath='\{\.data\.defaultPipelineRoot\}')`", text)
    assert check, "the page must give the command that shows the live pipeline root"
    assert "through its settings" not in text, "there is no controller setting for the pipeline root"
