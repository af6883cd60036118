"""Object storage: S3 (boto3) or a local directory, behind one small interface.

URIs: ``s3://bucket/prefix`` or a local path (``file:///abs`` or a plain path). The S3 endpoint and
credentials come from the environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``) — never from parameters, so they never reach logs or pipeline specs.

Publication rule (DESIGN.md): write data files first and the manifest last; readers trust only a
manifest whose files all exist with the recorded sha256 (see :func:`verify_manifest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from uft.errors import TransientError, UftError

T = TypeVar("T")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace): the basis of content hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts: the cache key of a step's inputs."""
    return sha256_bytes(canonical_json(list(parts)))[:20]


class Store(Protocol):
    uri: str

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def url(self, key: str) -> str: ...


@dataclass
class LocalStore:
    """A directory acting as a bucket; writes are atomic (temp file + rename)."""

    root: Path

    @property
    def uri(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise UftError(f"{self.url(key)} does not exist: check the URI or rerun the step that writes it")
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root
        if not base.exists():
            return []
        keys = [str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")]
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def url(self, key: str) -> str:
        return str(self._path(key))


class S3Store:
    """An S3 bucket prefix. Transient failures are retried with backoff, then a one-line error."""

    def __init__(self, bucket: str, prefix: str = "", *, attempts: int | None = None, backoff: float | None = None,
                 timeout: float | None = None, create_bucket: bool = False):
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # Bounds of the retry loop: UFT_S3_ATTEMPTS tries, sleeping UFT_S3_BACKOFF s doubling up to 8 s
        # between them, each call waiting at most UFT_S3_TIMEOUT s for an answer.
        self.attempts = max(1, attempts if attempts is not None else _env_number("UFT_S3_ATTEMPTS", 5, int))
        self.backoff = backoff if backoff is not None else _env_number("UFT_S3_BACKOFF", 0.5, float)
        timeout = timeout if timeout is not None else _env_number("UFT_S3_TIMEOUT", 30.0, float)
        # botocore does not retry on its own: the outer loop owns the attempts, backoff and final message.
        cfg = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=min(3.0, timeout),
                     read_timeout=timeout)
        # A fresh session per store: boto3's default session caches credentials, which would hide a rotated key.
        self.client = s3_session().client("s3", config=cfg, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        # Opened by listing one key under the prefix, not by HeadBucket: HeadBucket is a bucket-wide
        # check that a least-privilege identity cannot pass. SeaweedFS authorises it as `Read:<bucket>`
        # with no key, which a prefix grant `Read:<bucket>/uft/*` does not match, and the exact grant
        # that does (`Read:<bucket>`) lets its holder read every object of the bucket
        # (weed/s3api/auth_credentials.go, Identity.CanDo); AWS authorises it as s3:ListBucket. A
        # prefix-scoped list needs exactly the grant the store needs anyway (List on its prefix in
        # SeaweedFS, s3:ListBucket on AWS) and answers NoSuchBucket for a missing bucket. The
        # trailing "/" matters: SeaweedFS matches `List:<bucket>/uft/*` against "uft/", not "uft".
        # A whole-bucket store (no prefix: a manifest read by URI) opens without a call; its first
        # call names a missing bucket or a refused key. Creating a bucket needs bucket-wide rights
        # anyway, so only then is HeadBucket used.
        if self.prefix:
            self._call(lambda: self.client.list_objects_v2(Bucket=bucket, Prefix=self.prefix + "/", MaxKeys=1), "open", "",
                       create_bucket=create_bucket)
        elif create_bucket:
            self._call(lambda: self.client.head_bucket(Bucket=bucket), "open", "", create_bucket=True)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._k(key)}"

    def _call(self, fn: Callable[[], T], op: str, key: str, create_bucket: bool = False) -> T:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"} or status == 403:
                    raise UftError(
                        f"S3 refused the credentials for s3://{self.bucket}: set AWS_ACCESS_KEY_ID / "
                        "AWS_SECRET_ACCESS_KEY to a key with access to this bucket"
                    ) from None
                if (code == "NoSuchBucket") or (code == "404" and op == "open"):
                    if create_bucket and op == "open":
                        self._create_bucket()
                        return None  # type: ignore[return-value]
                    raise UftError(f"bucket s3://{self.bucket} does not exist: create it or pass an existing bucket") from None
                if code in {"NoSuchKey", "404"}:
                    raise UftError(f"{self.url(key)} does not exist: check the URI or rerun the step that writes it") from None
                if status and status < 500 and code not in {"SlowDown", "RequestTimeout"}:
                    raise UftError(f"S3 {op} of {self.url(key)} failed: {code}") from None
                err: Exception = e
            except NoCredentialsError:
                raise UftError(
                    f"no S3 credentials for s3://{self.bucket}: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the "
                    "environment (from a Kubernetes Secret on a cluster)"
                ) from None
            except BotoCoreError as e:
                err = e
            if attempt == self.attempts:
                endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
                raise TransientError(
                    f"object store at {endpoint} unreachable or too slow for {op} {self.url(key)} after {attempt} "
                    f"attempts ({type(err).__name__}): check that it is running and AWS_ENDPOINT_URL is right, then rerun"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")

    def _create_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as e:  # parallel steps may create it at the same moment: that is fine
            code = e.response.get("Error", {}).get("Code")
            if code in {"AccessDenied", "403"} or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
                # the pipeline's identities may not create buckets (docs/deploy.md): say who does
                raise UftError(f"bucket s3://{self.bucket} does not exist and these credentials may not create it: "
                               "create it first (on a cluster the bucket Job or SeaweedFS's postStart does)") from None
            if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    def put(self, key: str, data: bytes) -> None:
        self._call(lambda: self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data), "put", key)

    def get(self, key: str) -> bytes:
        return self._call(lambda: self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read(), "get", key)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._k(key))
                return True
            except ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise

        return self._call(head, "head", key)

    def list(self, prefix: str = "") -> list[str]:
        return [key for key, _, _ in self.entries(prefix)]

    def entries(self, prefix: str = "") -> list[tuple[str, int, str]]:
        """(key relative to the store prefix, size, ETag) of every object under ``prefix``, sorted."""
        def run() -> list[tuple[str, int, str]]:
            out: list[tuple[str, int, str]] = []
            full = self._k(prefix)
            strip = len(self.prefix) + 1 if self.prefix else 0
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                out += [(o["Key"][strip:], int(o["Size"]), str(o.get("ETag", "")).strip('"')) for o in page.get("Contents", [])]
            return sorted(out)

        return self._call(run, "list", prefix)

    def delete(self, key: str) -> None:
        self._call(lambda: self.client.delete_object(Bucket=self.bucket, Key=self._k(key)), "delete", key)


