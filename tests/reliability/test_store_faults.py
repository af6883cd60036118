"""Object-store faults: the S3 server crashed, or too slow, during a step → a bounded number of
retries with backoff, then one clear line; once the store is back, rerunning completes and nothing is
duplicated or half-published. These tests run their own SeaweedFS (the session's stays up)."""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from unittest import mock

import boto3
import pytest

from tests.reliability.helpers import one_line_error, s3_client
from uft.errors import UftError
from uft.store import S3Store

pytestmark = pytest.mark.s3


class Controller:
    """A private SeaweedFS that a test can crash (SIGKILL) and bring back on the same ports and data."""

    def __init__(self, root):
        from uft.services import Credentials, SeaweedServer

        self.server = SeaweedServer(root / "data", Credentials.load_or_create(root / "creds.json")).start()
        self._client().create_bucket(Bucket="sentinel")
        self._client().put_object(Bucket="sentinel", Key="s", Body=b"s")

    def _client(self):
        from botocore.config import Config

        env = self.server.env()
        return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
                            config=Config(retries={"total_max_attempts": 1}))

    def crash(self) -> None:
        self.server.proc.send_signal(signal.SIGKILL)
        self.server.proc.wait(10)
        self.server.proc = None

    def restart(self, wait: bool = True) -> None:
        """Start again on the same ports and data; ``wait``: until stored objects are readable again
        (the volume server re-registers with the master a few seconds after the S3 API answers)."""
        ports = dict(self.server.ports)  # the same port per flag as before the crash
        with mock.patch("uft.services.free_ports", lambda names: {n: ports[n] for n in names}):
            self.server.start()
        deadline = time.monotonic() + 60
        while wait:
            try:
                self._client().get_object(Bucket="sentinel", Key="s")["Body"].read()
                return
            except Exception:
                assert time.monotonic() < deadline, "restarted SeaweedFS never served its data again"
                time.sleep(0.2)


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    ctl = Controller(tmp_path_factory.mktemp("own-weed"))
    yield ctl
    if ctl.server.proc is not None:
        ctl.crash()  # a scratch server: no need for its graceful (multi-second) shutdown


@pytest.fixture
def weed_env(weed, monkeypatch, fast_retries):
    if weed.server.proc is None:
        weed.restart()
    for k, v in weed.server.env().items():
        monkeypatch.setenv(k, v)
    name = f"f-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=name)
    return weed, name


def _count_requests(store: S3Store) -> list[str]:
    sent: list[str] = []
    store.client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.method))
    return sent


def test_store_down_bounded_retries_then_clear_error_then_recovers(weed_env):
    weed, bucket = weed_env
    store = S3Store(bucket, "p")
    store.put("before", b"kept")
    sent = _count_requests(store)
    weed.crash()
    t0 = time.monotonic()
    with pytest.raises(UftError) as e:
        store.put("k", b"x")
    elapsed = time.monotonic() - t0
    one_line_error(e, rf"object store at {weed.server.endpoint} unreachable or too slow for put s3://{bucket}/p/k "
                      r"after 3 attempts \(EndpointConnectionError\): check that it is running")
    assert len(sent) == 3, sent  # exactly UFT_S3_ATTEMPTS tries: botocore adds none of its own
    assert 0.15 <= elapsed < 10  # backoff 0.05 + 0.1 s between tries, and bounded
    for op in (lambda: store.get("before"), lambda: store.exists("before"), lambda: store.list("")):
        with pytest.raises(UftError, match="unreachable or too slow"):
            op()

    weed.restart()
    assert store.get("before") == b"kept"  # acknowledged writes survive the crash
    store.put("k", b"x")
    assert store.list("") == ["before", "k"]


def test_default_retries_bridge_a_store_restart(weed_env, monkeypatch):
    """The server crashes and is back ~1 s later (then needs a few seconds to serve its data): the
    default backoff (0.5, 1, 2, 4 s over 5 attempts) rides through it without an error."""
    weed, bucket = weed_env
    for k in ("UFT_S3_ATTEMPTS", "UFT_S3_BACKOFF"):
        monkeypatch.delenv(k)
    store = S3Store(bucket, "p")
    store.put("x", b"data")
    weed.crash()
    restarter = threading.Timer(1.0, weed.restart, kwargs={"wait": False})
    restarter.start()
    try:
        t0 = time.monotonic()
        assert store.get("x") == b"data"
        assert time.monotonic() - t0 < 0.5 + 1 + 2 + 4 + 5 * 2
    finally:
        restarter.join()


