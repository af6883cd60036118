"""What the compiled pipeline asks of the cluster exists in infra/: every ConfigMap key and Secret
key it loads into a step, and no more GPUs per step than the GPU overlay allows.

A name typo here would otherwise surface only on a real cluster, as pods stuck in
CreateContainerConfigError.
"""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from tests.infra.test_manifests import KUBECTL, SECRET_NAMES, TARGETS, objects, one

pytestmark = [
    pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: the manifests are rendered with it"),
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


def test_gpu_steps_fit_the_gpu_overlay(compiled):
    spec, executors = compiled
    (limit,) = one("overlays/gpu", "LimitRange", "uft-gpu")["spec"]["limits"]
    gpus = {
        name: int(ex["container"]["resources"]["accelerator"]["resourceCount"])
        for name, ex in spec["deploymentSpec"]["executors"].items()
        if ex["container"].get("resources", {}).get("accelerator", {}).get("resourceType") == "nvidia.com/gpu"
    }
    assert gpus, "no step asks for a GPU"
    assert max(gpus.values()) <= int(limit["max"]["nvidia.com/gpu"])
    # GPU steps must tolerate the GPU taint the docs tell platform engineers to use.
    for name in gpus:
        keys = {t["key"] for t in executors[name].get("tolerations", [])}
        assert "nvidia.com/gpu" in keys, f"{name} does not tolerate the nvidia.com/gpu taint"
