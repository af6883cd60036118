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


# --- what an encoder trained on, and whether a scored row was in it ------------------------------
# Every registered version records the datasets and the split rule it trained on (:func:`training_record`,
# the version tag ``uft.lineage``); the promotion gate asks :func:`trained_keys` which of the rows it
# is about to score each compared encoder trained on, and scores only the others.

LINEAGE_TAG = "uft.lineage"
#: What a manifest without ``split_rule`` used: the old per-run shuffle of positions (seeded).
LEGACY_RULE = "seeded-positions/0"


def _space(manifest: dict[str, Any]) -> list[Any]:
    """The content-key space of a dataset: keys hash published pixels, so they compare only between
    datasets of the same image shape and framing."""
    return [*manifest.get("image_shape", []), str(manifest.get("framing", "keep"))]


def training_record(target_uri: str, source_uri: str = "") -> dict[str, Any]:
    """What a finetuned encoder trained on → a JSON-able record (the version tag ``uft.lineage``):
    the target's and the source's manifest URI and hash, their split rule and key space. Training
    reads the ``train`` split of both (finetuning on the target, replay and pretraining on the source)."""
    out: dict[str, Any] = {"splits": ["train"]}
    for role, uri in (("target", target_uri), ("source", source_uri)):
        if not uri:
            continue
        manifest = read_manifest(uri)[0]
        out[role] = {"uri": uri, "sha": manifest_sha(uri), "split_rule": manifest.get("split_rule", LEGACY_RULE),
                     "space": _space(manifest), "train_rows": int(manifest.get("splits", {}).get("train", 0))}
    return out


def record_from_tags(tags: dict[str, str]) -> dict[str, Any] | None:
    """A registered version's training record: its ``uft.lineage`` tag, or for a version registered
    before lineage was recorded its target (tags ``uft.target_uri``/``uft.target_sha``; source
    unknown); None when neither is there."""
    raw = tags.get(LINEAGE_TAG)
    if raw:
        try:
            return json.loads(raw)
        except ValueError:
            return None
    if tags.get("uft.target_uri"):
        return {"splits": ["train"], "legacy": True,
                "target": {"uri": tags["uft.target_uri"], "sha": tags.get("uft.target_sha", "")}}
    return None


def dataset_keys(uri: str, splits: tuple[str, ...] = ("train",)) -> set[bytes]:
    """Content keys (:func:`uft.data.ingest.content_keys`, 16 bytes each) of a published dataset's
    rows in ``splits``, computed from their pixels, one shard at a time."""
    import io

    import numpy as np
    import pyarrow.parquet as pq

    from uft.data.ingest import content_keys
    from uft.store import read_verified

    manifest, store, prefix = read_manifest(uri)
    shape = tuple(manifest["image_shape"])
    out: set[bytes] = set()
    for name in sorted(manifest["files"]):
        t = pq.read_table(io.BytesIO(read_verified(store, prefix, manifest, name, uri)), columns=["split", "image"])
        sp = t.column("split").to_numpy(zero_copy_only=False).astype(str)
        keep = np.flatnonzero(np.isin(sp, splits))
        if not len(keep):
            continue
        images = t.column("image").take(keep).to_pylist()
        rows = np.frombuffer(b"".join(images), np.uint8).reshape(len(keep), *shape)
        out.update(k.tobytes() for k in content_keys(rows))
    return out


def trained_keys(record: dict[str, Any] | None, role: str, scored_uri: str) -> tuple[set[bytes] | None, str]:
    """The content keys an encoder trained on in its ``role`` ("target"/"source") dataset, as far as
    they can meet rows of ``scored_uri`` → (keys or None, how it was established).

    None means it cannot be told (no record, another key space, data no longer readable). An empty
    set is proven: the same dataset under the content rule, whose val rows share no content with its
    train rows (identical pixels always fall in the same split)."""
    from uft.data.ingest import SPLIT_RULE

    part = (record or {}).get(role)
    if part == "none":
        return set(), f"it never trained on {role} data"
    if not part or not part.get("uri"):
        return None, f"no record of the {role} data it trained on"
    scored = read_manifest(scored_uri)[0]
    if part.get("sha") == manifest_sha(scored_uri) and scored.get("split_rule") == SPLIT_RULE:
        return set(), f"the same {role} dataset, split by content ({SPLIT_RULE}): no val row is a train row"
    try:
        manifest = read_manifest(part["uri"])[0]
        if part.get("sha") and manifest_sha(part["uri"]) != part["sha"]:
            return None, f"its {role} dataset {part['uri']} changed since it trained"
    except (UftError, OSError, ValueError, KeyError):
        return None, f"its {role} dataset {part['uri']} is no longer readable"
    if _space(manifest) != _space(scored):
        return None, (f"it trained on {role} images of another size or framing ({_space(manifest)} vs "
                      f"{_space(scored)}): content keys do not compare")
    keys = dataset_keys(part["uri"])
    return keys, f"{len(keys)} {role} train rows of {part['uri'].rsplit('/', 2)[-2][:12]} compared by content"
