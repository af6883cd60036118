"""MLflow runs: one parent per pipeline run, one nested run per step, keyed by (run id, step).

Retries are idempotent: a step that runs again under the same pipeline run id reuses its MLflow
run instead of creating a duplicate, and a step that raises ends its run FAILED (never RUNNING).
When KFP's MLflow plugin (2.17+) injects ``MLFLOW_RUN_ID``/``MLFLOW_EXPERIMENT_ID``, uft's own
run still wins (:func:`take_plugin_run` says why); the plugin's run id is kept as a tag.
Tracking is off when ``MLFLOW_TRACKING_URI`` is unset (library use without a server).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

from uft.errors import TransientError, UftError

PARENT = "pipeline"
#: How old the parent run must be before a step takes it (:func:`get_or_create_run`): longer than a
#: create request takes to land in a local or cluster MLflow (and than the pods' clock skew), so no
#: run stamped earlier can still arrive. Costs the step that makes the parent this once per run.
PARENT_SETTLE_S = 0.5
TAG_RUN = "uft.pipeline_run_id"
TAG_STEP = "uft.step"
#: What KFP's MLflow plugin puts into a step container when an admin enables it (backend/src/v2/
#: common/plugins/mlflow/handler.go, RetrieveUserContainerEnvVars, 2.17.0): its own nested run
#: and experiment. (It also sets MLFLOW_TRACKING_URI and credentials; the driver appends uft's
#: ConfigMap and Secret variables after them, so on a duplicate name uft's value is the later one.)
KFP_PLUGIN_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")
#: Tag on uft's step run naming the KFP plugin's run of the same step, to go from one to the other.
TAG_KFP_PLUGIN_RUN = "uft.kfp_mlflow_run_id"
_plugin: dict[str, str] = {}


def take_plugin_run() -> dict[str, str]:
    """Remove KFP's plugin variables (:data:`KFP_PLUGIN_ENV`) from this process's environment and
    return them (``{}`` without the plugin); later calls return what the first one took.

    uft's run wins, on purpose: its runs are keyed on (pipeline run id, step) under uft's own
    parent run and experiment, which is what makes a retried step reuse its run, lets
    :func:`finish_parent` close orphans, and what ``uft compare`` and the promotion gate read. The
    plugin's run sits under the plugin's parent in the plugin's experiment, and the plugin ends it
    itself from KFP's execution state. MLflow's fluent API would otherwise adopt them silently
    (``mlflow.start_run`` resumes ``MLFLOW_RUN_ID``; ``MLFLOW_EXPERIMENT_ID`` is its default
    experiment), so they are taken out before any MLflow call."""
    for key in KFP_PLUGIN_ENV:
        if (value := os.environ.pop(key, None)) is not None:
            _plugin[key] = value
    return dict(_plugin)


def enabled() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def _client():
    take_plugin_run()  # before MLflow reads them (see there)
    # Fail fast on an unreachable server instead of MLflow's minutes of default retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def experiment_id(name: str) -> str:
    client = _client()
    try:
        exp = client.get_experiment_by_name(name)
    except Exception as e:
        raise TransientError(
            f"MLflow at {os.environ.get('MLFLOW_TRACKING_URI')} is unreachable ({type(e).__name__}): "
            "start it or fix MLFLOW_TRACKING_URI"
        ) from None
    if exp is not None:
        return exp.experiment_id
    artifacts = os.environ.get("UFT_MLFLOW_ARTIFACTS")  # e.g. s3://bucket/mlflow
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=f"{artifacts}/{name}" if artifacts else None)
    except MlflowException:  # a step running beside this one created it first
        if (exp := client.get_experiment_by_name(name)) is None:
            raise
        return exp.experiment_id


def find_run(exp_id: str, pipeline_run_id: str, step: str):
    """The run of (``pipeline_run_id``, ``step``): the oldest one, should a race have made two
    (:func:`get_or_create_run`), so every caller agrees on it."""
    runs = _client().search_runs(
        [exp_id], filter_string=f"tags.`{TAG_RUN}` = '{pipeline_run_id}' and tags.`{TAG_STEP}` = '{step}'",
        max_results=1, order_by=["attributes.start_time ASC", "attributes.run_id ASC"],
    )
    return runs[0] if runs else None


def _settled_parent(exp_id: str, pipeline_run_id: str):
    """The oldest parent run of ``pipeline_run_id`` once it is :data:`PARENT_SETTLE_S` old, when no
    run stamped before it can still be on its way in; ``None`` when there is none. One wait at
    most: a run stamped in the future (a pod's clock ahead) costs one settle, not the skew."""
    run = find_run(exp_id, pipeline_run_id, PARENT)
    if run is None:
        return None
    wait = (run.info.start_time or 0) / 1000 + PARENT_SETTLE_S - time.time()
    if wait <= 0:
        return run
    time.sleep(min(wait, PARENT_SETTLE_S))
    return find_run(exp_id, pipeline_run_id, PARENT)  # an older run that landed meanwhile, or the same


def get_or_create_run(exp_id: str, pipeline_run_id: str, step: str, parent_id: str | None = None,
                      run_name: str | None = None) -> str:
    """The run of (``pipeline_run_id``, ``step``), created when there is none.

    Steps start at once (KFP runs independent tasks in parallel pods, ``uft run`` with
    ``UFT_LOCAL_WORKERS``), and each makes the parent run if it finds none. MLflow has no unique
    key to make that atomic, so the parent is the oldest run of the key (:func:`find_run`), taken
    only once it is settled (:func:`_settled_parent`); a step whose new parent lost deletes it.
    All of them then end on one parent. (A step's own run has one writer: a retry runs after the
    failed attempt, never beside it.)"""
    find = (lambda: _settled_parent(exp_id, pipeline_run_id)) if step == PARENT else (
        lambda: find_run(exp_id, pipeline_run_id, step))
    if (existing := find()) is not None:
        return existing.info.run_id
    tags = {TAG_RUN: pipeline_run_id, TAG_STEP: step}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    client = _client()
    created = client.create_run(exp_id, tags=tags, run_name=run_name or step).info.run_id
    if step != PARENT:
        return created
    oldest = find()
    if oldest is not None and oldest.info.run_id != created:
        client.delete_run(created)
        return oldest.info.run_id
    return created


def parent_run_id(experiment: str, pipeline_run_id: str) -> str:
    exp = experiment_id(experiment)
    return get_or_create_run(exp, pipeline_run_id, PARENT, run_name=f"uft-{pipeline_run_id}")


@contextmanager
def step_run(experiment: str, pipeline_run_id: str, step: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
    """Context: the active MLflow run of ``step`` (or ``None`` when tracking is off)."""
    if not enabled():
        yield None
        return
    import mlflow

    exp = experiment_id(experiment)
    parent = get_or_create_run(exp, pipeline_run_id, PARENT, run_name=f"uft-{pipeline_run_id}")
    run_id = get_or_create_run(exp, pipeline_run_id, step, parent_id=parent)
    client = _client()
    if params:
        _check_params(client, run_id, step, pipeline_run_id, params)
    client.update_run(run_id, status="RUNNING")
    if plugin_run := take_plugin_run().get("MLFLOW_RUN_ID"):
        client.set_tag(run_id, TAG_KFP_PLUGIN_RUN, plugin_run)
    with mlflow.start_run(run_id=run_id, experiment_id=exp, log_system_metrics=False) as run, _sigterm_raises():
        try:
            if params:
                # Params are immutable in MLflow; a retried step logs the same values again (allowed).
                mlflow.log_params({k: _param(v) for k, v in params.items()})
            yield run
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise


def _check_params(client, run_id: str, step: str, pipeline_run_id: str, params: dict[str, Any]) -> None:
    """A rerun under the same pipeline run id must have the same params (MLflow params are immutable);
    refuse before touching the run, so an earlier finished run is not marked FAILED by the clash."""
    logged = client.get_run(run_id).data.params
    clash = sorted(k for k, v in params.items() if k in logged and logged[k] != _param(v))
    if clash:
        raise UftError(
            f"run_id {pipeline_run_id!r} was already used with different {', '.join(clash)} for step {step}: "
            "pass a new run_id (or leave it empty to derive one from the config)"
        )


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM (Kubernetes stopping a pod, a timeout) into SystemExit inside a step, so the
    ``except`` above ends the run FAILED; Python's default would die without unwinding. SIGKILL
    cannot be caught: :func:`finish_parent` ends such orphaned step runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        # Once: a repeat (the local runner signals a task and, forked, its launcher forwards it)
        # must not interrupt the unwinding that marks the run FAILED.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def finish_parent(experiment: str, pipeline_run_id: str, status: str = "FINISHED") -> str | None:
    """End the parent run of a pipeline run (called when the whole DAG is done).

    A step run still RUNNING at this point belongs to a process that died without unwinding
    (SIGKILL, OOM, node loss) and was not retried to success: it is ended FAILED.
    """
    if not enabled():
        return None
    exp = experiment_id(experiment)
    run = find_run(exp, pipeline_run_id, PARENT)
    if run is None:
        return None
    client = _client()
    orphans = client.search_runs(
        [exp], filter_string=f"tags.`{TAG_RUN}` = '{pipeline_run_id}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    for child in orphans:
        if child.info.run_id != run.info.run_id:
            client.set_terminated(child.info.run_id, status="FAILED")
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def log_parent_params(experiment: str, pipeline_run_id: str, params: dict[str, Any]) -> str | None:
    """Add ``params`` (e.g. the run's whole config) to the pipeline's parent run, skipping names it
    already has (MLflow params are immutable), so `uft compare` can group by any of them.
    → the parent's MLflow run id (None when tracking is off or there is no parent run)."""
    if not enabled():
        return None
    parent = find_run(experiment_id(experiment), pipeline_run_id, PARENT)
    if parent is None:
        return None
    client = _client()
    known = parent.data.params
    for k, v in params.items():
        if k not in known:
            client.log_param(parent.info.run_id, k, _param(v))
    return parent.info.run_id


def _param(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 500 else s[:497] + "..."


#: MLflow 3.17's UI opens in its GenAI workflow (runs under "Evaluations", no model registry in the
#: sidebar) unless the page's query selects the classic one: the UI's workflow-type provider reads
#: the ``workflowType`` search parameter before its stored choice (mlflow/server/js, the context
#: that keeps "mlflow.workflowType"; there is no server option or experiment tag for it).
UI_QUERY = "?workflowType=machine_learning"


def ui_run_route(experiment_id: str, run_id: str, artifact: str = "") -> str:
    """The MLflow UI's route (``#/...``) to a run's page, or to one of its artifacts."""
    tail = f"/artifacts/{artifact}" if artifact else ""
    return f"#/experiments/{experiment_id}/runs/{run_id}{tail}{UI_QUERY}"


def ui_model_version_route(name: str, version: str) -> str:
    """The MLflow UI's route to a registered model version."""
    from urllib.parse import quote

    return f"#/models/{quote(str(name), safe='')}/versions/{version}{UI_QUERY}"


def ui_url(route: str, port: int = 5000) -> str:
    """``route`` on the local UI that `uft ui` (`make ui`) starts."""
    return f"http://127.0.0.1:{port}/{route}"


def report_route(experiment: str, pipeline_run_id: str = "") -> str | None:
    """The UI route to the report of a pipeline run's parent run (the latest pipeline run of
    ``experiment`` when no id is given), or None when there is none (yet) or tracking is off."""
    if not enabled():
        return None
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    where = f"tags.`{TAG_STEP}` = '{PARENT}'" + (f" and tags.`{TAG_RUN}` = '{pipeline_run_id}'" if pipeline_run_id else "")
    runs = client.search_runs([exp.experiment_id], filter_string=where, order_by=["attributes.start_time DESC"],
                              max_results=1)
    if not runs:
        return None
    return ui_run_route(exp.experiment_id, runs[0].info.run_id, "report.md")


def run_key(run_id: str, job_id: str) -> str:
    """The pipeline run's MLflow key: an explicit ``run_id`` (deterministic reruns) or the KFP job id."""
    return run_id or job_id or "local"


#: The KFP run id inside a pipeline pod: the pipeline maps the pod label ``pipeline/runid`` (which the
#: KFP API server puts on every pod of a run) to this variable with the downward API.
KFP_RUN_ENV = "UFT_KFP_RUN_ID"


def pod_run_key(run_id: str) -> str:
    """The MLflow key of the run a *cacheable* step executes in: ``run_id``, else the KFP run id from
    the pod's environment (:data:`KFP_RUN_ENV`), else ``"local"``. A job-id *input* would do the same,
    but KFP hashes every input value into the cache key, so no step taking one is ever a cache hit."""
    return run_key(run_id, os.environ.get(KFP_RUN_ENV, ""))


def log_outputs(out: dict[str, Any]) -> dict[str, Any]:
    """Tag the active run with a step's output URIs/hashes (so `uft run` can list them); returns ``out``."""
    if enabled():
        import mlflow

        if mlflow.active_run() is not None:
            tags = {k: str(v) for k, v in out.items() if k.endswith(("_uri", "_sha")) and isinstance(v, str)}
            tags["cached"] = str(out.get("cached", False))
            mlflow.set_tags(tags)
    return out
