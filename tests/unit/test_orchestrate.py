"""uft.orchestrate.submit / trigger against a fake KFP client (the only mock: no cluster here);
the trigger's state and target data live on the real local S3 server."""

from __future__ import annotations

import json
import re
from unittest import mock

import boto3
import pytest

from tests.kfp_fake import HOST, FakeClient
from uft.errors import UftError
from uft.orchestrate.submit import kfp_cron, schedule, submit
from uft.orchestrate.trigger import target_hash, trigger


@pytest.fixture(autouse=True)
def _tag_images_allowed(monkeypatch):
    """These tests compile with the default (tag) images; the digest rule has its own tests."""
    monkeypatch.setenv("UFT_ALLOW_UNPINNED_IMAGES", "1")


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


def test_runs_start_from_a_named_versioned_pipeline_with_a_meaningful_name():
    """Deliverable 5: the package becomes a version of pipeline `uft` named by its content hash
    (same code and images: the same version, reused), and the run's name says what it runs."""
    c = FakeClient()
    submit(HOST, {"target": "s3://b/data/target", "ssl_method": "act", "seed": "2", "gpus": "4"}, experiment="prod", client=c)
    submit(HOST, {"seed": "3"}, experiment="prod", client=c)
    assert list(c.pipelines) == ["uft"]
    named = {v["name"] for v in c.versions.values()}
    (version,) = named - {"uft"}
    assert re.fullmatch(r"uft-\d+\.\d+\.\d+-[0-9a-f]{12}", version)
    assert c.runs[0]["version_id"] == c.runs[1]["version_id"] and c.versions[c.runs[0]["version_id"]]["name"] == version
    assert "ghcr.io/" in c.versions[c.runs[0]["version_id"]]["description"]  # the images it pulls
    assert re.fullmatch(r"uft mnist→target act seed=2 gpus=4 \[prod\] · \d{4}-\d\d-\d\d \d\d:\d\dZ", c.runs[0]["run_name"])
    assert c.runs[1]["run_name"].startswith("uft mnist→optdigits simclr seed=3 gpus=1 [prod]")
    # a change to the package (code, images) is another version of the same pipeline
    c.pipelines["uft"], before = c.pipelines["uft"], len(c.versions)
    with mock.patch("uft.orchestrate.submit.pipeline_version_name", return_value="uft-0.1.0-000000000000"):
        submit(HOST, {}, experiment="prod", client=c)
    assert len(c.versions) == before + 1 and list(c.pipelines) == ["uft"] and c.runs[2]["version_id"] != c.runs[0]["version_id"]


@pytest.mark.parametrize("version, stated, message", [
    ("2.3.0", None, "reports version 2.3.0, older than 2.15.0"),
    (None, None, "does not report its version and none was given"),
    (None, "2.14.1", "was stated as version 2.14.1, older than"),
    (None, "latest", "is not a version"),
])
def test_submit_refuses_a_kfp_backend_too_old_for_the_spec(version, stated, message):
    """Defect 5: the compiled spec needs a recent backend; an older one fails obscurely in the
    driver. The check happens before anything is uploaded."""
    c = FakeClient(version=version)
    with pytest.raises(UftError, match=message):
        submit(HOST, {}, client=c, kfp_version=stated)
    with pytest.raises(UftError, match=message):
        schedule(HOST, "0 3 * * *", {}, client=c, kfp_version=stated)
    assert c.runs == [] and c.versions == {} and c.recurring == []


def test_backend_version_reported_or_stated():
    from uft.orchestrate.submit import MIN_KFP_VERSION, check_backend

    assert check_backend(FakeClient(version="2.17.1"), HOST, "2.0.0") == "2.17.1"  # the server's word wins
    assert check_backend(FakeClient(version=None), HOST, "v2.16.0") == "v2.16.0"
    with mock.patch.dict("os.environ", {"UFT_KFP_VERSION": MIN_KFP_VERSION}):
        assert check_backend(FakeClient(version=None), HOST) == MIN_KFP_VERSION


