"""Content-addressed step outputs: what lets a rerun with the same inputs skip the work.

A step's cache key hashes its inputs' content hashes, its config and :data:`CODE_VERSION`; its
outputs are recorded under ``cache/<step>/<key>.json`` *after* they are published, and a record is
trusted only while every manifest it names still verifies.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from uft.store import Store, canonical_json, content_key, manifests_intact

log = logging.getLogger("uft")

CODE_VERSION = "3"  # bump when a step's semantics change, to invalidate cached outputs (2: SSL head published/continued,
# 3: training streams its data shard by shard: epochs of a seeded shard order instead of per-step draws)


def cached(store: Store, step: str, key_parts: dict[str, Any], compute: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Return the recorded outputs of ``step`` for these inputs, or compute and record them."""
    key = content_key(step, CODE_VERSION, key_parts)
    record = f"cache/{step}/{key}.json"
    if store.exists(record):
        try:
            out = json.loads(store.get(record))
        except ValueError:  # an unreadable record: compute again and rewrite it
            out = None
        # Trusted only if every output manifest still verifies: "rerun the step" then really repairs
        # a deleted or corrupt shard instead of hitting the cache.
        if out is not None and manifests_intact(out):
            log.info("%s: cache hit %s", step, key)
            return {**out, "cached": True}
    out = compute(key)
    store.put(record, canonical_json(out))
    return {**out, "cached": False}
