"""The promotion gate: register a finetuned encoder in the MLflow Model Registry and decide whether
it becomes the ``champion`` (what consumers load) or stays a ``challenger``.

Every decision is against a reference, measured on the *same held-out images*: the current
champion (re-scored on this run's data), or — on an empty registry — the candidate's own base
encoder, so a finetune that changed nothing measurable is held and says so. The images are the
target's and the source's "val" splits, which no training step reads (:data:`uft.data.ingest.SPLITS`);
test labels are never read here.

The decision (:func:`decide`) is pure. Rules, in order (each failed rule is one reason, recorded as
a version tag):

1. Never a collapsed, diverged or degenerate encoder (:func:`uft.evaluate.label_free.collapsed`:
   constant or rank-one features, view retrieval at chance, or no better than untrained encoders of
   the same architecture where the reference is clearly better).
2. Never automatically over a champion of another domain (:func:`domain_shift`).
3. ``source_retention`` may drop by at most ``retention_tolerance``.
4. With val labels: the val-split probe must gain ``probe_margin`` (and the gate score may not fall
   by more than ``margin``); without: ``gate_score`` must gain ``margin`` (relative).

The margins (:class:`GatePolicy`) come from the measured seed-to-seed spread of each signal; each
decision records them and the noise they came from. ``uft promote --explain RUN_ID`` shows every
signal for candidate, reference and floor with the margin applied.

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
FLOOR_SEEDS = 3  # untrained encoders whose best signals make the degenerate floor (label_free.floor_of)
VAL_SHOTS = 5  # labels per class of the val-split probe (uft.evaluate.label_free.split_probe's default)
SIGNALS_VERSION = "2"  # in the signals' cache key: 2 = measured on the val splits (1: target train images)


#: Where the default margins come from (recorded with every decision).
NOISE = ("seed-to-seed sd over 5 seeds of the default finetune on mnist→optdigits and fashion-mnist→mnist "
         "(tiny encoder, 16 px; bench/results/promotion_gate_noise.md): gate score sd/mean 0.040 / 0.022, "
         "val probe sd 0.0033 / 0.0063, source retention sd 0.0057 / 0.0088; margin = 2 × the larger "
         "(relative for the gate score), retention tolerance = 3 × the larger")


@dataclass(frozen=True)
class GatePolicy:
    """The gate's margins, each set from the measured seed-to-seed spread (σ) of its signal for one
    finetuning configuration (``bench/promotion_gate.py --phase noise``; ``noise`` says which).

    - ``margin``: *relative* gate-score gain over the reference needed to promote (``cand / ref − 1``);
      relative because the score's scale differs by an order of magnitude between domains while its
      spread is a similar fraction of it. Set to 2 σ of ``sd / mean``.
    - ``probe_margin``: absolute gain of the val-split probe (``val_probe``) needed to promote when the
      target's val split has labels. 2 σ.
    - ``retention_tolerance``: the largest drop of source k-NN accuracy (source val split) allowed. 3 σ.
    """

    margin: float = 0.08  # 2 × 0.0403, the larger sd/mean of the gate score (mnist→optdigits)
    retention_tolerance: float = 0.026  # 3 × 0.00878, the larger sd of source retention (fashion-mnist→mnist)
    probe_margin: float = 0.0125  # 2 × 0.00627, the larger sd of the val probe (fashion-mnist→mnist)
    noise: str = NOISE

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if name != "noise" and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise UftError(f"promotion {name}={v!r}: pass a finite number >= 0")


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    candidate: dict[str, Any] = field(default_factory=dict)
    champion: dict[str, Any] | None = None  # the reference's signals (the champion's, or the base's)
    version: str | None = None
    previous_champion: str | None = None
    forced: bool = False
    reference: str = "champion"  # what the candidate was compared with
    floor: dict[str, Any] | None = None  # an untrained encoder's signals (the degenerate floor)
    policy: dict[str, Any] | None = None
    shift: float | None = None  # domain_shift between the champion's target and this one (None: not measured)

    @property
    def alias(self) -> str:
        return CHAMPION if self.promote else CHALLENGER

    def summary(self) -> str:
        """One line for `uft run` and the report."""
        where = f" version {self.version}" if self.version else ""
        return f"{self.alias}{where}: " + "; ".join(self.reasons)


def _has(d: dict[str, Any] | None, k: str) -> bool:
    return d is not None and isinstance(d.get(k), (int, float)) and math.isfinite(float(d[k]))


def decide(candidate: dict[str, Any], champion: dict[str, Any] | None, policy: GatePolicy = GatePolicy(),
           *, force: bool = False, floor: dict[str, Any] | None = None, reference: str = "champion",
           shift: float | None = None) -> Decision:
    """Signals of the candidate and of its reference → :class:`Decision`.

    ``champion``: the reference's signals, measured on the same held-out images — the current
    champion's, or on an empty registry the candidate's own base encoder's (``reference`` names it);
    None only when neither is known. ``floor``: the signals of an untrained encoder of the same
    architecture (:func:`uft.evaluate.label_free.collapsed`). ``shift``: :func:`domain_shift` between
    the champion's target and this run's (None: same target, or no champion). Rules, in order; the
    first three hold the candidate back, the last decides:

    1. collapsed or degenerate (never promoted);
    2. the target moved to another domain (``shift`` ≥ :data:`DOMAIN_SHIFT_ACCURACY`): no automatic
       promotion over a champion of another domain;
    3. source retention dropped by more than ``retention_tolerance``;
    4. with val labels on both sides: ``val_probe`` must gain ``probe_margin`` and the gate score may
       not fall by more than ``margin`` (relative); without: the gate score must gain ``margin``.
    """
    from uft.evaluate.label_free import collapsed

    kw = dict(reference=reference, floor=floor, policy=asdict(policy))
    if force:
        return Decision(True, ["promoted by hand (uft promote --force): the gate was not applied"], candidate,
                        champion, forced=True, **kw)
    why = collapsed(candidate, floor=floor, reference=champion, margin=policy.margin, probe_margin=policy.probe_margin,
                    retention_tolerance=policy.retention_tolerance)
    if why:
        return Decision(False, [f"collapsed: {why}"], candidate, champion, **kw)
    if shift is not None and shift >= DOMAIN_SHIFT_ACCURACY:
        return Decision(False, [f"the target is another domain than the {reference}'s: a classifier tells the two "
                                f"targets apart with accuracy {shift:.2f} (≥ {DOMAIN_SHIFT_ACCURACY}; same domain ≈ 0.5); "
                                "not promoted automatically — check the target, promote by hand (uft promote --force "
                                "RUN_ID) or register it under another --param registered_model"],
                        candidate, champion, **kw)
    if champion is None:
        return Decision(True, ["no reference to compare with (no champion, no base encoder): promoted on the "
                               f"sanity check alone (gate score {candidate['gate_score']:.4f})"], candidate, None, **kw)
    reasons, ok, changed = [], True, False
    cg, rg = float(candidate["gate_score"]), float(champion["gate_score"])
    rel = cg / rg - 1 if rg > 0 else (math.inf if cg > 0 else 0.0)
    gate_line = (f"gate score {cg:.4f} vs {reference} {rg:.4f}: {rel:+.1%} (margin ±{policy.margin:.1%} relative, "
                 "2σ of its seed-to-seed spread)")
    changed |= abs(rel) >= policy.margin
    labels = _has(candidate, "val_probe") and _has(champion, "val_probe")
    if labels:
        gain = candidate["val_probe"] - champion["val_probe"]
        changed |= abs(gain) >= policy.probe_margin
        probe_line = (f"val-split probe {candidate['val_probe']:.3f} vs {reference} {champion['val_probe']:.3f}: "
                      f"{gain:+.3f} (margin {policy.probe_margin:.3f}, 2σ)")
        if gain < policy.probe_margin:
            ok = False
            reasons.append(f"not better on the val-split probe: {probe_line}")
        else:
            reasons.append(f"better on the val-split probe: {probe_line}")
        if rel <= -policy.margin:
            ok = False
            reasons.append(f"label-free quality fell: {gate_line}")
        else:
            reasons.append(gate_line)
    elif rel < policy.margin:
        ok = False
        reasons.append(f"not better: {gate_line}")
    else:
        reasons.append(f"better: {gate_line}")
    if _has(candidate, "source_retention") and _has(champion, "source_retention"):
        cr, hr = candidate["source_retention"], champion["source_retention"]
        changed |= abs(hr - cr) > policy.retention_tolerance
        if hr - cr > policy.retention_tolerance:
            ok = False
            reasons.insert(0, f"forgets the source: retention {cr:.3f} vs {reference} {hr:.3f} "
                              f"(drop {hr - cr:.3f} > tolerance {policy.retention_tolerance:.3f}, 3σ)")
        else:
            reasons.append(f"source retention {cr:.3f} vs {reference} {hr:.3f} "
                           f"(tolerance {policy.retention_tolerance:.3f}, 3σ)")
    if not changed:
        reasons.insert(0, f"finetuning changed nothing measurable: every signal is within its noise margin of the "
                          f"{reference}")
    return Decision(ok, reasons, candidate, champion, **kw)


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

@dataclass
class GateData:
    """What the gate measures every encoder on, all held out from training.

    ``target``: uint8 ``(N, C, H, W)`` target images of the val split (no training step reads it);
    ``target_labels``: their labels ``(N,)`` when every one has a label (val labels may serve a
    label-using rule; test labels never do), else None; ``source``: ``(memory images, memory labels,
    query images, query labels, num classes)`` with memory rows from the source train split and
    query rows from its val split, or None; ``split``: where the target images came from, as said in
    the decision (``val``, or ``train`` for a dataset ingested without a val split)."""

    target: Any
    target_labels: Any = None
    source: tuple | None = None
    split: str = "val"


def gate_data(target_uri: str, source_uri: str, max_images: int, seed: int) -> GateData:
    """The published target/source datasets → :class:`GateData` (val splits; see its doc)."""
    from uft.data.dataset import load_dataset

    tgt = load_dataset(target_uri)
    split = "val" if int((tgt.split == "val").sum()) >= 4 else "train"
    rows = tgt.subset(split)
    y = rows.labels.numpy()
    counts = np.bincount(y[y >= 0]) if (y >= 0).any() else np.zeros(0, int)
    counts = counts[counts > 0]
    # The val probe draws VAL_SHOTS per class and scores the rest: every class needs more rows than that.
    usable = split == "val" and bool((y >= 0).all()) and len(counts) >= 2 and int(counts.min()) > VAL_SHOTS
    labels = rows.labels if usable else None
    return GateData(rows.images, labels, _source_eval(source_uri, max_images, seed), split)


def _signals(encoder: torch.nn.Module, base: torch.nn.Module, data: GateData, seed: int, max_images: int) -> dict[str, Any]:
    from uft.evaluate.label_free import encoder_signals

    s = encoder_signals(encoder, data.target, base=base, source=data.source, target_labels=data.target_labels,
                        max_images=max_images, seed=seed)
    s["signals_split"] = data.split
    return s


def untrained_like(encoder_uri: str, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised encoder of the same architecture as the published ``encoder_uri``: the
    floor below which an encoder is degenerate (:func:`uft.evaluate.label_free.collapsed`)."""
    import torch

    from uft.models.artifact import load_encoder
    from uft.models.encoders import build_encoder

    spec = load_encoder(encoder_uri)[1]["spec"]
    torch.manual_seed(seed)
    return build_encoder(spec["name"], in_channels=spec["in_channels"], **spec.get("kwargs", {})).eval()


