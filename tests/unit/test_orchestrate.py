"""uft.orchestrate.submit / trigger against a fake KFP client (the only mock: no cluster here);
the trigger's state and target data live on the real local S3 server."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import yaml

from uft.errors import UftError
from uft.orchestrate.submit import kfp_cron, schedule, submit
from uft.orchestrate.trigger import target_hash, trigger

HOST = "http://kfp.example:8080"


def _real_signature(name: str, *args, **kwargs) -> None:
    """The call the fake received must also bind to kfp.Client's own method (names, no extras)."""
    import kfp

    inspect.signature(getattr(kfp.Client, name)).bind(None, *args, **kwargs)


class _FakeApi:
    """The generated API client's ``call_api``, answering ``GET /apis/v1beta1/healthz`` like KFP."""

    def __init__(self, version: str | None):
        self.version, self.calls = version, []

    def call_api(self, resource_path, method, *a, **kw):
        self.calls.append((resource_path, method))
        if self.version is None:
            raise ConnectionError("404 Not Found")
        return {"commit_sha": "abc", "tag_name": self.version, "multi_user": False}


class FakeClient:
    """Records calls the way kfp.Client receives them; uploaded packages are parsed while they exist."""

    def __init__(self, fail: bool = False, version: str | None = "2.15.0", states: dict[str, str] | None = None):
        self.fail = fail
        self._run_api = SimpleNamespace(api_client=_FakeApi(version))
        self.states = states if states is not None else {}
        self.runs: list[dict] = []
        self.recurring: list[dict] = []
        self.deleted: list[str] = []
        self.experiments: dict[str, str] = {}
        self.pipelines: dict[str, str] = {}
        self.versions: dict[str, dict] = {}  # version id -> {name, pipeline_id, spec}

    def _package(self, path: str) -> dict:
        assert Path(path).is_file()
        spec, platform = list(yaml.safe_load_all(Path(path).read_text()))
        assert spec["pipelineInfo"]["name"] == "uft" and "kubernetes" in platform["platforms"]
        return spec

    def get_pipeline_id(self, name):
        _real_signature("get_pipeline_id", name)
        return self.pipelines.get(name)

    def upload_pipeline(self, pipeline_package_path, pipeline_name=None, description=None, namespace=None):
        _real_signature("upload_pipeline", pipeline_package_path, pipeline_name=pipeline_name, description=description,
                        namespace=namespace)
        if self.fail:
            raise ConnectionError("connection refused")
        assert pipeline_name not in self.pipelines, "a pipeline of that name exists: KFP would refuse"
        self.pipelines[pipeline_name] = pid = f"pipeline-{len(self.pipelines) + 1}"
        # KFP makes the first version from the same package, named like the pipeline.
        self.versions[f"v-{len(self.versions) + 1}"] = dict(name=pipeline_name, pipeline_id=pid,
                                                            spec=self._package(pipeline_package_path))
        return SimpleNamespace(pipeline_id=pid, display_name=pipeline_name)

    def upload_pipeline_version(self, pipeline_package_path, pipeline_version_name, pipeline_id=None,
                                pipeline_name=None, description=None):
        _real_signature("upload_pipeline_version", pipeline_package_path, pipeline_version_name,
                        pipeline_id=pipeline_id, pipeline_name=pipeline_name, description=description)
        assert not [v for v in self.versions.values() if v["name"] == pipeline_version_name
                    and v["pipeline_id"] == pipeline_id], "KFP refuses a second version of the same name"
        vid = f"v-{len(self.versions) + 1}"
        self.versions[vid] = dict(name=pipeline_version_name, pipeline_id=pipeline_id, description=description,
                                  spec=self._package(pipeline_package_path))
        return SimpleNamespace(pipeline_version_id=vid, display_name=pipeline_version_name)

    def list_pipeline_versions(self, pipeline_id, page_token="", page_size=10, sort_by="", filter=None):
        _real_signature("list_pipeline_versions", pipeline_id, page_token=page_token, page_size=page_size,
                        sort_by=sort_by, filter=filter)
        rows = [SimpleNamespace(pipeline_version_id=k, display_name=v["name"]) for k, v in self.versions.items()
                if v["pipeline_id"] == pipeline_id]
        return SimpleNamespace(pipeline_versions=rows or None, next_page_token="")

    def run_pipeline(self, experiment_id, job_name, pipeline_package_path=None, params=None, pipeline_id=None,
                     version_id=None, pipeline_root=None, enable_caching=None, cache_key=None, service_account=None):
        _real_signature("run_pipeline", experiment_id, job_name, pipeline_package_path=pipeline_package_path,
                        params=params, pipeline_id=pipeline_id, version_id=version_id, service_account=service_account)
        assert pipeline_package_path is None, "runs start from an uploaded pipeline version, not an inline spec"
        assert self.versions[version_id]["pipeline_id"] == pipeline_id
        self.runs.append(dict(arguments=params, run_name=job_name, experiment_id=experiment_id,
                              experiment_name={v: k for k, v in self.experiments.items()}[experiment_id],
                              service_account=service_account, version_id=version_id,
                              spec=self.versions[version_id]["spec"]))
        run_id = f"run-{len(self.runs)}"
        self.states.setdefault(run_id, "RUNNING")
        return SimpleNamespace(run_id=run_id)

    def get_run(self, run_id):
        _real_signature("get_run", run_id)
        if run_id not in self.states:
            raise RuntimeError(f"(404) Reason: Not Found: run {run_id} not found")
        return SimpleNamespace(run_id=run_id, state=self.states[run_id])

    def create_experiment(self, name, description=None, namespace=None):
        _real_signature("create_experiment", name, description=description, namespace=namespace)
        self.namespace = namespace
        eid = self.experiments.setdefault(name, f"exp-{len(self.experiments) + 1}")
        return SimpleNamespace(experiment_id=eid, display_name=name)

    def list_recurring_runs(self, page_token="", page_size=10, sort_by="", experiment_id=None, namespace=None, filter=None):
        _real_signature("list_recurring_runs", page_token=page_token, page_size=page_size, experiment_id=experiment_id,
                        namespace=namespace)
        rows = [SimpleNamespace(recurring_run_id=r["id"], display_name=r["job_name"]) for r in self.recurring
                if r["experiment_id"] == experiment_id and r["id"] not in self.deleted]
        return SimpleNamespace(recurring_runs=rows or None, next_page_token="")

    def create_recurring_run(self, experiment_id, job_name, pipeline_package_path=None, **kw):
        _real_signature("create_recurring_run", experiment_id, job_name, pipeline_package_path=pipeline_package_path, **kw)
        assert pipeline_package_path is None and kw["version_id"] in self.versions
        self.recurring.append(dict(id=f"rr-{len(self.recurring) + 1}", experiment_id=experiment_id, job_name=job_name, **kw))
        return SimpleNamespace(recurring_run_id=self.recurring[-1]["id"])

    def delete_recurring_run(self, recurring_run_id):
        _real_signature("delete_recurring_run", recurring_run_id)
        self.deleted.append(recurring_run_id)
        return {}


