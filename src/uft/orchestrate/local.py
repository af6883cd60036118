"""Run the compiled DAG on this machine with ``kfp.local`` (every step a subprocess), against a
local SeaweedFS S3 server and MLflow on sqlite, both started here unless the environment already
points at others (``AWS_ENDPOINT_URL`` / ``MLFLOW_TRACKING_URI``)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from uft import progress
from uft.config import RunConfig
from uft.errors import UftError
from uft.orchestrate import forkserver
from uft.orchestrate.lifecycle import stop_tasks
from uft.orchestrate.local_dag import concurrent_dag, default_workers
from uft.orchestrate.task_cache import cache_bundled_ingest, cache_decided, cache_salt, checked_task_cache
from uft.store import content_key, default_bucket



def state_dir() -> Path:
    return Path(os.environ.get("UFT_STATE_DIR", ".uft")).resolve()


class ServiceEnv(dict):
    """The environment :func:`local_services` set, and :meth:`leave_s3` to start leaving the S3
    server once nothing more will use it (its stop takes about 1 s; the caller reads MLflow meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self._server = None
        self._leaving: threading.Thread | None = None

    def leave_s3(self) -> None:
        """Leave (and, as its last user, stop) the S3 server in the background. The stop itself is
        not waited for (about 1 s, weed's own): a detached reaper ends it, and the next start waits
        for that (:meth:`uft.services.SeaweedServer.stop`); the context's exit waits for the leaving."""
        if self._server is not None and self._leaving is None:
            self._leaving = threading.Thread(target=self._server.stop, kwargs={"wait": False}, name="uft-s3-stop",
                                             daemon=True)
            self._leaving.start()

    def _close(self) -> None:
        if self._leaving is not None:
            self._leaving.join()
        elif self._server is not None:
            self._server.stop()


@contextlib.contextmanager
def local_services(state: Path, *, start_s3: bool = True, say: Callable[[str], None] | None = None) -> Iterator[ServiceEnv]:
    """Start (or share, see :func:`uft.services.start_seaweedfs`) SeaweedFS unless AWS_ENDPOINT_URL
    is set, and point MLflow at sqlite; yields the env (:class:`ServiceEnv`). ``say`` hears one line on
    how the S3 server was obtained (started / shared with a running uft process / reused or replaced after a killed run)."""
    from uft.services import start_seaweedfs

    state.mkdir(parents=True, exist_ok=True)
    env = ServiceEnv()
    server = None
    if start_s3 and not os.environ.get("AWS_ENDPOINT_URL"):
        server = env._server = start_seaweedfs(state)
        env.update(server.env())
        if say is not None and server.note:
            say(server.note)
    env.setdefault("MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{state / 'mlflow.db'}"))
    env.setdefault("UFT_MLFLOW_ARTIFACTS", os.environ.get("UFT_MLFLOW_ARTIFACTS", f"s3://{default_bucket()}/mlflow"))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _init_mlflow_db(state, env["MLFLOW_TRACKING_URI"])
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        env._close()


def _init_mlflow_db(state: Path, uri: str) -> None:
    """Create a new sqlite MLflow db under a lock: two processes creating its schema at once (a
    run and `uft ui` started together) would collide; afterwards sqlite's own locking suffices.
    A new db is a copy of :func:`mlflow_schema_template` (MLflow's migrations take seconds)."""
    import shutil

    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    if db.exists() and db.stat().st_size > 0:
        return
    from uft.services import _locked

    with _locked(state / "mlflow.lock"):
        if db.exists() and db.stat().st_size > 0:
            return
        template = mlflow_schema_template()
        if template is not None:
            tmp = db.with_name(f".{db.name}.tmp{os.getpid()}")
            shutil.copyfile(template, tmp)
            os.replace(tmp, db)
        else:
            _create_mlflow_schema(f"sqlite:///{db}")


def _create_mlflow_schema(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).search_experiments(max_results=1)  # creates and migrates the schema


