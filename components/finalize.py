from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finalize(status: dsl.PipelineTaskFinalStatus, run_id: str, job_id: str, experiment: str):
    """Exit handler: end the pipeline's parent MLflow run FINISHED or FAILED, never RUNNING."""
    from uft.tracking import finish_parent, run_key

    finish_parent(experiment, run_key(run_id, job_id), "FINISHED" if status.state == "SUCCEEDED" else "FAILED")
