"""Weights in: a checkpoint you already have → the encoder uft trains (``encoder_weights``).

Sources (:func:`read_checkpoint`):

- a file, local or ``s3://bucket/key``: ``.safetensors`` (safetensors), ``.pth``/``.pt``/``.bin``
  (``torch.load(weights_only=True)``: a state dict, no pickled code);
- a registered version, ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: the uft encoder
  artifact it was registered from (its version tag ``uft.encoder_uri``), so the registry's champion
  can seed the next finetune.

A state dict is accepted bare or wrapped (``{"state_dict": …}``, ``{"model": …}``,
``{"module": …}``, nested), with key prefixes ``module.`` (DDP), ``model.``, ``_orig_mod.``
(torch.compile) stripped where that makes it fit, and the classifier's keys (``fc.*``,
``classifier.N.*``, timm's ``pretrained_cfg["classifier"]``) ignored. Anything else that does not
fit — missing or unexpected keys, shape mismatches, another architecture — is one line naming the
file and the first offending keys (:func:`fit_state_dict`), raised by preflight before any data
is read.

Nothing here imports torch at module import: the config validates ``encoder_weights`` forms
with :func:`weights_form_problem` alone.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from uft.choices import WEIGHT_SUFFIXES
from uft.errors import UftError

if TYPE_CHECKING:
    import torch
    from torch import nn

_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
#: Dict keys a training script wraps its state dict in (checked in this order, nested ones too).
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
#: Key prefixes that wrappers add (DataParallel/DDP, uft's library wrapper or Lightning, torch.compile).
_PREFIXES = ("module.", "model.", "_orig_mod.")
_SHOWN = 3  # offending keys named in an error


@dataclass
class Checkpoint:
    """A read checkpoint: tensors by name, where it came from, and what it says about itself."""

    state: dict[str, Any]
    source: str  # as the user wrote it
    sha256: str  # of the bytes read (the lineage's identity of the weights)
    arch: str | None = None  # architecture recorded with it (a uft artifact), if any
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the registered version it resolved to


def weights_form_problem(spec: str) -> str | None:
    """Why ``spec`` is not a form ``encoder_weights`` accepts (``None`` when it is); no I/O."""
    if spec.startswith("models:/"):
        return None if _REGISTERED.match(spec) else (f"{spec!r} is not a registered model URI: write "
                                                     "models:/<name>@<alias> or models:/<name>/<version>")
    if "://" in spec and not spec.startswith(("s3://", "file://")):
        return f"{spec!r} has an unsupported scheme: pass a local path, s3://bucket/key or models:/<name>@<alias>"
    if not spec.lower().endswith(WEIGHT_SUFFIXES):
        return f"{spec!r} is not a checkpoint file: use one ending in {', '.join(WEIGHT_SUFFIXES)}"
    return None


def is_local(spec: str) -> bool:
    """A local file (checked by preflight before any service starts); ``s3://``/``models:/`` are remote."""
    return not spec.startswith(("s3://", "models:/"))