def mlflow_schema_template() -> Path | None:
    """An empty MLflow sqlite db with this MLflow version's schema, kept beside the installed
    packages (``make install`` writes it) and copied for each new local MLflow store; made here when
    missing, None where it cannot be written (then each new store migrates its own schema)."""
    import importlib.metadata
    import tempfile

    path = Path(sys.prefix) / "share" / "uft" / f"mlflow-schema-{importlib.metadata.version('mlflow')}.db"
    if path.is_file() and path.stat().st_size > 0:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            fresh = Path(tmp) / "schema.db"
            _create_mlflow_schema(f"sqlite:///{fresh}")
            os.replace(fresh, path)  # whole or not at all: a concurrent maker writes the same bytes
    except OSError:
        return None
    return path


@dataclass
class LocalRun:
    run_id: str
    experiment: str
    seconds: float
    parent_run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    report_md: str = ""
    #: Why tasks ran in a fresh interpreter instead of a fork of the warm server, one per such task
    #: (:func:`uft.orchestrate.forkserver.fallbacks`); empty when all were forked or it is off.
    fallbacks: list[str] = field(default_factory=list)
    #: Tasks answered from kfp.local's task cache (no process started), in order.
    cached_tasks: list[str] = field(default_factory=list)
    #: When each task started and ended (``time.time()``): tasks run at once where the DAG allows.
    task_spans: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Seconds each training step (pretrain, ssl_finetune) trained in this run; cached ones left out.
    train_seconds: dict[str, float] = field(default_factory=dict)


class _ErrorTap(io.TextIOBase):
    """Tees the runner's output, remembers the uft error line each task printed and which task
    failed first, and reports task starts, progress lines (:mod:`uft.progress`) and task ends to
    ``on_event(task, text)``.

    Tasks may run at once (:mod:`uft.orchestrate.local_dag`), each in a thread of its own that
    logs its start and prints its process's output: a line belongs to the task its thread started
    last."""

    pattern = re.compile(r"uft\.errors\.(UftError|TransientError): (.*)")
    _ansi = re.compile(r"\x1b\[[0-9;]*m")
    _cpu_line = re.compile(rf"^{forkserver.CPU_LINE} .*\n?", re.M)

    def __init__(self, inner, quiet: bool, on_event: Callable[[str, str], None] | None = None):
        self.inner, self.quiet, self.on_event, self.last_error = inner, quiet, on_event, None
        self.current_task: str | None = None  # the task started last (in any thread)
        self._tls = threading.local()  # per thread: its task and how many executions it logged
        self._lock = threading.Lock()
        self.task_errors: dict[str, str] = {}  # task → the last uft error line it printed
        self.kinds: dict[str, str] = {}  # task → that error's class: UftError (bad input) or TransientError
        self.failed: list[str] = []  # tasks that finished with FAILURE, in order
        self.cached: list[str] = []  # tasks answered from kfp.local's task cache, in order
        self.spans: dict[str, tuple[float, float]] = {}  # task → (start, end), time.time() of its events

    def write(self, s: str) -> int:
        with self._lock:
            for line in s.splitlines():
                plain = self._ansi.sub("", line)
                task = getattr(self._tls, "task", None) or self.current_task
                if m := self.pattern.search(plain):
                    self.last_error = m.group(2).strip()
                    if task:
                        self.task_errors[task], self.kinds[task] = self.last_error, m.group(1)
                if m := re.search(r"Executing task '([\w-]+)'", plain):
                    self.current_task = self._tls.task = m.group(1)
                    self._tls.executions = self.thread_executions() + 1
                    self._emit(self.current_task, "started")
                elif m := re.search(r"Task '([\w-]+)' finished with status (\w+)", plain):
                    if m.group(2).upper() == "FAILURE":
                        self.failed.append(m.group(1))
                    self._emit(m.group(1), m.group(2).lower())
                elif plain.startswith(forkserver.CPU_LINE):  # a forked task's CPU (not in RUSAGE_CHILDREN)
                    self._emit(task or "", plain)
                elif task and (ev := progress.parse(plain)):
                    self._emit(task, ev.describe())
            if not self.quiet:
                self.inner.write(self._cpu_line.sub("", s))
        return len(s)

    def thread_executions(self) -> int:
        """How many task executions the calling thread has logged: a task call that adds none was a cache hit."""
        return getattr(self._tls, "executions", 0)

    def cache_hit(self, task: str) -> None:
        """``task`` was answered from kfp.local's task cache: no process ran (events "started", "cached")."""
        self.cached.append(task)
        self._emit(task, "started")
        if not self.quiet:
            self.inner.write(f"Task '{task}' reused from kfp.local's task cache (no process started)\n")
        self._emit(task, "cached")

    def begin_attempt(self, task: str) -> None:
        self.task_errors.pop(task, None)
        self.kinds.pop(task, None)

    def bad_input(self, task: str) -> bool:
        """Whether ``task``'s last attempt failed on bad input (a UftError, not a TransientError)."""
        return self.kinds.get(task) == "UftError"

    def blame(self) -> tuple[str | None, str | None]:
        """(the task that failed first, its own error line): the exit handler (finalize) runs after
        a failure, so it is blamed only when nothing else failed."""
        culprits = [t for t in self.failed if not t.startswith("finalize")] or self.failed
        task = culprits[0] if culprits else self.current_task
        return task, self.task_errors.get(task or "") or self.last_error

    def _emit(self, task: str, text: str) -> None:
        if text == "started":
            self.spans[task] = (time.time(), float("nan"))
        elif text in ("success", "failure", "cached") and task in self.spans:
            self.spans[task] = (self.spans[task][0], time.time())
        if self.on_event is not None:
            self.on_event(task, text)

    def flush(self) -> None:
        self.inner.flush()