# --- submit / schedule ----------------------------------------------------------------------------

def test_submit_compiles_validates_and_passes_params():
    c = FakeClient()
    run_id = submit(HOST, {"finetune_steps": "100", "target": "s3://uft-artifacts/data/target", "lr": "0.01",
                           "store_uri": "s3://b/uft"}, experiment="uft-prod", client=c)
    assert run_id == "run-1"
    (r,) = c.runs
    # typed by RunConfig / the package's declared inputs; experiment also becomes the MLflow experiment
    assert r["arguments"] == {"finetune_steps": 100, "target": "s3://uft-artifacts/data/target", "lr": 0.01,
                              "store_uri": "s3://b/uft", "experiment": "uft-prod"}
    assert (r["experiment_name"], c.namespace, r["service_account"]) == ("uft-prod", "uft", "uft-pipeline-runner")
    assert set(r["arguments"]) <= set(r["spec"]["root"]["inputDefinitions"]["parameters"])


@pytest.mark.parametrize("params, message", [
    ({"finetune_steps": "0"}, "finetune_steps"),
    ({"ssl_method": "nope"}, "unknown ssl_method"),
    ({"no_such_param": "1"}, "unknown pipeline parameter(s) no_such_param"),
])
def test_submit_rejects_bad_params_before_contacting_kfp(params, message):
    c = FakeClient()
    with pytest.raises(UftError, match=message.replace("(", r"\(").replace(")", r"\)")):
        submit(HOST, params, experiment="uft", client=c)
    assert c.runs == []