def _source_eval(source_uri: str, max_images: int, seed: int):
    """(memory images, labels, query images, labels, num classes) of the labelled source — memory from
    its train split, queries from its val split (held out from pretraining) — or None."""
    import torch

    from uft.data.stream import load_rows, split_rows
    from uft.store import read_manifest

    if not source_uri:
        return None
    # Labels and row ids from the shards' small columns; pixels only for the sampled rows (the
    # source may be far larger than memory).
    rows = split_rows(source_uri)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    (ytr, rtr), (yva, rva) = ((y[y >= 0], r[y >= 0]) for y, r in (rows.get("train", empty), rows.get("val", empty)))
    if len(ytr) < 2 or len(yva) < 1:
        return None
    g = np.random.default_rng(seed)
    i = np.sort(g.permutation(len(ytr))[: 2 * max_images])
    j = np.sort(g.permutation(len(yva))[: max_images])
    # load_rows returns rows in dataset order, as the sorted picks are
    return (load_rows(source_uri, rtr[i]), torch.from_numpy(ytr[i]), load_rows(source_uri, rva[j]),
            torch.from_numpy(yva[j]), len(read_manifest(source_uri)[0]["classes"]))


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
    def data(self) -> GateData:
        return gate_data(self.target_uri, self.source_uri, self.max_images, self.seed)

    def signals(self, encoder: torch.nn.Module) -> dict[str, Any]:
        return _signals(encoder, self.base, self.data, self.seed, self.max_images)


