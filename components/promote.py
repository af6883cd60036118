from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(encoder: dsl.Input[dsl.Model], base_encoder: dsl.Input[dsl.Model], target: dsl.Input[dsl.Dataset],
            source: dsl.Input[dsl.Dataset], store_uri: str, registered_model: str, margin: float,
            retention_tolerance: float, seed: int, run_id: str, job_id: str, experiment: str,
            metrics: dsl.Output[dsl.Metrics]) -> str:
    """Label-free signals + promotion gate: register the finetuned encoder, alias champion/challenger → metrics URI."""
    from uft.lineage import resolve
    from uft.promote import promote_step
    from uft.tracking import run_key

    uri = {n: resolve(a.metadata, a.path, name=n)[0]
           for n, a in (("encoder", encoder), ("base_encoder", base_encoder), ("target", target), ("source", source))}
    out = promote_step(uri["encoder"], uri["base_encoder"], uri["target"], store_uri, source_uri=uri["source"],
                       registered_model=registered_model, margin=margin, retention_tolerance=retention_tolerance,
                       seed=seed, run_id=run_key(run_id, job_id), experiment=experiment)
    metrics.log_metric("promoted", float(out["promoted"]))
    print(f"promotion: {out['summary']}")
    return out["metrics_uri"]