def test_submit_turns_cluster_errors_into_one_line():
    with pytest.raises(UftError, match=r"starting a run on KFP at http://kfp.example:8080 failed \(ConnectionError"):
        submit(HOST, {}, client=FakeClient(fail=True))


def test_schedule_creates_a_guarded_recurring_run():
    c = FakeClient()
    rid = schedule(HOST, "0 3 * * *", {"seed": "2"}, experiment="nightly", name="uft-nightly", client=c)
    (r,) = c.recurring
    assert rid == r["id"] and r["experiment_id"] == c.experiments["nightly"] and r["job_name"] == "uft-nightly"
    assert r["cron_expression"] == "0 0 3 * * *"
    assert r["max_concurrency"] == 1 and r["no_catchup"] is True and r["enabled"] is True
    assert r["params"] == {"seed": 2, "experiment": "nightly"} and r["service_account"] == "uft-pipeline-runner"
    # the same name again: refused unless --replace, which swaps the old one out
    with pytest.raises(UftError, match="already exists"):
        schedule(HOST, "0 3 * * *", {}, experiment="nightly", name="uft-nightly", client=c)
    new = schedule(HOST, "30 4 * * 1-5", {}, experiment="nightly", name="uft-nightly", replace=True, client=c)
    assert c.deleted == [rid] and new != rid and c.recurring[-1]["cron_expression"] == "0 30 4 * * 1-5"


@pytest.mark.parametrize("cron, kfp", [
    ("0 3 * * *", "0 0 3 * * *"),
    ("*/15 0-6,22 1,15 JAN-jun mon-FRI", "0 */15 0-6,22 1,15 JAN-jun mon-FRI"),
    ("  5   4 * * 0 ", "0 5 4 * * 0"),
    ("30 0 3 * * ?", "30 0 3 * * ?"),
    ("@daily", "0 0 0 * * *"),
])
def test_cron_becomes_six_fields(cron, kfp):
    assert kfp_cron(cron) == kfp


@pytest.mark.parametrize("cron, message", [
    ("0 3 * *", "has 4 fields"),
    ("", "has 0 fields"),
    ("60 3 * * *", "minute field '60' has '60' outside 0-59"),
    ("0 24 * * *", "hour field"),
    ("0 3 0 * *", "day of month field '0'"),
    ("0 3 * 13 *", "month field"),
    ("0 3 * * 7", "day of week field"),
    ("0 3 * * MOO", "day of week field 'MOO'"),
    ("0 5-3 * * *", "backwards range"),
    ("*/0 * * * *", "step of 0"),
    ("0 ? * * *", "may not be '?'"),
    ("0 3 * * * * *", "has 7 fields"),
])
def test_bad_cron_is_a_clear_error(cron, message):
    with pytest.raises(UftError, match="--cron") as e:
        kfp_cron(cron)
    assert message in str(e.value)
    with pytest.raises(UftError, match="--cron"):  # checked before compiling or calling the cluster
        schedule(HOST, cron, {}, client=FakeClient())


# --- trigger --------------------------------------------------------------------------------------

def _put(bucket: str, key: str, body: bytes) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)