def test_version_and_token_go_over_the_real_kfp_client(monkeypatch):
    """The healthz call and the bearer token through a real kfp.Client against a local HTTP server
    that answers like the KFP API (the only server stand-in: no cluster here)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from uft.orchestrate.submit import backend_version, kfp_client

    seen = []

    class Api(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps({"commit_sha": "x", "tag_name": "2.16.2", "multi_user": True}).encode()
            self.send_response(200 if self.path == "/apis/v1beta1/healthz" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("KFP_TOKEN", "s3cr3t")
        client = kfp_client(f"http://127.0.0.1:{server.server_port}", "team")
        assert backend_version(client) == "2.16.2"
        assert seen[-1] == ("/apis/v1beta1/healthz", "Bearer s3cr3t")
        monkeypatch.delenv("KFP_TOKEN")
        backend_version(kfp_client(f"http://127.0.0.1:{server.server_port}"))
        assert seen[-1] == ("/apis/v1beta1/healthz", None)
    finally:
        server.shutdown()


@pytest.mark.parametrize("gpus", ["0", "9", "1.5", "two"])
def test_gpu_count_is_checked_before_contacting_kfp(gpus):
    c = FakeClient()
    with pytest.raises(UftError, match="gpus"):
        submit(HOST, {"gpus": gpus}, client=c)
    assert c.runs == [] and c.versions == {}


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


def test_a_failed_run_is_retried_and_a_succeeded_one_is_not(bucket):
    """Defect 9: the hash was recorded when KFP accepted the run, so a run that then failed was
    never retried until the data changed. Same data: wait while the run goes, retry after it
    fails or is cancelled, stop once one succeeded."""
    _put(bucket, "data/target/a.png", b"a")
    target, store = f"s3://{bucket}/data/target", f"s3://{bucket}/uft"
    c = FakeClient()
    first = trigger(HOST, target, {"store_uri": store}, client=c)
    assert first["action"] == "submitted" and first["run_id"] == "run-1"
    assert trigger(HOST, target, {"store_uri": store}, client=c)["action"] == "waiting"  # run-1 RUNNING
    c.states["run-1"] = "FAILED"
    retry = trigger(HOST, target, {"store_uri": store}, client=c)
    assert (retry["action"], retry["run_id"], retry["previous_run"], retry["previous_state"]) == ("retried", "run-2", "run-1", "FAILED")
    assert retry["hash"] == first["hash"] and c.runs[1]["run_name"].endswith("(retry)")
    c.states["run-2"] = "CANCELED"
    assert trigger(HOST, target, {"store_uri": store}, client=c)["action"] == "retried" and len(c.runs) == 3
    c.states["run-3"] = "SUCCEEDED"
    done = trigger(HOST, target, {"store_uri": store}, client=c)
    assert done["action"] == "none" and done["previous_state"] == "SUCCEEDED" and len(c.runs) == 3
    record = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=done["state"].split("/", 3)[3])["Body"].read())
    assert record["status"] == "succeeded" and record["run_id"] == "run-3"
    c.states.clear()  # recorded as succeeded: KFP is not asked again (runs may be deleted later)
    assert trigger(HOST, target, {"store_uri": store}, client=c)["action"] == "none" and len(c.runs) == 3


def test_a_run_kfp_no_longer_knows_is_resubmitted(bucket):
    _put(bucket, "t/a.png", b"a")
    c = FakeClient()
    trigger(HOST, f"s3://{bucket}/t", {"store_uri": f"s3://{bucket}/uft"}, client=c)
    del c.states["run-1"]
    res = trigger(HOST, f"s3://{bucket}/t", {"store_uri": f"s3://{bucket}/uft"}, client=c)
    assert res["action"] == "retried" and res["previous_state"] == "MISSING" and len(c.runs) == 2


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


# --- what the cluster path needs (issue: backend contract) ----------------------------------------

def test_images_must_be_pinned_by_digest_unless_allowed(monkeypatch):
    """A tag default (uft:0.1.0-cpu) that no registry holds leaves pods in ImagePullBackOff and the
    run hanging: submit and schedule refuse tags before contacting KFP; a development cluster opts
    in with --allow-unpinned-images."""
    monkeypatch.delenv("UFT_ALLOW_UNPINNED_IMAGES")
    c = FakeClient()
    with pytest.raises(UftError, match=r"not pinned by digest: set UFT_IMAGE and UFT_GPU_IMAGE .*--allow-unpinned-images"):
        submit(HOST, {}, client=c)
    with pytest.raises(UftError, match="not pinned by digest"):
        schedule(HOST, "0 3 * * *", {}, client=c)
    assert c.runs == [] and c.versions == {} and c.recurring == [] and c._run_api.api_client.calls == []
    assert submit(HOST, {}, client=c, allow_unpinned=True) == "run-1"

    from uft.orchestrate.submit import compiled_package, require_pinned_images

    with compiled_package() as path:
        text = path.read_text()
        digest = "@sha256:" + "a" * 64
        for image in require_pinned_images(path, allow_unpinned=True):
            text = text.replace(f"image: {image}\n", f"image: {image.rsplit(':', 1)[0]}{digest}\n")
        path.write_text(text)
        assert all(i.endswith(digest) for i in require_pinned_images(path, allow_unpinned=False))


def test_trigger_stops_retrying_the_same_data_after_max_attempts(bucket):
    """A deterministic failure was retried every 30 minutes forever. Attempts are counted per
    content hash: after max_attempts failed runs the trigger stops (visible: action "stopped", the
    CLI exits 2 naming the runs); --reset-attempts or new data start a fresh budget."""
    from typer.testing import CliRunner

    from uft.cli import app

    _put(bucket, "data/target/a.png", b"a")
    target, store = f"s3://{bucket}/data/target", f"s3://{bucket}/uft"
    c = FakeClient()
    args = dict(client=c, max_attempts=2)
    assert trigger(HOST, target, {"store_uri": store}, **args)["attempts"] == ["run-1"]
    c.states["run-1"] = "FAILED"
    assert trigger(HOST, target, {"store_uri": store}, **args)["attempts"] == ["run-1", "run-2"]
    c.states["run-2"] = "FAILED"
    stopped = trigger(HOST, target, {"store_uri": store}, **args)
    assert stopped["action"] == "stopped" and stopped["run_id"] is None and len(c.runs) == 2
    assert trigger(HOST, target, {"store_uri": store}, **args)["action"] == "stopped" and len(c.runs) == 2
    with mock.patch("uft.orchestrate.trigger.kfp_client", return_value=c):
        r = CliRunner().invoke(app, ["trigger", "--host", HOST, "--target", target, "--param", f"store_uri={store}",
                                     "--max-attempts", "2"])
    out = " ".join(r.output.split())  # rich wraps the line at the terminal width
    assert r.exit_code == 2 and "its 2 runs failed (run-1, run-2" in out and "--reset-attempts" in out
    again = trigger(HOST, target, {"store_uri": store}, reset_attempts=True, **args)
    assert again["action"] == "retried" and again["attempts"] == ["run-3"]
    c.states["run-3"] = "FAILED"
    _put(bucket, "data/target/b.png", b"b")  # new data: a fresh budget
    new = trigger(HOST, target, {"store_uri": store}, **args)
    assert new["action"] == "submitted" and new["attempts"] == ["run-4"]
    with pytest.raises(UftError, match="--max-attempts 0 must be at least 1"):
        trigger(HOST, target, {"store_uri": store}, client=c, max_attempts=0)
