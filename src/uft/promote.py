"""The promotion gate: register a finetuned encoder in the MLflow Model Registry and decide whether
it becomes the ``champion`` (what consumers load) or stays a ``challenger``.

The decision (:func:`decide`) is pure: it compares the candidate's label-free signals with the
current champion's, both measured on the *same* images (the champion is re-scored on this run's
target and held-out source data), so new target data never makes an old score incomparable.

Rules, in order (each failed rule is one reason, recorded as a version tag):

1. Never a collapsed/diverged encoder (:func:`uft.evaluate.label_free.collapsed`).
2. Empty registry: the first sane encoder is promoted.
3. ``gate_score`` must beat the champion's by at least ``margin`` (absolute).
4. ``source_retention`` may drop by at most ``retention_tolerance`` (absolute accuracy).
5. When target labels exist, the few-label probe accuracy may drop by at most ``probe_tolerance``.

Registry writes are idempotent: a version is keyed by the encoder's content hash (tag
``uft.encoder_sha``), so a retried step — or an identical rerun whose finetuning was a cache hit —
finds its version instead of adding one. The tags are written in the same call that creates the
version, so there is no window in which a version exists without its key. Aliases are moved with
``set_registered_model_alias``, which is itself idempotent. Everything goes through
``MlflowClient``: the same code works against a local sqlite store and a tracking server with a
Postgres backend (the registry lives in the tracking server's backend store).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from uft.errors import UftError

if TYPE_CHECKING:
    import torch
# torch is imported where a tensor is made: `uft run` reads the promotion verdict from here.

DEFAULT_MODEL = "uft-encoder"
CHAMPION, CHALLENGER = "champion", "challenger"
TAG_KEY = "uft.encoder_sha"
SIGNAL_TAG = "uft.signal."


@dataclass(frozen=True)
class GatePolicy:
    """The stated margins of the gate (absolute differences)."""

    margin: float = 0.01  # gate_score gain over the champion needed to promote
    retention_tolerance: float = 0.02  # max drop of source k-NN accuracy
    probe_tolerance: float = 0.0  # max drop of few-label probe accuracy (only with target labels)

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise UftError(f"promotion {name}={v!r}: pass a finite number >= 0")


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    candidate: dict[str, Any] = field(default_factory=dict)
    champion: dict[str, Any] | None = None
    version: str | None = None
    previous_champion: str | None = None
    forced: bool = False

    @property
    def alias(self) -> str:
        return CHAMPION if self.promote else CHALLENGER

    def summary(self) -> str:
        """One line for `uft run` and the report."""
        where = f" version {self.version}" if self.version else ""
        return f"{self.alias}{where}: " + "; ".join(self.reasons)


def decide(candidate: dict[str, Any], champion: dict[str, Any] | None, policy: GatePolicy = GatePolicy(),
           *, force: bool = False) -> Decision:
    """Signals of the candidate and of the champion (None: empty registry) → :class:`Decision`.

    Signal dicts hold at least ``gate_score`` and the collapse inputs (see
    :func:`uft.evaluate.label_free.collapsed`); ``source_retention`` and ``probe`` when known.
    """
    from uft.evaluate.label_free import collapsed

    if force:
        return Decision(True, ["promoted by hand (uft promote --force): the gate was not applied"], candidate,
                        champion, forced=True)
    why = collapsed(candidate)
    if why:
        return Decision(False, [f"collapsed: {why}"], candidate, champion)
    if champion is None:
        return Decision(True, ["first version on an empty registry; sanity check passed (not collapsed, "
                               f"gate score {candidate['gate_score']:.4f})"], candidate, None)
    reasons, ok = [], True
    gain = candidate["gate_score"] - champion["gate_score"]
    if gain < policy.margin:
        ok = False
        reasons.append(f"gate score {candidate['gate_score']:.4f} vs champion {champion['gate_score']:.4f}: "
                       f"gain {gain:+.4f} < margin {policy.margin}")
    else:
        reasons.append(f"gate score {candidate['gate_score']:.4f} beats champion {champion['gate_score']:.4f} "
                       f"by {gain:+.4f} (margin {policy.margin})")
    cr, hr = candidate.get("source_retention"), champion.get("source_retention")
    if cr is not None and hr is not None:
        if hr - cr > policy.retention_tolerance:
            ok = False
            reasons.append(f"forgets the source: retention {cr:.3f} vs champion {hr:.3f} "
                           f"(drop {hr - cr:.3f} > tolerance {policy.retention_tolerance})")
        else:
            reasons.append(f"source retention {cr:.3f} vs champion {hr:.3f} (tolerance {policy.retention_tolerance})")
    cp, hp = candidate.get("probe"), champion.get("probe")
    if cp is not None and hp is not None:
        if hp - cp > policy.probe_tolerance:
            ok = False
            reasons.append(f"loses probe accuracy: {cp:.3f} vs champion {hp:.3f} (tolerance {policy.probe_tolerance})")
        else:
            reasons.append(f"probe accuracy {cp:.3f} vs champion {hp:.3f}")
    return Decision(ok, reasons, candidate, champion)


# --- the registry ---------------------------------------------------------------------------------

def _client():
    from uft import tracking

    return tracking._client()


def _missing(e: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(e).lower() \
        or "does not exist" in str(e).lower()


def version_by_alias(name: str, alias: str, client=None):
    """The version holding ``alias`` in registered model ``name``, or None (no model / no alias)."""
    client = client or _client()
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as e:
        if _missing(e):
            return None
        raise


def find_version(name: str, encoder_sha: str, client=None):
    """The version of ``name`` registered for this encoder content (tag ``uft.encoder_sha``), or None."""
    client = client or _client()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception as e:
        if _missing(e):
            return None
        raise
    hits = [v for v in versions if v.tags.get(TAG_KEY) == encoder_sha]
    return min(hits, key=lambda v: int(v.version)) if hits else None


def preprocessing(image_size: int, channels: int) -> dict[str, Any]:
    """What a consumer must feed the encoder (recorded with the model and as version tags)."""
    return {"image_size": int(image_size), "channels": int(channels), "layout": "NCHW", "dtype": "float32",
            "value_range": [0.0, 1.0],
            "normalisation": "inside the encoder: x -> (x - 0.5) / 0.5; feed raw pixels / 255",
            "resize": "area/bilinear antialiased to image_size x image_size (uft.data.ingest.resize_images)",
            "output": "features (N, feature_dim)"}


def log_encoder_model(encoder: torch.nn.Module, image_size: int, channels: int, *, name: str = "encoder",
                      serialization_format: str = "pt2") -> str:
    """Log ``encoder`` to the active MLflow run as an ``mlflow.pytorch`` model with a real-size input
    example, its signature and the preprocessing as metadata → the model URI.

    ``pt2`` (default) stores a ``torch.export`` graph: consumers load it without uft installed and
    without unpickling code; the example has batch 2 so the batch dimension stays dynamic.
    ``pickle`` stores the module itself (needs uft importable to load; much faster to write)."""
    import mlflow
    import torch

    example = np.zeros((2, channels, image_size, image_size), dtype=np.float32)

    def log(fmt: str, note: str = ""):
        meta = {"preprocessing": preprocessing(image_size, channels), "serialization": fmt + note,
                "feature_dim": int(getattr(encoder, "feature_dim", 0))}
        return mlflow.pytorch.log_model(encoder.cpu().eval(), name=name, input_example=example,
                                        serialization_format=fmt, metadata=meta,
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    try:
        info = log(serialization_format)
    except Exception as e:  # an architecture torch.export cannot trace: still publish, as a pickled module
        if serialization_format != "pt2":
            raise
        info = log("pickle", f" (pt2 export failed: {type(e).__name__}; loading needs uft installed)")
    return info.model_uri


def register(name: str, encoder: torch.nn.Module, encoder_sha: str, *, image_size: int, channels: int,
             tags: dict[str, str] | None = None, client=None, serialization_format: str = "pt2"):
    """Register ``encoder`` as a version of ``name`` (once per encoder content) → ModelVersion.

    Call inside an active MLflow run (the model is logged to it). A version already registered
    for ``encoder_sha`` is returned as is: nothing is logged or created again.
    """
    import mlflow

    client = client or _client()
    existing = find_version(name, encoder_sha, client)
    if existing is not None:
        return existing
    uri = log_encoder_model(encoder, image_size, channels, serialization_format=serialization_format)
    all_tags = {TAG_KEY: encoder_sha, "uft.preprocessing": str(preprocessing(image_size, channels)), **(tags or {})}
    return mlflow.register_model(uri, name, tags=all_tags)


def apply(name: str, version: str, decision: Decision, client=None) -> Decision:
    """Write ``decision`` to the registry: alias, decision and reasons as version tags. Idempotent."""
    client = client or _client()
    previous = version_by_alias(name, CHAMPION, client)
    decision.version = str(version)
    if previous is not None and str(previous.version) != str(version):
        decision.previous_champion = str(previous.version)
    tags = {"uft.decision": decision.alias, "uft.reasons": " | ".join(decision.reasons)[:4900],
            "uft.forced": str(decision.forced).lower()}
    for k, v in decision.candidate.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            tags[SIGNAL_TAG + k] = repr(float(v))
    if decision.previous_champion:
        tags["uft.previous_champion"] = decision.previous_champion
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, v)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, str(version))
        current = version_by_alias(name, CHALLENGER, client)
        if current is not None and str(current.version) == str(version):
            client.delete_registered_model_alias(name, CHALLENGER)
    else:
        client.set_registered_model_alias(name, CHALLENGER, str(version))
    return decision


def stored_signals(version) -> dict[str, Any]:
    """The signals recorded on a version's tags (``uft.signal.*``) → dict of floats."""
    return {k[len(SIGNAL_TAG):]: float(v) for k, v in version.tags.items() if k.startswith(SIGNAL_TAG)}


