"""kfp.local's task cache under `uft run` (:func:`uft.orchestrate.task_cache.checked_task_cache`): a rerun
starts no process for a cached task, a salt change (code, S3, MLflow parent run) or a deleted or
corrupt output makes the entry a miss, and the runner reports hits as "cached"."""

# no `from __future__ import annotations`: kfp reads the component's annotations as types

import contextlib
import io

from kfp import dsl, local
from kfp.local import cache as cache_module
from kfp.local import status
from kfp.local.orchestrator import task_executor
from kfp.pipeline_spec import pipeline_spec_pb2

from uft.orchestrate.local import _ErrorTap, no_retry_on_bad_input
from uft.orchestrate.task_cache import checked_task_cache
from uft.store import LocalStore, manifest_sha, publish


def _artifact(tmp_path) -> str:
    """A published artifact (one data file + manifest) → its manifest URI."""
    return publish(LocalStore(tmp_path / "store"), "models/x", {"w.bin": b"weights"}, {"kind": "encoder"})


def test_entry_is_salted_and_trusted_only_while_its_outputs_verify(tmp_path):
    uri = _artifact(tmp_path)
    outputs = {"encoder_uri": uri, "encoder_sha": manifest_sha(uri)}
    args = ("comp-pretrain", "img", ["python", "-m", "x"], {"steps": 3})
    with checked_task_cache(tmp_path / "cache", {"UFT_CACHE_PARENT_RUN": "p1"}):
        cache = cache_module.get_local_cache()
        key = cache.compute_key(*args)
        cache.put(key, outputs)
        assert cache.get(key) == outputs
    with checked_task_cache(tmp_path / "cache", {"UFT_CACHE_PARENT_RUN": "p2"}):  # e.g. a wiped mlflow.db
        assert cache_module.get_local_cache().compute_key(*args) != key
    with checked_task_cache(tmp_path / "cache", {"UFT_CACHE_PARENT_RUN": "p1"}):
        cache = cache_module.get_local_cache()
        (tmp_path / "store" / "models" / "x" / "w.bin").write_bytes(b"corrupt")
        assert cache.get(key) is None  # a miss: the task runs and republishes
    assert cache_module.get_local_cache() is None  # restored: kfp.local's cache is off by default