@contextlib.contextmanager
def no_retry_on_bad_input(tap: _ErrorTap) -> Iterator[None]:
    """Make kfp.local's retries (``set_retry`` on every task) skip bad input, and stop starting
    tasks once one has failed.

    kfp.local retries a failed task whatever the cause (``task_executor.execute_single_task`` loops
    ``max_retry_count`` times, sleeping 30 s, 60 s, 120 s here), so a typo cost minutes. Here each
    task first runs once; only when it failed with something other than a
    :class:`~uft.errors.UftError` (a :class:`~uft.errors.TransientError` from the store or MLflow,
    a crash) is it retried, when Argo would retry it on a cluster: the first retry is decided and
    delayed by :func:`uft.orchestrate.backend.next_attempt` (``backoff_max_duration`` a window from
    the first attempt's start, not kfp.local's cap on one backoff), then kfp's own loop runs the
    remaining attempts with Argo's doubling backoff. Under uft's windows, sized to hold every
    attempt (backend.retry_window), Argo retries those too. Not emulated: Argo killing a retry at
    the window's end (``ARGO_DEADLINE``); local attempts have no timeout either.
    After a task has failed for good, the other body tasks are not started (their results could
    not be used); the exit handler still runs and marks the MLflow run FAILED."""
    import copy

    from kfp.local import status
    from kfp.local.orchestrator import task_executor
    from kfp.pipeline_spec import pipeline_spec_pb2

    original = task_executor.execute_single_task
    exit_strategy = pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.TriggerStrategy.ALL_UPSTREAM_TASKS_COMPLETED
    failed: list[str] = []

    def execute_single_task(*, task_name: str, task_spec, **kw):
        is_exit_task = task_spec.trigger_policy.strategy == exit_strategy
        if failed and not is_exit_task:
            tap.write(f"Not starting task '{task_name}': task '{failed[0]}' failed\n")
            return {}, status.Status.FAILURE
        policy = task_spec.retry_policy
        task_spec = cache_decided(cache_bundled_ingest(task_spec, kw.get("io_store")))
        once = copy.deepcopy(task_spec)
        once.ClearField("retry_policy")
        tap.begin_attempt(task_name)
        seen = tap.thread_executions()
        started = time.time()
        outputs, result = original(task_name=task_name, task_spec=once, **kw)
        if result == status.Status.SUCCESS and tap.thread_executions() == seen:
            tap.cache_hit(task_name)
        if result != status.Status.SUCCESS and policy.max_retry_count > 0 and not tap.bad_input(task_name):
            # Whether and when to retry, as Argo decides on a cluster (backoff_max_duration is a
            # window from the first attempt's start there, not kfp.local's cap on one backoff).
            from google.protobuf import json_format

            from uft.orchestrate.backend import RetryStrategy, next_attempt

            strategy = RetryStrategy.from_policy(json_format.MessageToDict(policy))
            decision = next_attempt(strategy, [(started, time.time())], time.time())
            if not decision.retry:
                tap.write(f"Task '{task_name}' failed and is not retried: {decision.reason}\n")
                if not is_exit_task:
                    failed.append(task_name)
                return outputs, result
            first = policy.backoff_duration.seconds if policy.HasField("backoff_duration") else 0
            factor = policy.backoff_factor if policy.backoff_factor > 0 else 2.0
            cap = policy.backoff_max_duration.seconds if policy.HasField("backoff_max_duration") else 3600
            tap.write(f"Task '{task_name}' failed (not on bad input): retrying in {decision.wait_s:.0f} s "
                      f"({policy.max_retry_count} retries left)\n")
            time.sleep(decision.wait_s)
            rest = copy.deepcopy(task_spec)
            rest.retry_policy.max_retry_count = policy.max_retry_count - 1
            rest.retry_policy.backoff_duration.seconds = int(min(first * factor, cap))
            outputs, result = original(task_name=task_name, task_spec=rest, **kw)
        if result != status.Status.SUCCESS and not is_exit_task:
            failed.append(task_name)
        return outputs, result

    task_executor.execute_single_task = execute_single_task
    try:
        yield
    finally:
        task_executor.execute_single_task = original


