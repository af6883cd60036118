"""The pipeline's ``promote`` step: register the candidate, measure it and its reference on the
same held-out images, decide, move the alias, and record the decision (cached by content)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any, Callable


from uft.errors import UftError
from uft.promote.policy import (CHAMPION, DEFAULT_MODEL, FLOOR_SEEDS, SIGNALS_VERSION, TAG_KEY, Decision,
                                 GatePolicy, decide, decision_tags)
from uft.promote.registry import _client, apply, find_version, load_champion, register, version_by_alias
from uft.promote.signals import _champion_shift, _GateInputs, untrained_like


def _recorded_decision(store, key: str) -> dict[str, Any] | None:
    """The promotion metrics this run key published under ``metrics/promote/<key>``, or None."""
    from uft.store import read_manifest

    try:
        manifest = read_manifest(store.url(f"metrics/promote/{key}/manifest.json"))[0]
    except (UftError, ValueError, KeyError):
        return None
    metrics = manifest.get("metrics")
    return metrics if isinstance(metrics, dict) and "decision" in metrics else None


def _recorded_signals(store, scope: dict[str, Any], encoder_sha: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """An encoder's signals on ``scope`` (base, target, source content hashes, seed, sample size):
    a pure function of those, so kept in the step cache (``cache/signals/``) and read back on a rerun
    instead of re-extracting features (JSON keeps NaN/inf: a diverged encoder reads back diverged)."""
    from uft.step_cache import cached

    signals = cached(store, "signals", {**scope, "encoder": encoder_sha}, lambda _key: compute())
    signals.pop("cached")
    return signals


def promote_step(encoder_uri: str, base_encoder_uri: str, target_uri: str, store_uri: str, *, source_uri: str = "",
                 registered_model: str = DEFAULT_MODEL, margin: float = GatePolicy.margin,
                 retention_tolerance: float = GatePolicy.retention_tolerance,
                 probe_margin: float = GatePolicy.probe_margin, max_images: int = 1000, seed: int = 0,
                 force: bool = False, model_format: str = "pt2", run_id: str = "local",
                 experiment: str = "uft") -> dict[str, Any]:
    """Signals of the finetuned encoder, of its reference (the current champion, or on an empty
    registry the base encoder) and of an untrained encoder of the same architecture, all on the
    same held-out images (val splits) → registry version + champion/challenger decision. Without
    MLflow tracking the decision against the base is still computed and published; nothing is
    registered."""
    from uft import tracking
    from uft.evaluate.label_free import floor_of
    from uft.lineage import LINEAGE_TAG, training_record
    from uft.store import content_key, manifest_sha, publish, read_manifest, sha256_bytes, step_store

    if not registered_model.strip():
        raise UftError("registered_model is empty: pass a registry model name, e.g. uft-encoder")
    policy = GatePolicy(margin, retention_tolerance, probe_margin, noise=GatePolicy.noise)
    store = step_store(store_uri)
    h, _, c = read_manifest(target_uri)[0]["image_shape"]
    encoder_sha, target_sha = manifest_sha(encoder_uri), manifest_sha(target_uri)
    champ_now = version_by_alias(registered_model, CHAMPION, _client()) if tracking.enabled() else None
    record = training_record(target_uri, source_uri)
    lineage, exclude, exclude_source = scored_rows_check(record, champ_now, target_uri, source_uri)
    scope = {"base": manifest_sha(base_encoder_uri), "target": target_sha, "max_images": max_images, "seed": seed,
             "source": manifest_sha(source_uri) if source_uri else "", "signals": SIGNALS_VERSION,
             # the rows left out (lineage) change what is scored: part of the signals' key
             "left_out": sha256_bytes(b"".join(sorted(exclude)) + b"|" + (b"".join(sorted(exclude_source))
                                                                          if exclude_source is not None else b"none"))}
    data = _GateInputs(encoder_uri, base_encoder_uri, target_uri, source_uri, max_images, seed, exclude, exclude_source)
    cand = _recorded_signals(store, scope, encoder_sha, lambda: data.signals(data.encoder))
    base_sig = _recorded_signals(store, scope, scope["base"], lambda: data.signals(data.base))
    floor = floor_of([_recorded_signals(store, scope, f"untrained:{i}:" + scope["base"],
                                        lambda i=i: data.signals(untrained_like(base_encoder_uri, seed=i), paired=False))
                      for i in range(FLOOR_SEEDS)])
    lineage["excluded_target"] = int(cand.get("excluded_rows", 0))
    key = content_key("promote", run_id, encoder_sha, registered_model)  # where this run key's decision is published
    params = {"encoder_sha": encoder_sha, "target_sha": target_sha, "registered_model": registered_model,
              "margin": margin, "retention_tolerance": retention_tolerance, "probe_margin": probe_margin}
    with tracking.step_run(experiment, run_id, "promote", params) as run:
        if run is None:
            decision = decide(cand, base_sig, policy, force=force, floor=floor, reference="base encoder",
                              lineage=lineage)
            decision.reasons.append("not registered: MLflow tracking is off (set MLFLOW_TRACKING_URI)")
            decision.promote = False
            alias = "not registered"
        else:
            import mlflow

            client = _client()
            mine = find_version(registered_model, encoder_sha, client)
            champ_v = version_by_alias(registered_model, CHAMPION, client)
            recorded = _recorded_decision(store, key) if mine is not None and not force and (
                mine.tags.get("uft.pipeline_run_id") == run_id) else None
            is_champion = champ_v is not None and mine is not None and str(champ_v.version) == str(mine.version)
            if (recorded is not None and recorded.get("version") == str(mine.version)
                    and bool(recorded.get("promoted")) == is_champion):
                # This run key decided already (a rerun of the same config) and the registry still
                # agrees: its decision, as recorded, so the rerun's outputs — and the report that
                # shows them — are the same.
                decision = Decision(bool(recorded["promoted"]), list(recorded["reasons"]), cand,
                                    recorded.get("champion_signals"), version=str(mine.version),
                                    previous_champion=recorded.get("previous_champion"),
                                    reference=recorded.get("reference", "champion"),
                                    floor=recorded.get("floor_signals"), policy=recorded.get("policy"),
                                    shift=recorded.get("domain_shift"), interval=recorded.get("interval"),
                                    lineage=recorded.get("lineage"))
                alias = recorded["decision"]
            elif is_champion and not force:
                # A retry after the alias was set, or another run with the same encoder: nothing to decide.
                decision = Decision(False, [f"unchanged: this encoder is already champion version {mine.version}"],
                                    cand, None, version=str(mine.version), policy=asdict(policy), lineage=lineage)
                alias = "champion (unchanged)"
            else:
                if champ_v is not None:
                    champ_sha = champ_v.tags.get(TAG_KEY)

                    def champion_signals() -> dict[str, Any]:
                        return data.signals(load_champion(registered_model, champ_v, client))

                    ref = (_recorded_signals(store, scope, champ_sha, champion_signals) if champ_sha
                           else champion_signals())
                    ref_name = f"champion version {champ_v.version}"
                    shift = _champion_shift(champ_v, target_sha, data)
                else:  # empty registry: the candidate must still beat what it was finetuned from
                    ref, ref_name, shift = base_sig, "base encoder", None
                if champ_v is not None and (champ_now is None or str(champ_v.version) != str(champ_now.version)):
                    # the champion moved since the rows were checked against it: check again before deciding
                    raise UftError(f"the champion of {registered_model} moved to version {champ_v.version} while this "
                                   "promote step ran: retry the step (its signals are cached)")
                decision = decide(cand, ref, policy, force=force, floor=floor, reference=ref_name, shift=shift,
                                  lineage=lineage)
                decision.shift = shift
                version = register(registered_model, data.encoder, encoder_sha, image_size=h, channels=c,
                                   client=client, serialization_format=model_format,
                                   tags={"uft.pipeline_run_id": run_id, "uft.encoder_uri": encoder_uri,
                                         "uft.target_sha": target_sha, "uft.target_uri": target_uri,
                                         LINEAGE_TAG: json.dumps(record, sort_keys=True)})
                apply(registered_model, version.version, decision, client)
                alias = decision.alias
            mlflow.log_metrics({f"signal_{k}": float(v) for k, v in cand.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))})
            mlflow.set_tags({"uft.decision": alias, "uft.model_version": str(decision.version),
                             "uft.registered_model": registered_model, "uft.reasons": " | ".join(decision.reasons)[:4900],
                             **decision_tags(decision)})
        metrics = {"decision": alias, "promoted": decision.promote, "version": decision.version,
                   "registered_model": registered_model, "reasons": decision.reasons, "signals": _lean(cand),
                   "base_signals": _lean(base_sig), "champion_signals": _lean(decision.champion),
                   "reference": decision.reference,
                   "floor_signals": floor, "previous_champion": decision.previous_champion,
                   "domain_shift": decision.shift, "interval": decision.interval,
                   "lineage": decision.lineage or lineage,
                   "policy": decision.policy or asdict(policy)}
        uri = publish(store, f"metrics/promote/{key}", {}, {"kind": "metrics", "step": "promote",
                                                             "metrics": _jsonable(metrics)})
        if run is not None:
            import mlflow

            # What `uft promote --explain` reads: with the run, so it needs MLflow only (not the store).
            mlflow.log_dict(_jsonable(metrics), "promotion.json")
            mlflow.set_tag("uft.promote_metrics_uri", uri)
        out = {"metrics_uri": uri, "decision": alias, "promoted": decision.promote, "version": decision.version,
               "reasons": decision.reasons, "summary": f"{alias}" + (f" version {decision.version}" if decision.version
                                                                     else "") + ": " + "; ".join(decision.reasons)}
        return tracking.log_outputs(out)


def _lean(signals: dict[str, Any] | None) -> dict[str, Any] | None:
    """Signals without their per-row outcomes (kept in the signals cache, not in the decision's record)."""
    return None if signals is None else {k: v for k, v in signals.items() if k != "paired"}


def scored_rows_check(record: dict[str, Any], champ_v, target_uri: str,
                      source_uri: str) -> tuple[dict[str, Any], frozenset[bytes], frozenset[bytes] | None]:
    """Which rows the gate may score: none that the candidate (``record``, :func:`uft.lineage.training_record`)
    or its reference (the champion version ``champ_v``, else the base encoder, which trained on the
    source only) trained on → (lineage summary, target keys to leave out, source keys to leave out or
    None when that cannot be told — source retention is then not measured).

    A reference whose target training rows cannot be told (no lineage and its old dataset gone,
    another image size) sets ``cannot_tell``: the decision is held, not guessed."""
    from uft.lineage import record_from_tags, trained_keys

    if champ_v is not None:
        ref_name, ref_record = f"champion version {champ_v.version}", record_from_tags(dict(champ_v.tags))
    else:
        ref_name, ref_record = "base encoder", {"target": "none", "source": record.get("source")}
    checked, cannot, exclude, exclude_source = [], [], set(), set()
    for who, rec in (("candidate", record), (ref_name, ref_record)):
        for role, uri in (("target", target_uri), ("source", source_uri)):
            if not uri:
                continue
            keys, how = trained_keys(rec, role, uri)
            checked.append(f"{who}, {role}: {how}")
            if keys is None and role == "target":
                cannot.append(f"which target rows the {who} trained on ({how})")
            elif keys is None:
                exclude_source = None
            elif role == "target":
                exclude |= keys
            elif exclude_source is not None:
                exclude_source |= keys
    if exclude_source is None and source_uri:
        checked.append("source retention not measured: what a compared encoder trained on in the source cannot be told")
    lineage = {"checked": checked, "reference": ref_name, "cannot_tell": "; ".join(cannot) or None,
               "candidate_record": record}
    return lineage, frozenset(exclude), (frozenset(exclude_source) if exclude_source is not None else None)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
