"""Typed pipeline artifacts as pointers to content-addressed manifests (no kfp here).

A producing step publishes its output to the store as usual (``<store>/datasets/<hash>/manifest.json``)
and also emits a small KFP artifact (``dsl.Dataset`` / ``dsl.Model``): KFP stores its file under the
pipeline root, so the artifact's own URI cannot be the manifest (the v2 launcher uploads every output
artifact to ``<pipeline_root>/<run>/<task>/...``). The artifact therefore *points*: its file is a JSON
pointer and its metadata carry ``manifest_uri`` and ``content_hash`` (sha256 of the manifest bytes,
:func:`uft.store.manifest_sha`), plus a few figures the KFP UI shows (rows, classes, encoder name).
A consuming step reads the manifest URI back from the artifact and checks the hash still matches,
so a stale pointer (a manifest rewritten or deleted since the producer ran) fails loudly.

Components pass ``artifact.metadata`` and ``artifact.path``; this module never imports kfp.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from uft.errors import UftError
from uft.store import manifest_sha, read_manifest

POINTER_FORMAT = "uft.pointer/1"


def describe(manifest_uri: str, content_hash: str = "") -> dict[str, Any]:
    """Artifact metadata for a published manifest: ``manifest_uri``, ``content_hash`` and summary figures.

    ``content_hash``: the hash the producing step recorded (else it is computed from the manifest).
    Values are flat strings/numbers so every KFP backend stores them as artifact properties.
    """
    manifest, _, _ = read_manifest(manifest_uri)
    meta: dict[str, Any] = {"format": POINTER_FORMAT, "manifest_uri": manifest_uri,
                            "content_hash": content_hash or manifest_sha(manifest_uri), "kind": manifest.get("kind", "")}
    kind = meta["kind"]
    if kind == "dataset":
        meta.update(num_rows=int(manifest["num_rows"]), num_classes=len(manifest.get("classes", [])),
                    image_shape="x".join(str(d) for d in manifest.get("image_shape", [])), name=str(manifest.get("name", "")))
        meta.update({f"rows_{split}": int(n) for split, n in manifest.get("splits", {}).items()})
    elif kind == "encoder":
        spec = manifest.get("spec", {})
        meta.update(encoder=str(spec.get("name", "")), in_channels=int(spec.get("in_channels", 0)),
                    method=str(manifest.get("info", {}).get("method", "")))
    elif kind == "replay":
        meta.update(rule=str(manifest.get("rule", "")), size=int(manifest.get("size", 0)))
    elif kind == "mix_plan":
        meta.update({f"mix_{k}": v for k, v in manifest.get("plan", {}).items() if isinstance(v, (str, int, float))})
    return meta


def write_pointer(path: str | Path, metadata: dict[str, Any]) -> None:
    """Write the pointer file a KFP output artifact carries (at ``artifact.path``): the metadata as JSON."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(metadata, sort_keys=True, indent=1))


def resolve(metadata: dict[str, Any] | None, path: str | Path | None, *, name: str) -> tuple[str, str]:
    """An input artifact → (manifest URI, content hash), checked against the manifest as it is now.

    ``metadata``/``path``: the artifact's ``.metadata`` and ``.path``; metadata win (KFP hands them to
    consumers in every runner), the pointer file is the fallback (e.g. metadata lost by a re-import).
    ``name``: the input's name, for the error message.
    """
    meta = dict(metadata or {})
    if "manifest_uri" not in meta and path and Path(path).is_file():
        try:
            meta = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            meta = {}
    uri, recorded = str(meta.get("manifest_uri", "")), str(meta.get("content_hash", ""))
    if not uri:
        raise UftError(f"input artifact {name} carries no manifest_uri (metadata or pointer file at {path}): "
                       "connect it to a uft step's output artifact")
    now = manifest_sha(uri)
    if recorded and now != recorded:
        raise UftError(f"input artifact {name} points to {uri}, whose content hash is now {now[:12]}, not the "
                       f"recorded {recorded[:12]}: rerun the producing step with caching off")
    return uri, now


def emit(path: str | Path, metadata: dict[str, Any], manifest_uri: str, content_hash: str = "") -> dict[str, Any]:
    """Fill an output artifact: ``metadata`` (the artifact's ``.metadata``, updated in place) and the
    pointer file at ``path`` (its ``.path``) both name the manifest and its hash. Returns the metadata."""
    metadata.update(describe(manifest_uri, content_hash))
    write_pointer(path, metadata)
    return metadata