#: Accuracy of a two-sample classifier (old vs new target, base-encoder features) above which the
#: target counts as another domain: same-domain samples sit at 0.5 ± a few points; a new domain
#: near 1. Fixed before validation, not tuned.
DOMAIN_SHIFT_ACCURACY = 0.75


def domain_shift(base: torch.nn.Module, old_images, new_images, max_images: int = 500, seed: int = 0) -> float:
    """Held-out accuracy of a linear classifier telling ``old_images`` from ``new_images`` (uint8
    ``(N, C, H, W)`` each) by their ``base`` features, balanced classes, 2-fold → [0, 1]; 0.5 = the
    same distribution. Images of another size or channel count → 1.0 (another domain outright)."""
    from uft.evaluate.features import extract_features
    from uft.evaluate.linear import linear_probe_accuracy

    if tuple(old_images.shape[1:]) != tuple(new_images.shape[1:]):
        return 1.0
    g = np.random.default_rng(seed)
    n = min(len(old_images), len(new_images), max_images)
    if n < 8:
        return 0.5  # too few images to tell: no evidence of a shift
    a = extract_features(base, old_images[np.sort(g.permutation(len(old_images))[:n])]).numpy()
    b = extract_features(base, new_images[np.sort(g.permutation(len(new_images))[:n])]).numpy()
    x, y = np.concatenate([a, b]), np.repeat([0, 1], n)
    fold = g.permutation(2 * n) % 2
    return float(np.mean([linear_probe_accuracy(x[fold != k], y[fold != k], x[fold == k], y[fold == k])
                          for k in (0, 1)]))