_MODELS: list[Any] = []  # botocore's data loader, once it has parsed the S3 service model


def s3_session():
    """A new boto3 session (credentials resolved anew: boto3's default session caches them, which
    would hide a rotated key) that shares botocore's parsed service models with every other one in
    this process: parsing S3's model took 0.1 s of each client's 0.11 s (a fork-server task
    inherits the models the server parsed, :data:`uft.orchestrate.forkserver.WARM`)."""
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    if _MODELS:
        core.register_component("data_loader", _MODELS[0])
    else:
        _MODELS.append(core.get_component("data_loader"))
    return boto3.session.Session(botocore_session=core)


def warm_s3_models() -> None:
    """Parse the S3 service model now (a client for no endpoint, no call): forks inherit it."""
    s3_session().client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")


def _env_number(name: str, default: T, kind: Callable[[str], T]) -> T:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise UftError(f"{name}={raw!r} is not a number: unset it or give a positive {kind.__name__}") from None
    if value < 0:  # type: ignore[operator]
        raise UftError(f"{name}={raw!r} is negative: unset it or give a positive {kind.__name__}")
    return value


def open_store(uri: str, *, create_bucket: bool = False) -> Store:
    """``s3://bucket/prefix`` → :class:`S3Store`; anything else → :class:`LocalStore`."""
    if not uri:
        raise UftError("store URI is empty: pass s3://bucket/prefix or a local directory")
    if uri.startswith("s3://"):
        rest = uri[5:]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UftError(f"store URI {uri!r} has no bucket: use s3://bucket/prefix")
        return S3Store(bucket, prefix, create_bucket=create_bucket)
    if "://" in uri and not uri.startswith("file://"):
        raise UftError(f"store URI {uri!r} has an unsupported scheme: use s3://bucket/prefix or a local path")
    return LocalStore(Path(uri.removeprefix("file://")).resolve())


