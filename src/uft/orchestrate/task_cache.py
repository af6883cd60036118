"""kfp.local's task cache as ``uft run`` uses it: keyed also on the code, the bucket, MLflow and
the content of every manifest a task reads, and trusted only while the outputs verify in the store."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from uft.errors import UftError
from uft.store import default_bucket


#: Modules only the driver runs (never a task): editing them leaves the task cache valid.
DRIVER_ONLY = ("uft/cli/", "uft/orchestrate/")
#: Tasks the pipeline marks never-cached (on a cluster nothing keys them on the model registry) that
#: kfp.local's cache answers under `uft run`: promote keyed also on the registry's state
#: (:func:`registry_state`), report on the content of what it reads (promote's decision among it).
DECIDED = ("comp-promote", "comp-report")


def code_fingerprint() -> str:
    """sha256 over the sources that tasks run (``uft`` less :data:`DRIVER_ONLY`, ``components``,
    ``pipelines``): an edit in them invalidates every entry of the task cache (the step cache's
    CODE_VERSION is bumped by hand, so a task that runs may still reuse its step's outputs)."""
    import hashlib

    import components
    import pipelines
    import uft

    h = hashlib.sha256()
    for pkg in (uft, components, pipelines):
        root = Path(pkg.__file__).parent
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root.parent).as_posix()
            if not rel.startswith(DRIVER_ONLY):
                h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def cache_salt(experiment: str, run_id: str) -> dict[str, str]:
    """What a task's cache entry depends on beyond its command and arguments: the code, the bucket,
    the MLflow store and this run key's parent MLflow run. A new or wiped mlflow.db makes a new
    parent run, so every task runs again and logs its MLflow run again. Not the S3 endpoint: the
    local server gets a new port each run, and a hit is trusted only after its outputs verify in
    the store the run uses now (:func:`checked_task_cache`)."""
    from uft import tracking

    return {"UFT_CACHE_CODE": code_fingerprint(),
            "UFT_CACHE_BUCKET": default_bucket(),
            "UFT_CACHE_MLFLOW": os.environ.get("MLFLOW_TRACKING_URI", ""),
            "UFT_CACHE_MLFLOW_ARTIFACTS": os.environ.get("UFT_MLFLOW_ARTIFACTS", ""),
            "UFT_CACHE_PARENT_RUN": tracking.parent_run_id(experiment, run_id) if tracking.enabled() else ""}


def _argument_contents(arguments: dict[str, Any]) -> dict[str, str]:
    """The content hash of every manifest a task reads (its manifest-URI arguments), for its cache
    key: most outputs are content-addressed (same URI, same bytes), but promote republishes its
    decision under one URI per run and encoder, and the report that reads it must follow."""
    from uft.store import manifest_sha

    out = {}
    for name, value in sorted(arguments.items()):
        if isinstance(value, str) and value.endswith("manifest.json"):
            try:
                out[f"UFT_CACHE_ARG_{name}"] = manifest_sha(value)
            except UftError:  # missing: the task runs and reports it in its own words
                out[f"UFT_CACHE_ARG_{name}"] = "missing"
        elif name == "encoder_weights" and isinstance(value, str) and value:
            # A checkpoint rewritten in place, or an alias (models:/…@champion) that moved, is new input.
            from uft.models.weights import weights_identity

            try:
                out[f"UFT_CACHE_ARG_{name}"] = weights_identity(value)
            except UftError:
                out[f"UFT_CACHE_ARG_{name}"] = "missing"
    return out


def registry_state(model: str) -> str:
    """sha256 of what the promotion gate reads from the MLflow registry for ``model``: each
    version's number, status and tags, and the aliases (champion/challenger); "" without tracking.
    Timestamps are left out: reading a version does not change the state."""
    import hashlib

    from uft import tracking

    if not model or not tracking.enabled():
        return ""
    from mlflow.exceptions import MlflowException

    client = tracking._client()
    try:
        aliases = dict(client.get_registered_model(model).aliases or {})
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            return f"unreadable {time.time()}"  # a miss: promote runs and reports the error in its own words
        return hashlib.sha256(b"no model").hexdigest()  # no such model yet: an empty registry
    except Exception:  # noqa: BLE001 — the registry unreachable: as above
        return f"unreadable {time.time()}"
    versions = sorted((str(v.version), str(v.status), sorted((v.tags or {}).items()))
                      for v in client.search_model_versions(f"name = '{model}'"))
    return hashlib.sha256(json.dumps([sorted(aliases.items()), versions], default=str).encode()).hexdigest()


