"""Steps that train an encoder: pretrain on the source, finetune self-supervised on the target
(with replay and mixing); both may run under DDP."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from uft import tracking
from uft.errors import UftError
from uft.progress import Progress
from uft.step_cache import cached
from uft.steps.common import step_device
from uft.store import Store, manifest_sha, read_manifest, read_verified, step_store

if TYPE_CHECKING:
    import torch

log = logging.getLogger("uft")
# torch and numpy are imported inside the functions that compute: a step whose outputs are cached
# then never pays torch's import (seconds per process).



def _train(store: Store, key: str, step: str, *, encoder, method_name: str, images,
           cfg, replay: torch.Tensor | None, plan, run, spec: dict[str, Any], info: dict[str, Any],
           head: tuple[str, dict[str, torch.Tensor]] | None = None, head_note: str = "",
           radreg_target: torch.Tensor | None = None) -> dict[str, Any]:
    """Build the method (continuing from ``head`` = (method, SSL head state) when it fits), train,
    publish the encoder with the method's SSL head. ``head_note`` says why a finetune has no head."""
    import torch

    from uft.models.artifact import publish_encoder, ssl_head_state
    from uft.ssl.base import build_method
    from uft.ssl.train import Checkpointer, train_ssl

    from uft.data.augment import with_colour_views

    # Colour images get colour views, else SimCLR-style methods can match two views by colour alone.
    cfg = cfg.model_copy(update={"augment": with_colour_views(cfg.augment, int(spec["in_channels"]))})
    torch.manual_seed(cfg.seed)  # the projector/predictor init: same config → same weights in every process
    method = build_method(method_name, encoder)
    if head is not None:
        misfit = _head_misfit(method, head[1])
        if misfit:
            head_note = f"fresh head: the base's {head[0]} head does not fit {method_name} ({misfit})"
        else:  # projector/predictor/momentum branch/queue as pretraining left them
            method.load_state_dict({**method.state_dict(), **head[1]})
            head_note = f"continued the base's {head[0]} head"
    if step == "finetune":
        (log.info if head_note.startswith("continued") else log.warning)("ssl_finetune: %s", head_note)
        info = {**info, "ssl_head": head_note}
    ckpt = Checkpointer(store, f"checkpoints/{step}/{key}")

    def on_log(s: int, loss: float) -> None:
        bar.update(s, loss=loss)
        if run is not None:
            import mlflow

            mlflow.log_metric("ssl_loss", loss, step=s)

    t0 = time.perf_counter()
    with Progress(step, cfg.steps) as bar:
        result = train_ssl(method, images, cfg, replay=replay, mix_plan=plan, checkpointer=ckpt, device=step_device(),
                           on_log=on_log, radreg_target=radreg_target)
    seconds = time.perf_counter() - t0
    enc = method.encoder.cpu().eval()
    # Timings go to MLflow only: in the manifest they would make the same training hash differently.
    info = {**info, "losses": result.losses, "resumed_from": result.resumed_from}
    uri = publish_encoder(store, f"models/{step}/{key}", enc, spec, info, ssl_head=(method_name, ssl_head_state(method)))
    if run is not None:
        import mlflow

        mlflow.log_metrics({"train_seconds": seconds, "images_per_second": result.images_seen / max(seconds, 1e-9),
                            "final_ssl_loss": result.losses[-1][1] if result.losses else float("nan")})
    return {"encoder_uri": uri, "encoder_sha": manifest_sha(uri), "final_loss": result.losses[-1][1] if result.losses else None}


def _head_misfit(method, state: dict[str, torch.Tensor]) -> str:
    """Why a published SSL head cannot be loaded into ``method`` ("" when it can)."""
    from uft.models.artifact import ssl_head_state

    own = ssl_head_state(method)
    if own.keys() != state.keys():
        return f"different parts: {sorted(set(own) ^ set(state))[:3]}"
    bad = [k for k in own if own[k].shape != state[k].shape]
    return f"shape of {bad[0]} differs" if bad else ""


def _same_method(a: str, b: str) -> bool:
    from uft.ssl.base import parse_method_spec

    return parse_method_spec(a)[0] == parse_method_spec(b)[0]


