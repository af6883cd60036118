"""The pipeline's steps as plain functions: what each KFP component calls, with no kfp in sight.

Every step is content-addressed: its cache key hashes its inputs' content hashes and its config,
and its outputs are recorded under ``cache/<step>/<key>.json`` *after* they are published. A rerun
with the same inputs finds the record and returns it without recomputing (and without a second
MLflow run, since runs are keyed by pipeline run id and step).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from uft import tracking
from uft.progress import Progress
from uft.step_cache import cached
from uft.errors import UftError
from uft.store import (Store, canonical_json, content_key, manifest_sha, publish, read_manifest,
                       read_verified, step_store)

if TYPE_CHECKING:
    import torch

log = logging.getLogger("uft")
# torch and numpy are imported inside the functions that compute: a step whose outputs are cached
# then never pays torch's import (seconds per process).


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --- ingest ----------------------------------------------------------------------------------------

def ingest(spec: str, store_uri: str, *, role: str, image_size: int, channels: int, limit: int = 0,
           test_fraction: float = 0.5, val_fraction: float = 0.2, seed: int = 0, framing: str = "auto",
           fingerprint: str = "", run_id: str = "local", experiment: str = "uft") -> dict[str, Any]:
    """Bundled name / ImageFolder dir / s3:// prefix / manifest URI → published dataset, framed by
    ``framing`` (auto / content_box / keep, :mod:`uft.data.framing`; a manifest URI passes through).

    ``fingerprint``: :func:`uft.data.fingerprint.source_fingerprint` of ``spec`` taken just before; with
    it, user data are cached like bundled data (same files → same dataset, no re-decoding).
    ``val_fraction`` of the non-test rows become the "val" split that no training step reads
    (:data:`uft.data.ingest.SPLITS`)."""
    from uft.data.framing import check_framing

    check_framing(framing)
    if not spec.strip():  # "" would otherwise resolve to the current directory as an ImageFolder
        raise UftError(f"the {role} dataset is empty: pass a bundled name ({', '.join(sorted(_bundled()))}), "
                       "an ImageFolder directory, an s3://bucket/prefix or a manifest URI")
    store = step_store(store_uri)
    if spec.endswith("manifest.json"):  # an existing uft dataset: verify and pass through
        manifest, _, _ = read_manifest(spec)
        if manifest.get("kind") != "dataset":
            raise UftError(f"{role} {spec} is not a dataset manifest: pass the output of `uft ingest`")
        return {"dataset_uri": spec, "dataset_sha": manifest_sha(spec), "num_rows": manifest["num_rows"], "cached": True}

    params = {"spec": spec, "image_size": image_size, "channels": channels, "limit": limit,
              "test_fraction": test_fraction, "val_fraction": val_fraction, "seed": seed, "framing": framing}
    with tracking.step_run(experiment, run_id, f"ingest_{role}", {**params, "role": role}) as run:
        def compute(_key: str) -> dict[str, Any]:
            from uft.data.ingest import ingest as ingest_raw  # imports torch: only when there is work
            from uft.data.sources import load_source

            raw = load_source(spec, image_size=image_size, channels=channels, framing=framing)
            uri = ingest_raw(raw, store, name=f"{role}:{spec}", image_size=image_size, channels=channels,
                             test_fraction=test_fraction, val_fraction=val_fraction, limit=limit, seed=seed)
            manifest, _, _ = read_manifest(uri)
            return {"dataset_uri": uri, "dataset_sha": manifest_sha(uri), "num_rows": manifest["num_rows"],
                    "splits": manifest["splits"], "skipped": raw.info.get("skipped", [])}

        # Bundled data is immutable, so its spec is its identity; user data is cached only under a
        # fingerprint of its files (else re-read each time: the manifest hash captures its content).
        if spec in _bundled():
            out = cached(store, "ingest", params, compute)
        elif fingerprint:
            out = cached(store, "ingest", {**params, "fingerprint": fingerprint}, compute)
        else:
            out = {**compute(""), "cached": False}
        if run is not None:
            import mlflow

            mlflow.log_metrics({"num_rows": out["num_rows"]})
        return tracking.log_outputs(out)


def _bundled() -> set[str]:
    from uft.data.sources import BUNDLED

    return set(BUNDLED)


# --- pretrain / finetune ---------------------------------------------------------------------------

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
        result = train_ssl(method, images, cfg, replay=replay, mix_plan=plan, checkpointer=ckpt, device=_device(),
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
             experiment: str = "uft") -> dict[str, Any]:
    """SSL on the source train split → base encoder (or pass through ``pretrained_encoder``).

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


