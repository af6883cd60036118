from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def subsample_source(source: dsl.Input[dsl.Dataset], encoder: dsl.Input[dsl.Model], target: dsl.Input[dsl.Dataset],
                     store_uri: str, rule: str, size: int, seed: int, run_id: str, experiment: str,
                     replay: dsl.Output[dsl.Dataset]):
    """Select the sparse source replay set (row ids of the source) → ``replay``."""
    from uft.lineage import emit, resolve
    from uft.steps import subsample_source as step
    from uft.tracking import pod_run_key

    source_uri, source_sha = resolve(source.metadata, source.path, name="source")
    encoder_uri, _ = resolve(encoder.metadata, encoder.path, name="encoder")
    target_uri, _ = resolve(target.metadata, target.path, name="target")
    out = step(source_uri, source_sha, store_uri, rule=rule, size=size, seed=seed, encoder_uri=encoder_uri,
               target_uri=target_uri, run_id=pod_run_key(run_id), experiment=experiment)
    emit(replay.path, replay.metadata, out["replay_uri"], out["replay_sha"])
