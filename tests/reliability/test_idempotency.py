"""Idempotent steps: a rerun with the same inputs and config reuses the published result (content-hash
cache) and the same MLflow run; a step that fails — by an exception, SIGTERM or SIGKILL — never
leaves its MLflow run RUNNING."""

from __future__ import annotations

import os
import signal

import pytest

from tests.reliability.helpers import one_line_error, start_worker, worker_env
from uft import steps, tracking
from uft.errors import UftError
from uft.store import open_store

TINY = dict(encoder="tiny", encoder_width=8, method="simclr", steps=4, batch_size=16, checkpoint_every=2, seed=0)


@pytest.fixture
def source(tmp_path):
    store_uri = str(tmp_path / "store")
    src = steps.ingest("optdigits", store_uri, role="source", image_size=8, channels=1, limit=60, test_fraction=0.2)
    return store_uri, src


def _runs(experiment: str, run_id: str, step: str):
    from mlflow.tracking import MlflowClient

    exp = tracking.experiment_id(experiment)
    return MlflowClient().search_runs(
        [exp], filter_string=f"tags.`{tracking.TAG_RUN}` = '{run_id}' and tags.`{tracking.TAG_STEP}` = '{step}'")


def test_rerun_reuses_result_and_mlflow_run(source, mlflow_db):
    store_uri, src = source
    first = steps.pretrain(src["dataset_uri"], src["dataset_sha"], store_uri, run_id="r1", experiment="idem", **TINY)
    keys = open_store(store_uri).list()
    again = steps.pretrain(src["dataset_uri"], src["dataset_sha"], store_uri, run_id="r1", experiment="idem", **TINY)
    assert not first["cached"] and again["cached"]
    assert (again["encoder_uri"], again["encoder_sha"]) == (first["encoder_uri"], first["encoder_sha"])
    assert open_store(store_uri).list() == keys, "a cached rerun writes nothing new"
    runs = _runs("idem", "r1", "pretrain")
    assert [r.info.status for r in runs] == ["FINISHED"] and runs[0].data.tags["cached"] == "True"
    # A new pipeline run reuses the cached result too, under its own (single) run.
    other = steps.pretrain(src["dataset_uri"], src["dataset_sha"], store_uri, run_id="r2", experiment="idem", **TINY)
    assert other["cached"] and other["encoder_uri"] == first["encoder_uri"]
    assert len(_runs("idem", "r2", "pretrain")) == 1 and len(_runs("idem", "r1", "pretrain")) == 1


def test_same_inputs_in_a_fresh_store_give_the_same_content_hashes(source, tmp_path):
    """Content addressing holds across stores: the same data and config, trained again from
    scratch in another store, publish byte-identical manifests (no timings or paths in them)."""
    store_uri, src = source
    first = steps.pretrain(src["dataset_uri"], src["dataset_sha"], store_uri, **TINY)
    other_uri = str(tmp_path / "other")
    src2 = steps.ingest("optdigits", other_uri, role="source", image_size=8, channels=1, limit=60, test_fraction=0.2)
    second = steps.pretrain(src2["dataset_uri"], src2["dataset_sha"], other_uri, **TINY)
    assert src2["dataset_sha"] == src["dataset_sha"] and not second["cached"]
    assert second["encoder_sha"] == first["encoder_sha"]


def test_changed_config_is_a_new_result(source):
    store_uri, src = source
    a = steps.pretrain(src["dataset_uri"], src["dataset_sha"], store_uri, run_id="a", experiment="new", **TINY)
    b = steps.pretrain(src["dataset_uri"], src["dataset_sha"], store_uri, run_id="b", experiment="new",
                       **{**TINY, "seed": 1})
    assert not b["cached"] and b["encoder_uri"] != a["encoder_uri"]


def test_failed_step_ends_failed_and_retry_reuses_its_run(source, mlflow_db, monkeypatch):
    import uft.ssl.train as train

    store_uri, src = source
    real = train.train_ssl

    def flaky(*args, **kwargs):
        raise RuntimeError("simulated node failure")

    with monkeypatch.context() as m:
        m.setattr(train, "train_ssl", flaky)
        with pytest.raises(RuntimeError):
            steps.pretrain(src["dataset_uri"], src["dataset_sha"], store_uri, run_id="r1", experiment="fail", **TINY)
    assert [r.info.status for r in _runs("fail", "r1", "pretrain")] == ["FAILED"]
    assert train.train_ssl is real
    out = steps.pretrain(src["dataset_uri"], src["dataset_sha"], store_uri, run_id="r1", experiment="fail", **TINY)
    assert not out["cached"]
    assert [r.info.status for r in _runs("fail", "r1", "pretrain")] == ["FINISHED"]


def test_same_run_id_with_changed_config_is_refused_without_touching_the_run(source, mlflow_db):
    store_uri, src = source
    steps.pretrain(src["dataset_uri"], src["dataset_sha"], store_uri, run_id="r1", experiment="clash", **TINY)
    with pytest.raises(UftError) as e:
        steps.pretrain(src["dataset_uri"], src["dataset_sha"], store_uri, run_id="r1", experiment="clash",
                       **{**TINY, "steps": 5})
    one_line_error(e, r"run_id 'r1' was already used with different steps for step pretrain: pass a new run_id")
    assert [r.info.status for r in _runs("clash", "r1", "pretrain")] == ["FINISHED"]


def test_sigterm_ends_the_step_run_failed(mlflow_db):
    with pytest.raises(SystemExit) as e:
        with tracking.step_run("term", "r1", "pretrain", {"steps": 1}):
            os.kill(os.getpid(), signal.SIGTERM)  # what Kubernetes sends a pod it stops
    assert e.value.code == 128 + signal.SIGTERM
    assert [r.info.status for r in _runs("term", "r1", "pretrain")] == ["FAILED"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is only there during the step


def test_sigkilled_step_run_is_ended_by_the_exit_handler(mlflow_db):
    """SIGKILL cannot be caught: the run stays RUNNING until the pipeline's exit handler
    (``finish_parent``) ends such orphans FAILED, or a retry of the step reuses and finishes it."""
    proc = start_worker("hang", "kill", "r1", env=worker_env(MLFLOW_TRACKING_URI=mlflow_db,
                                                             UFT_MLFLOW_ARTIFACTS=os.environ["UFT_MLFLOW_ARTIFACTS"]))
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r.info.status for r in _runs("kill", "r1", "pretrain")] == ["RUNNING"]
    parent = tracking.finish_parent("kill", "r1", "FAILED")
    from mlflow.tracking import MlflowClient

    assert MlflowClient().get_run(parent).info.status == "FAILED"
    assert [r.info.status for r in _runs("kill", "r1", "pretrain")] == ["FAILED"]
