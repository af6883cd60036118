from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def mix(store_uri: str, op: str, alpha: float, fraction: float, pairing: str, plan: dsl.Output[dsl.Artifact],
        run_id: str = "", experiment: str = "uft"):
    """Record the data-mixing plan the trainer applies on the fly → ``plan`` (a recipe, not data)."""
    from uft.lineage import emit
    from uft.steps import mix_plan
    from uft.tracking import pod_run_key

    out = mix_plan(store_uri, op=op, alpha=alpha, fraction=fraction, pairing=pairing, run_id=pod_run_key(run_id),
                   experiment=experiment)
    emit(plan.path, plan.metadata, out["plan_uri"], out["plan_sha"])
