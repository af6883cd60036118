"""The uft DAG. Parameter defaults come from :class:`uft.config.RunConfig` (one source of truth).

    fingerprint ─ ingest(source) ─┬─ pretrain ─────────┐
                                  └─ subsample_source ─┼─ mix ─ ssl_finetune ─┬─ linear/knn eval (base + finetuned)
    fingerprint ─ ingest(target) ──────────────────────┘                      ├─ holistic (base, finetuned) ─┬─ report
                                                                               └─ promote ────────────────────┘
    train_resources(gpus) ─ (CPU/memory of pretrain and ssl_finetune)

Datasets, the replay set, the mix plan and encoders travel as typed artifacts (``dsl.Dataset``,
``dsl.Artifact``, ``dsl.Model``) that point to content-addressed manifests in the store
(:mod:`uft.lineage`), so the KFP UI draws the lineage; the fingerprint steps make ingest cacheable.

GPUs: ``pretrain`` and ``ssl_finetune`` take ``gpus`` GPUs each (DDP, one process per GPU) and
each ``holistic`` task (base and finetuned encoder) one; they run one after another (holistic waits for
ssl_finetune, the finetuned one for the base one), so a run never
holds more than ``gpus`` GPUs at once. Everything else runs on CPU. On Kubernetes every step gets
the S3 and MLflow Secrets and the ``uft-config`` ConfigMap as environment, GPU steps a node selector,
toleration, resources and a memory-backed /dev/shm; kfp.local ignores those platform settings.
"""

import sys

from kfp import dsl, kubernetes
from kfp.dsl import pipeline_task


def _ensure_container_spec_exists(self: pipeline_task.PipelineTask) -> None:
    """kfp's check behind every ``task.set_*`` call, without its ``inspect.stack()`` (which reads
    the source of every frame only to name the caller in the error): 7 s of building this DAG."""
    if self.container_spec is None:
        raise ValueError(f"{sys._getframe(1).f_code.co_name} can only be used on single-step components, not "
                         "pipelines used as components, or special components like importers.")


pipeline_task.PipelineTask._ensure_container_spec_exists = _ensure_container_spec_exists

from components.finalize import finalize
from components.fingerprint import fingerprint
from components.holistic import holistic
from components.ingest import ingest
from components.knn_eval import knn_eval
from components.linear_eval import linear_eval
from components.mix import mix
from components.pretrain import pretrain
from components.promote import promote
from components.report import report
from components.resources import train_resources
from components.ssl_finetune import ssl_finetune
from components.subsample_source import subsample_source
from uft.config import RunConfig
from uft.gpus import training_resources
from uft.orchestrate.backend import retry_window
from uft.tracking import KFP_RUN_ENV

D = RunConfig()
JOB = dsl.PIPELINE_JOB_ID_PLACEHOLDER
S3_SECRET = "uft-s3"  # keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
ENV_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
#: MLflow is behind basic auth (infra/base/mlflow.yaml): the pipeline's identity, which alone may write.
MLFLOW_AUTH_SECRET = "uft-mlflow-auth"
MLFLOW_AUTH_KEYS = {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}
CONFIG_MAP = "uft-config"  # infra/base/config.yaml
CONFIG_KEYS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL",
               "UFT_MLFLOW_ARTIFACTS", "UFT_BUCKET")
ONE_GPU = training_resources(1)
#: The label the KFP API server puts on every pod of a run (backend apiserver/template/argo_template.go).
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"


def _cluster_env(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """S3 and MLflow credentials (Secrets) and endpoints, MLflow URI and bucket (ConfigMap) as environment, and the
    KFP run id (pod label ``pipeline/runid``, downward API): cacheable steps key their MLflow run on it
    at run time, because an input parameter holding it would make every run's cache key different."""
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=ENV_SECRET_KEYS)
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_AUTH_SECRET, secret_key_to_env=MLFLOW_AUTH_KEYS)
    for key in CONFIG_KEYS:
        kubernetes.use_config_map_as_env(task, config_map_name=CONFIG_MAP, config_map_key_to_env={key: key})
    kubernetes.use_field_path_as_env(task, env_name=KFP_RUN_ENV, field_path=RUN_ID_FIELD)
    return task


#: Wall-clock limit of one attempt of a step (pod ``activeDeadlineSeconds``, kfp-kubernetes
#: ``set_timeout``): a hung NCCL or S3 call must not hold GPUs, or with one run at a time stall
#: every later scheduled run. Each retry gets the limit afresh (see RETRIES).
TIMEOUTS = {"cpu": 4 * 3600, "train": 24 * 3600, "holistic": 12 * 3600, "finalize": 15 * 60}
#: Retries of a failed attempt: CPU steps 3, GPU steps 1 (a GPU step that hangs again would hold
#: its GPUs for another full timeout per retry). Backoff 30 s, doubling. KFP hands
#: ``backoff_max_duration`` to Argo's ``backoff.maxDuration``, a window counted from the FIRST
#: attempt's start that also kills a retry when it ends (uft.orchestrate.backend.next_attempt), so
#: it is sized to hold every attempt's full timeout (backend.retry_window); a short window would
#: mean a step that failed after it is never retried.
RETRIES = {"cpu": 3, "gpu": 1}
BACKOFF_S, BACKOFF_FACTOR = 30, 2.0