def derive_run_id(cfg: RunConfig, store_uri: str) -> str:
    """The run key of a config on a store: the same config reruns as the same MLflow runs."""
    return "cfg-" + content_key(store_uri, cfg.model_dump(mode="json"))[:12]


def run_local(cfg: RunConfig, *, store_uri: str = "", experiment: str = "uft", run_id: str = "",
              quiet: bool = True, on_event: Callable[[str, str], None] | None = None,
              extra_params: dict[str, str] | None = None, task_cache: bool | None = None,
              after_tasks: Callable[[], None] | None = None, workers: int | None = None) -> LocalRun:
    """Compile-free local run of :func:`pipelines.uft_pipeline.uft_pipeline` via kfp.local, each
    task a fork of a warm server (:mod:`uft.orchestrate.forkserver`; ``UFT_FORKSERVER=0``: a fresh
    interpreter per task).

    ``task_cache``: reuse tasks from kfp.local's task cache (:func:`checked_task_cache`, under
    ``$UFT_STATE_DIR/kfp-cache``); None = on unless ``UFT_TASK_CACHE=0``. Off, every task runs
    (each still finds its outputs in the step cache of :mod:`uft.steps`).

    ``extra_params`` (e.g. how the defaults were inferred) join the config on the parent MLflow run.
    ``workers``: how many tasks run at once, each as soon as its upstream tasks succeeded, as on a
    cluster (:mod:`uft.orchestrate.local_dag`); None = ``$UFT_LOCAL_WORKERS`` or 1 (one by one).
    ``after_tasks()`` is called once the last task has ended (e.g. :meth:`ServiceEnv.leave_s3`: what
    follows reads MLflow only).
    ``on_event(task, text)`` hears each task's start ("started"), progress ("pretrain 40/200 ·
    loss 4.1 · eta_s 20") and end ("success"/"failure"), e.g. to drive a status line."""
    from kfp import local

    from pipelines.uft_pipeline import uft_pipeline
    from uft import tracking

    store_uri = store_uri or f"s3://{default_bucket()}/uft"
    run_id = run_id or derive_run_id(cfg, store_uri)
    root = state_dir() / "kfp-root"
    root.mkdir(parents=True, exist_ok=True)
    tap = _ErrorTap(sys.stdout, quiet, on_event)
    if task_cache is None:
        task_cache = os.environ.get("UFT_TASK_CACHE", "1").strip() not in ("0", "false", "no", "off")
    t0 = time.perf_counter()
    fallbacks: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            shim = None
            if forkserver.enabled():  # the caller's (`uft run` starts it first), else one for this run
                shim = forkserver.current() or stack.enter_context(forkserver.serving())
            stack.enter_context(forkserver.kfp_tasks_use(shim))  # also keeps kfp from mangling arguments
            if shim is not None:
                # What this process set in its environment since the server started (e.g. torch's
                # inductor cache dir, from the pre-run estimate) must not make every task a fallback.
                stack.enter_context(forkserver.tasks_get_startup_env(shim))
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
            if task_cache:
                stack.enter_context(checked_task_cache(state_dir() / "kfp-cache", lambda: cache_salt(experiment, run_id)))
            stack.enter_context(contextlib.redirect_stdout(tap))
            stack.enter_context(contextlib.redirect_stderr(tap))
            stack.enter_context(no_retry_on_bad_input(tap))
            stack.enter_context(concurrent_dag(default_workers() if workers is None else workers))
            _quiet_kfp_logs(quiet)
            uft_pipeline(store_uri=store_uri, experiment=experiment, run_id=run_id, **cfg.model_dump())
            if shim is not None:
                fallbacks = forkserver.fallbacks(shim)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGHUP under signals_raise()
        stop_tasks()
        with contextlib.suppress(Exception):
            tracking.finish_parent(experiment, run_id, "KILLED")  # step runs left RUNNING end FAILED
        raise
    except Exception as e:
        task, msg = tap.blame()
        msg = msg or f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise UftError(f"pipeline failed (step {task}): {msg}" if task else f"pipeline failed: {msg}") from None
    seconds = time.perf_counter() - t0
    if after_tasks is not None:
        after_tasks()
    # The whole config on the parent run (the DAG's steps each see only their part), so
    # `uft compare`/`uft sweep` can group by any parameter.
    tracking.log_parent_params(experiment, run_id, {**cfg.model_dump(), **(extra_params or {})})
    out = collect(run_id, experiment, seconds)
    out.fallbacks, out.cached_tasks, out.task_spans = fallbacks, list(tap.cached), dict(tap.spans)
    # A task answered from kfp.local's task cache left the first run's MLflow run (and its time) in place.
    out.train_seconds = {k: v for k, v in out.train_seconds.items() if k.replace("_", "-") not in tap.cached}
    return out


