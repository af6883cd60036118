"""Submit a run when the target data changed: cheap enough to call every few minutes.

The content hash of a target prefix is sha256 over the sorted list of its objects:

* ``s3://bucket/prefix``: ``(key, size, ETag)`` per object, from the listing alone (one LIST call
  per 1000 objects, no object is read). S3 ETags change whenever the bytes change (for multipart
  uploads the ETag is a hash of part hashes, so re-uploading identical bytes with another part
  size also counts as a change: at worst one extra run, never a missed one).
* a local directory: ``(key, size, sha256(bytes))`` per file (dotfiles skipped, as the store does).

Keys are relative to the prefix, so the same data under another prefix hashes the same.
The record lives in ``<state>/<sha256(target_uri)[:20]>.json`` (default state:
``<store_uri>/triggers``): the hash, the KFP run started for it and whether that run succeeded.
It is written when KFP accepts a run (``status: submitted``) and marked ``succeeded`` only once
KFP reports the run SUCCEEDED. For an unchanged hash the trigger therefore asks KFP about the
recorded run: still going → wait; succeeded → nothing to do; failed, errored or cancelled (or gone)
→ submit again. A run that fails is retried on the next call, not when the data next changes.
A failed submit leaves the old record, so the next call retries too. Two triggers racing could
both submit (the GitHub workflow serialises them with a concurrency group).

Attempts are counted per content hash (the record's ``attempts``: the runs started for it). A
failure that repeats on the same data is deterministic more often than not, and the workflow
calls every 30 minutes: after :data:`MAX_ATTEMPTS` failed runs of one hash the trigger stops
(``action: stopped``, the CLI exits non-zero naming the runs) until the data change or it is told
to start over (``--reset-attempts``, after a fix).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from uft.config import RunConfig, validate_config
from uft.errors import UftError
from uft.orchestrate.submit import NAMESPACE, SERVICE_ACCOUNT, default_store, kfp_client, submit
from uft.store import LocalStore, S3Store, canonical_json, open_store, sha256_bytes, split_uri


def _local_entries(store: LocalStore) -> list[tuple[str, int, str]]:
    return [(k, len(b := store.get(k)), sha256_bytes(b)) for k in store.list()]


def target_hash(target_uri: str, *, exclude: frozenset[str] = frozenset()) -> tuple[str, int]:
    """Content hash of the objects under ``target_uri`` (see the module doc) → (hex sha256, object count).

    ``exclude``: full object URLs to leave out (the trigger's own state file, should it live inside
    the target). Raises :class:`UftError` when the prefix holds no objects.
    """
    store = open_store(target_uri)
    if isinstance(store, LocalStore) and not store.root.is_dir():
        raise UftError(f"--target {target_uri} is not a directory: pass s3://bucket/prefix or a local data directory")
    entries = store.entries() if isinstance(store, S3Store) else _local_entries(store)
    entries = sorted(e for e in entries if store.url(e[0]) not in exclude)
    if not entries:
        raise UftError(f"--target {target_uri} holds no objects: check the URI (a prefix such as s3://bucket/data/target)")
    return sha256_bytes(canonical_json(entries)), len(entries)


def _state_location(target_uri: str, state_uri: str) -> tuple[Any, str]:
    """(store, key) of the record for ``target_uri``: ``state_uri`` is a prefix, or an object ending in .json."""
    if state_uri.endswith(".json"):
        return split_uri(state_uri)
    return open_store(state_uri, create_bucket=True), f"{sha256_bytes(target_uri.encode())[:20]}.json"


#: KFP run states that ended without success: submit again. SUCCEEDED ends the matter; any other
#: state (PENDING, RUNNING, PAUSED, CANCELING, ...) means the run is still going: wait for it.
RETRY_STATES = frozenset({"FAILED", "CANCELED", "SKIPPED"})


#: Runs started for one content hash before the trigger stops retrying it.
MAX_ATTEMPTS = 3


def attempts_of(record: dict[str, Any]) -> list[str]:
    """The run ids started for the record's hash (a record written before attempts were counted:
    its one run)."""
    if "attempts" in record:
        return list(record["attempts"])
    return [record["run_id"]] if record.get("run_id") else []


def attempts_exhausted(record: dict[str, Any], max_attempts: int) -> bool:
    """True when the record's hash already had ``max_attempts`` runs (the last one failed)."""
    return len(attempts_of(record)) >= max_attempts


def with_attempt(record: dict[str, Any], run_id: str, same_hash: bool) -> list[str]:
    """The attempts after starting ``run_id``: appended for the same hash, a fresh list for new data."""
    return (attempts_of(record) if same_hash else []) + [run_id]


def run_state(client: Any, run_id: str) -> str:
    """KFP's state of ``run_id`` (``SUCCEEDED``, ``FAILED``, ``RUNNING``, ...); ``MISSING`` if KFP has no such run."""
    try:
        run = client.get_run(run_id)
    except Exception as e:  # a deleted run is a 404; anything else is a real problem
        if getattr(e, "status", None) == 404 or "not found" in str(e).lower():
            return "MISSING"
        raise
    return str(getattr(run, "state", "") or "RUNTIME_STATE_UNSPECIFIED").upper()