def _encoder_spec(name: str, width: int, in_channels: int) -> dict[str, Any]:
    kwargs = {"width": width} if name == "tiny" else {}
    return {"name": name, "in_channels": int(in_channels), "kwargs": kwargs}


def subsample_source(source_uri: str, source_sha: str, store_uri: str, *, rule: str = "uniform", size: int = 2000,
                     seed: int = 0, encoder_uri: str = "", target_uri: str = "", run_id: str = "local",
                     experiment: str = "uft") -> dict[str, Any]:
    """Choose the sparse replay set S ⊂ source train → a manifest of row ids (labels and row ids
    from the shards' small columns; features, for the feature rules, extracted from the stream)."""
    from uft.data.stream import split_rows
    from uft.transfer.replay import select_replay

    store = step_store(store_uri)
    feature_rule = rule in {"kmeans", "nearest_target"}
    params = {"source_sha": source_sha, "rule": rule, "size": size, "seed": seed,
              "encoder": manifest_sha(encoder_uri) if feature_rule and encoder_uri else "",
              "target": manifest_sha(target_uri) if rule == "nearest_target" and target_uri else ""}
    with tracking.step_run(experiment, run_id, "subsample_source", params):
        def compute(key: str) -> dict[str, Any]:
            if "train" not in (rows := split_rows(source_uri)):
                raise UftError(f"dataset {source_uri} has no 'train' rows: ingest it with a train split")
            src_labels, src_row_ids = rows["train"]
            n = min(size, len(src_labels))
            if n == 0:
                row_ids: list[int] = []
            else:
                kw: dict[str, Any] = {"labels": src_labels}
                if feature_rule:
                    if not encoder_uri:
                        raise UftError(f"replay rule {rule!r} needs an encoder for features: pass encoder_uri")
                    from uft.evaluate.features import stream_features
                    from uft.models.artifact import load_encoder

                    enc, _ = load_encoder(encoder_uri)
                    kw["source_features"] = stream_features(enc, source_uri, "train", device=_device())[0].numpy()
                    if rule == "nearest_target":
                        if not target_uri:
                            raise UftError("replay rule 'nearest_target' needs the target dataset: pass target_uri")
                        kw["target_features"] = stream_features(enc, target_uri, "train", device=_device())[0].numpy()
                idx = select_replay(rule, n, seed=seed, **kw)
                row_ids = src_row_ids[idx].tolist()
            uri = publish(store, f"replay/{key}", {"row_ids.json": canonical_json(row_ids)},
                          {"kind": "replay", "rule": rule, "size": len(row_ids), "source_uri": source_uri,
                           "source_sha": source_sha})
            return {"replay_uri": uri, "replay_sha": manifest_sha(uri), "size": len(row_ids)}

        return tracking.log_outputs(cached(store, "subsample_source", params, compute))