def _retry(task: dsl.PipelineTask, timeout: int, retries: int) -> None:
    window = retry_window(timeout, retries, BACKOFF_S, BACKOFF_FACTOR)
    task.set_retry(num_retries=retries, backoff_duration=f"{BACKOFF_S}s", backoff_factor=BACKOFF_FACTOR,
                   backoff_max_duration=f"{window}s")


def _platform(task: dsl.PipelineTask, gpus: int | None = None, resources: dsl.PipelineTask | None = None,
              timeout: int | None = None) -> dsl.PipelineTask:
    """Kubernetes settings of a step: cluster env, retries, caching, timeout, CPU or GPU resources.

    ``gpus``: a constant GPU count; ``resources``: the :func:`train_resources` task whose string
    outputs size CPU, memory and the GPU limit (the run's ``gpus``). A pipeline parameter cannot
    be the GPU limit: the KFP driver resolves pod-spec fields from string values only, and ``gpus``
    is a number (see uft.orchestrate.backend.pod_resources).
    """
    _cluster_env(task)
    task.set_caching_options(True)
    if gpus is None and resources is None:
        task.set_cpu_request("1").set_cpu_limit("2").set_memory_request("2G").set_memory_limit("8G")
        kubernetes.set_timeout(task, timeout or TIMEOUTS["cpu"])
        _retry(task, timeout or TIMEOUTS["cpu"], RETRIES["cpu"])
        return task
    kubernetes.set_timeout(task, timeout or TIMEOUTS["train"])
    _retry(task, timeout or TIMEOUTS["train"], RETRIES["gpu"])
    task.set_accelerator_type("nvidia.com/gpu")
    if resources is not None:
        task.after(resources)  # kfp.local orders tasks by data edges only; resources are not one
        out = resources.outputs
        task.set_accelerator_limit(out["gpu_limit"])
        task.set_cpu_request(out["cpu_request"]).set_cpu_limit(out["cpu_limit"])
        task.set_memory_request(out["memory_request"]).set_memory_limit(out["memory_limit"])
    else:
        task.set_accelerator_limit(gpus)
        task.set_cpu_request(ONE_GPU["cpu_request"]).set_cpu_limit(ONE_GPU["cpu_limit"])
        task.set_memory_request(ONE_GPU["memory_request"]).set_memory_limit(ONE_GPU["memory_limit"])
    kubernetes.add_node_selector(task, label_key="nvidia.com/gpu.present", label_value="true")
    kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    # No size of its own: a memory-backed emptyDir is bounded by the pod's memory limit, which
    # follows the GPU count (DataLoader workers and NCCL share memory through /dev/shm).
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    return task


