from kfp import dsl

from components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def ssl_finetune(base: dsl.Input[dsl.Model], target: dsl.Input[dsl.Dataset], store_uri: str, method: str, steps: int,
                 batch_size: int, lr: float, replay_ratio: float, radreg_weight: float, seed: int, checkpoint_every: int,
                 run_id: str, experiment: str, model: dsl.Output[dsl.Model], source: dsl.Input[dsl.Dataset] = None,
                 replay: dsl.Input[dsl.Dataset] = None, plan: dsl.Input[dsl.Artifact] = None, gpus_per_node: int = 1):
    """Continue SSL on the target (+ replay, + mixing) from ``base`` → ``model``; checkpoints to the store and resumes.

    ``source``/``replay``/``plan`` are optional (no replay, no mixing without them).
    ``gpus_per_node`` > 1: the step runs under ``torchrun`` with that many processes (DDP); 1: in-process.
    """
    from uft.lineage import emit, resolve
    from uft.steps import finetune
    from uft.tracking import pod_run_key

    uris = {name: resolve(a.metadata, a.path, name=name)[0] if a is not None else ""
            for name, a in (("base", base), ("target", target), ("source", source), ("replay", replay), ("plan", plan))}
    kwargs = dict(encoder_uri=uris["base"], target_uri=uris["target"], store_uri=store_uri, source_uri=uris["source"],
                  replay_uri=uris["replay"], plan_uri=uris["plan"], method=method, steps=steps, batch_size=batch_size,
                  lr=lr, replay_ratio=replay_ratio, radreg_weight=radreg_weight, seed=seed,
                  checkpoint_every=checkpoint_every, run_id=pod_run_key(run_id), experiment=experiment)
    if gpus_per_node > 1:
        from uft.ssl.ddp_entry import launch

        out = launch("finetune", kwargs, nproc=gpus_per_node)
    else:
        out = finetune(**kwargs)
    emit(model.path, model.metadata, out["encoder_uri"], out["encoder_sha"])