#: The artifact bucket when UFT_BUCKET is unset. On a cluster UFT_BUCKET comes from ConfigMap
#: uft-config (infra/base/config.yaml), the one place the bucket is named.
DEFAULT_BUCKET = "uft-artifacts"


def default_bucket() -> str:
    return os.environ.get("UFT_BUCKET", "").strip() or DEFAULT_BUCKET


def default_store_uri() -> str:
    """``s3://$UFT_BUCKET/uft``: where steps publish when the run names no ``store_uri``."""
    return f"s3://{default_bucket()}/uft"


def step_store(uri: str) -> Store:
    """The store a pipeline step publishes to (bucket created if missing): ``uri``, or
    ``s3://$UFT_BUCKET/uft`` when it is empty (a cluster run names none; UFT_BUCKET comes from the
    ``uft-config`` ConfigMap). The one place that fallback lives: every step opens its store here."""
    return open_store(uri or default_store_uri(), create_bucket=True)


_BUCKETS: dict[tuple[str, ...], "S3Store"] = {}


def _bucket_store(bucket: str) -> S3Store:
    """The :class:`S3Store` of a whole bucket, reused for the same endpoint and credentials: a new
    one costs a boto3 session and client (~0.5 s of CPU), and verifying a run's cached
    outputs resolves dozens of URIs. The key holds the endpoint and a hash of the secret, so a
    rotated key or another server gets a fresh client (nothing stale is reused)."""
    env = os.environ
    ident = (bucket, env.get("AWS_ENDPOINT_URL", ""), env.get("AWS_DEFAULT_REGION", ""),
             env.get("AWS_ACCESS_KEY_ID", ""), sha256_bytes(env.get("AWS_SECRET_ACCESS_KEY", "").encode()),
             env.get("UFT_S3_ATTEMPTS", ""), env.get("UFT_S3_BACKOFF", ""), env.get("UFT_S3_TIMEOUT", ""))
    store = _BUCKETS.get(ident)
    if store is None:
        store = _BUCKETS[ident] = S3Store(bucket)
    return store