def _key_arguments(component_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments as a cache key sees them: a decided task's job id is dropped when the run key
    is explicit (`uft run` always passes one, and then :func:`uft.tracking.run_key` ignores the job
    id, which kfp.local makes anew for each run: it would make every rerun a miss)."""
    if component_name in DECIDED and arguments.get("run_id") and "job_id" in arguments:
        return {**arguments, "job_id": ""}
    return arguments


@contextlib.contextmanager
def checked_task_cache(root: Path, salt: dict[str, str] | Callable[[], dict[str, str]]) -> Iterator[None]:
    """kfp.local's own task cache (what ``local.init(enable_caching=True)`` turns on), keyed also on
    ``salt`` and trusted only while every artifact a cached task returned is intact in the store.
    ``salt`` may be a function, called once when the first key is computed: the first tasks (the
    fingerprints, never cached) then run while the driver is still importing MLflow for it (kfp.local
    computes a key only for a task whose caching is on: kfp/local/orchestrator/task_executor.py
    execute_single_task, kfp 2.17).

    A hit starts no process, as a KFP cluster skips the pod of a cached task; a task that
    ``set_caching_options(False)`` (the fingerprints, the exit handler) always runs, promote and
    report excepted (:func:`cache_decided`). A cached task's
    MLflow run is the one its first execution logged under this run key (the salt holds the parent
    run); a deleted or corrupt output makes the entry a miss, so the task runs and repairs it.

    promote's entry is filed under the registry's state *after* it ran (its own registration and
    alias included), so an identical rerun finds it and the decision is recorded once; any later
    change to the registry (another run's champion, a manual promote) makes it a miss."""
    from kfp.local import cache as cache_module

    from uft.store import manifests_intact

    class CheckedCache(cache_module.LocalCache):
        def __init__(self, root: str) -> None:
            super().__init__(root)
            self.rekey: dict[str, tuple] = {}  # promote's key before it ran → how to key it after

        def compute_key(self, component_name, image, full_command, arguments, env_vars=None, custom_cache_key=None):
            extra = {**salted(), **_argument_contents(arguments)}
            if component_name == "comp-promote":
                extra["UFT_CACHE_REGISTRY"] = registry_state(str(arguments.get("registered_model", "")))
            if custom_cache_key:
                custom_cache_key += json.dumps(extra, sort_keys=True)
            key = super().compute_key(component_name, image, full_command, _key_arguments(component_name, arguments),
                                      {**(env_vars or {}), **extra}, custom_cache_key)
            if component_name == "comp-promote":
                self.rekey[key] = (component_name, image, full_command, arguments, env_vars, custom_cache_key)
            return key

        def get(self, key):
            out = super().get(key)
            return out if out is not None and manifests_intact(out) else None

        def put(self, key, outputs):
            if key in self.rekey:  # promote just changed the registry: file it under the state it left
                key = self.compute_key(*self.rekey.pop(key))
                self.rekey.pop(key, None)
            # kfp.local counts an entry whose artifact file is missing as a miss, but a Metrics
            # artifact is all metadata (log_metric writes no file): without this empty file the
            # evaluation tasks would never hit.
            from kfp import dsl as kfp_dsl

            for value in outputs.values():
                if isinstance(value, kfp_dsl.Metrics) and value.uri and not value.uri.startswith(("s3://", "gs://")):
                    Path(value.uri).parent.mkdir(parents=True, exist_ok=True)
                    Path(value.uri).touch(exist_ok=True)
            super().put(key, outputs)

    # Once for the whole run, under a lock: with UFT_LOCAL_WORKERS the first tasks compute their
    # keys at once, and functools.cache alone would let each make the salt (and its parent run).
    lock = threading.Lock()
    salt_fn = functools.cache(salt if callable(salt) else lambda: salt)

    def salted() -> dict[str, str]:
        with lock:
            return salt_fn()

    cache = CheckedCache(str(root))
    original = cache_module.get_local_cache
    cache_module.get_local_cache = lambda: cache
    try:
        yield
    finally:
        cache_module.get_local_cache = original


def cache_decided(task_spec):
    """promote and report are never cached on a cluster (:data:`DECIDED`); here the task cache
    keys them on what they depend on, so an unchanged rerun reuses them too → ``task_spec``, or a
    copy with caching on."""
    import copy

    if task_spec.caching_options.enable_cache or task_spec.component_ref.name not in DECIDED:
        return task_spec
    cached = copy.deepcopy(task_spec)
    cached.caching_options.enable_cache = True
    return cached


def cache_bundled_ingest(task_spec, io_store):
    """The ingest tasks opt out of KFP's cache (an s3:// prefix or a directory may hold new data
    under the same spec), but a bundled dataset never changes: its ingest may be answered from the
    task cache too, as every later step is. → ``task_spec``, or a copy with caching on."""
    import copy

    from uft.data.sources import BUNDLED

    if (io_store is None or task_spec.caching_options.enable_cache or "spec" not in task_spec.inputs.parameters
            or not task_spec.component_ref.name.startswith("comp-ingest")):
        return task_spec
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    try:
        spec = OrchestratorUtils.make_task_arguments(task_inputs_spec=task_spec.inputs, io_store=io_store).get("spec")
    except Exception:  # an argument kfp cannot resolve yet: leave the task as the pipeline set it
        return task_spec
    if spec not in BUNDLED:
        return task_spec
    cached = copy.deepcopy(task_spec)
    cached.caching_options.enable_cache = True
    return cached
