from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finalize(status: dsl.PipelineTaskFinalStatus, run_id: str, job_id: str, experiment: str):
    """Exit handler: end the pipeline's parent MLflow run FINISHED or FAILED, never RUNNING.

    ``status.state`` is the exit-handler DAG's MLMD state on a cluster (COMPLETE, FAILED, or
    RUNNING when a step was killed before reporting), SUCCEEDED under kfp.local:
    uft.orchestrate.backend.mlflow_status reads both. A run terminated in KFP arrives here as
    FAILED or RUNNING, never CANCELED, so it is closed FAILED (there is no KILLED to report).
    """
    from uft.orchestrate.backend import mlflow_status
    from uft.tracking import finish_parent, run_key

    finish_parent(experiment, run_key(run_id, job_id), mlflow_status(status.state))
