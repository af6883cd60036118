from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(linear_base: str, knn_base: str, linear_finetuned: str, knn_finetuned: str, holistic: str,
           source: dsl.Input[dsl.Dataset], target: dsl.Input[dsl.Dataset], base_encoder: dsl.Input[dsl.Model],
           finetuned_encoder: dsl.Input[dsl.Model], store_uri: str, ssl_method: str, replay_rule: str,
           replay_size: int, replay_ratio: float, mix_op: str, finetune_steps: int, seed: int, run_id: str,
           job_id: str, experiment: str, markdown: dsl.Output[dsl.Markdown], html: dsl.Output[dsl.HTML],
           promote: str = "", holistic_finetuned: str = "", probe_draws: int = 5) -> str:
    """One markdown/HTML summary with plots, logged to MLflow → report manifest URI."""
    from uft.lineage import resolve
    from uft.steps import report as step
    from uft.tracking import run_key

    uri = {n: resolve(a.metadata, a.path, name=n)[0] for n, a in
           (("source", source), ("target", target), ("base_encoder", base_encoder), ("finetuned_encoder", finetuned_encoder))}
    uris = [linear_base, knn_base, linear_finetuned, knn_finetuned, holistic, holistic_finetuned, promote]
    out = step([u for u in uris if u], store_uri, config=dict(ssl_method=ssl_method, replay_rule=replay_rule,
               replay_size=replay_size, replay_ratio=replay_ratio, mix_op=mix_op, finetune_steps=finetune_steps, seed=seed,
               probe_draws=probe_draws),
               encoder_uris={"pretrain": uri["base_encoder"], "finetune": uri["finetuned_encoder"]},
               dataset_uris={"source": uri["source"], "target": uri["target"]},
               run_id=run_key(run_id, job_id), experiment=experiment)
    with open(markdown.path, "w") as f:
        f.write(out["markdown"])
    with open(html.path, "w") as f:
        f.write(out["html"])
    return out["report_uri"]