def split_uri(uri: str) -> tuple[Store, str]:
    """Split an object URI into (store of its parent, key), e.g. for a manifest URI."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        return _bucket_store(bucket), key
    path = Path(uri.removeprefix("file://")).resolve()
    return LocalStore(path.parent), path.name


# --- loading raw data ------------------------------------------------------------------------------

def upload_tree(src: Path, dest: Store, *, delete: bool = False) -> dict[str, int]:
    """Copy every file under the directory ``src`` to ``dest`` at its relative path (the target
    images an operator loads into ``s3://bucket/data/target``; `uft load-target`).

    Hidden files and folders are skipped (as :class:`LocalStore` lists). A file already there with
    the same bytes (size and MD5, S3's ETag of a single-part upload) is not sent again. ``delete``:
    also remove the objects under ``dest`` that ``src`` does not have, so the prefix mirrors it (the
    trigger hashes everything under the prefix). Returns ``{"uploaded", "unchanged", "deleted",
    "extra"}`` counts (``extra``: objects left in place that ``src`` lacks)."""
    if not src.is_dir():
        raise UftError(f"{src} is not a directory: pass the folder of target images (class folders or flat)")
    files = {p.relative_to(src).as_posix(): p for p in sorted(src.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)}
    if not files:
        raise UftError(f"{src} holds no files: pass the folder of target images (class folders or flat)")
    if isinstance(dest, S3Store):
        there = {key: (size, etag) for key, size, etag in dest.entries()}
    else:
        there = {key: (len(b), hashlib.md5(b, usedforsecurity=False).hexdigest()) for key in dest.list() for b in [dest.get(key)]}
    counts = {"uploaded": 0, "unchanged": 0, "deleted": 0, "extra": 0}
    for key, path in files.items():
        data = path.read_bytes()
        if there.get(key) == (len(data), hashlib.md5(data, usedforsecurity=False).hexdigest()):  # ETag, not security
            counts["unchanged"] += 1
            continue
        dest.put(key, data)
        counts["uploaded"] += 1
    for key in sorted(set(there) - set(files)):
        if delete:
            dest.delete(key)
            counts["deleted"] += 1
        else:
            counts["extra"] += 1
    return counts


# --- manifest-last publication --------------------------------------------------------------------

def publish(store: Store, prefix: str, files: dict[str, bytes], manifest: dict[str, Any]) -> str:
    """Write ``files`` under ``prefix``, then ``manifest.json`` listing their sha256 and sizes.

    Returns the manifest's URI. The manifest is the last write, so a crash leaves no trusted output.
    """
    entries = {}
    for name, data in files.items():
        store.put(f"{prefix}/{name}", data)
        entries[name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
    body = canonical_json({**manifest, "files": entries})
    store.put(f"{prefix}/manifest.json", body)
    return store.url(f"{prefix}/manifest.json")


def read_manifest(uri: str) -> tuple[dict[str, Any], Store, str]:
    """Load a manifest by URI → (manifest, store, prefix). Does not read the data files."""
    store, key = split_uri(uri)
    try:
        manifest = json.loads(store.get(key))
    except json.JSONDecodeError:
        raise UftError(f"manifest {uri} is not valid JSON: republish it with `uft ingest`") from None
    if "files" not in manifest:
        raise UftError(f"manifest {uri} lists no files: republish it with `uft ingest`")
    return manifest, store, key.rsplit("/", 1)[0] if "/" in key else ""


def read_verified(store: Store, prefix: str, manifest: dict[str, Any], name: str, manifest_uri: str) -> bytes:
    """Read one file listed in a manifest, checking its sha256 against the record."""
    entry = manifest["files"].get(name)
    if entry is None:
        raise UftError(f"{name} is not listed in manifest {manifest_uri}: republish the dataset")
    key = f"{prefix}/{name}" if prefix else name
    if not store.exists(key):
        raise UftError(f"{store.url(key)} listed in {manifest_uri} is missing: republish the dataset (rerun ingest)")
    data = store.get(key)
    if sha256_bytes(data) != entry["sha256"]:
        raise UftError(f"{store.url(key)} is corrupt (sha256 differs from {manifest_uri}): rerun ingest to republish it")
    return data


def verify_manifest(uri: str) -> dict[str, Any]:
    """Load the manifest at ``uri`` and check that every file it lists exists with its recorded sha256.

    Returns the manifest; raises :class:`UftError` naming the first missing or corrupt file.
    """
    manifest, store, prefix = read_manifest(uri)
    for name in sorted(manifest["files"]):
        read_verified(store, prefix, manifest, name, uri)
    return manifest


def manifest_sha(uri: str) -> str:
    """The content hash of a published artifact: sha256 of its manifest bytes."""
    store, key = split_uri(uri)
    return sha256_bytes(store.get(key))


def manifests_intact(outputs: dict[str, Any]) -> bool:
    """Whether every manifest URI among ``outputs``' string values still verifies: all its files
    present with their recorded sha256 and, where a sibling ``<name>_sha`` is given for
    ``<name>_uri``, the manifest itself unchanged. Used to trust a cache record (the step cache's
    and kfp.local's task cache), so a deleted or corrupt output is recomputed instead of reused."""
    for name, value in outputs.items():
        if not (isinstance(value, str) and value.endswith("manifest.json")):
            continue
        sha = outputs.get(name.removesuffix("_uri") + "_sha") if name.endswith("_uri") else None
        try:
            if isinstance(sha, str) and sha and manifest_sha(value) != sha:
                return False
            verify_manifest(value)
        except UftError:
            return False
    return True