def pretrain(source_uri: str, source_sha: str, store_uri: str, *, encoder: str = "tiny", encoder_width: int = 32,
             method: str = "simclr", steps: int = 300, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
             pretrained_encoder: str = "", checkpoint_every: int = 50, radreg_weight: float = 0.0,
             radreg_form: str = "closed", radreg_target_uri: str = "", run_id: str = "local",
             experiment: str = "uft", encoder_weights: str = "") -> dict[str, Any]:
    """SSL on the source train split → base encoder (or pass through ``pretrained_encoder``, or
    ``encoder`` with the checkpoint ``encoder_weights`` loaded: :func:`import_weights`).

    ``radreg_weight > 0``: RadReg as its paper uses it, estimated each step on unlabelled images of
    ``radreg_target_uri``'s train split (``closed`` form on raw features, ``adversarial`` on
    standardised ones; :mod:`uft.ssl.radreg`)."""
    from uft.data.stream import StreamSource
    from uft.models.encoders import build_encoder
    from uft.ssl.train import TrainConfig

    if pretrained_encoder:
        from uft.models.artifact import load_encoder

        load_encoder(pretrained_encoder)  # verify it loads before the DAG depends on it
        return {"encoder_uri": pretrained_encoder, "encoder_sha": manifest_sha(pretrained_encoder), "cached": True}
    if encoder_weights:
        return import_weights(source_uri, source_sha, store_uri, encoder=encoder, encoder_width=encoder_width,
                              encoder_weights=encoder_weights, run_id=run_id, experiment=experiment)
    store = step_store(store_uri)
    if radreg_weight > 0 and not radreg_target_uri:
        raise UftError("pretrain radreg_weight > 0 needs radreg_target_uri: pass the (unlabelled) target dataset "
                       "RadReg is estimated on, or radreg_weight=0")
    if radreg_form not in ("closed", "adversarial"):
        raise UftError(f"radreg_form={radreg_form!r}: use 'closed' or 'adversarial'")
    radreg = radreg_weight > 0
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                      radreg_weight=radreg_weight, radreg_form=radreg_form,
                      radreg_features="raw" if radreg_form == "closed" else "standardized")
    params = {"source_sha": source_sha, "encoder": encoder, "encoder_width": encoder_width, "method": method,
              **cfg.model_dump(mode="json"), **({"radreg_target_sha": manifest_sha(radreg_target_uri)} if radreg else {})}
    with tracking.step_run(experiment, run_id, "pretrain", params) as run:
        def compute(key: str) -> dict[str, Any]:
            import torch

            src = StreamSource(source_uri, split="train")  # streamed: never the whole source in memory
            src.num_rows()  # no train rows → a one-line error before anything is built
            spec = _encoder_spec(encoder, encoder_width, src.channels())
            torch.manual_seed(seed)  # deterministic init, so a rerun in a new process reproduces the encoder
            enc = build_encoder(spec["name"], in_channels=spec["in_channels"], **spec["kwargs"])
            target = None
            if radreg:  # unlabelled target images in memory (small by the UFT premise); labels never read
                from uft.data.dataset import load_dataset

                target = load_dataset(radreg_target_uri).subset("train").images
            return _train(store, key, "pretrain", encoder=enc, method_name=method, images=src, cfg=cfg,
                          replay=None, plan=None, run=run, spec=spec, radreg_target=target,
                          info={"source_sha": source_sha, "method": method})

        return tracking.log_outputs(cached(store, "pretrain", params, compute))


def import_weights(source_uri: str, source_sha: str, store_uri: str, *, encoder: str, encoder_width: int,
                   encoder_weights: str, run_id: str = "local", experiment: str = "uft") -> dict[str, Any]:
    """The base encoder from a checkpoint instead of pretraining: build ``encoder`` for the source's
    channel count, load ``encoder_weights`` (file, ``s3://``, ``models:/name@alias``; strictly, see
    :mod:`uft.models.weights`), publish it as an encoder artifact whose manifest records where the
    weights came from (source, sha256, registered version) → outputs as :func:`pretrain`'s.

    Cached on the weights' sha256, so the same checkpoint is published once; reads the source's
    manifest only (its channel count), never its images."""
    from uft.data.stream import StreamSource
    from uft.models.artifact import publish_encoder
    from uft.models.weights import import_encoder

    store = step_store(store_uri)
    channels = StreamSource(source_uri, split="train").channels()
    spec = _encoder_spec(encoder, encoder_width, channels)
    enc, info = import_encoder(encoder_weights, spec["name"], spec["in_channels"], **spec["kwargs"])
    params = {"encoder": encoder, "encoder_width": encoder_width, "in_channels": spec["in_channels"],
              "encoder_weights": encoder_weights, "weights_sha256": info["weights_sha256"]}
    with tracking.step_run(experiment, run_id, "pretrain", params) as run:
        def compute(key: str) -> dict[str, Any]:
            uri = publish_encoder(store, f"models/imported/{key}", enc, spec, {**info, "source_sha": source_sha})
            return {"encoder_uri": uri, "encoder_sha": manifest_sha(uri)}

        out = cached(store, "import_weights", params, compute)
        if run is not None:  # the lineage: which checkpoint (or registered version) the base encoder is
            import mlflow

            mlflow.set_tags({"uft.encoder_weights": encoder_weights, "uft.weights_sha256": info["weights_sha256"],
                             **{f"uft.weights_{k}": str(v) for k, v in info.items() if k.startswith(("registered_", "encoder_uri"))}})
        return tracking.log_outputs(out)


def _encoder_spec(name: str, width: int, in_channels: int) -> dict[str, Any]:
    kwargs = {"width": width} if name == "tiny" else {}
    return {"name": name, "in_channels": int(in_channels), "kwargs": kwargs}



def _load_replay(replay_uri: str, source_uri: str) -> torch.Tensor | None:
    from uft.data.stream import load_rows

    if not replay_uri:
        return None
    manifest, store, prefix = read_manifest(replay_uri)
    row_ids = json.loads(read_verified(store, prefix, manifest, "row_ids.json", replay_uri))
    if not row_ids:
        return None
    return load_rows(source_uri, row_ids)  # only the replay rows are kept, shard by shard


