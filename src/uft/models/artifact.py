"""Encoders as published artifacts: ``encoder.pt`` (spec + state dict) under a manifest."""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from uft.errors import UftError
from uft.models.encoders import build_encoder
from uft.store import Store, publish, read_manifest, read_verified


def encoder_bytes(encoder: nn.Module, spec: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save({"spec": spec, "state_dict": encoder.state_dict()}, buf)
    return buf.getvalue()


def publish_encoder(store: Store, prefix: str, encoder: nn.Module, spec: dict[str, Any], info: dict[str, Any]) -> str:
    """Publish an encoder → manifest URI. ``spec`` = {"name", "in_channels", "kwargs"} rebuilds it."""
    return publish(store, prefix, {"encoder.pt": encoder_bytes(encoder, spec)},
                   {"kind": "encoder", "spec": spec, "info": info})


def load_encoder(uri: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a published encoder (verified against its manifest) → (module in eval mode, manifest)."""
    manifest, store, prefix = read_manifest(uri)
    if manifest.get("kind") != "encoder":
        raise UftError(f"{uri} is not an encoder manifest (kind={manifest.get('kind')!r}): pass the output of pretrain/finetune")
    blob = torch.load(io.BytesIO(read_verified(store, prefix, manifest, "encoder.pt", uri)), map_location="cpu", weights_only=True)
    spec = blob["spec"]
    enc = build_encoder(spec["name"], in_channels=spec["in_channels"], **spec.get("kwargs", {}))
    enc.load_state_dict(blob["state_dict"])
    return enc.eval(), manifest


def state_fingerprint(module: nn.Module) -> str:
    """sha256 over all parameters and buffers: proves a 'frozen' module really did not change."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
