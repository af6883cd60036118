from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def linear_eval(encoder: dsl.Input[dsl.Model], target: dsl.Input[dsl.Dataset], store_uri: str, tag: str, shots: str,
                draws: int, seed: int, run_id: str, experiment: str,
                metrics: dsl.Output[dsl.Metrics]) -> str:
    """Few-label and full linear probes on frozen target features → metrics URI."""
    from uft.lineage import resolve
    from uft.steps import linear_eval as step
    from uft.tracking import pod_run_key

    out = step(resolve(encoder.metadata, encoder.path, name="encoder")[0],
               resolve(target.metadata, target.path, name="target")[0], store_uri, tag=tag, shots=shots, draws=draws,
               seed=seed, run_id=pod_run_key(run_id), experiment=experiment)
    for k, v in out["metrics"].items():
        metrics.log_metric(f"{tag}_{k}", float(v))
    return out["metrics_uri"]
