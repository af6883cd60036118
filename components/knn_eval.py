from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def knn_eval(encoder: dsl.Input[dsl.Model], target: dsl.Input[dsl.Dataset], source: dsl.Input[dsl.Dataset],
             store_uri: str, tag: str, k: int, run_id: str, experiment: str,
             metrics: dsl.Output[dsl.Metrics]) -> str:
    """k-NN accuracy on the target and source retention → metrics URI."""
    from uft.lineage import resolve
    from uft.steps import knn_eval as step
    from uft.tracking import pod_run_key

    out = step(resolve(encoder.metadata, encoder.path, name="encoder")[0],
               resolve(target.metadata, target.path, name="target")[0], store_uri, tag=tag,
               source_uri=resolve(source.metadata, source.path, name="source")[0], k=k,
               run_id=pod_run_key(run_id), experiment=experiment)
    for name, v in out["metrics"].items():
        metrics.log_metric(f"{tag}_{name}", float(v))
    return out["metrics_uri"]
