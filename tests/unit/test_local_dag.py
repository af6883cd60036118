"""uft.orchestrate.local_dag: a local run starts every task whose upstream tasks succeeded, up to
``workers`` at a time, as Argo does on a cluster (kubeflow/pipelines argocompiler/dag.go ``depends``:
"<upstream>.Succeeded && …"; argo-workflows workflow/controller/dag.go ``executeDAGTask``), where
kfp.local alone runs them one by one. Real kfp.local pipelines, each task a subprocess."""


import builtins
import contextlib
import functools
import logging
from pathlib import Path

import pytest
from kfp import dsl, local

from uft.errors import UftError
from uft.orchestrate.local_dag import concurrent_dag, default_workers

# No pip install in the command: kfp.local runs such tasks one at a time (subprocess_task_handler.environment).
component = functools.partial(dsl.component, base_image="python:3.11", install_kfp_package=False)


@component
def stamp(name: str, seconds: float, out_dir: str) -> str:
    """Sleep, then write "<start> <end>" to out_dir/name."""
    import pathlib
    import time

    t0 = time.time()
    time.sleep(seconds)
    pathlib.Path(out_dir, name).write_text(f"{t0} {time.time()}")
    return name


@component
def meet(name: str, other: str, out_dir: str) -> str:
    """Say this task has started, wait up to 60 s for ``other`` to say so too; write out_dir/name:
    "met" when it did (the two ran at the same time), else "alone"."""
    import pathlib
    import time

    out = pathlib.Path(out_dir)
    (out / f"{name}.started").touch()
    deadline = time.time() + 60
    while not (out / f"{other}.started").exists() and time.time() < deadline:
        time.sleep(0.05)
    (out / name).write_text("met" if (out / f"{other}.started").exists() else "alone")
    return name


@component
def joined(first: str, second: str, out_dir: str) -> str:
    """Write "<start> <start>" to out_dir/<first><second>: a task that reads both outputs."""
    import pathlib
    import time

    t = time.time()
    pathlib.Path(out_dir, first + second).write_text(f"{t} {t}")
    return first + second


@component
def sleeper(out_dir: str) -> str:
    """Write this process's pid to out_dir/pid, then sleep 60 s."""
    import os
    import pathlib
    import time

    pathlib.Path(out_dir, "pid").write_text(str(os.getpid()))
    time.sleep(60)
    return "slept"


@component
def fails() -> str:
    raise SystemExit(3)


@dsl.pipeline
def fan(out_dir: str):
    a = stamp(name="a", seconds=1.5, out_dir=out_dir)
    b = stamp(name="b", seconds=1.5, out_dir=out_dir)
    joined(first=a.output, second=b.output, out_dir=out_dir)  # "ab": after both


@dsl.pipeline
def rendezvous(out_dir: str):
    a = meet(name="a", other="b", out_dir=out_dir)
    b = meet(name="b", other="a", out_dir=out_dir)
    joined(first=a.output, second=b.output, out_dir=out_dir)


@dsl.pipeline
def long_and_short(out_dir: str):
    sleeper(out_dir=out_dir)
    stamp(name="short", seconds=0.0, out_dir=out_dir)


@dsl.pipeline
def broken(out_dir: str):
    done = stamp(name="finally", seconds=0.0, out_dir=out_dir)
    with dsl.ExitHandler(done):
        bad = fails()
        stamp(name="downstream", seconds=0.0, out_dir=out_dir).after(bad)  # skipped: its upstream failed
        stamp(name="independent", seconds=0.0, out_dir=out_dir)  # still runs, as on a cluster


@pytest.fixture()
def kfp_local(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=False)
    out = tmp_path / "out"
    out.mkdir()
    return out


def _span(out: Path, name: str) -> tuple[float, float]:
    t0, t1 = (float(x) for x in (out / name).read_text().split())
    return t0, t1