def trigger(host: str, target_uri: str, params: dict[str, Any] | None = None, experiment: str = "uft",
            namespace: str = NAMESPACE, service_account: str = SERVICE_ACCOUNT, state_uri: str | None = None,
            client: Any = None, kfp_version: str | None = None, max_attempts: int = MAX_ATTEMPTS,
            reset_attempts: bool = False, allow_unpinned: bool | None = None) -> dict[str, Any]:
    """Submit one run with ``target=target_uri`` unless the target's content hash already has a run
    that succeeded or is still going, or had ``max_attempts`` runs that failed; idempotent otherwise.

    Returns ``{"action", "changed", "hash", "previous", "objects", "run_id", "previous_run",
    "previous_state", "state", "attempts"}``; ``action`` is ``submitted`` (new data), ``retried``
    (same data, its last run failed), ``waiting`` (same data, its run is still going), ``none``
    (same data, its run succeeded) or ``stopped`` (same data, ``max_attempts`` runs failed: nothing
    submitted); ``run_id`` is the run started now, else None; ``attempts`` the runs of this hash.
    ``reset_attempts``: forget the failed attempts of the current hash (after fixing the cause).
    """
    if max_attempts < 1:
        raise UftError(f"--max-attempts {max_attempts} must be at least 1: e.g. --max-attempts {MAX_ATTEMPTS}")
    target_uri = target_uri.rstrip("/")
    if not target_uri:
        raise UftError("--target is empty: pass the target data prefix, e.g. s3://uft-artifacts/data/target")
    if "://" not in target_uri:
        target_uri = str(Path(target_uri).resolve())
    params = dict(params or {})
    if params.setdefault("target", target_uri) != target_uri:
        raise UftError(f"--param target={params['target']} contradicts --target {target_uri}: pass the target once")
    # Bad values fail now, not on the first data change (unknown names are caught when compiling).
    validate_config({k: v for k, v in params.items() if k in RunConfig.model_fields})
    state_store, key = _state_location(target_uri, state_uri or f"{str(params.get('store_uri') or default_store()).rstrip('/')}/triggers")
    digest, count = target_hash(target_uri, exclude=frozenset({state_store.url(key)}))
    record = json.loads(state_store.get(key)) if state_store.exists(key) else {}
    if reset_attempts and record.get("hash") == digest:
        record["attempts"] = []
    previous = record.get("hash")
    result = {"action": "submitted", "changed": digest != previous, "hash": digest, "previous": previous,
              "objects": count, "run_id": None, "previous_run": record.get("run_id"), "previous_state": None,
              "state": state_store.url(key), "attempts": attempts_of(record) if digest == previous else []}
    if not result["changed"]:
        if record.get("status") == "succeeded" or not record.get("run_id"):
            result["action"] = "none"
            return result
        client = client or kfp_client(host, namespace)
        try:
            state = run_state(client, record["run_id"])
        except Exception as e:
            raise UftError(f"looking up run {record['run_id']} on KFP at {host} failed ({type(e).__name__}): "
                           "check --host and that the KFP API is reachable") from None
        result["previous_state"] = state
        if state == "SUCCEEDED":
            state_store.put(key, canonical_json({**record, "status": "succeeded", "finished_seen": _now()}))
            result["action"] = "none"
            return result
        if state not in RETRY_STATES and state != "MISSING":
            result["action"] = "waiting"
            return result
        if attempts_exhausted(record, max_attempts):
            if record.get("status") != "stopped":
                state_store.put(key, canonical_json({**record, "status": "stopped", "stopped_seen": _now()}))
            result["action"] = "stopped"
            return result
        result["action"] = "retried"
    run_id = submit(host, params, experiment=experiment, namespace=namespace, service_account=service_account,
                    run_name=f"uft trigger {Path(target_uri).name or target_uri} {digest[:12]}"
                             + (" (retry)" if result["action"] == "retried" else ""),
                    client=client, kfp_version=kfp_version, allow_unpinned=allow_unpinned)
    result["attempts"] = with_attempt(record, run_id, same_hash=not result["changed"])
    # Recorded as submitted: it becomes "succeeded" only when a later call sees KFP report SUCCEEDED.
    state_store.put(key, canonical_json({"target": target_uri, "hash": digest, "objects": count, "run_id": run_id,
                                         "status": "submitted", "experiment": experiment, "host": host,
                                         "time": _now(), "attempts": result["attempts"]}))
    result["run_id"] = run_id
    return result


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def describe(res: dict[str, Any]) -> str:
    """One line for the CLI and the workflow log."""
    what = f"{res['objects']} objects, hash {res['hash'][:12]}"
    prev = f"run {res['previous_run']}" if res.get("previous_run") else ""
    return {
        "submitted": f"target changed ({what}, was {(res['previous'] or 'none')[:12]}): started run {res['run_id']}",
        "retried": f"target unchanged ({what}) but its {prev} ended {res['previous_state']}: started run {res['run_id']}",
        "waiting": f"target unchanged ({what}); its {prev} is {res['previous_state']}: nothing submitted",
        "none": f"target unchanged ({what}), already run{' (' + prev + ' succeeded)' if prev else ''}: nothing submitted",
        "stopped": stopped_message(res),
    }[res["action"]]


def stopped_message(res: dict[str, Any]) -> str:
    """The line that makes a stopped trigger visible (the CLI prints it as its error)."""
    runs = ", ".join(res.get("attempts") or [])
    return (f"target unchanged ({res['objects']} objects, hash {res['hash'][:12]}) and its {len(res.get('attempts') or [])}"
            f" runs failed ({runs}; last {res['previous_state']}): not retrying the same data; fix the cause, then "
            "`uft trigger --reset-attempts`, or change the data")
