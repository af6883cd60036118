from typing import NamedTuple

from kfp import dsl

from components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def pretrain(source_uri: str, source_sha: str, store_uri: str, encoder: str, encoder_width: int, method: str,
             steps: int, batch_size: int, lr: float, seed: int, pretrained_encoder: str, checkpoint_every: int,
             run_id: str, job_id: str, experiment: str) -> NamedTuple("Outputs", [("encoder_uri", str), ("encoder_sha", str)]):
    """SSL pretraining on the source (or pass through given pretrained weights)."""
    from uft.steps import pretrain as step
    from uft.tracking import run_key

    out = step(source_uri, source_sha, store_uri, encoder=encoder, encoder_width=encoder_width, method=method,
               steps=steps, batch_size=batch_size, lr=lr, seed=seed, pretrained_encoder=pretrained_encoder,
               checkpoint_every=checkpoint_every, run_id=run_key(run_id, job_id), experiment=experiment)
    return (out["encoder_uri"], out["encoder_sha"])
