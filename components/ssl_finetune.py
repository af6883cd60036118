from typing import NamedTuple

from kfp import dsl

from components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def ssl_finetune(encoder_uri: str, target_uri: str, store_uri: str, source_uri: str, replay_uri: str, plan_uri: str,
                 method: str, steps: int, batch_size: int, lr: float, replay_ratio: float, radreg_weight: float,
                 seed: int, checkpoint_every: int, run_id: str, job_id: str,
                 experiment: str, gpus_per_node: int = 1) -> NamedTuple("Outputs", [("encoder_uri", str), ("encoder_sha", str)]):
    """Continue SSL on the target (+ replay, + mixing); checkpoints to the store and resumes.

    ``gpus_per_node`` > 1: the step runs under ``torchrun`` with that many processes (DDP); 1: in-process.
    """
    from uft.config import default_store_uri

    store_uri = store_uri or default_store_uri()  # "": s3://$UFT_BUCKET/uft (ConfigMap uft-config)
    from uft.steps import finetune
    from uft.tracking import run_key

    kwargs = dict(encoder_uri=encoder_uri, target_uri=target_uri, store_uri=store_uri, source_uri=source_uri,
                  replay_uri=replay_uri, plan_uri=plan_uri, method=method, steps=steps, batch_size=batch_size, lr=lr,
                  replay_ratio=replay_ratio, radreg_weight=radreg_weight, seed=seed,
                  checkpoint_every=checkpoint_every, run_id=run_key(run_id, job_id), experiment=experiment)
    if gpus_per_node > 1:
        from uft.ssl.ddp_entry import launch

        out = launch("finetune", kwargs, nproc=gpus_per_node)
    else:
        out = finetune(**kwargs)
    return (out["encoder_uri"], out["encoder_sha"])
