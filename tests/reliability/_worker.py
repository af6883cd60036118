"""Subprocess helper for the reliability tests (run as ``python _worker.py MODE ...``).

Modes:
- ``pretrain STORE_URI OUT [SLEEP]``: ingest a tiny optdigits slice into STORE_URI and run the real
  ``uft.steps.pretrain`` step (TinyConvNet width 8, 16 px, 40 steps, a checkpoint every 5), sleeping
  SLEEP s after each optimiser step so a test can SIGKILL it mid-training; prints the step's output
  as JSON and saves the published encoder's state dict to OUT.
- ``hang EXPERIMENT RUN_ID``: open a tracked step run, print ``ready`` and wait to be killed.
- ``services STATE_DIR``: take the state directory's shared SeaweedFS as `uft run` does, print
  ``{"note", "pid", "endpoint"}`` as JSON, and hold it until stdin closes or a signal arrives.
- ``service-set STATE_DIR``: enter the local services as `uft run` does (SeaweedFS, MLflow on
  sqlite), put and read back an object and log an MLflow run with an S3 artifact, print
  ``{"note", "pid", "endpoint", "ports", "run_id"}`` as JSON and leave.
- ``pipeline STATE_DIR``: what `uft run` does with the tiniest config: start the local services
  (SeaweedFS with generated keys, MLflow on sqlite) under STATE_DIR, run the whole DAG with
  kfp.local streaming every step's log, print the result as JSON.
"""

from __future__ import annotations

import json
import sys
import time

import torch

torch.set_num_threads(1)  # same arithmetic in every process → bit-identical weights

PRETRAIN = dict(encoder="tiny", encoder_width=8, method="simclr", steps=40, batch_size=32, lr=2e-3, seed=0,
                checkpoint_every=5)


def pretrain(store_uri: str, out: str, sleep: float = 0.0) -> None:
    from uft import steps
    from uft.models.artifact import load_encoder
    from uft.ssl.base import SSLMethod

    if sleep > 0:
        original = SSLMethod.after_step

        def slow_after_step(self) -> None:  # no randomness: only slows the loop down
            original(self)
            time.sleep(sleep)

        SSLMethod.after_step = slow_after_step  # type: ignore[method-assign]
    src = steps.ingest("optdigits", store_uri, role="source", image_size=16, channels=1, limit=160,
                       test_fraction=0.2, seed=0)
    res = steps.pretrain(src["dataset_uri"], src["dataset_sha"], store_uri, **PRETRAIN)
    enc, manifest = load_encoder(res["encoder_uri"])
    torch.save(enc.state_dict(), out)
    print(json.dumps({**res, "info": manifest["info"], "files": manifest["files"]}), flush=True)


def hang(experiment: str, run_id: str) -> None:
    from uft import tracking

    with tracking.step_run(experiment, run_id, "pretrain", {"steps": 40}):
        print("ready", flush=True)
        time.sleep(600)


# holistic_source_steps / holistic_methods: the defaults (600 steps, three methods, for each of the two
# holistic tasks) were most of a tiny run's time
TINIEST = dict(source_limit=200, target_limit=200, pretrain_steps=2, finetune_steps=2, batch_size=32, encoder_width=8,
               holistic_steps=2, holistic_source_steps=10, holistic_methods="naive", probe_draws=1, label_shots="1",
               replay_size=50, checkpoint_every=1)


def pipeline(state: str) -> None:
    from dataclasses import asdict
    from pathlib import Path

    from uft.config import validate_config
    from uft.orchestrate.local import local_services, run_local

    with local_services(Path(state)):
        res = run_local(validate_config(TINIEST), experiment="scan", quiet=False)
    print(json.dumps(asdict(res)), flush=True)


def services(state: str) -> None:
    from pathlib import Path

    from uft.orchestrate.lifecycle import signals_raise
    from uft.services import start_seaweedfs

    with signals_raise():
        server = start_seaweedfs(Path(state))
        try:
            print(json.dumps({"note": server.note, "pid": server.pid, "endpoint": server.endpoint}), flush=True)
            sys.stdin.read()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()


def service_set(state: str) -> None:
    import tempfile
    from pathlib import Path

    import boto3
    import mlflow

    from uft.orchestrate.local import local_services
    from uft.services import RECORD

    notes: list[str] = []
    with local_services(Path(state), say=notes.append) as env:
        record = json.loads((Path(state) / "s3" / RECORD).read_text())
        s3 = boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        bucket = env["UFT_MLFLOW_ARTIFACTS"].split("/")[2]
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="probe", Body=state.encode())
        assert s3.get_object(Bucket=bucket, Key="probe")["Body"].read() == state.encode()
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        exp = mlflow.create_experiment("contention", artifact_location=env["UFT_MLFLOW_ARTIFACTS"])
        with mlflow.start_run(experiment_id=exp) as run, tempfile.TemporaryDirectory() as tmp:
            mlflow.log_metric("m", 1.0)
            (Path(tmp) / "a.txt").write_text(state)
            mlflow.log_artifact(str(Path(tmp) / "a.txt"))
        print(json.dumps({"note": notes[0], "pid": record["pid"], "endpoint": env["AWS_ENDPOINT_URL"],
                          "ports": record["ports"], "run_id": run.info.run_id}), flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "pretrain":
        pretrain(args[0], args[1], float(args[2]) if len(args) > 2 else 0.0)
    elif mode == "hang":
        hang(*args)
    elif mode == "services":
        services(args[0])
    elif mode == "service-set":
        service_set(args[0])
    elif mode == "pipeline":
        pipeline(args[0])
    else:
        raise SystemExit(f"unknown mode {mode}")