def test_tasks_keyed_at_once_share_one_salt(tmp_path):
    """With UFT_LOCAL_WORKERS the first tasks compute their keys at once: the salt (which makes the
    MLflow parent run) is made once, or their keys would hold different parent runs and a rerun would
    miss some of them (a CI failure of test_identical_rerun_reuses_promote_and_report)."""
    import threading
    import time

    made = []

    def salt():
        made.append(1)
        time.sleep(0.2)  # MLflow's lookup of the parent run: long enough for the other thread to enter
        return {"UFT_CACHE_PARENT_RUN": f"p{len(made)}"}

    with checked_task_cache(tmp_path / "cache", salt):
        cache = cache_module.get_local_cache()
        keys = {}
        threads = [threading.Thread(target=lambda n=n: keys.update({n: cache.compute_key(f"comp-{n}", "img", [], {})}))
                   for n in ("ingest", "ingest-2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(made) == 1, f"the salt was made {len(made)} times"
    assert keys["ingest"] == cache_module.LocalCache(str(tmp_path / "x")).compute_key(
        "comp-ingest", "img", [], {}, {"UFT_CACHE_PARENT_RUN": "p1"})


def test_runner_reports_a_call_without_a_process_as_cached(monkeypatch):
    events = []
    tap = _ErrorTap(io.StringIO(), quiet=True, on_event=lambda t, s: events.append((t, s)))

    def fake(*, task_name, task_spec, **kw):  # kfp answering from its cache: no "Executing task" line
        return {"Output": "x"}, status.Status.SUCCESS

    monkeypatch.setattr(task_executor, "execute_single_task", fake)
    with no_retry_on_bad_input(tap):
        assert task_executor.execute_single_task(task_name="report", task_spec=pipeline_spec_pb2.PipelineTaskSpec())[1] == status.Status.SUCCESS
    assert events == [("report", "started"), ("report", "cached")]


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def echo(uri: str, metrics: dsl.Output[dsl.Metrics]) -> str:
    metrics.log_metric("x", 1.0)  # metadata only, as the evaluation steps' metrics: kfp.local writes no file
    return uri


@dsl.pipeline(name="cache-probe")
def probe(uri: str):
    echo(uri=uri).set_caching_options(True)


def test_real_kfp_local_rerun_starts_no_process_until_an_output_breaks(tmp_path):
    """Through kfp.local itself (SubprocessRunner): catches a kfp release that stops consulting
    ``kfp.local.cache.get_local_cache``, which would silently turn the task cache off."""
    uri = _artifact(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)

    def run() -> list:
        events = []
        tap = _ErrorTap(io.StringIO(), quiet=True, on_event=lambda t, s: events.append(s))
        with checked_task_cache(tmp_path / "cache", {"UFT_CACHE_PARENT_RUN": "p"}), \
                contextlib.redirect_stdout(tap), contextlib.redirect_stderr(tap), no_retry_on_bad_input(tap):
            probe(uri=uri)
        return events

    assert run() == ["started", "success"]  # executed: a process ran
    assert run() == ["started", "cached"]  # answered from the cache
    (tmp_path / "store" / "models" / "x" / "w.bin").unlink()
    assert run() == ["started", "success"]  # the output is gone: the task runs again


def test_ingest_of_bundled_data_may_be_cached_user_data_never():
    """Bundled datasets never change, so their ingest joins the task cache; an ImageFolder or s3://
    spec may hold new data under the same name and keeps the pipeline's caching off."""
    from kfp.local import io as kfp_io

    from uft.orchestrate.task_cache import cache_bundled_ingest

    def ingest_spec(spec: str) -> pipeline_spec_pb2.PipelineTaskSpec:
        t = pipeline_spec_pb2.PipelineTaskSpec()
        t.component_ref.name = "comp-ingest-2"
        t.inputs.parameters["spec"].runtime_value.constant.string_value = spec
        t.caching_options.enable_cache = False
        return t

    store = kfp_io.IOStore()
    assert cache_bundled_ingest(ingest_spec("mnist"), store).caching_options.enable_cache
    for user in ("/data/my_images", "s3://bucket/images", "mnist#unlabelled"):
        assert not cache_bundled_ingest(ingest_spec(user), store).caching_options.enable_cache, user
    other = ingest_spec("mnist")
    other.component_ref.name = "comp-promote"  # only ingest tasks
    assert not cache_bundled_ingest(other, store).caching_options.enable_cache


def test_code_fingerprint_follows_task_code_not_driver_code(tmp_path, monkeypatch):
    """Copies of the three packages: an edit in a step changes the fingerprint, one in the CLI not."""
    import shutil
    import sys
    from pathlib import Path

    import components
    import pipelines
    import uft
    from uft.orchestrate import task_cache as runner

    for pkg in (uft, components, pipelines):
        shutil.copytree(Path(pkg.__file__).parent, tmp_path / pkg.__name__, ignore=shutil.ignore_patterns("__pycache__"))
        monkeypatch.setattr(sys.modules[pkg.__name__], "__file__", str(tmp_path / pkg.__name__ / "__init__.py"))
    base = runner.code_fingerprint()
    (tmp_path / "uft" / "cli" / "local.py").write_text((tmp_path / "uft" / "cli" / "local.py").read_text() + "\n# driver edit\n")
    assert runner.code_fingerprint() == base
    (tmp_path / "uft" / "steps" / "train.py").write_text((tmp_path / "uft" / "steps" / "train.py").read_text() + "\n# step edit\n")
    assert runner.code_fingerprint() != base


def test_key_follows_the_content_of_the_manifests_a_task_reads(tmp_path):
    """promote republishes its decision under the same URI: the report reading it must not be reused."""
    store = LocalStore(tmp_path / "store")
    uri = publish(store, "metrics/promote/k", {}, {"kind": "metrics", "metrics": {"promoted": True}})
    with checked_task_cache(tmp_path / "cache", {}):
        cache = cache_module.get_local_cache()
        key = cache.compute_key("comp-report", "img", ["cmd"], {"promote": uri})
        assert cache.compute_key("comp-report", "img", ["cmd"], {"promote": uri}) == key
        publish(store, "metrics/promote/k", {}, {"kind": "metrics", "metrics": {"promoted": False}})
        assert cache.compute_key("comp-report", "img", ["cmd"], {"promote": uri}) != key


def test_salt_survives_the_local_s3_server_changing_port(monkeypatch):
    """The local SeaweedFS gets a new port each run: a salt holding the endpoint made every rerun a miss."""
    from uft.orchestrate.task_cache import cache_salt

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:40001")
    first = cache_salt("uft", "cfg-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:40002")
    assert cache_salt("uft", "cfg-1") == first
    monkeypatch.setenv("UFT_BUCKET", "another-bucket")
    assert cache_salt("uft", "cfg-1") != first


def test_promote_is_reused_only_while_the_registry_is_as_it_left_it(tmp_path, monkeypatch):
    """promote's entry is filed under the registry's state after it ran (its own version and alias
    included): an identical rerun reuses its decision (kfp.local's new job id notwithstanding), and
    another champion in the registry makes it decide again. Real MLflow registry on sqlite."""
    from mlflow.tracking import MlflowClient

    from uft.orchestrate.local import _init_mlflow_db
    from uft.orchestrate.task_cache import registry_state

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _init_mlflow_db(tmp_path, uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    decision = {"Output": _artifact(tmp_path)}

    def args(job: str) -> tuple:
        return "comp-promote", "img", ["cmd"], {"registered_model": "enc", "run_id": "cfg-1", "job_id": job}

    empty = registry_state("enc")
    assert empty == registry_state("enc") and not empty.startswith("unreadable")  # no model yet: a stable state
    with checked_task_cache(tmp_path / "cache", {}):
        cache = cache_module.get_local_cache()
        first = cache.compute_key(*args("job-1"))
        assert cache.get(first) is None
        # what the first run's promote does: register its encoder and make it champion
        client.create_registered_model("enc")
        v1 = client.create_model_version("enc", source=str(tmp_path), tags={"uft.encoder_sha": "a"})
        client.set_registered_model_alias("enc", "champion", v1.version)
        cache.put(first, decision)
        assert registry_state("enc") != empty
        assert cache.get(cache.compute_key(*args("job-2"))) == decision  # the identical rerun: reused
        assert cache.get(cache.compute_key("comp-promote", "img", ["cmd"], {  # another run key: not
            "registered_model": "enc", "run_id": "cfg-2", "job_id": "job-2"})) is None
        # another run's encoder becomes champion: the rerun must decide again
        v2 = client.create_model_version("enc", source=str(tmp_path), tags={"uft.encoder_sha": "b"})
        client.set_registered_model_alias("enc", "champion", v2.version)
        assert cache.get(cache.compute_key(*args("job-3"))) is None


def test_promote_and_report_join_the_task_cache_here_only():
    """The pipeline marks promote and report never-cached (on a cluster nothing keys them on the
    registry); under `uft run` the task cache takes them, and nothing else changes."""
    from uft.orchestrate.task_cache import cache_decided

    for name, on in (("comp-promote", True), ("comp-report", True), ("comp-finalize", False), ("comp-fingerprint", False)):
        t = pipeline_spec_pb2.PipelineTaskSpec()
        t.component_ref.name = name
        t.caching_options.enable_cache = False
        assert cache_decided(t).caching_options.enable_cache == on, name
        assert not t.caching_options.enable_cache  # the pipeline's own spec is left alone