def load_champion(name: str, version, client=None) -> torch.nn.Module:
    """The champion version's encoder as a module that :func:`uft.evaluate.features.extract_features`
    can run: the uft artifact it was registered from (tag ``uft.encoder_uri``) when it still verifies,
    else the registry's copy (``mlflow.pytorch.load_model``: a torch.export program for ``pt2``)."""
    import mlflow

    from uft.models.artifact import load_encoder

    uri = version.tags.get("uft.encoder_uri", "")
    if uri:
        try:
            return load_encoder(uri)[0]
        except (UftError, OSError, ValueError, KeyError):  # store pruned or moved: the registry's copy
            pass
    return _ExportedEncoder(mlflow.pytorch.load_model(f"models:/{name}/{version.version}"))


def _champion_shift(champ_v, target_sha: str, data: "_GateInputs") -> float | None:
    """:func:`domain_shift` between the champion's target (its version tag ``uft.target_uri``) and this
    run's, on their held-out images; None when it is the same target or the old one is not readable."""
    from uft.data.dataset import load_dataset

    old_uri = champ_v.tags.get("uft.target_uri", "")
    if not old_uri or champ_v.tags.get("uft.target_sha") == target_sha:
        return None
    try:
        old = load_dataset(old_uri)
    except (UftError, OSError, ValueError, KeyError):
        return None
    old_split = "val" if int((old.split == "val").sum()) >= 4 else "train"
    return domain_shift(data.base, old.subset(old_split).images, data.data.target, seed=data.seed)


