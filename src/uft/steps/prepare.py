"""Steps that prepare data: ingest a dataset, choose the sparse replay set, record the mixing plan."""

from __future__ import annotations

from typing import Any

from uft import tracking
from uft.errors import UftError
from uft.step_cache import cached
from uft.steps.common import step_device
from uft.store import canonical_json, content_key, manifest_sha, publish, read_manifest, step_store


# torch and numpy are imported inside the functions that compute: a step whose outputs are cached
# then never pays torch's import (seconds per process).



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
                    kw["source_features"] = stream_features(enc, source_uri, "train", device=step_device())[0].numpy()
                    if rule == "nearest_target":
                        if not target_uri:
                            raise UftError("replay rule 'nearest_target' needs the target dataset: pass target_uri")
                        kw["target_features"] = stream_features(enc, target_uri, "train", device=step_device())[0].numpy()
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