def test_trigger_submits_only_when_the_target_changes(bucket):
    for i in range(3):
        _put(bucket, f"data/target/class{i}/img{i}.png", f"image {i}".encode())
    _put(bucket, "data/target-other/x.png", b"not part of the target")  # a sibling prefix is not the target
    target, store = f"s3://{bucket}/data/target", f"s3://{bucket}/uft"
    c = FakeClient()

    first = trigger(HOST, target, {"store_uri": store}, client=c)
    assert first["changed"] and first["run_id"] == "run-1" and first["objects"] == 3 and first["previous"] is None
    assert c.runs[0]["arguments"]["target"] == target and c.runs[0]["arguments"]["store_uri"] == store
    record = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=first["state"].split("/", 3)[3])["Body"].read())
    assert first["state"].startswith(f"{store}/triggers/") and record["hash"] == first["hash"] and record["run_id"] == "run-1"

    second = trigger(HOST, target, {"store_uri": store}, client=c)
    assert not second["changed"] and second["run_id"] is None and len(c.runs) == 1

    _put(bucket, "data/target/class1/img1.png", b"image 1, relabelled")
    third = trigger(HOST, target, {"store_uri": store}, client=c)
    assert third["changed"] and third["previous"] == first["hash"] and third["run_id"] == "run-2" and len(c.runs) == 2
    assert not trigger(HOST, target, {"store_uri": store}, client=c)["changed"] and len(c.runs) == 2


def test_changing_one_object_changes_the_hash_and_siblings_do_not(bucket):
    _put(bucket, "t/a.png", b"a")
    _put(bucket, "t/b.png", b"b")
    h0, n = target_hash(f"s3://{bucket}/t")
    _put(bucket, "t2/c.png", b"c")
    assert target_hash(f"s3://{bucket}/t/") == (h0, n) == (h0, 2)
    _put(bucket, "t/b.png", b"B")
    assert target_hash(f"s3://{bucket}/t")[0] != h0
    _put(bucket, "t/b.png", b"b")  # same bytes again: same content hash
    assert target_hash(f"s3://{bucket}/t")[0] == h0


def test_failed_submit_records_nothing_and_the_next_call_retries(bucket):
    _put(bucket, "data/target/a.png", b"a")
    target, state = f"s3://{bucket}/data/target", f"s3://{bucket}/state/trigger.json"
    with pytest.raises(UftError, match="starting a run"):
        trigger(HOST, target, {}, state_uri=state, client=FakeClient(fail=True))
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="state/")
    c = FakeClient()
    res = trigger(HOST, target, {}, state_uri=state, client=c)
    assert res["changed"] and res["run_id"] == "run-1" and res["state"] == state and len(c.runs) == 1
    assert not trigger(HOST, target, {}, state_uri=state, client=c)["changed"]


def test_trigger_on_a_local_directory_with_local_state(tmp_path):
    data = tmp_path / "target"
    (data / "0").mkdir(parents=True)
    (data / "0" / "a.png").write_bytes(b"a")
    c = FakeClient()
    state = str(tmp_path / "state")
    assert trigger(HOST, str(data), {}, state_uri=state, client=c)["changed"]
    assert not trigger(HOST, str(data) + "/", {}, state_uri=state, client=c)["changed"]
    (data / "0" / "a.png").write_bytes(b"A")
    assert trigger(HOST, str(data), {}, state_uri=state, client=c)["changed"] and len(c.runs) == 2
    assert c.runs[0]["arguments"]["target"] == str(data.resolve())


