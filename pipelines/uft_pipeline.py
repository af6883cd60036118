"""The uft DAG. Parameter defaults come from :class:`uft.config.RunConfig` (one source of truth).

    ingest(source) ─┬─ pretrain ─────────┐
                    └─ subsample_source ─┼─ mix ─ ssl_finetune ─┬─ linear/knn eval (base + finetuned)
    ingest(target) ──────────────────────┘                      ├─ holistic ─┬─ report
                                                                └─ promote ──┘

On Kubernetes the training steps get a GPU, node selector, toleration, /dev/shm and resources;
credentials come from Kubernetes Secrets; kfp.local ignores those platform settings.
"""

import os

from kfp import dsl, kubernetes

from components.finalize import finalize
from components.holistic import holistic
from components.ingest import ingest
from components.knn_eval import knn_eval
from components.linear_eval import linear_eval
from components.mix import mix
from components.pretrain import pretrain
from components.promote import promote
from components.report import report
from components.ssl_finetune import ssl_finetune
from components.subsample_source import subsample_source
from uft.config import RunConfig

D = RunConfig()
JOB = dsl.PIPELINE_JOB_ID_PLACEHOLDER
S3_SECRET = "uft-s3"  # keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
ENV_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
CONFIG_MAP = "uft-config"  # keys AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, MLFLOW_TRACKING_URI, MLFLOW_S3_ENDPOINT_URL, UFT_MLFLOW_ARTIFACTS
CONFIG_KEYS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "UFT_MLFLOW_ARTIFACTS")
#: GPUs of the finetuning step (env at compile time, like the images): > 1 runs it under torchrun (DDP),
#: one process per GPU. A property of the cluster, not of a run; the GPU overlay's LimitRange must allow it.
GPUS_PER_NODE = int(os.environ.get("UFT_GPUS_PER_NODE", "1"))
if GPUS_PER_NODE < 1:
    raise ValueError(f"UFT_GPUS_PER_NODE={GPUS_PER_NODE}: set it to 1 or more (the GPUs per finetuning pod)")


def _platform(task: dsl.PipelineTask, gpu: bool = False) -> dsl.PipelineTask:
    """Kubernetes settings every task gets: secrets as env, config from a ConfigMap, retries."""
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=ENV_SECRET_KEYS)
    for key in CONFIG_KEYS:
        kubernetes.use_config_map_as_env(task, config_map_name=CONFIG_MAP, config_map_key_to_env={key: key})
    task.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")
    task.set_caching_options(True)
    if gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        task.set_cpu_request("4").set_cpu_limit("8").set_memory_request("16G").set_memory_limit("32G")
        kubernetes.add_node_selector(task, label_key="nvidia.com/gpu.present", label_value="true")
        kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit="8Gi")
    else:
        task.set_cpu_request("1").set_cpu_limit("2").set_memory_request("2G").set_memory_limit("8G")
    return task


