"""KFP's MLflow plugin (2.17+, when an admin enables it): backend/src/v2/common/plugins/mlflow/
handler.go, OnTaskStart creates a nested run per task under the plugin's parent run, and
RetrieveUserContainerEnvVars injects ``MLFLOW_RUN_ID`` (that run), ``MLFLOW_EXPERIMENT_ID`` and
``MLFLOW_TRACKING_URI`` into the step container; the driver puts them first and appends the task's
ConfigMap/Secret variables after them (driver.go initPodSpecPatch; k8s.go extendPodSpecPatch).
uft's own run wins (uft.tracking.take_plugin_run): checked here by setting the variables the plugin
sets, against a real MLflow store."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def plugin_run(mlflow_env, monkeypatch) -> tuple[str, str]:
    """(experiment id, run id) of a run as KFP's plugin would have made it, its variables set."""
    from mlflow.tracking import MlflowClient

    import uft.tracking

    monkeypatch.setattr(uft.tracking, "_plugin", {})
    client = MlflowClient()
    exp = client.create_experiment("kfp-plugin")
    parent = client.create_run(exp, run_name="kfp-run").info.run_id
    nested = client.create_run(exp, run_name="ingest", tags={"mlflow.parentRunId": parent}).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", nested)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp)
    return exp, nested


def test_uft_s_run_wins_over_the_plugin_s_and_names_it(plugin_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    from uft import tracking

    plugin_exp, plugin_id = plugin_run
    with tracking.step_run("uft-e", "run-1", "ingest", params={"rows": 3}) as run:
        mlflow.log_metric("rows", 3.0)
        step_id, step_exp = run.info.run_id, run.info.experiment_id
    assert "MLFLOW_RUN_ID" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ
    client = MlflowClient()
    uft_exp = client.get_experiment_by_name("uft-e").experiment_id
    assert step_id != plugin_id and step_exp == uft_exp != plugin_exp
    step = client.get_run(step_id)
    parent = tracking.find_run(uft_exp, "run-1", tracking.PARENT)
    assert step.data.tags[tracking.TAG_KFP_PLUGIN_RUN] == plugin_id
    assert step.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert step.data.params == {"rows": "3"} and step.data.metrics == {"rows": 3.0}
    theirs = client.get_run(plugin_id)  # untouched: the plugin ends it itself (OnTaskEnd)
    assert theirs.data.params == {} and theirs.data.metrics == {} and theirs.info.status == "RUNNING"
    # a retry of the step in a new pod (the plugin's variables set again) reuses uft's run
    os.environ.update({"MLFLOW_RUN_ID": plugin_id, "MLFLOW_EXPERIMENT_ID": plugin_exp})
    try:
        with tracking.step_run("uft-e", "run-1", "ingest", params={"rows": 3}) as again:
            assert again.info.run_id == step_id
    finally:
        for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            os.environ.pop(k, None)
    assert tracking.finish_parent("uft-e", "run-1") == parent.info.run_id