def test_store_crash_mid_publish_then_rerun_completes_once(weed_env, mlflow_db, monkeypatch):
    """The server dies right after ingest wrote its shard: the step fails with a clear line, no
    manifest or cache record exists, its MLflow run is FAILED; after a restart the same command
    completes, reusing that MLflow run, and the store holds exactly one copy of everything."""
    from mlflow.tracking import MlflowClient

    from uft import steps, tracking
    from uft.data.dataset import load_dataset

    weed, bucket = weed_env
    real_put = S3Store.put
    crashed = []

    def put_then_crash(self, key, data):
        real_put(self, key, data)
        if key.endswith(".parquet") and not crashed:
            crashed.append(self._k(key))
            weed.crash()

    args = dict(role="target", image_size=8, channels=1, limit=60, run_id="r1", experiment="faults")
    with monkeypatch.context() as m:
        m.setattr(S3Store, "put", put_then_crash)
        with pytest.raises(UftError) as e:
            steps.ingest("optdigits", f"s3://{bucket}/u", **args)
    one_line_error(e, r"unreachable or too slow for put .*/manifest\.json after 3 attempts")
    client = MlflowClient()
    exp = tracking.experiment_id("faults")

    def runs():
        return client.search_runs([exp], filter_string="tags.`uft.step` = 'ingest_target'")

    assert [r.info.status for r in runs()] == ["FAILED"]

    weed.restart()
    s3 = s3_client()

    def keys() -> list[str]:
        return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))

    assert crashed and keys() == crashed, "only the shard may exist: no manifest, no cache record"
    out = steps.ingest("optdigits", f"s3://{bucket}/u", **args)
    assert not out["cached"] and len(load_dataset(out["dataset_uri"])) == 60
    after = keys()
    assert sum(k.endswith("manifest.json") for k in after) == 1
    assert sum(k.endswith(".parquet") for k in after) == 1
    assert sum(k.startswith("u/cache/") for k in after) == 1 and len(after) == 3
    assert [r.info.status for r in runs()] == ["FINISHED"]  # the same run, retried: no duplicate

    again = steps.ingest("optdigits", f"s3://{bucket}/u", **args)
    assert again["cached"] and again["dataset_uri"] == out["dataset_uri"]
    assert keys() == after and len(runs()) == 1


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that holds every answer of the upstream server for ``delay`` s."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream, self.delay = upstream, 0.0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delay: float | None) -> None:
        try:
            while data := src.recv(65536):
                time.sleep(self.delay if delay is None else delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.listener.close()


def test_slow_store_times_out_with_bounded_retries_then_works(s3_env, bucket, monkeypatch, fast_retries):
    host, port = s3_env.endpoint.removeprefix("http://").split(":")
    proxy = DelayProxy((host, int(port)))
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("UFT_S3_TIMEOUT", "1")
        store = S3Store(bucket, "slow")
        store.put("a", b"1")
        proxy.delay = 2.5  # every answer now takes longer than the 1 s timeout
        t0 = time.monotonic()
        with pytest.raises(UftError) as e:
            store.get("a")
        elapsed = time.monotonic() - t0
        one_line_error(e, r"unreachable or too slow for get .* after 3 attempts \(ReadTimeoutError\)")
        assert elapsed < 3 * 1.5 + 1, elapsed  # 3 × timeout + backoff, not minutes
        proxy.delay = 0.3  # slow but within the timeout: works
        assert store.get("a") == b"1"
        store.put("b", b"2")
        proxy.delay = 0.0
        assert store.list("") == ["a", "b"]
    finally:
        proxy.close()


@pytest.mark.parametrize("name,value,pattern", [
    ("UFT_S3_ATTEMPTS", "many", r"UFT_S3_ATTEMPTS='many' is not a number"),
    ("UFT_S3_BACKOFF", "-1", r"UFT_S3_BACKOFF='-1' is negative"),
])
def test_retry_settings_are_validated(s3_env, bucket, monkeypatch, name, value, pattern):
    monkeypatch.setenv(name, value)
    with pytest.raises(UftError) as e:
        S3Store(bucket)
    one_line_error(e, pattern)