def finetune(encoder_uri: str, target_uri: str, store_uri: str, *, source_uri: str = "", replay_uri: str = "",
             plan_uri: str = "", method: str = "simclr", steps: int = 200, batch_size: int = 256, lr: float = 2e-3,
             replay_ratio: float = 0.0, radreg_weight: float = 0.0, seed: int = 0, checkpoint_every: int = 50,
             from_scratch: bool = False, ssl_head: str = "continue", radreg_features: str = "standardized",
             run_id: str = "local", experiment: str = "uft") -> dict[str, Any]:
    """Continue SSL on the unlabelled target train split (+ replay, + mixing) → finetuned encoder.

    ``ssl_head="continue"``: when the base was pretrained with the same method, its SSL head
    (projector, predictor, momentum branch, queue) is loaded too; otherwise, or with ``"fresh"``,
    the head starts fresh (logged, MLflow tag ``uft.ssl_head``, manifest ``info.ssl_head``)."""
    from uft.data.stream import StreamSource
    from uft.models.artifact import load_encoder, load_ssl_head
    from uft.models.encoders import build_encoder
    from uft.ssl.train import TrainConfig
    from uft.transfer.mixing import MixPlan

    store = step_store(store_uri)
    if ssl_head not in ("continue", "fresh"):
        raise UftError(f"ssl_head={ssl_head!r}: use 'continue' (the base's head when the method matches) or 'fresh'")
    if radreg_features not in ("standardized", "raw"):
        raise UftError(f"radreg_features={radreg_features!r}: use 'standardized' (what a linear probe sees) or 'raw'")
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, replay_ratio=replay_ratio if replay_uri else 0.0,
                      radreg_weight=radreg_weight, radreg_features=radreg_features, checkpoint_every=checkpoint_every)
    plan = MixPlan(**read_manifest(plan_uri)[0]["plan"]) if plan_uri else MixPlan()
    # Mixing target×source draws its partners from the replay set, so it is an input then too.
    uses_replay = cfg.replay_ratio > 0 or (plan.op != "none" and plan.pairing == "target_source")
    params = {"encoder_sha": manifest_sha(encoder_uri), "target_sha": manifest_sha(target_uri), "method": method,
              "replay_sha": manifest_sha(replay_uri) if replay_uri and uses_replay else "",
              "plan": plan.model_dump(mode="json"), "from_scratch": from_scratch, "ssl_head": ssl_head,
              **cfg.model_dump(mode="json")}
    with tracking.step_run(experiment, run_id, "ssl_finetune", params) as run:
        def compute(key: str) -> dict[str, Any]:
            import torch

            enc, manifest = load_encoder(encoder_uri)
            spec = manifest["spec"]
            if from_scratch:  # the "target-only SSL from scratch" baseline: same architecture, fresh weights
                torch.manual_seed(seed)
                enc = build_encoder(spec["name"], in_channels=spec["in_channels"], **spec.get("kwargs", {}))
            tgt = StreamSource(target_uri, split="train")  # streamed; the small replay set stays in memory
            tgt.num_rows()
            replay = _load_replay(replay_uri, source_uri) if cfg.replay_ratio > 0 or plan.pairing == "target_source" and plan.op != "none" else None
            if plan.op != "none" and plan.pairing == "target_source" and replay is None:
                raise UftError("mix_pairing=target_source needs source images: enable replay (replay_size > 0) or use mix_pairing=target_target")
            head, note = None, ""
            if from_scratch:
                note = "fresh head: from_scratch (fresh encoder too)"
            elif ssl_head == "fresh":
                note = "fresh head: requested (ssl_head=fresh)"
            elif (published := load_ssl_head(encoder_uri)) is None:
                note = "fresh head: the base encoder was published without an SSL head"
            elif not _same_method(published[0], method):
                note = f"fresh head: base pretrained with {published[0]}, finetuning with {method}"
            else:
                head = published
            out = _train(store, key, "finetune", encoder=enc, method_name=method, images=tgt, cfg=cfg,
                         replay=replay, plan=plan, run=run, spec=spec, head=head, head_note=note,
                         info={"base": encoder_uri, "target_sha": manifest_sha(target_uri), "method": method})
            if run is not None:
                _log_model(enc)
            return out

        out = cached(store, "ssl_finetune", params, compute)
        note = read_manifest(out["encoder_uri"])[0].get("info", {}).get("ssl_head", "")
        if run is not None and note:  # on cache hits too: continued or fresh head, and why
            import mlflow

            mlflow.set_tag("uft.ssl_head", note)
        return tracking.log_outputs(out)


def _log_model(encoder: torch.nn.Module) -> None:
    import mlflow
    import numpy as np
    import torch

    # A library encoder takes grey images into an RGB stem: its own in_channels, not its first conv's.
    in_ch = getattr(encoder, "in_channels", None) or next(m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    example = np.zeros((1, in_ch, 16, 16), dtype=np.float32)
    mlflow.pytorch.log_model(encoder, name="encoder", input_example=example,
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
