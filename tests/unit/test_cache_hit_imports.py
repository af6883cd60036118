"""A step whose outputs are cached decides so without importing torch (seconds per process: on a
rerun of `uft run` the two ingest tasks always start a process, and each used to pay it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Runs the ingest step in a fresh interpreter and reports its output and which heavy modules it loaded.
PROBE = """
import json, sys
from uft.steps import ingest
out = ingest("optdigits", sys.argv[1], role="source", image_size=8, channels=1, limit=60, run_id="r1", experiment="imports")
print(json.dumps({"cached": out["cached"], "uri": out["dataset_uri"],
                  "loaded": sorted(m for m in ("torch", "uft.data.ingest", "mlflow") if m in sys.modules)}))
"""


def _probe(store: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(store)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("tracking", ["off", pytest.param("sqlite", marks=pytest.mark.slow)])
def test_cache_hit_of_ingest_does_not_import_torch(tmp_path, tracking):
    """``sqlite``: MLflow on, as under `uft run` (slow: creating the MLflow schema takes a minute on
    two busy cores); ``off``: the same decision without tracking."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), UFT_PROGRESS="off")
    if tracking == "sqlite":
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = tmp_path / "store"
    first = _probe(store, env)
    assert not first["cached"] and "uft.data.ingest" in first["loaded"]  # the miss decodes and writes
    again = _probe(store, env)
    assert again["cached"] and again["uri"] == first["uri"]
    # Neither torch nor the ingest writer was loaded; MLflow only when tracking is on (it records the hit).
    assert again["loaded"] == (["mlflow"] if tracking == "sqlite" else [])