@dsl.pipeline(name="uft", description="Unsupervised finetuning with source replay, data mixing and holistic evaluation")
def uft_pipeline(
    store_uri: str = "s3://uft-artifacts/uft",
    experiment: str = "uft",
    run_id: str = "",
    source: str = D.source,
    target: str = D.target,
    image_size: int = D.image_size,
    channels: int = D.channels,
    source_limit: int = D.source_limit,
    target_limit: int = D.target_limit,
    source_test_fraction: float = D.source_test_fraction,
    target_test_fraction: float = D.target_test_fraction,
    encoder: str = D.encoder,
    encoder_width: int = D.encoder_width,
    pretrained_encoder: str = D.pretrained_encoder,
    pretrain_method: str = D.pretrain_method,
    pretrain_steps: int = D.pretrain_steps,
    ssl_method: str = D.ssl_method,
    finetune_steps: int = D.finetune_steps,
    batch_size: int = D.batch_size,
    lr: float = D.lr,
    radreg_weight: float = D.radreg_weight,
    checkpoint_every: int = D.checkpoint_every,
    replay_rule: str = D.replay_rule,
    replay_size: int = D.replay_size,
    replay_ratio: float = D.replay_ratio,
    mix_op: str = D.mix_op,
    mix_alpha: float = D.mix_alpha,
    mix_fraction: float = D.mix_fraction,
    mix_pairing: str = D.mix_pairing,
    label_shots: str = D.label_shots,
    probe_draws: int = D.probe_draws,
    knn_k: int = D.knn_k,
    holistic_seen: str = D.holistic_seen,
    holistic_methods: str = D.holistic_methods,
    holistic_steps: int = D.holistic_steps,
    seed: int = D.seed,
    registered_model: str = D.registered_model,
    promote_margin: float = D.promote_margin,
    retention_tolerance: float = D.retention_tolerance,
):
    run = dict(run_id=run_id, job_id=JOB, experiment=experiment)
    done = finalize(**run)
    kubernetes.use_secret_as_env(done, secret_name=S3_SECRET, secret_key_to_env=ENV_SECRET_KEYS)
    with dsl.ExitHandler(done, name="uft-run"):
        src = _platform(ingest(spec=source, store_uri=store_uri, role="source", image_size=image_size, channels=channels,
                               limit=source_limit, test_fraction=source_test_fraction, seed=seed, **run))
        src.set_display_name("ingest-source")
        tgt = _platform(ingest(spec=target, store_uri=store_uri, role="target", image_size=image_size, channels=channels,
                               limit=target_limit, test_fraction=target_test_fraction, seed=seed, **run))
        tgt.set_display_name("ingest-target")
        base = _platform(pretrain(source_uri=src.outputs["dataset_uri"], source_sha=src.outputs["dataset_sha"],
                                  store_uri=store_uri, encoder=encoder, encoder_width=encoder_width, method=pretrain_method,
                                  steps=pretrain_steps, batch_size=batch_size, lr=lr, seed=seed,
                                  pretrained_encoder=pretrained_encoder, checkpoint_every=checkpoint_every, **run), gpu=True)
        replay = _platform(subsample_source(source_uri=src.outputs["dataset_uri"], source_sha=src.outputs["dataset_sha"],
                                            store_uri=store_uri, rule=replay_rule, size=replay_size, seed=seed,
                                            encoder_uri=base.outputs["encoder_uri"], target_uri=tgt.outputs["dataset_uri"], **run))
        plan = _platform(mix(store_uri=store_uri, op=mix_op, alpha=mix_alpha, fraction=mix_fraction, pairing=mix_pairing))
        ft = _platform(ssl_finetune(encoder_uri=base.outputs["encoder_uri"], target_uri=tgt.outputs["dataset_uri"],
                                    store_uri=store_uri, source_uri=src.outputs["dataset_uri"],
                                    replay_uri=replay.outputs["replay_uri"], plan_uri=plan.outputs["plan_uri"],
                                    method=ssl_method, steps=finetune_steps, batch_size=batch_size, lr=lr,
                                    replay_ratio=replay_ratio, radreg_weight=radreg_weight, seed=seed,
                                    checkpoint_every=checkpoint_every, gpus_per_node=GPUS_PER_NODE, **run), gpu=True)
        ft.set_accelerator_limit(GPUS_PER_NODE)
        metric_tasks, eval_tasks = {}, []
        for tag, enc in (("base", base), ("finetuned", ft)):
            lin = _platform(linear_eval(encoder_uri=enc.outputs["encoder_uri"], target_uri=tgt.outputs["dataset_uri"],
                                        store_uri=store_uri, tag=tag, shots=label_shots, draws=probe_draws, seed=seed, **run))
            lin.set_display_name(f"linear-eval-{tag}")
            knn = _platform(knn_eval(encoder_uri=enc.outputs["encoder_uri"], target_uri=tgt.outputs["dataset_uri"],
                                     store_uri=store_uri, tag=tag, source_uri=src.outputs["dataset_uri"], k=knn_k, **run))
            knn.set_display_name(f"knn-eval-{tag}")
            metric_tasks[f"linear_{tag}"], metric_tasks[f"knn_{tag}"] = lin.outputs["Output"], knn.outputs["Output"]
            eval_tasks += [lin, knn]
        hol = _platform(holistic(encoder_uri=base.outputs["encoder_uri"], source_uri=src.outputs["dataset_uri"],
                                 target_uri=tgt.outputs["dataset_uri"], store_uri=store_uri, seen=holistic_seen,
                                 methods=holistic_methods, steps=holistic_steps, seed=seed, **run), gpu=True)
        # Label-free signals + promotion gate (uft.promote): after the evals, before the report.
        gate = _platform(promote(encoder_uri=ft.outputs["encoder_uri"], base_encoder_uri=base.outputs["encoder_uri"],
                                 target_uri=tgt.outputs["dataset_uri"], source_uri=src.outputs["dataset_uri"],
                                 store_uri=store_uri, registered_model=registered_model, margin=promote_margin,
                                 retention_tolerance=retention_tolerance, seed=seed, **run))
        gate.set_caching_options(False)  # the registry changes between runs: always decide afresh
        gate.after(*eval_tasks)  # register only an encoder whose evaluation ran
        _platform(report(**metric_tasks, holistic=hol.outputs["Output"], promote=gate.outputs["Output"], store_uri=store_uri,
                               source_uri=src.outputs["dataset_uri"], target_uri=tgt.outputs["dataset_uri"],
                               base_encoder_uri=base.outputs["encoder_uri"], finetuned_encoder_uri=ft.outputs["encoder_uri"],
                               ssl_method=ssl_method, replay_rule=replay_rule, replay_size=replay_size,
                               replay_ratio=replay_ratio, mix_op=mix_op, finetune_steps=finetune_steps, seed=seed, **run))
