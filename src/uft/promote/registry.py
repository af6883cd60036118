"""The MLflow Model Registry side of promotion: versions keyed by the encoder's content hash,
aliases, the signals recorded on a version, and loading the champion back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from uft.errors import UftError
from uft.promote.policy import CHALLENGER, CHAMPION, SIGNAL_TAG, TAG_KEY, Decision, decision_tags

if TYPE_CHECKING:
    import torch
# torch is imported where a tensor is made: `uft run` reads the promotion verdict from here.

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
            "normalisation": "inside the encoder (its own statistics); feed raw pixels / 255",
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
        # The architecture by name (timm:<name>, torchvision:<name>, or uft's module), so a consumer
        # knows what it loads without uft; uft's own encoders name their class.
        meta = {"preprocessing": preprocessing(image_size, channels), "serialization": fmt + note,
                "feature_dim": int(getattr(encoder, "feature_dim", 0)),
                "architecture": str(getattr(encoder, "arch", "") or type(encoder).__name__)}
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
    tags.update(decision_tags(decision))  # the gain's interval and the lineage check, with the decision
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