@pytest.mark.parametrize("target, params, message", [
    ("", {}, "--target is empty"),
    ("{empty}", {}, "holds no objects"),
    ("{missing}", {}, "is not a directory"),
    ("{data}", {"target": "s3://elsewhere/x"}, "contradicts --target"),
    ("{data}", {"finetune_steps": "-1"}, "finetune_steps"),
])
def test_trigger_bad_input(tmp_path, target, params, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(b"a")
    c = FakeClient()
    target = target.format(empty=tmp_path / "empty", missing=tmp_path / "missing", data=tmp_path / "data")
    with pytest.raises(UftError, match=message):
        trigger(HOST, target, params, state_uri=str(tmp_path / "state"), client=c)
    assert c.runs == [] and not list((tmp_path / "state").glob("*.json"))


def test_cli_commands_report_errors_in_one_line():
    from typer.testing import CliRunner

    from uft.cli import app

    r = CliRunner().invoke(app, ["schedule", "--host", HOST, "--cron", "0 3 * *"])
    assert r.exit_code == 2 and "has 4 fields" in r.output
    r = CliRunner().invoke(app, ["submit", "--host", HOST, "--param", "finetune_steps"])
    assert r.exit_code == 2 and "is not KEY=VALUE" in r.output
    r = CliRunner().invoke(app, ["submit", "--host", "localhost:8080"])
    assert r.exit_code == 2 and "is not a URL" in r.output


# --- sweep ----------------------------------------------------------------------------------------

def test_sweep_grid_is_the_product_of_axes_times_seeds_and_submits_each_point():
    from uft.orchestrate.sweep import describe, expand, parse_axes, submit_all

    axes = parse_axes(["ssl_method=simclr,act", "replay_ratio=0,0.5"])
    configs = expand(axes, [0, 1], {"finetune_steps": "100"})
    assert [describe(c, axes) for c in configs[:3]] == [
        "ssl_method=simclr replay_ratio=0.0 seed=0", "ssl_method=simclr replay_ratio=0.0 seed=1",
        "ssl_method=simclr replay_ratio=0.5 seed=0"]
    assert len(configs) == 8 and len({c.model_dump_json() for c in configs}) == 8
    assert all(c.finetune_steps == 100 for c in configs)

    c = FakeClient()
    ids = submit_all(configs, axes, HOST, "uft-sweep", client=c)
    assert ids == [f"run-{i}" for i in range(1, 9)]
    got = {(r["arguments"]["ssl_method"], r["arguments"]["replay_ratio"], r["arguments"]["seed"]) for r in c.runs}
    assert got == {(m, rr, s) for m in ("simclr", "act") for rr in (0.0, 0.5) for s in (0, 1)}
    assert all(r["experiment_name"] == "uft-sweep" and r["run_name"].startswith("uft sweep ssl_method=") for r in c.runs)


@pytest.mark.parametrize("grid, seeds, fixed, message", [
    (["ssl_method"], [0], {}, "is not KEY=V1,V2"),
    (["ssl_method="], [0], {}, "is not KEY=V1,V2"),
    (["nope=1,2"], [0], {}, "nope: not a pipeline parameter"),
    (["seed=1,2"], [0], {}, "is what --seeds is for"),
    (["lr=0.1", "lr=0.2"], [0], {}, "names lr twice"),
    (["ssl_method=simclr,bogus"], [0], {}, "grid point ssl_method=bogus: .*unknown ssl_method"),
    (["replay_ratio=0.5,1.5"], [0], {}, "grid point replay_ratio=1.5"),
    (["lr=0.1"], [], {}, "--seeds is empty"),
    (["lr=0.1"], [1, 1], {}, "repeats a seed"),
    (["lr=0.1"], [0], {"lr": "0.2"}, "both a --grid axis and a --param"),
])
def test_sweep_rejects_bad_grids_before_running_anything(grid, seeds, fixed, message):
    from uft.orchestrate.sweep import expand, parse_axes

    c = FakeClient()
    with pytest.raises(UftError, match=message):
        expand(parse_axes(grid), seeds, fixed)
    assert c.runs == []


def test_cli_sweep_dry_run_lists_the_runs():
    from typer.testing import CliRunner

    from uft.cli import app

    r = CliRunner().invoke(app, ["sweep", "-g", "mix_op=none,mixup", "--seeds", "0,1,2", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "6 runs in experiment 'uft-sweep'" in r.output and "mix_op=mixup seed=2" in r.output
    r = CliRunner().invoke(app, ["sweep", "-g", "mix_op=none", "--seeds", "a,b", "--dry-run"])
    assert r.exit_code == 2 and "not a comma-separated list of integers" in r.output