@dsl.pipeline(name="uft", description="Unsupervised finetuning with source replay, data mixing and holistic evaluation")
def uft_pipeline(
    store_uri: str = "",
    gpus: int = 1,
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
    source_val_fraction: float = D.source_val_fraction,
    target_val_fraction: float = D.target_val_fraction,
    framing: str = D.framing,
    encoder: str = D.encoder,
    encoder_width: int = D.encoder_width,
    pretrained_encoder: str = D.pretrained_encoder,
    encoder_weights: str = D.encoder_weights,
    pretrain_method: str = D.pretrain_method,
    pretrain_steps: int = D.pretrain_steps,
    ssl_method: str = D.ssl_method,
    finetune_steps: int = D.finetune_steps,
    batch_size: int = D.batch_size,
    lr: float = D.lr,
    radreg_weight: float = D.radreg_weight,
    pretrain_radreg_weight: float = D.pretrain_radreg_weight,
    pretrain_radreg_form: str = D.pretrain_radreg_form,
    pretrain_radreg_target: str = D.pretrain_radreg_target,
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
    holistic_source_steps: int = D.holistic_source_steps,
    seed: int = D.seed,
    registered_model: str = D.registered_model,
    promote_margin: float = D.promote_margin,
    retention_tolerance: float = D.retention_tolerance,
):
    # Cacheable steps get no job id (KFP hashes every input into the cache key; they read the run id
    # from the pod, see _cluster_env); the never-cached finalize, promote and report get it as input.
    run = dict(run_id=run_id, experiment=experiment)
    this_run = dict(run, job_id=JOB)
    # The exit handler reaches MLflow too: without uft-config it would not know where MLflow is,
    # and the parent run would stay RUNNING.
    done = _cluster_env(finalize(**this_run))
    done.set_caching_options(False)
    kubernetes.set_timeout(done, TIMEOUTS["finalize"])
    with dsl.ExitHandler(done, name="uft-run"):
        data = {}
        for role, spec, limit, test_fraction, val_fraction in (
                ("source", source, source_limit, source_test_fraction, source_val_fraction),
                ("target", target, target_limit, target_test_fraction, target_val_fraction)):
            # The fingerprint (a listing, no decoding) runs every time and is never cached; ingest is
            # cached on it, so unchanged data reuse the dataset artifact and everything downstream of
            # it can be a cache hit, while new files at the same prefix give a new key and a new ingest.
            fp = _platform(fingerprint(spec=spec))
            fp.set_caching_options(False)
            fp.set_display_name(f"fingerprint-{role}")
            ing = _platform(ingest(spec=spec, fingerprint=fp.output, store_uri=store_uri, role=role, image_size=image_size,
                                   channels=channels, limit=limit, test_fraction=test_fraction, val_fraction=val_fraction,
                                   seed=seed, framing=framing, **run))
            ing.set_display_name(f"ingest-{role}")
            data[role] = ing.outputs["dataset"]
        src, tgt = data["source"], data["target"]
        res = _platform(train_resources(gpus=gpus))
        res.set_display_name("train-resources")
        base = _platform(pretrain(source=src, store_uri=store_uri, encoder=encoder, encoder_width=encoder_width,
                                  method=pretrain_method, steps=pretrain_steps, batch_size=batch_size, lr=lr, seed=seed,
                                  pretrained_encoder=pretrained_encoder, checkpoint_every=checkpoint_every,
                                  encoder_weights=encoder_weights, gpus_per_node=gpus,
                                  # RadReg's target is a URI parameter, not the target ingest's artifact: wired
                                  # to that artifact, every new target would invalidate the pretrain cache.
                                  radreg_weight=pretrain_radreg_weight, radreg_form=pretrain_radreg_form,
                                  radreg_target_uri=pretrain_radreg_target, **run), resources=res)
        base_model = base.outputs["model"]
        replay = _platform(subsample_source(source=src, encoder=base_model, target=tgt, store_uri=store_uri,
                                            rule=replay_rule, size=replay_size, seed=seed, **run))
        plan = _platform(mix(store_uri=store_uri, op=mix_op, alpha=mix_alpha, fraction=mix_fraction, pairing=mix_pairing,
                             **run))
        ft = _platform(ssl_finetune(base=base_model, target=tgt, source=src, replay=replay.outputs["replay"],
                                    plan=plan.outputs["plan"], store_uri=store_uri, method=ssl_method,
                                    steps=finetune_steps, batch_size=batch_size, lr=lr, replay_ratio=replay_ratio,
                                    radreg_weight=radreg_weight, seed=seed, checkpoint_every=checkpoint_every,
                                    gpus_per_node=gpus, **run), resources=res)
        ft_model = ft.outputs["model"]
        metric_tasks, eval_tasks = {}, []
        for tag, enc in (("base", base_model), ("finetuned", ft_model)):
            lin = _platform(linear_eval(encoder=enc, target=tgt, store_uri=store_uri, tag=tag, shots=label_shots,
                                        draws=probe_draws, seed=seed, **run))
            lin.set_display_name(f"linear-eval-{tag}")
            knn = _platform(knn_eval(encoder=enc, target=tgt, source=src, store_uri=store_uri, tag=tag, k=knn_k, **run))
            knn.set_display_name(f"knn-eval-{tag}")
            metric_tasks[f"linear_{tag}"], metric_tasks[f"knn_{tag}"] = lin.outputs["Output"], knn.outputs["Output"]
            eval_tasks += [lin, knn]
        hol, gpu_before = {}, ft  # one GPU step at a time: a run holds at most `gpus` GPUs
        for tag, enc in (("base", base_model), ("finetuned", ft_model)):  # does UFT help holistic transfer?
            hol[tag] = _platform(holistic(encoder=enc, source=src, target=tgt, store_uri=store_uri, seen=holistic_seen,
                                          methods=holistic_methods, steps=holistic_steps,
                                          source_steps=holistic_source_steps, seed=seed, tag=tag, **run), gpus=1,
                                 timeout=TIMEOUTS["holistic"])
            hol[tag].set_display_name(f"holistic-{tag}")
            hol[tag].after(gpu_before)
            gpu_before = hol[tag]
        # Label-free signals + promotion gate (uft.promote): after the evals, before the report.
        gate = _platform(promote(encoder=ft_model, base_encoder=base_model, target=tgt, source=src, store_uri=store_uri,
                                 registered_model=registered_model, margin=promote_margin,
                                 retention_tolerance=retention_tolerance, seed=seed, **this_run))
        gate.set_caching_options(False)  # the registry changes between runs: always decide afresh
        gate.after(*eval_tasks)  # register only an encoder whose evaluation ran
        summary = _platform(report(**metric_tasks, holistic=hol["base"].outputs["Output"],
                                   holistic_finetuned=hol["finetuned"].outputs["Output"], promote=gate.outputs["Output"],
                                   store_uri=store_uri, source=src, target=tgt, base_encoder=base_model,
                                   finetuned_encoder=ft_model, ssl_method=ssl_method, replay_rule=replay_rule,
                                   replay_size=replay_size, replay_ratio=replay_ratio, mix_op=mix_op,
                                   finetune_steps=finetune_steps, seed=seed, probe_draws=probe_draws, **this_run))
        summary.set_caching_options(False)  # per run: it writes this run's report and parent metrics