class _ExportedEncoder:
    """A loaded model that may refuse ``.eval()``/``.train()`` (torch.export's module raises
    NotImplementedError): mode switches are no-ops (an exported graph is traced in eval mode)."""

    def __init__(self, module):
        self.module, self.training = module, False

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def to(self, *args, **kwargs):
        return self

    def __call__(self, x):
        return self.module(x)


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
    from uft.store import content_key, manifest_sha, step_store, publish, read_manifest

    if not registered_model.strip():
        raise UftError("registered_model is empty: pass a registry model name, e.g. uft-encoder")
    policy = GatePolicy(margin, retention_tolerance, probe_margin, noise=GatePolicy.noise)
    store = step_store(store_uri)
    h, _, c = read_manifest(target_uri)[0]["image_shape"]
    encoder_sha, target_sha = manifest_sha(encoder_uri), manifest_sha(target_uri)
    scope = {"base": manifest_sha(base_encoder_uri), "target": target_sha, "max_images": max_images, "seed": seed,
             "source": manifest_sha(source_uri) if source_uri else "", "signals": SIGNALS_VERSION}
    data = _GateInputs(encoder_uri, base_encoder_uri, target_uri, source_uri, max_images, seed)
    cand = _recorded_signals(store, scope, encoder_sha, lambda: data.signals(data.encoder))
    base_sig = _recorded_signals(store, scope, scope["base"], lambda: data.signals(data.base))
    floor = floor_of([_recorded_signals(store, scope, f"untrained:{i}:" + scope["base"],
                                        lambda i=i: data.signals(untrained_like(base_encoder_uri, seed=i)))
                      for i in range(FLOOR_SEEDS)])
    key = content_key("promote", run_id, encoder_sha, registered_model)  # where this run key's decision is published
    params = {"encoder_sha": encoder_sha, "target_sha": target_sha, "registered_model": registered_model,
              "margin": margin, "retention_tolerance": retention_tolerance, "probe_margin": probe_margin}
    with tracking.step_run(experiment, run_id, "promote", params) as run:
        if run is None:
            decision = decide(cand, base_sig, policy, force=force, floor=floor, reference="base encoder")
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
                                    shift=recorded.get("domain_shift"))
                alias = recorded["decision"]
            elif is_champion and not force:
                # A retry after the alias was set, or another run with the same encoder: nothing to decide.
                decision = Decision(False, [f"unchanged: this encoder is already champion version {mine.version}"],
                                    cand, None, version=str(mine.version), policy=asdict(policy))
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
                decision = decide(cand, ref, policy, force=force, floor=floor, reference=ref_name, shift=shift)
                decision.shift = shift
                version = register(registered_model, data.encoder, encoder_sha, image_size=h, channels=c,
                                   client=client, serialization_format=model_format,
                                   tags={"uft.pipeline_run_id": run_id, "uft.encoder_uri": encoder_uri,
                                         "uft.target_sha": target_sha, "uft.target_uri": target_uri})
                apply(registered_model, version.version, decision, client)
                alias = decision.alias
            mlflow.log_metrics({f"signal_{k}": float(v) for k, v in cand.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))})
            mlflow.set_tags({"uft.decision": alias, "uft.model_version": str(decision.version),
                             "uft.registered_model": registered_model, "uft.reasons": " | ".join(decision.reasons)[:4900]})
        metrics = {"decision": alias, "promoted": decision.promote, "version": decision.version,
                   "registered_model": registered_model, "reasons": decision.reasons, "signals": cand,
                   "base_signals": base_sig, "champion_signals": decision.champion, "reference": decision.reference,
                   "floor_signals": floor, "previous_champion": decision.previous_champion,
                   "domain_shift": decision.shift,
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


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# --- the report's section and `uft promote --explain` -------------------------------------------

READINGS = {
    "gate_score": "the gate's score: view retrieval × rank fraction (higher = better)",
    "val_probe": "5-shot linear probe within the target val split (only when val labels exist)",
    "source_retention": "k-NN accuracy on held-out source images (source val split; forgetting check)",
    "view_retrieval": "share of augmented target images matched to their own other view",
    "effective_rank": "RankMe: how many feature directions are in use (1 = collapsed)",
    "rank_fraction": "effective rank / feature dimension",
    "alignment": "distance between two views of an image (lower = more invariant)",
    "uniformity": "spread of target features on the sphere (lower = more spread)",
    "snd": "soft neighbourhood density (high also for a collapsed encoder: read with the rank)",
    "neighbourhood_agreement": "overlap of k-NN neighbourhoods with the base encoder (1 = unchanged)",
}
#: signal → (policy field, how its change is read, what the rule does with it)
RULED = {"gate_score": ("margin", "relative", "promote needs +margin (without val labels); hold below −margin"),
         "val_probe": ("probe_margin", "absolute", "promote needs +margin (with val labels)"),
         "source_retention": ("retention_tolerance", "absolute", "hold when it drops by more")}


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)) else "–"