# --- the pipeline step ----------------------------------------------------------------------------

def _signals(encoder: torch.nn.Module, base: torch.nn.Module, tgt, source_eval, labelled: bool, seed: int,
             max_images: int) -> dict[str, Any]:
    from uft.evaluate.features import extract_features
    from uft.evaluate.label_free import encoder_signals
    from uft.evaluate.linear import few_label_probe

    s = encoder_signals(encoder, tgt.subset("train").images, base=base, source=source_eval, max_images=max_images,
                        seed=seed)
    if labelled and s["finite"]:
        tr, te = tgt.subset("train"), tgt.subset("test")
        s["probe"] = few_label_probe(extract_features(encoder, tr.images), tr.labels, extract_features(encoder, te.images),
                                     te.labels, 5, draws=3, seed=seed)[0]
    return s


def _source_eval(source_uri: str, max_images: int, seed: int):
    """(train images, labels, test images, labels, num classes) of the held-out labelled source, or None."""
    import torch

    from uft.data.stream import load_rows, split_rows
    from uft.store import read_manifest

    if not source_uri:
        return None
    # Labels and row ids from the shards' small columns; pixels only for the sampled rows (the
    # source may be far larger than memory).
    rows = split_rows(source_uri)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    (ytr, rtr), (yte, rte) = ((y[y >= 0], r[y >= 0]) for y, r in (rows.get("train", empty), rows.get("test", empty)))
    if len(ytr) < 2 or len(yte) < 1:
        return None
    g = np.random.default_rng(seed)
    i = np.sort(g.permutation(len(ytr))[: 2 * max_images])
    j = np.sort(g.permutation(len(yte))[: max_images // 2])
    # load_rows returns rows in dataset order, as the sorted picks are
    return (load_rows(source_uri, rtr[i]), torch.from_numpy(ytr[i]), load_rows(source_uri, rte[j]),
            torch.from_numpy(yte[j]), len(read_manifest(source_uri)[0]["classes"]))


class _GateInputs:
    """What the signals are measured on, each loaded on first use: a rerun whose signals are all
    recorded (:func:`_recorded_signals`) and whose encoder is already registered loads nothing."""

    def __init__(self, encoder_uri: str, base_encoder_uri: str, target_uri: str, source_uri: str, max_images: int,
                 seed: int):
        self.encoder_uri, self.base_encoder_uri, self.target_uri = encoder_uri, base_encoder_uri, target_uri
        self.source_uri, self.max_images, self.seed = source_uri, max_images, seed

    @cached_property
    def encoder(self) -> torch.nn.Module:
        from uft.models.artifact import load_encoder

        return load_encoder(self.encoder_uri)[0]

    @cached_property
    def base(self) -> torch.nn.Module:
        from uft.models.artifact import load_encoder

        return load_encoder(self.base_encoder_uri)[0]

    @cached_property
    def target(self):
        from uft.data.dataset import load_dataset

        return load_dataset(self.target_uri)

    @cached_property
    def labelled(self) -> bool:
        import torch

        tgt = self.target
        return bool((tgt.labels >= 0).any()) and all(
            bool((tgt.labels[torch.from_numpy(tgt.split == sp)] >= 0).any()) for sp in ("train", "test"))

    @cached_property
    def source_eval(self):
        return _source_eval(self.source_uri, self.max_images, self.seed)

    def signals(self, encoder: torch.nn.Module) -> dict[str, Any]:
        return _signals(encoder, self.base, self.target, self.source_eval, self.labelled, self.seed, self.max_images)


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
    from uft.step_cache import cached as _cached

    signals = _cached(store, "signals", {**scope, "encoder": encoder_sha}, lambda _key: compute())
    signals.pop("cached")
    return signals


def promote_step(encoder_uri: str, base_encoder_uri: str, target_uri: str, store_uri: str, *, source_uri: str = "",
                 registered_model: str = DEFAULT_MODEL, margin: float = GatePolicy.margin,
                 retention_tolerance: float = GatePolicy.retention_tolerance,
                 probe_tolerance: float = GatePolicy.probe_tolerance, max_images: int = 1000, seed: int = 0,
                 force: bool = False, model_format: str = "pt2", run_id: str = "local",
                 experiment: str = "uft") -> dict[str, Any]:
    """Label-free signals of the finetuned encoder (and of the base and the current champion, on the
    same images) → registry version + champion/challenger decision. Without MLflow tracking the
    signals are still computed and published, and nothing is registered."""
    from uft import tracking
    from uft.store import content_key, manifest_sha, step_store, publish, read_manifest

    if not registered_model.strip():
        raise UftError("registered_model is empty: pass a registry model name, e.g. uft-encoder")
    policy = GatePolicy(margin, retention_tolerance, probe_tolerance)
    store = step_store(store_uri)
    h, _, c = read_manifest(target_uri)[0]["image_shape"]
    encoder_sha, target_sha = manifest_sha(encoder_uri), manifest_sha(target_uri)
    scope = {"base": manifest_sha(base_encoder_uri), "target": target_sha, "max_images": max_images, "seed": seed,
             "source": manifest_sha(source_uri) if source_uri else ""}
    data = _GateInputs(encoder_uri, base_encoder_uri, target_uri, source_uri, max_images, seed)
    cand = _recorded_signals(store, scope, encoder_sha, lambda: data.signals(data.encoder))
    base_sig = _recorded_signals(store, scope, scope["base"], lambda: data.signals(data.base))
    key = content_key("promote", run_id, encoder_sha, registered_model)  # where this run key's decision is published
    params = {"encoder_sha": encoder_sha, "target_sha": target_sha, "registered_model": registered_model,
              "margin": margin, "retention_tolerance": retention_tolerance, "probe_tolerance": probe_tolerance}
    with tracking.step_run(experiment, run_id, "promote", params) as run:
        if run is None:
            decision = Decision(False, ["not registered: MLflow tracking is off (set MLFLOW_TRACKING_URI)"], cand)
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
                                    previous_champion=recorded.get("previous_champion"))
                alias = recorded["decision"]
            elif is_champion and not force:
                # A retry after the alias was set, or another run with the same encoder: nothing to decide.
                decision = Decision(False, [f"unchanged: this encoder is already champion version {mine.version}"],
                                    cand, None, version=str(mine.version))
                alias = "champion (unchanged)"
            else:
                champ = None
                if champ_v is not None:
                    def champion_signals() -> dict[str, Any]:
                        return data.signals(mlflow.pytorch.load_model(f"models:/{registered_model}@{CHAMPION}"))

                    champ_sha = champ_v.tags.get(TAG_KEY)
                    champ = (_recorded_signals(store, scope, champ_sha, champion_signals) if champ_sha
                             else champion_signals())
                decision = decide(cand, champ, policy, force=force)
                version = register(registered_model, data.encoder, encoder_sha, image_size=h, channels=c,
                                   client=client, serialization_format=model_format,
                                   tags={"uft.pipeline_run_id": run_id, "uft.encoder_uri": encoder_uri,
                                         "uft.target_sha": target_sha})
                apply(registered_model, version.version, decision, client)
                alias = decision.alias
            mlflow.log_metrics({f"signal_{k}": float(v) for k, v in cand.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))})
            mlflow.set_tags({"uft.decision": alias, "uft.model_version": str(decision.version),
                             "uft.registered_model": registered_model, "uft.reasons": " | ".join(decision.reasons)[:4900]})
        metrics = {"decision": alias, "promoted": decision.promote, "version": decision.version,
                   "registered_model": registered_model, "reasons": decision.reasons, "signals": cand,
                   "base_signals": base_sig, "champion_signals": decision.champion,
                   "previous_champion": decision.previous_champion, "policy": asdict(policy)}
        uri = publish(store, f"metrics/promote/{key}", {}, {"kind": "metrics", "step": "promote",
                                                             "metrics": _jsonable(metrics)})
        out = {"metrics_uri": uri, "decision": alias, "promoted": decision.promote, "version": decision.version,
               "reasons": decision.reasons, "summary": f"{alias}" + (f" version {decision.version}" if decision.version
                                                                     else "") + ": " + "; ".join(decision.reasons)}
        return tracking.log_outputs(out)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# --- the report's section -------------------------------------------------------------------------

