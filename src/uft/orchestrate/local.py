"""Run the compiled DAG on this machine with ``kfp.local`` (every step a subprocess), against a
local SeaweedFS S3 server and MLflow on sqlite, both started here unless the environment already
points at others (``AWS_ENDPOINT_URL`` / ``MLFLOW_TRACKING_URI``)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from uft import progress
from uft.config import RunConfig
from uft.errors import UftError
from uft.store import content_key

DEFAULT_BUCKET = "uft-artifacts"


def state_dir() -> Path:
    return Path(os.environ.get("UFT_STATE_DIR", ".uft")).resolve()


@contextlib.contextmanager
def local_services(state: Path, *, start_s3: bool = True) -> Iterator[dict[str, str]]:
    """Start SeaweedFS (unless AWS_ENDPOINT_URL is set) and point MLflow at sqlite; yields the env."""
    from uft.services import start_seaweedfs

    state.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {}
    server = None
    if start_s3 and not os.environ.get("AWS_ENDPOINT_URL"):
        server = start_seaweedfs(state)
        env.update(server.env())
    env.setdefault("MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{state / 'mlflow.db'}"))
    env.setdefault("UFT_MLFLOW_ARTIFACTS", os.environ.get("UFT_MLFLOW_ARTIFACTS", f"s3://{DEFAULT_BUCKET}/mlflow"))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if server is not None:
            server.stop()


@dataclass
class LocalRun:
    run_id: str
    experiment: str
    seconds: float
    parent_run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    report_md: str = ""


class _ErrorTap(io.TextIOBase):
    """Tees the runner's output, remembers the last uft error line a step printed, and reports
    task starts, progress lines (:mod:`uft.progress`) and task ends to ``on_event(task, text)``."""

    pattern = re.compile(r"uft\.errors\.UftError: (.*)")
    _ansi = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, inner, quiet: bool, on_event: Callable[[str, str], None] | None = None):
        self.inner, self.quiet, self.on_event, self.last_error = inner, quiet, on_event, None
        self.current_task: str | None = None

    def write(self, s: str) -> int:
        for line in s.splitlines():
            plain = self._ansi.sub("", line)
            if m := self.pattern.search(plain):
                self.last_error = m.group(1).strip()
            if m := re.search(r"Executing task '([\w-]+)'", plain):
                self.current_task = m.group(1)
                self._emit(self.current_task, "started")
            elif m := re.search(r"Task '([\w-]+)' finished with status (\w+)", plain):
                self._emit(m.group(1), m.group(2).lower())
            elif self.current_task and (ev := progress.parse(plain)):
                self._emit(self.current_task, ev.describe())
        if not self.quiet:
            self.inner.write(s)
        return len(s)

    def _emit(self, task: str, text: str) -> None:
        if self.on_event is not None:
            self.on_event(task, text)

    def flush(self) -> None:
        self.inner.flush()


def derive_run_id(cfg: RunConfig, store_uri: str) -> str:
    """The run key of a config on a store: the same config reruns as the same MLflow runs."""
    return "cfg-" + content_key(store_uri, cfg.model_dump(mode="json"))[:12]


def run_local(cfg: RunConfig, *, store_uri: str = "", experiment: str = "uft", run_id: str = "",
              quiet: bool = True, on_event: Callable[[str, str], None] | None = None,
              extra_params: dict[str, str] | None = None) -> LocalRun:
    """Compile-free local run of :func:`pipelines.uft_pipeline.uft_pipeline` via kfp.local.

    ``extra_params`` (e.g. how the defaults were inferred) join the config on the parent MLflow run.
    ``on_event(task, text)`` hears each task's start ("started"), progress ("pretrain 40/200 ·
    loss 4.1 · eta_s 20") and end ("success"/"failure"), e.g. to drive a status line."""
    from kfp import local

    from pipelines.uft_pipeline import uft_pipeline
    from uft import tracking

    store_uri = store_uri or f"s3://{DEFAULT_BUCKET}/uft"
    run_id = run_id or derive_run_id(cfg, store_uri)
    root = state_dir() / "kfp-root"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    tap = _ErrorTap(sys.stdout, quiet, on_event)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(tap), contextlib.redirect_stderr(tap):
            _quiet_kfp_logs(quiet)
            uft_pipeline(store_uri=store_uri, experiment=experiment, run_id=run_id, **cfg.model_dump())
    except Exception as e:
        msg = tap.last_error or f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        where = f" (step {tap.current_task})" if tap.current_task else ""
        raise UftError(f"pipeline failed{where}: {msg}") from None
    seconds = time.perf_counter() - t0
    # The whole config on the parent run (the DAG's steps each see only their part), so
    # `uft compare`/`uft sweep` can group by any parameter.
    tracking.log_parent_params(experiment, run_id, {**cfg.model_dump(), **(extra_params or {})})
    return collect(run_id, experiment, seconds)


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
    for r in children:
        for k, v in r.data.tags.items():
            if k.endswith("_uri") and v.startswith(("s3://", "/")):
                out.artifacts[f"{r.data.tags.get(tracking.TAG_STEP)}.{k}"] = v
    return out
