"""Steps that KFP starts at once, as it does: separate processes (pods), one MLflow server over HTTP.
Each step looks for its pipeline run's parent run and makes it if there is none
(:func:`uft.tracking.get_or_create_run`); they must all end on the same one, with no duplicate left.
(Threads on sqlite: tests/unit/test_tracking_race.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

from uft.services import LOOPBACK, free_port

#: One pod's step: wait for the common start of each pipeline run key, then take its parent run.
STEP = """
import sys, time
from uft import tracking
start, keys = float(sys.argv[1]), sys.argv[2:]
tracking.experiment_id("parallel")  # imports MLflow before the first start
for i, key in enumerate(keys):
    time.sleep(max(0.0, start + 2.0 * i - time.time()))
    print(key, tracking.parent_run_id("parallel", key), flush=True)
"""


def _mlflow_server(tmp_path):
    from uft.orchestrate.local import mlflow_schema_template

    if template := mlflow_schema_template():  # skips a fresh schema's ~15 s of migrations
        shutil.copyfile(template, tmp_path / "mlflow.db")
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK, "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
                             "--artifacts-destination", str(tmp_path / "art")],
                            stdout=open(tmp_path / "mlflow.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(240):
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                return proc, url
        except OSError:
            assert proc.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
            time.sleep(0.5)
    proc.kill()
    raise AssertionError((tmp_path / "mlflow.log").read_text()[-2000:])


def test_steps_in_parallel_pods_end_on_one_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from uft import tracking

    server, url = _mlflow_server(tmp_path)
    try:
        keys = [f"run-{i}" for i in range(4)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"MLFLOW_TRACKING_URI": url}
        start = time.time() + 8  # after every step has imported MLflow
        steps = [subprocess.Popen([sys.executable, "-c", STEP, str(start), *keys], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(5)]
        outs = [p.communicate(timeout=120) for p in steps]
        assert all(p.returncode == 0 for p in steps), [err[-2000:] for _, err in outs]
        seen: dict[str, set[str]] = {k: set() for k in keys}
        for out, _ in outs:
            for line in out.splitlines():
                key, parent = line.split()
                seen[key].add(parent)
        client = MlflowClient(tracking_uri=url)
        exp = client.get_experiment_by_name("parallel").experiment_id
        for key, parents in seen.items():
            assert len(parents) == 1, f"{key}: 5 steps started at once ended on {len(parents)} parent runs"
            live = client.search_runs([exp], filter_string=f"tags.`{tracking.TAG_RUN}` = '{key}'")
            assert [r.info.run_id for r in live] == sorted(parents), f"{key}: a losing duplicate was left"
    finally:
        server.terminate()
        server.wait(timeout=30)