def mix_plan(store_uri: str, *, op: str = "none", alpha: float = 1.0, fraction: float = 0.5,
             pairing: str = "target_source", run_id: str = "local", experiment: str = "uft") -> dict[str, Any]:
    """Record the mixing plan the trainer applies on the fly (cheap; no images materialised)."""
    from uft.transfer.mixing import MixPlan

    try:
        plan = MixPlan(op=op, alpha=alpha, fraction=fraction, pairing=pairing)
    except Exception as e:
        raise UftError(f"invalid mixing plan: {e}".splitlines()[0] + " — fix mix_op/mix_alpha/mix_fraction/mix_pairing") from None
    store = step_store(store_uri)
    body = plan.model_dump(mode="json")
    with tracking.step_run(experiment, run_id, "mix", body):  # a nested run like every other step's
        key = content_key("mix", body)
        uri = publish(store, f"mix/{key}", {}, {"kind": "mix_plan", "plan": body})
        return tracking.log_outputs({"plan_uri": uri, "plan_sha": manifest_sha(uri), **body})


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

    in_ch = next(m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    example = np.zeros((1, in_ch, 16, 16), dtype=np.float32)
    mlflow.pytorch.log_model(encoder, name="encoder", input_example=example,
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


# --- evaluation ------------------------------------------------------------------------------------

def _publish_metrics(store: Store, step: str, key: str, metrics: dict[str, Any]) -> str:
    return publish(store, f"metrics/{step}/{key}", {}, {"kind": "metrics", "step": step, "metrics": metrics})


def linear_eval(encoder_uri: str, target_uri: str, store_uri: str, *, tag: str, shots: str = "1,5,10",
                draws: int = 5, seed: int = 0, run_id: str = "local", experiment: str = "uft") -> dict[str, Any]:
    """Linear probes on frozen features of the target: few-label (mean ± std over draws) and full."""
    from uft.data.stream import split_labels
    from uft.evaluate.features import feature_blocks, gather_features
    from uft.evaluate.linear import linear_probes_streamed
    from uft.models.artifact import load_encoder, state_fingerprint

    store = step_store(store_uri)
    params = {"encoder_sha": manifest_sha(encoder_uri), "target_sha": manifest_sha(target_uri), "shots": shots,
              "draws": draws, "seed": seed}
    with tracking.step_run(experiment, run_id, f"linear_eval_{tag}", params) as run:
        def compute(key: str) -> dict[str, Any]:
            enc, _ = load_encoder(encoder_uri)
            before = state_fingerprint(enc)
            if not _labelled(target_uri):
                return {"metrics": {}, "metrics_uri": _publish_metrics(store, f"linear_{tag}", key, {})}
            # Streamed: only the probes' train rows and one block of test features are ever in memory.
            metrics: dict[str, Any] = linear_probes_streamed(
                split_labels(target_uri)["train"],
                lambda rows: gather_features(enc, target_uri, "train", rows, device=_device()).numpy(),
                ((f.numpy(), y.numpy()) for f, y in feature_blocks(enc, target_uri, "test", device=_device())),
                [int(s) for s in shots.split(",") if s.strip()], draws, seed)
            if state_fingerprint(enc) != before:  # moco-style check: evaluation must not touch the backbone
                raise UftError(f"encoder {encoder_uri} changed during linear evaluation: this is a bug, please report it")
            return {"metrics": metrics, "metrics_uri": _publish_metrics(store, f"linear_{tag}", key, metrics)}

        out = tracking.log_outputs(cached(store, "linear_eval", params, compute))
        _log_metrics(run, out["metrics"])
        return {**out, "tag": tag}


def knn_eval(encoder_uri: str, target_uri: str, store_uri: str, *, tag: str, source_uri: str = "", k: int = 20,
             run_id: str = "local", experiment: str = "uft") -> dict[str, Any]:
    """k-NN accuracy on the target test split, and source retention (k-NN on held-out source)."""
    from uft.evaluate.features import feature_blocks
    from uft.evaluate.knn import KNN_TEST_ROWS, knn_accuracy_streamed
    from uft.models.artifact import load_encoder

    store = step_store(store_uri)
    params = {"encoder_sha": manifest_sha(encoder_uri), "target_sha": manifest_sha(target_uri), "k": k,
              "source_sha": manifest_sha(source_uri) if source_uri else ""}
    with tracking.step_run(experiment, run_id, f"knn_eval_{tag}", params) as run:
        def compute(key: str) -> dict[str, Any]:
            enc, _ = load_encoder(encoder_uri)
            metrics: dict[str, Any] = {}
            for name, uri in (("knn", target_uri), ("source_knn", source_uri)):
                if not uri:
                    continue
                if not _labelled(uri):
                    continue
                # Streamed top-k: one block of train and of test features in memory at a time.
                metrics[name] = knn_accuracy_streamed(
                    lambda uri=uri: feature_blocks(enc, uri, "train", device=_device()),
                    feature_blocks(enc, uri, "test", device=_device(), block_rows=KNN_TEST_ROWS),
                    len(read_manifest(uri)[0]["classes"]), k=k)
            return {"metrics": metrics, "metrics_uri": _publish_metrics(store, f"knn_{tag}", key, metrics)}

        out = tracking.log_outputs(cached(store, "knn_eval", params, compute))
        _log_metrics(run, out["metrics"])
        return {**out, "tag": tag}


#: Bumped when what the holistic step computes changes without its inputs changing (2: the start
#: check reads the val split, training the train split only), so no cache of the old protocol answers.
HOLISTIC_PROTOCOL = 2


def holistic_eval(encoder_uri: str, source_uri: str, target_uri: str, store_uri: str, *, seen: str = "0,1,2,3,4",
                  methods: str = "naive", steps: int = 150, seed: int = 0, source_steps: int | None = None,
                  tag: str = "base", run_id: str = "local", experiment: str = "uft") -> dict[str, Any]:
    """Holistic transfer from the encoder ``tag`` ("base" or "finetuned"): source classifier (all
    classes, source labels) → finetuned on the seen target classes by each method; overall / seen /
    unseen accuracy on the target test split. The source classifier is checked first on the target
    *val* split (``start_check`` in the metrics, MLflow tag ``degenerate_start``; a warning is logged
    when it is near chance or collapsed): no decision reads the test split, which only reports.
    ``source_steps``: its training steps (None = HolisticConfig's default)."""
    from uft.data.dataset import load_dataset
    from uft.data.stream import StreamSource, split_labels
    from uft.models.artifact import load_encoder
    from uft.preflight import holistic_class_problem
    from uft.transfer.holistic import (SOURCE_RECIPE, HolisticConfig, check_start, run_holistic, start_warning,
                                       train_source_classifier)

    store = step_store(store_uri)
    seen_ids = [int(s) for s in seen.split(",") if s.strip()]
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    params = {"encoder_sha": manifest_sha(encoder_uri), "source_sha": manifest_sha(source_uri),
              "target_sha": manifest_sha(target_uri), "seen": seen, "methods": methods, "steps": steps, "seed": seed,
              "source_recipe": SOURCE_RECIPE, "source_steps": source_steps or HolisticConfig().source_steps,
              "protocol": HOLISTIC_PROTOCOL, "tag": tag}
    with tracking.step_run(experiment, run_id, f"holistic_{tag}", params) as run:
        def compute(key: str) -> dict[str, Any]:
            # The source (large) streams; the target (small, finetuned on below) is held in memory.
            src = StreamSource(source_uri, split="train")
            src.num_rows()
            src_classes = read_manifest(source_uri)[0]["classes"]
            tgt = load_dataset(target_uri)
            if not (_labelled(target_uri) and bool((split_labels(source_uri)["train"] >= 0).any())):
                metrics = {"results": {}, "flat": {}}
                return {"metrics": metrics, "metrics_uri": _publish_metrics(store, "holistic", key, metrics)}
            num_classes = len(tgt.classes)
            if problem := holistic_class_problem(src_classes, tgt.classes, seen_ids):  # also checked by preflight
                raise UftError(problem)
            if not (tgt.split == "val").any():
                raise UftError(f"target {target_uri} has no val split, which holistic transfer checks its start on "
                               "(the test split only reports): ingest the target with target_val_fraction > 0")
            cfg = HolisticConfig(steps=steps, seed=seed, source_steps=params["source_steps"])
            enc, _ = load_encoder(encoder_uri)
            head = train_source_classifier(enc, src, None, num_classes, cfg)
            tr, va, te = tgt.subset("train"), tgt.subset("val"), tgt.subset("test")
            # First: is the source classifier meaningful on the target? (a collapsed start makes every
            # row moot) Checked on val: the test split only reports.
            check = check_start(enc, head, va.floats(), va.labels, num_classes)
            if check["degenerate"]:
                log.warning("holistic: %s", start_warning(check))
            results = {}
            for m in ["source", *method_list]:  # every row starts from the source classifier
                results[m] = {**run_holistic(HolisticConfig(steps=steps, seed=seed, method=m), enc, head,
                                             (tr.floats(), tr.labels), (te.floats(), te.labels), seen_ids, num_classes,
                                             target_val=(va.floats(), va.labels)),
                              "start": "source"}
            flat = {f"{m}_{k}": v for m, r in results.items() for k, v in r.items() if isinstance(v, (int, float))}
            flat.update(start_accuracy=check["accuracy"], start_top_class_share=check["top_class_share"],
                        start_degenerate=float(check["degenerate"]))
            metrics = {"results": results, "flat": flat, "seen": seen_ids, "start_check": {**check, "split": "val"},
                       "encoder": tag}
            return {"metrics": metrics, "metrics_uri": _publish_metrics(store, "holistic", key, metrics)}

        out = tracking.log_outputs(cached(store, "holistic", params, compute))
        check = out["metrics"].get("start_check")
        if check and check["degenerate"] and out.get("cached"):
            log.warning("holistic: %s", start_warning(check))
        if run is not None and check:
            import mlflow

            mlflow.set_tag("degenerate_start", str(bool(check["degenerate"])).lower())
        _log_metrics(run, out["metrics"]["flat"])
        return out


def _labelled(uri: str) -> bool:
    """Evaluation needs labels on both splits; an unlabelled target is finetuned but not scored.
    Reads the label and split columns only (no image is decoded)."""
    import numpy as np

    from uft.data.stream import split_labels

    labels = split_labels(uri)
    has = [bool((labels.get(sp, np.empty(0)) >= 0).any()) for sp in ("train", "test")]
    if not all(has):
        log.warning("%s has no labelled train/test rows: evaluation on it is skipped", uri)
    return all(has)


def _log_metrics(run, metrics: dict[str, Any]) -> None:
    if run is not None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})


