from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(encoder_uri: str, base_encoder_uri: str, target_uri: str, source_uri: str, store_uri: str,
            registered_model: str, margin: float, retention_tolerance: float, seed: int, run_id: str, job_id: str,
            experiment: str, metrics: dsl.Output[dsl.Metrics]) -> str:
    """Label-free signals + promotion gate: register the finetuned encoder, alias champion/challenger → metrics URI."""
    from uft.config import default_store_uri
    from uft.promote import promote_step
    from uft.tracking import run_key

    store_uri = store_uri or default_store_uri()  # "": s3://$UFT_BUCKET/uft (ConfigMap uft-config)

    out = promote_step(encoder_uri, base_encoder_uri, target_uri, store_uri, source_uri=source_uri,
                       registered_model=registered_model, margin=margin, retention_tolerance=retention_tolerance,
                       seed=seed, run_id=run_key(run_id, job_id), experiment=experiment)
    metrics.log_metric("promoted", float(out["promoted"]))
    print(f"promotion: {out['summary']}")
    return out["metrics_uri"]