def test_independent_tasks_run_at_the_same_time(kfp_local):
    with concurrent_dag(2):
        rendezvous(out_dir=str(kfp_local))
    assert (kfp_local / "a").read_text() == "met" and (kfp_local / "b").read_text() == "met"
    assert (kfp_local / "ab").exists()


def test_a_joining_task_waits_for_both_upstream_tasks(kfp_local):
    with concurrent_dag(2):
        fan(out_dir=str(kfp_local))
    (a0, a1), (b0, b1), (ab0, _) = _span(kfp_local, "a"), _span(kfp_local, "b"), _span(kfp_local, "ab")
    assert ab0 >= max(a1, b1), "the task reading both outputs started before one of them ended"


def test_one_worker_is_kfp_locals_own_one_by_one(kfp_local):
    with concurrent_dag(1):
        fan(out_dir=str(kfp_local))
    (a0, a1), (b0, b1) = _span(kfp_local, "a"), _span(kfp_local, "b")
    assert a1 <= b0 or b1 <= a0


def test_a_failed_task_skips_its_downstream_not_the_rest_and_the_exit_handler_runs(kfp_local):
    with concurrent_dag(2):
        broken(out_dir=str(kfp_local))
    written = {p.name for p in kfp_local.iterdir()}
    assert written == {"independent", "finally"}


def test_kfp_locals_logging_and_print_are_restored_after_concurrent_tasks(kfp_local):
    handlers, printer = logging.getLogger().handlers[:], builtins.print
    with concurrent_dag(2):
        fan(out_dir=str(kfp_local))
        assert builtins.print is not printer  # per-thread indentation while tasks run
    assert logging.getLogger().handlers == handlers
    assert builtins.print is printer


def test_workers_setting_is_checked(monkeypatch):
    monkeypatch.delenv("UFT_LOCAL_WORKERS", raising=False)
    assert default_workers() == 1
    monkeypatch.setenv("UFT_LOCAL_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("UFT_LOCAL_WORKERS", "two")
    with pytest.raises(UftError, match="UFT_LOCAL_WORKERS='two'.*whole number"):
        default_workers()


def test_a_task_ending_first_does_not_take_the_log_handler_from_one_still_running(capsys):
    """kfp.local's per-task logger context, entered by two tasks and left by the first to start
    while the other runs: the other's log lines (its "finished" line, which marks its end) still
    reach kfp's handler. kfp's own context restores the handlers it found on exit: the second
    task's lines were lost."""
    import threading

    from kfp.local import logging_utils

    entered, first_left = threading.Event(), threading.Event()

    def first() -> None:
        with logging_utils.local_logger_context():
            entered.set()
        first_left.set()

    with concurrent_dag(2):
        t = threading.Thread(target=first)
        t.start()
        entered.wait(5)
        with logging_utils.local_logger_context():
            t.join(5)
            assert first_left.is_set()
            logging.info("the second task's line")
    assert "the second task's line" in capsys.readouterr().out


def test_ctrl_c_is_not_held_until_the_running_tasks_end(kfp_local):
    """An interrupt in the caller's thread leaves the scheduler at once (the caller then stops the
    tasks: run_local calls lifecycle.stop_tasks); waiting for the pool would hold it until the
    60 s task ended."""
    import _thread
    import os
    import signal
    import threading
    import time

    pid_file = kfp_local / "pid"

    def interrupt_once_running() -> None:
        deadline = time.time() + 30
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_running, daemon=True).start()
    t0 = time.time()
    try:
        with pytest.raises(KeyboardInterrupt), concurrent_dag(2):
            long_and_short(out_dir=str(kfp_local))
        assert time.time() - t0 < 30
    finally:
        if pid_file.exists():  # what run_local's stop_tasks does: the task's process ends
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        for t in threading.enumerate():  # its thread too, before another test uses kfp.local's logging
            if t.name.startswith("kfp-task"):
                t.join(10)