# --- report ----------------------------------------------------------------------------------------

def report(metrics_uris: list[str], store_uri: str, *, config: dict[str, Any], encoder_uris: dict[str, str] | None = None,
           dataset_uris: dict[str, str] | None = None, run_id: str = "local", experiment: str = "uft",
           out_dir: str | None = None) -> dict[str, Any]:
    """Collect every step's metrics into a markdown + HTML report with plots; log it to MLflow."""
    store = step_store(store_uri)
    # Keyed on everything the report shows, by content, and on the parent MLflow run it logs to: a
    # rerun with the same of each (every step a cache hit) reads the published report instead of
    # redrawing and re-logging it; a wiped MLflow db means a new parent run, which gets it again.
    inputs = {"metrics": [manifest_sha(u) for u in metrics_uris], "config": config,
              "encoders": {n: manifest_sha(u) for n, u in sorted((encoder_uris or {}).items())},
              "datasets": {r: manifest_sha(u) for r, u in sorted((dataset_uris or {}).items()) if u},
              "run_id": run_id, "parent": tracking.parent_run_id(experiment, run_id) if tracking.enabled() else ""}
    drawn: dict[str, bytes] = {}

    def compute(_key: str) -> dict[str, Any]:
        from uft.report import build_report

        collected = []
        for uri in metrics_uris:
            manifest, _, _ = read_manifest(uri)
            collected.append({"step": manifest["step"], "metrics": manifest["metrics"], "uri": uri})
        with tracking.step_run(experiment, run_id, "report") as run:
            curves, shown = {}, dict(config)
            for name, uri in (encoder_uris or {}).items():
                info = read_manifest(uri)[0].get("info", {})
                if info.get("losses"):
                    curves[name] = [tuple(p) for p in info["losses"]]
                if info.get("ssl_head"):  # continued / fresh projector of the finetune
                    shown["ssl_head_note"] = f"SSL head of the {name}: {info['ssl_head']}."
            datasets = {role: read_manifest(uri)[0] for role, uri in (dataset_uris or {}).items() if uri}
            projections = _projections(encoder_uris or {}, (dataset_uris or {}).get("target", ""))
            files, summary = build_report(collected, shown, curves, datasets, projections)
            drawn.update(files)
            key = content_key("report", run_id, sorted(metrics_uris))
            uri = publish(store, f"reports/{run_id}/{key}", files, {"kind": "report", "summary": summary})
            if run is not None:
                _log_report(run, files, summary, collected, config, experiment, run_id)
            tracking.log_outputs({"report_uri": uri})
        return {"report_uri": uri, "summary": summary}

    out = cached(store, "report", inputs, compute)
    files = drawn or _published_files(out["report_uri"], None if out_dir else ("report.md", "report.html"))
    if out_dir:
        from pathlib import Path

        for name, data in files.items():
            (Path(out_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / name).write_bytes(data)
    return {**out, "markdown": files["report.md"].decode(), "html": files["report.html"].decode()}


def _log_report(run, files: dict[str, bytes], summary: dict[str, Any], collected: list[dict[str, Any]],
                config: dict[str, Any], experiment: str, run_id: str) -> None:
    """The report's files to the report run *and* to the parent run (the one `uft run` links and a
    person opens), the summary metrics and the config to the parent, and the parent's description:
    the decision with a link to the registered model version, the headline table, report links."""
    import tempfile
    from pathlib import Path

    from uft.report import mlflow_markdown, run_description

    parent_id = tracking.log_parent_params(experiment, run_id, config)  # for `uft compare`
    client = tracking._client()
    md = files["report.md"].decode()
    for target in (run.info.run_id, parent_id):
        if target is None:
            continue
        with tempfile.TemporaryDirectory() as d:
            for name, data in files.items():
                (Path(d) / name).write_bytes(data)
            # the markdown's plots from this run's artifacts: MLflow's viewer draws no data: images
            (Path(d) / "report.md").write_text(mlflow_markdown(md, files, target))
            client.log_artifacts(target, d)
    if parent_id is None:
        return
    for k, v in summary.items():
        if isinstance(v, (int, float)):
            client.log_metric(parent_id, k, float(v))
    exp_id = run.info.experiment_id
    client.set_tag(parent_id, "mlflow.note.content", run_description(collected, exp_id, parent_id))
    promotion = next((c["metrics"] for c in collected if c["step"] == "promote"), {})
    if promotion.get("version") not in (None, "", "None"):  # the registry link as tags too (searchable)
        client.set_tag(parent_id, "uft.registered_model", str(promotion.get("registered_model")))
        client.set_tag(parent_id, "uft.model_version", str(promotion["version"]))


def _published_files(uri: str, names: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """The files (all, or ``names``) of the published artifact whose manifest is ``uri``, verified."""
    manifest, where, prefix = read_manifest(uri)
    return {n: read_verified(where, prefix, manifest, n, uri) for n in (names or manifest["files"])}


def _projections(encoder_uris: dict[str, str], target_uri: str, max_points: int = 2000) -> dict[str, tuple]:
    """PCA of each encoder's features on (up to ``max_points``) labelled target test images."""
    import torch
    from sklearn.decomposition import PCA

    from uft.data.stream import StreamSource
    from uft.evaluate.features import extract_features
    from uft.models.artifact import load_encoder

    if not target_uri or not encoder_uris:
        return {}
    # The first max_points labelled test rows (a bounded sample), read shard by shard until there are enough.
    images, labels, have = [], [], 0
    for batch in StreamSource(target_uri, split="test", window=1).open(1024, shuffle=False, epochs=1, drop_last=False):
        keep = batch.labels >= 0
        images.append(batch.images[keep][: max_points - have].clone())
        labels.append(batch.labels[keep][: max_points - have])
        have += len(labels[-1])
        if have >= max_points:
            break
    if have < 3:
        return {}
    x, y = torch.cat(images), torch.cat(labels).numpy()
    out = {}
    for name, uri in encoder_uris.items():
        feats = extract_features(load_encoder(uri)[0], x, device=_device()).numpy()
        out[name] = (PCA(n_components=2, random_state=0).fit_transform(feats), y)
    return out
