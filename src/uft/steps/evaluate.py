"""Evaluation steps: linear probes, k-NN, holistic transfer; each publishes its metrics."""

from __future__ import annotations

import logging
from typing import Any

from uft import tracking
from uft.errors import UftError
from uft.step_cache import cached
from uft.steps.common import keep_heap_flat, step_device
from uft.store import Store, manifest_sha, publish, read_manifest, step_store


log = logging.getLogger("uft")
# torch and numpy are imported inside the functions that compute: a step whose outputs are cached
# then never pays torch's import (seconds per process).



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
            keep_heap_flat()  # a pass over every train row: peak memory must not grow with it
            enc, _ = load_encoder(encoder_uri)
            before = state_fingerprint(enc)
            labels = split_labels(target_uri)  # read once: the check and the probes share it
            if not _labelled(target_uri, labels):
                return {"metrics": {}, "metrics_uri": _publish_metrics(store, f"linear_{tag}", key, {})}
            # Streamed: only the probes' train rows and one block of test features are ever in memory.
            metrics: dict[str, Any] = linear_probes_streamed(
                labels["train"],
                lambda rows: gather_features(enc, target_uri, "train", rows, device=step_device()).numpy(),
                ((f.numpy(), y.numpy()) for f, y in feature_blocks(enc, target_uri, "test", device=step_device())),
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
            keep_heap_flat()  # passes over every train row: peak memory must not grow with them
            enc, _ = load_encoder(encoder_uri)
            metrics: dict[str, Any] = {}
            for name, uri in (("knn", target_uri), ("source_knn", source_uri)):
                if not uri:
                    continue
                if not _labelled(uri):
                    continue
                # Streamed top-k: one block of train and of test features in memory at a time.
                metrics[name] = knn_accuracy_streamed(
                    lambda uri=uri: feature_blocks(enc, uri, "train", device=step_device()),
                    feature_blocks(enc, uri, "test", device=step_device(), block_rows=KNN_TEST_ROWS),
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


def _labelled(uri: str, labels: dict[str, Any] | None = None) -> bool:
    """Evaluation needs labels on both splits; an unlabelled target is finetuned but not scored.
    ``labels``: :func:`uft.data.stream.split_labels` of ``uri`` when the caller has read it already
    (it reads the label and split columns of every shard; no image is decoded)."""
    import numpy as np

    from uft.data.stream import split_labels

    labels = split_labels(uri) if labels is None else labels
    has = [bool((labels.get(sp, np.empty(0)) >= 0).any()) for sp in ("train", "test")]
    if not all(has):
        log.warning("%s has no labelled train/test rows: evaluation on it is skipped", uri)
    return all(has)


def _log_metrics(run, metrics: dict[str, Any]) -> None:
    if run is not None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
