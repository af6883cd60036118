"""The backend contract suite: what uft assumes of the Kubeflow Pipelines backend and of
kfp-kubernetes, each test citing the backend file and function it was read from at 2.15.0 (the
oldest release uft supports) and 2.17.0 (the newest). test_citations.py checks the quoted lines
against a kubeflow/pipelines checkout when UFT_KFP_SOURCE names one."""

from __future__ import annotations

import pytest
import yaml


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform executors) of the compiled uft pipeline."""
    from uft.orchestrate.compile import compile_pipeline

    out = compile_pipeline(tmp_path_factory.mktemp("contract") / "uft.yaml")
    spec, platform = list(yaml.safe_load_all(out.read_text()))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def container_tasks(spec: dict) -> dict[str, tuple[str, dict]]:
    """Every container task of the DAG (the exit handler's sub-DAG included): name → (parent
    component name, task spec)."""
    out = {}
    dags = {"root": spec["root"], **spec["components"]}
    for parent, comp in dags.items():
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            if "executorLabel" in spec["components"][task["componentRef"]["name"]]:
                out[name] = (parent, task)
    return out


def input_type(spec: dict, parent: str, task: dict, name: str) -> str:
    """The KFP parameter type of a task input, from where its value comes: the parent DAG's input
    definition, the producer's output definition, or a constant (STRING for a string literal)."""
    src = task["inputs"]["parameters"][name]
    comps = {"root": spec["root"], **spec["components"]}
    if "componentInputParameter" in src:
        return comps[parent]["inputDefinitions"]["parameters"][src["componentInputParameter"]]["parameterType"]
    if "taskOutputParameter" in src:
        producer = comps[parent]["dag"]["tasks"][src["taskOutputParameter"]["producerTask"]]
        outs = spec["components"][producer["componentRef"]["name"]]["outputDefinitions"]["parameters"]
        return outs[src["taskOutputParameter"]["outputParameterKey"]]["parameterType"]
    const = src.get("runtimeValue", {}).get("constant")
    return "STRING" if isinstance(const, str) else type(const).__name__.upper()
