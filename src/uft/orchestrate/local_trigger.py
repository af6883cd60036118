"""`uft trigger --local`: the continuous loop on this machine, no KFP host needed.

When the content hash of a local target directory (:func:`uft.orchestrate.trigger.target_hash`)
differs from the one recorded at the last successful run, run the whole pipeline through
``uft run`` (a child process, exactly what a user types) and record the run id, its outcome and its
promotion decision; an unchanged target runs nothing. A run that failed is retried on the next call.

The record lives in ``<state>/triggers/local-<sha256(target)[:20]>.json`` (``<state>``: the local
state directory of ``uft run``, ``$UFT_STATE_DIR`` or ``.uft``).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from uft.errors import UftError
from uft.orchestrate.trigger import target_hash
from uft.store import canonical_json, sha256_bytes

PROMOTION_LINE = "Promotion:"  # how `uft run` prints the gate's verdict (uft.cli.print_result)


def run_command(source: str, target: str, params: dict[str, str], run_id: str, experiment: str) -> list[str]:
    """The ``uft run`` command line for one triggered run (the same interpreter as this process)."""
    cmd = [sys.executable, "-c", "from uft.cli import main; main()", "run", "--source", source, "--target", target,
           "--run-id", run_id, "--experiment", experiment]
    for k, v in params.items():
        cmd += ["-p", f"{k}={v}"]
    return cmd


def promotion_from_output(stdout: str) -> str | None:
    """The gate's verdict from ``uft run``'s output ("champion — uft-encoder version 2: …"), or None."""
    lines = [ln.split(PROMOTION_LINE, 1)[1].strip() for ln in stdout.splitlines() if PROMOTION_LINE in ln]
    return lines[-1] if lines else None


def trigger_local(target: str, *, source: str = "mnist", params: dict[str, str] | None = None,
                  state: Path | None = None, experiment: str = "uft",
                  runner: Callable[[list[str]], subprocess.CompletedProcess] | None = None) -> dict[str, Any]:
    """Run the pipeline on ``target`` (a local directory) unless its content was already run
    successfully → ``{"action": "ran" | "retried" | "none", "changed", "hash", "previous", "objects",
    "run_id", "returncode", "promotion", "promoted", "state"}``.

    ``runner``: runs the command line (default: :func:`subprocess.run` capturing its output, which is
    also echoed so the user sees `uft run`'s tables)."""
    from uft.orchestrate.local import state_dir

    target_dir = Path(target).expanduser().resolve()
    if not target_dir.is_dir():
        raise UftError(f"--target {target}: the local trigger watches a directory (an ImageFolder): pass one, or use "
                       "--host for a KFP cluster")
    digest, count = target_hash(str(target_dir))
    records = (state or state_dir()) / "triggers"
    path = records / f"local-{sha256_bytes(str(target_dir).encode())[:20]}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    result: dict[str, Any] = {"action": "none", "changed": digest != record.get("hash"), "hash": digest,
                              "previous": record.get("hash"), "objects": count, "run_id": None, "returncode": None,
                              "promotion": None, "promoted": None, "state": str(path)}
    if not result["changed"] and record.get("status") == "succeeded":
        result.update(run_id=record.get("run_id"), promotion=record.get("promotion"), promoted=record.get("promoted"))
        return result
    result["action"] = "ran" if result["changed"] else "retried"
    run_id = f"trigger-{digest[:16]}"
    cmd = run_command(source, str(target_dir), dict(params or {}), run_id, experiment)
    proc = (runner or _run)(cmd)
    promotion = promotion_from_output(proc.stdout or "")
    result.update(run_id=run_id, returncode=proc.returncode, promotion=promotion,
                  promoted=None if promotion is None else promotion.split(" ", 1)[0] == "champion")
    records.mkdir(parents=True, exist_ok=True)
    path.write_bytes(canonical_json({"target": str(target_dir), "hash": digest, "objects": count, "run_id": run_id,
                                     "status": "succeeded" if proc.returncode == 0 else "failed",
                                     "promotion": promotion, "promoted": result["promoted"],
                                     "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}))
    if proc.returncode != 0:
        tail = ((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-3:]
        raise UftError(f"`uft run` on {target_dir} failed (exit {proc.returncode}): {' / '.join(tail)} — the next "
                       "`uft trigger --local` retries it")
    return result


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc


def describe_local(res: dict[str, Any]) -> str:
    """One line for the CLI."""
    what = f"{res['objects']} files, hash {res['hash'][:12]}"
    if res["action"] == "none":
        return f"target unchanged ({what}), already run as {res['run_id']}: nothing run (promotion then: {res['promotion']})"
    how = "target changed" if res["action"] == "ran" else "target unchanged but its last run failed"
    return f"{how} ({what}): ran {res['run_id']} — promotion: {res['promotion'] or 'no decision recorded'}"