def _read_bytes(spec: str) -> bytes:
    if spec.startswith("s3://"):
        from uft.store import S3Store

        bucket, _, key = spec[5:].partition("/")
        if not bucket or not key:
            raise UftError(f"encoder_weights {spec} names no object: use s3://bucket/path/to/weights.pth")
        # Bounded like preflight's other remote calls: an answer in seconds, not minutes of retries.
        return S3Store(bucket, "", attempts=2, backoff=0.2, timeout=3.0).get(key)
    path = Path(spec.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise UftError(f"encoder_weights {spec} does not exist: pass the path of a {'/'.join(WEIGHT_SUFFIXES)} file")
    return path.read_bytes()


def _parse(data: bytes, spec: str) -> Any:
    import torch

    if spec.lower().endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return load(data)
        except (SafetensorError, ValueError, OSError) as e:
            raise UftError(f"encoder_weights {spec} is not a readable safetensors file ({e}): re-save it with "
                           "safetensors.torch.save_file") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling error names the class it refused; keep its first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UftError(f"encoder_weights {spec} is not a loadable state dict ({first[:160]}): save "
                       "torch.save(model.state_dict(), path) or a .safetensors file, not a pickled model") from None


def _registered(spec: str) -> Checkpoint:
    """``models:/name@alias`` / ``models:/name/version`` → the uft artifact behind that version."""
    from uft import tracking
    from uft.store import read_manifest, read_verified

    m = _REGISTERED.match(spec)
    if m is None:
        raise UftError(weights_form_problem(spec) or spec)
    name, alias, version = m["name"], m["alias"], m["version"]
    client = tracking._client()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception as e:  # MLflow says RESOURCE_DOES_NOT_EXIST in several ways
        raise UftError(f"encoder_weights {spec}: no such registered version in MLflow ({type(e).__name__}): "
                       f"check the name and alias/version (`uft promote --show` lists them)") from None
    uri = mv.tags.get("uft.encoder_uri", "")
    if not uri:
        raise UftError(f"encoder_weights {spec} (version {mv.version}) was not registered by uft (no uft.encoder_uri "
                       "tag): export its state dict to a file and pass that instead")
    manifest, store, prefix = read_manifest(uri)
    data = read_verified(store, prefix, manifest, "encoder.pt", uri)
    blob = _parse(data, "encoder.pt")
    return Checkpoint(blob, spec, hashlib.sha256(data).hexdigest(), arch=(blob.get("spec") or {}).get("name"),
                      info={"registered_model": name, "registered_version": str(mv.version), "encoder_uri": uri})


def weights_identity(spec: str) -> str:
    """What ``spec`` holds now, as a string that changes when its content does (a task cache key):
    a file's sha256; for ``models:/`` the version the alias points at and its artifact's hash."""
    import hashlib

    if spec.startswith("models:/"):
        ck = _registered(spec)
        return f"{ck.info['registered_version']}:{ck.sha256}"
    return hashlib.sha256(_read_bytes(spec)).hexdigest()


def read_checkpoint(spec: str) -> Checkpoint:
    """Read ``spec`` (path, ``s3://``, ``models:/``) → :class:`Checkpoint` with the state dict unwrapped."""
    if problem := weights_form_problem(spec):
        raise UftError(f"encoder_weights: {problem}")
    if spec.startswith("models:/"):
        ck = _registered(spec)
    else:
        data = _read_bytes(spec)
        blob = _parse(data, spec)
        arch = (blob.get("spec") or {}).get("name") if isinstance(blob, Mapping) and isinstance(blob.get("spec"), Mapping) else None
        ck = Checkpoint(blob, spec, hashlib.sha256(data).hexdigest(), arch=arch)
    ck.state = _unwrap(ck.state, spec)
    return ck


def _unwrap(obj: Any, spec: str) -> dict[str, Any]:
    import torch

    for _ in range(4):  # {"state_dict": {"model": {...}}} and the like
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise UftError(f"encoder_weights {spec} holds a {type(obj).__name__}, not a state dict: save "
                       "torch.save(model.state_dict(), path)")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UftError(f"encoder_weights {spec} has no tensors (keys {list(obj)[:_SHOWN]}): save "
                       "torch.save(model.state_dict(), path)")
    return tensors


def _strip_prefixes(state: dict[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """Drop wrapper prefixes every key shares, when that makes more keys match ``own``."""
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if state and all(k.startswith(p) for k in state):
                stripped = {k[len(p):]: v for k, v in state.items()}
                if len(own.keys() & stripped.keys()) >= len(own.keys() & state.keys()):
                    state, changed = stripped, True
    return state


def _keys(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (f", … ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def fit_state_dict(encoder: nn.Module, ck: Checkpoint, arch: str) -> dict[str, Any]:
    """Load ``ck`` into ``encoder`` strictly (after unwrapping, prefix stripping and dropping the
    classifier) → what was ignored. Raises one-line :class:`UftError` naming the file and the first
    offending keys on anything else."""
    if ck.arch and ck.arch != arch:
        raise UftError(f"encoder_weights {ck.source} holds a {ck.arch} encoder, not {arch}: pass "
                       f"-p encoder={ck.arch} (or a checkpoint of {arch})")
    # A library encoder's weights are the library model's own (a torchvision/timm state dict).
    target = encoder.model if hasattr(encoder, "head_keys") else encoder
    own = target.state_dict()
    state = _strip_prefixes(dict(ck.state), own)
    heads = set(getattr(encoder, "head_keys", ()))
    ignored = sorted(k for k in state if k in heads and k not in own)
    state = {k: v for k, v in state.items() if k not in ignored}
    for k in own:  # old checkpoints predate BatchNorm's step counter: nothing to load there
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        matched = len(own.keys() & state.keys())
        parts = []
        if matched < len(own) / 2:  # most names differ: another architecture, not a stray key
            parts.append(f"only {matched} of {arch}'s {len(own)} tensors are in it (another architecture?)")
        if missing:
            parts.append(f"missing keys {_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_keys(unexpected)}")
        if shapes:
            parts.append("shape mismatch " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:_SHOWN])
                + (f", … ({len(shapes)} in all)" if len(shapes) > _SHOWN else ""))
        raise UftError(f"encoder_weights {ck.source} does not fit {arch}: {'; '.join(parts)} — pass a checkpoint of "
                       f"this architecture or the -p encoder it was saved from")
    target.load_state_dict(state, strict=True)
    return {"ignored_keys": ignored}


def import_encoder(spec: str, encoder: str, in_channels: int, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``encoder`` for ``in_channels``-channel images and load ``spec`` into it →
    (module in eval mode, lineage info: source, sha256, ignored keys, registered version)."""
    from uft.models.encoders import build_encoder

    ck = read_checkpoint(spec)
    enc = build_encoder(encoder, in_channels=in_channels, **kwargs)
    fitted = fit_state_dict(enc, ck, encoder)
    info = {"weights": spec, "weights_sha256": ck.sha256, **ck.info, **fitted}
    return enc.eval(), info