def explain_lines(m: dict[str, Any]) -> list[str]:
    """Markdown lines saying why: each signal for candidate, reference and untrained floor, the change,
    the margin and the noise it came from, the decision and its reasons (the promote step's metrics)."""
    cand, ref, floor = m.get("signals") or {}, m.get("champion_signals") or {}, m.get("floor_signals") or {}
    policy = m.get("policy") or {}
    refname = m.get("reference") or "reference"
    head = f"**Decision: {m.get('decision')}**" + (f" — `{m.get('registered_model')}` version {m['version']}"
                                                    if m.get("version") else "")
    where = cand.get("signals_split", "val")
    lines = [head, "", f"Compared with: **{refname}**, on the same held-out images (target {where} split, "
             f"{cand.get('n_views', '?')} images; source val split for retention).", ""]
    header = ["signal", "candidate", refname, "untrained floor", "change", "margin", "rule / reading"]
    # numbers right, text left (the report renders the alignment row)
    lines += ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 2) + ":---|"]
    for k in READINGS:
        if not any(_has(d, k) for d in (cand, ref, floor)):
            continue
        change, margin, rule = "", "", f"shown only: {READINGS[k]}"
        if k in RULED and _has(cand, k) and _has(ref, k):
            field_, how, rule = RULED[k]
            if how == "relative":
                change = f"{cand[k] / ref[k] - 1:+.1%}" if ref[k] else "–"
                margin = f"±{policy.get(field_, float('nan')):.1%}"
            else:
                change, margin = f"{cand[k] - ref[k]:+.4f}", f"{policy.get(field_, float('nan')):.4f}"
        lines.append("| " + " | ".join([k, _fmt(cand.get(k)), _fmt(ref.get(k)), _fmt(floor.get(k)), change, margin,
                                        rule]) + " |")
    if isinstance(m.get("domain_shift"), (int, float)):
        lines += ["", f"Domain check: a classifier tells the champion's target from this one with accuracy "
                      f"{m['domain_shift']:.2f} (another domain at ≥ {DOMAIN_SHIFT_ACCURACY}; same domain ≈ 0.5)."]
    lines += ["", f"Margins from measured noise: {policy.get('noise') or 'not recorded'}", "", "Reasons:"]
    lines += [f"- {r}" for r in m.get("reasons", [])] + [""]
    return lines


def report_section(m: dict[str, Any]) -> list[str]:
    """Markdown lines for the run report from the promote step's metrics."""
    return ["## Promotion gate", ""] + explain_lines(m)


def explain(pipeline_run_id: str, *, experiment: str = "uft") -> list[str]:
    """The explanation (:func:`explain_lines`) of the decision a pipeline run's promote step made."""
    from uft import tracking
    from uft.store import read_manifest

    if not tracking.enabled():
        raise UftError("MLflow tracking is off: set MLFLOW_TRACKING_URI to the registry's tracking server")
    import mlflow

    run = tracking.find_run(tracking.experiment_id(experiment), pipeline_run_id, "promote")
    if run is None or "uft.promote_metrics_uri" not in run.data.tags:
        raise UftError(f"run {pipeline_run_id!r} has no recorded promotion decision in experiment {experiment!r}: "
                       "pass the run id `uft run` printed (and --experiment)")
    try:
        metrics = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/promotion.json")
    except Exception:  # recorded before the decision was logged with the run: the store's copy
        metrics = read_manifest(run.data.tags["uft.promote_metrics_uri"])[0]["metrics"]
    return explain_lines(metrics)


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
    decision = decide(mine, champ, policy, force=force,
                      reference=f"champion version {champ_v.version}" if champ_v is not None else "champion")
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
