from typing import NamedTuple

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def subsample_source(source_uri: str, source_sha: str, store_uri: str, rule: str, size: int, seed: int,
                     encoder_uri: str, target_uri: str, run_id: str, job_id: str,
                     experiment: str) -> NamedTuple("Outputs", [("replay_uri", str), ("replay_sha", str)]):
    """Select the sparse source replay set."""
    from uft.config import default_store_uri

    store_uri = store_uri or default_store_uri()  # "": s3://$UFT_BUCKET/uft (ConfigMap uft-config)
    from uft.steps import subsample_source as step
    from uft.tracking import run_key

    out = step(source_uri, source_sha, store_uri, rule=rule, size=size, seed=seed, encoder_uri=encoder_uri,
               target_uri=target_uri, run_id=run_key(run_id, job_id), experiment=experiment)
    return (out["replay_uri"], out["replay_sha"])
