"""A cheap fingerprint of a dataset source: what changes when its data change, read without decoding.

It makes ``ingest`` cacheable (by KFP and by the store cache): the fingerprint step runs every time
(a listing, no image is opened), ingest takes its result as an input, so unchanged data give the same
ingest cache key → the same dataset artifact → cache hits downstream; new or changed files give a new
fingerprint → ingest runs again.

* bundled name (``mnist``): the name alone (bundled data change only with a new install or image,
  and the image is part of KFP's cache key; the store cache keys on ``CODE_VERSION``);
* ``s3://bucket/prefix``: ``(key, size, ETag)`` of every object (the LIST call alone; ETags change
  whenever the bytes change);
* a local directory: ``(relative path, size, mtime_ns)`` of every non-hidden file, as make/rsync
  judge freshness (a rewrite that keeps size *and* mtime is missed; ``touch`` the tree to force one);
* a manifest URI: its content hash (one small object).

The spec string itself (with any ``#...`` suffix) is always part of the fingerprint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from uft.errors import UftError
from uft.store import canonical_json, manifest_sha, open_store, sha256_bytes


def dir_entries(root: Path) -> list[tuple[str, int, int]]:
    """(path relative to ``root``, size, mtime_ns) of every non-hidden file below ``root``, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.startswith("."):
                continue
            p = Path(dirpath) / f
            st = p.stat()
            out.append((str(p.relative_to(root)), int(st.st_size), int(st.st_mtime_ns)))
    return sorted(out)


def source_fingerprint(spec: str) -> str:
    """sha256 hex of what identifies the data behind ``spec`` now (see the module doc). No decoding.

    Raises :class:`UftError` for an empty spec, a missing directory or an empty prefix.
    """
    from uft.data.sources import BUNDLED

    if not spec.strip():
        raise UftError("dataset spec is empty: pass a bundled name, an ImageFolder directory, an s3://bucket/prefix "
                       "or a manifest URI")
    if spec in BUNDLED:
        entries: Any = ["bundled", spec]  # immutable: installed with the package/image, whose version the KFP key holds
    elif spec.endswith("manifest.json"):
        entries = ["manifest", manifest_sha(spec)]
    elif spec.startswith("s3://"):
        store = open_store(spec.split("#")[0].rstrip("/"))
        listing = store.entries()  # type: ignore[union-attr]
        if not listing:
            raise UftError(f"dataset {spec} holds no objects: check the prefix (s3://bucket/path/to/images)")
        entries = ["s3", sorted(listing)]
    else:
        root = Path(spec.split("#")[0].removeprefix("file://"))
        if not root.is_dir():
            raise UftError(f"dataset {spec!r} is neither bundled nor an existing directory: pass a bundled name, "
                           "an ImageFolder directory, an s3://bucket/prefix or a manifest URI")
        listing_d = dir_entries(root)
        if not listing_d:
            raise UftError(f"dataset directory {spec} holds no files: put the images in class subfolders")
        entries = ["dir", listing_d]
    return sha256_bytes(canonical_json([spec, entries]))
