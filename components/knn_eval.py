from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def knn_eval(encoder_uri: str, target_uri: str, store_uri: str, tag: str, source_uri: str, k: int, run_id: str,
             job_id: str, experiment: str, metrics: dsl.Output[dsl.Metrics]) -> str:
    """k-NN accuracy on the target and source retention → metrics URI."""
    from uft.config import default_store_uri

    store_uri = store_uri or default_store_uri()  # "": s3://$UFT_BUCKET/uft (ConfigMap uft-config)
    from uft.steps import knn_eval as step
    from uft.tracking import run_key

    out = step(encoder_uri, target_uri, store_uri, tag=tag, source_uri=source_uri, k=k,
               run_id=run_key(run_id, job_id), experiment=experiment)
    for name, v in out["metrics"].items():
        metrics.log_metric(f"{tag}_{name}", float(v))
    return out["metrics_uri"]
