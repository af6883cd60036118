"""Encoders as published artifacts: ``encoder.pt`` (spec + state dict) under a manifest, and
optionally ``ssl_head.pt``: the SSL method's other parts (projector, predictor, momentum encoder,
queue) so finetuning with the same objective continues from them instead of a fresh head."""

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


def publish_encoder(store: Store, prefix: str, encoder: nn.Module, spec: dict[str, Any], info: dict[str, Any],
                    ssl_head: tuple[str, dict[str, torch.Tensor]] | None = None) -> str:
    """Publish an encoder → manifest URI. ``spec`` = {"name", "in_channels", "kwargs"} rebuilds it.

    ``ssl_head`` = (method name, state dict of the method without the encoder) is stored as
    ``ssl_head.pt`` and named in the manifest (``ssl_head``), so a finetune with the same method can
    continue from it (:func:`load_ssl_head`). Bytes are deterministic for the same tensors."""
    files = {"encoder.pt": encoder_bytes(encoder, spec)}
    manifest: dict[str, Any] = {"kind": "encoder", "spec": spec, "info": info}
    if ssl_head is not None:
        name, state = ssl_head
        buf = io.BytesIO()
        torch.save({"method": name, "state_dict": {k: v.detach().cpu() for k, v in state.items()}}, buf)
        files["ssl_head.pt"] = buf.getvalue()
        manifest["ssl_head"] = {"method": name, "file": "ssl_head.pt"}
    return publish(store, prefix, files, manifest)


def ssl_head_state(method: nn.Module) -> dict[str, torch.Tensor]:
    """A method's state dict without its online encoder (``encoder.*``): what :func:`publish_encoder`
    stores as the SSL head (projector, predictor, momentum/target branches, queue)."""
    return {k: v for k, v in method.state_dict().items() if not k.startswith("encoder.")}


def load_ssl_head(uri: str) -> tuple[str, dict[str, torch.Tensor]] | None:
    """The SSL head published with the encoder at ``uri`` → (method name, state dict), or None when
    the encoder was published without one (e.g. an imported ``pretrained_encoder``)."""
    manifest, store, prefix = read_manifest(uri)
    head = manifest.get("ssl_head")
    if not head:
        return None
    blob = torch.load(io.BytesIO(read_verified(store, prefix, manifest, head["file"], uri)), map_location="cpu",
                      weights_only=True)
    return blob["method"], blob["state_dict"]


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