def _quiet_kfp_logs(quiet: bool) -> None:
    import logging

    for name in ("kfp", "kfp.local"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)


def collect(run_id: str, experiment: str, seconds: float = 0.0) -> LocalRun:
    """Read a finished run's metrics and artifact URIs back from MLflow."""
    from uft import tracking

    out = LocalRun(run_id, experiment, seconds, None)
    if not tracking.enabled():
        return out
    client = tracking._client()
    exp = tracking.experiment_id(experiment)
    parent = tracking.find_run(exp, run_id, tracking.PARENT)
    if parent is None:
        return out
    out.parent_run_id = parent.info.run_id
    parent = client.get_run(parent.info.run_id)
    out.metrics = dict(parent.data.metrics)
    children = client.search_runs([exp], filter_string=f"tags.`{tracking.TAG_RUN}` = '{run_id}'")
    for r in sorted(children, key=lambda r: r.info.start_time or 0):
        step = r.data.tags.get(tracking.TAG_STEP, "")
        if "train_seconds" in r.data.metrics and r.data.tags.get("cached") != "True":  # trained, not step-cached
            out.train_seconds[step] = float(r.data.metrics["train_seconds"])
        for k, v in r.data.tags.items():
            if k.endswith("_uri") and v.startswith(("s3://", "/")):
                out.artifacts[f"{r.data.tags.get(tracking.TAG_STEP)}.{k}"] = v
    return out
