"""Local runs clean up after themselves and coexist: the SeaweedFS of a state directory is shared
by every uft process using it and stopped by the last one; a server left behind by a killed process
is reused when it answers and replaced when it does not; a pid file never makes uft kill a process
that is not its server. Real processes and a real SeaweedFS (tests/reliability/_worker.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.helpers import WORKER
from uft.services import RECORD, is_weed_of, pid_alive

pytestmark = pytest.mark.s3


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "UFT_"))}
    return {**env, "UFT_STATE_DIR": str(state)}


class Holder:
    """A process holding the state directory's S3 server (worker mode ``services``)."""

    def __init__(self, state: Path):
        self.proc = subprocess.Popen([sys.executable, str(WORKER), "services", str(state)], env=_env(state),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        assert line, f"worker died: {self.proc.stderr.read()[-3000:]}"
        self.info = json.loads(line)

    def leave(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(60) == 0, self.proc.stderr.read()[-3000:]

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


def _wait_gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not pid_alive(pid)


def _healthy(state: Path, endpoint: str) -> bool:
    from uft.services import Credentials, SeaweedServer

    server = SeaweedServer(state / "s3", Credentials.load_or_create(state / "s3-credentials.json"))
    server.ports = {"s3.port": int(endpoint.rsplit(":", 1)[1])}
    return server.healthy(timeout=5)


def test_two_processes_share_one_server_and_the_last_stops_it(tmp_path):
    state = tmp_path / "state"
    a = Holder(state)
    try:
        assert a.info["note"].startswith("local S3: started (pid")
        b = Holder(state)
        assert b.info["note"].startswith(f"local S3: sharing the server of another running uft process (pid {a.info['pid']}")
        assert b.info["endpoint"] == a.info["endpoint"]
        b.leave()
        assert pid_alive(a.info["pid"]) and _healthy(state, a.info["endpoint"])  # A still uses it
    finally:
        a.leave()
    assert _wait_gone(a.info["pid"]) and not (state / "s3" / RECORD).exists()


@pytest.mark.parametrize("pid_file", [True, False], ids=["pid-file", "found-in-proc"])
def test_server_left_by_a_killed_run_is_reused_then_stopped(tmp_path, pid_file):
    state = tmp_path / "state"
    a = Holder(state)
    a.kill()  # SIGKILL: no cleanup at all
    pid = a.info["pid"]
    try:
        assert is_weed_of(pid, state / "s3")  # left behind, as after `kill -9 uft run`
        if not pid_file:  # as a server left by a uft from before weed.json: found by its -dir
            (state / "s3" / RECORD).unlink()
        b = Holder(state)
        assert b.info["note"] == f"local S3: reusing the server an earlier run left running (pid {pid}, {a.info['endpoint']})"
        b.leave()
        assert _wait_gone(pid)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_unresponsive_leftover_server_is_replaced(tmp_path):
    state = tmp_path / "state"
    a = Holder(state)
    a.kill()
    old = a.info["pid"]
    os.kill(old, signal.SIGSTOP)  # still there, answers nothing
    try:
        b = Holder(state)
        assert b.info["note"].startswith(f"local S3: stopped an unresponsive server an earlier run left running (pid {old}); "
                                         "started a new one (pid")
        assert _wait_gone(old) and b.info["pid"] != old and _healthy(state, b.info["endpoint"])
        b.leave()
        assert _wait_gone(b.info["pid"])
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            if pid_alive(old):
                os.kill(old, sig)


def test_pid_file_of_another_process_is_never_acted_on(tmp_path):
    state = tmp_path / "state"
    (state / "s3").mkdir(parents=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (state / "s3" / RECORD).write_text(json.dumps({"pid": bystander.pid, "ports": {"s3.port": 1}}))
        a = Holder(state)
        assert a.info["note"].startswith("local S3: started (pid") and a.info["pid"] != bystander.pid
        a.leave()
        assert bystander.poll() is None  # untouched
    finally:
        bystander.kill()
        bystander.wait()


def test_what_was_written_before_a_stop_is_read_after_the_next_start(tmp_path):
    """The server starts with ``-volume.preStopSeconds=0`` (a stop takes about 1 s instead of 2: the
    pause only serves a cluster's master rerouting writes, and a local run stops its server after
    its last write). A stop must still lose nothing: what a run wrote is read by the next run."""
    import boto3

    from uft.services import start_seaweedfs

    server = start_seaweedfs(tmp_path)
    env = server.env()
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    s3.create_bucket(Bucket="durable")
    body = os.urandom(300_000)
    s3.put_object(Bucket="durable", Key="run/1/model.bin", Body=body)
    assert "-volume.preStopSeconds=0" in Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode().split("\0")
    server.stop()
    again = start_seaweedfs(tmp_path)
    try:
        env = again.env()
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        assert s3.get_object(Bucket="durable", Key="run/1/model.bin")["Body"].read() == body
    finally:
        again.stop()


def _client(env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def test_a_stop_that_hangs_is_cut_short_and_a_killed_server_loses_nothing(tmp_path):
    """weed mini's graceful stop can hang in its admin after a run (uft.services.STOP_GRACE_S):
    a stuck server (here SIGSTOPped, so it cannot answer SIGTERM) is killed after the grace, not
    waited on, and everything it acknowledged before is read back by the next start."""
    from uft.services import STOP_GRACE_S, start_seaweedfs

    server = start_seaweedfs(tmp_path)
    s3 = _client(server.env())
    s3.create_bucket(Bucket="durable")
    bodies = {f"run/{i}/part.bin": os.urandom(50_000 + i) for i in range(20)}
    for key, body in bodies.items():
        s3.put_object(Bucket="durable", Key=key, Body=body)
    s3.put_object(Bucket="durable", Key="run/0/part.bin", Body=b"overwritten")  # the filer's metadata changes too
    bodies["run/0/part.bin"] = b"overwritten"
    pid = server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    server.stop()
    took = time.monotonic() - started
    assert not pid_alive(pid)
    assert STOP_GRACE_S <= took < STOP_GRACE_S + 5, took
    again = start_seaweedfs(tmp_path)
    try:
        s3 = _client(again.env())
        for key, body in bodies.items():
            assert s3.get_object(Bucket="durable", Key=key)["Body"].read() == body, key
    finally:
        again.stop()


def test_grpc_ports_are_http_ports_plus_10000():
    """weed derives a gRPC port as HTTP port + 10000 wherever it is not told (its worker dials the
    admin so, whatever admin.port.grpc says): the ports uft chooses follow the same rule."""
    from uft.services import _PORT_FLAGS, free_ports

    for _ in range(20):
        ports = free_ports(_PORT_FLAGS)
        assert len(set(ports.values())) == len(ports)
        for name in _PORT_FLAGS:
            if name.endswith(".grpc"):
                assert ports[name] == ports[name.removesuffix(".grpc")] + 10000, (name, ports)


def test_leaving_s3_early_stops_it_while_the_caller_goes_on(tmp_path):
    """`uft run` leaves the S3 server as soon as its last task has ended (what follows reads
    MLflow only), and does not wait for weed's own stop (about 1 s): a detached reaper ends it,
    within the grace, also when it hangs; the next start, at once, waits for it and then finds
    everything written before."""
    from uft.orchestrate.local import local_services
    from uft.services import STOP_GRACE_S, start_seaweedfs

    for hang in (False, True):
        with local_services(tmp_path) as env:
            pid = env._server.pid
            s3 = _client(env)
            with contextlib.suppress(Exception):
                s3.create_bucket(Bucket="durable")
            s3.put_object(Bucket="durable", Key=f"hang-{hang}", Body=b"kept")
            if hang:
                os.kill(pid, signal.SIGSTOP)  # cannot answer SIGTERM, as when weed's admin hangs
            started = time.monotonic()
            env.leave_s3()
            env.leave_s3()  # once only
        assert time.monotonic() - started < 0.5  # neither the leaving nor the exit waited for the stop
        assert os.environ.get("AWS_ENDPOINT_URL") != env["AWS_ENDPOINT_URL"]  # the env is restored
        again = start_seaweedfs(tmp_path)  # at once: waits for the old server to be gone
        try:
            assert not pid_alive(pid) and again.pid != pid
            assert again.note.startswith("local S3: started"), again.note  # not a dying server adopted or replaced
            assert time.monotonic() - started < STOP_GRACE_S + 5
            s3 = _client(again.env())
            for key in ["hang-False", "hang-True"][:1 + hang]:
                assert s3.get_object(Bucket="durable", Key=key)["Body"].read() == b"kept"
        finally:
            again.stop()
