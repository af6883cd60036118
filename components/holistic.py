from kfp import dsl

from components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def holistic(encoder: dsl.Input[dsl.Model], source: dsl.Input[dsl.Dataset], target: dsl.Input[dsl.Dataset],
             store_uri: str, seen: str, methods: str, steps: int, seed: int, run_id: str, experiment: str,
             metrics: dsl.Output[dsl.Metrics], source_steps: int = 600, tag: str = "base") -> str:
    """Holistic transfer from the encoder ``tag`` (base / finetuned): source classifier finetuned on
    seen target classes; seen/unseen accuracy."""
    from uft.lineage import resolve
    from uft.steps import holistic_eval
    from uft.tracking import pod_run_key

    out = holistic_eval(resolve(encoder.metadata, encoder.path, name="encoder")[0],
                        resolve(source.metadata, source.path, name="source")[0],
                        resolve(target.metadata, target.path, name="target")[0], store_uri, seen=seen, methods=methods,
                        steps=steps, source_steps=source_steps, seed=seed, tag=tag, run_id=pod_run_key(run_id),
                        experiment=experiment)
    for k, v in out["metrics"]["flat"].items():
        metrics.log_metric(k, float(v))
    return out["metrics_uri"]
