from kfp import dsl

from components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def pretrain(source: dsl.Input[dsl.Dataset], store_uri: str, encoder: str, encoder_width: int, method: str,
             steps: int, batch_size: int, lr: float, seed: int, pretrained_encoder: str, checkpoint_every: int,
             run_id: str, experiment: str, model: dsl.Output[dsl.Model], gpus_per_node: int = 1,
             encoder_weights: str = "", radreg_weight: float = 0.0, radreg_form: str = "closed",
             radreg_target_uri: str = ""):
    """SSL pretraining on the source (or pass through given pretrained weights, or load the checkpoint
    ``encoder_weights`` into ``encoder``) → ``model``.

    ``gpus_per_node`` > 1: the step runs under ``torchrun`` with that many processes (DDP); 1: in-process.
    ``radreg_weight`` > 0: RadReg in the pretraining loss, estimated on ``radreg_target_uri``'s train split.
    """
    from uft.lineage import emit, resolve
    from uft.steps import pretrain as step
    from uft.tracking import pod_run_key

    source_uri, source_sha = resolve(source.metadata, source.path, name="source")
    kwargs = dict(source_uri=source_uri, source_sha=source_sha, store_uri=store_uri, encoder=encoder,
                  encoder_width=encoder_width, method=method, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                  pretrained_encoder=pretrained_encoder, checkpoint_every=checkpoint_every,
                  encoder_weights=encoder_weights, radreg_weight=radreg_weight, radreg_form=radreg_form,
                  radreg_target_uri=radreg_target_uri, run_id=pod_run_key(run_id), experiment=experiment)
    if gpus_per_node > 1 and not pretrained_encoder and not encoder_weights:
        from uft.ssl.ddp_entry import launch

        out = launch("pretrain", kwargs, nproc=gpus_per_node)
    else:
        out = step(**kwargs)
    emit(model.path, model.metadata, out["encoder_uri"], out["encoder_sha"])