READINGS = {
    "gate_score": "the gate's score: view retrieval × rank fraction (higher = better)",
    "effective_rank": "RankMe: how many feature directions are in use (1 = collapsed)",
    "view_retrieval": "share of augmented target images matched to their own other view",
    "alignment": "distance between two views of an image (lower = more invariant)",
    "uniformity": "spread of target features on the sphere (lower = more spread)",
    "snd": "soft neighbourhood density (high also for a collapsed encoder: read with the rank)",
    "neighbourhood_agreement": "overlap of k-NN neighbourhoods with the base encoder (1 = unchanged)",
    "source_retention": "k-NN accuracy on held-out labelled source images (forgetting check)",
    "probe": "5-shot linear probe on the target (only when target labels exist)",
}


def report_section(m: dict[str, Any]) -> list[str]:
    """Markdown lines for the run report from the promote step's metrics."""
    head = f"**Decision: {m.get('decision')}**" + (f" — `{m.get('registered_model')}` version {m['version']}"
                                                    if m.get("version") else "")
    lines = ["## Promotion gate (label-free signals)", "", head, ""]
    lines += [f"- {r}" for r in m.get("reasons", [])] + [""]
    cols = [("finetuned", m.get("signals") or {}), ("base", m.get("base_signals") or {})]
    if m.get("champion_signals"):
        cols.append(("champion", m["champion_signals"]))
    rows = []
    for k, reading in READINGS.items():
        if any(isinstance(c.get(k), (int, float)) for _, c in cols):
            rows.append([k] + [f"{c[k]:.3f}" if isinstance(c.get(k), (int, float)) else "–" for _, c in cols] + [reading])
    header = ["signal", *[n for n, _ in cols], "reading"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return lines


# --- the manual decision (`uft promote RUN`) ------------------------------------------------------

def manual_promote(pipeline_run_id: str, *, registered_model: str = DEFAULT_MODEL, experiment: str = "uft",
                   force: bool = False, policy: GatePolicy = GatePolicy()) -> Decision:
    """Re-decide (or, with ``force``, promote regardless) the version a pipeline run registered.

    Without ``force`` the gate is applied to the signals recorded on the two versions' tags (each
    measured on its own run's data; the pipeline step re-scores the champion on shared data)."""
    from uft import tracking

    if not tracking.enabled():
        raise UftError("MLflow tracking is off: set MLFLOW_TRACKING_URI to the registry's tracking server")
    client = _client()
    run = tracking.find_run(tracking.experiment_id(experiment), pipeline_run_id, "promote")
    if run is None or run.data.tags.get("uft.model_version") in (None, "", "None"):
        raise UftError(f"run {pipeline_run_id!r} has no promote step with a registered version in experiment "
                       f"{experiment!r}: pass the run id `uft run` printed (and --experiment)")
    name = run.data.tags.get("uft.registered_model", registered_model)
    version = client.get_model_version(name, run.data.tags["uft.model_version"])
    mine = stored_signals(version)
    champ_v = version_by_alias(name, CHAMPION, client)
    if champ_v is not None and str(champ_v.version) == str(version.version) and not force:
        return Decision(False, [f"unchanged: version {version.version} is already champion"], mine,
                        version=str(version.version))
    champ = stored_signals(champ_v) if champ_v is not None else None
    decision = decide(mine, champ, policy, force=force)
    return apply(name, version.version, decision, client)


def promotion_summary(experiment: str, pipeline_run_id: str) -> str | None:
    """"<decision> — <model> version N: <reasons>" from a finished run's promote step (for `uft run`)."""
    from uft import tracking

    if not tracking.enabled():
        return None
    run = tracking.find_run(tracking.experiment_id(experiment), pipeline_run_id, "promote")
    if run is None or "uft.decision" not in run.data.tags:
        return None
    t = run.data.tags
    version = t.get("uft.model_version")
    where = f" — {t.get('uft.registered_model')} version {version}" if version not in (None, "", "None") else ""
    return f"{t['uft.decision']}{where}: {t.get('uft.reasons', '')}"
