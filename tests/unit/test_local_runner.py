"""kfp.local under `uft run`: bad input is not retried, transient faults are, the first failed task
(not the exit handler) is blamed, a second run in the same state directory is refused at once."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from kfp.local import status
from kfp.local.orchestrator import task_executor
from kfp.pipeline_spec import pipeline_spec_pb2

from uft.orchestrate.lifecycle import run_lock
from uft.orchestrate.local import _ErrorTap, no_retry_on_bad_input

EXIT = pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.TriggerStrategy.ALL_UPSTREAM_TASKS_COMPLETED


def _spec(retries: int = 3, exit_task: bool = False) -> pipeline_spec_pb2.PipelineTaskSpec:
    spec = pipeline_spec_pb2.PipelineTaskSpec()
    spec.retry_policy.max_retry_count = retries
    spec.retry_policy.backoff_duration.seconds = 0
    if exit_task:
        spec.trigger_policy.strategy = EXIT
    return spec


@pytest.fixture
def runner(monkeypatch):
    """A fake kfp task executor: each call prints what the task's attempt printed and returns its status."""
    tap = _ErrorTap(io.StringIO(), quiet=True)
    calls: list[tuple[str, int]] = []
    script: dict[str, list[tuple[str, status.Status]]] = {}

    def fake(*, task_name, task_spec, **kw):
        calls.append((task_name, task_spec.retry_policy.max_retry_count))
        attempts = script[task_name]
        for _ in range(task_spec.retry_policy.max_retry_count + 1):  # kfp's own retry loop
            tap.write(f"Executing task '{task_name}'\n")
            out, st = attempts.pop(0)
            tap.write(out + f"\nTask '{task_name}' finished with status {'SUCCESS' if st == status.Status.SUCCESS else 'FAILURE'}\n")
            if st == status.Status.SUCCESS or not attempts:
                return {}, st
        return {}, st

    monkeypatch.setattr(task_executor, "execute_single_task", fake)

    def run(name: str, spec, attempts) -> status.Status:
        script[name] = list(attempts)
        with no_retry_on_bad_input(tap):
            return task_executor.execute_single_task(task_name=name, task_spec=spec)[1]

    return tap, calls, run


OK, FAIL = status.Status.SUCCESS, status.Status.FAILURE
BAD = ("uft.errors.UftError: dataset path /x does not exist: pass an ImageFolder directory", FAIL)
FLAKY = ("uft.errors.TransientError: object store at http://s3 unreachable or too slow", FAIL)


def test_bad_input_runs_once(runner):
    tap, calls, run = runner
    assert run("ingest", _spec(3), [BAD, BAD, BAD, BAD]) == FAIL
    assert calls == [("ingest", 0)]  # one attempt, kfp's retries cleared
    assert tap.blame() == ("ingest", "dataset path /x does not exist: pass an ImageFolder directory")


def test_transient_fault_gets_the_remaining_retries(runner):
    tap, calls, run = runner
    assert run("ingest", _spec(3), [FLAKY, FLAKY, ("", OK)]) == OK
    assert calls == [("ingest", 0), ("ingest", 2)]


def test_a_crash_without_uft_error_is_retried_too(runner):
    tap, calls, run = runner
    assert run("pretrain", _spec(1), [("Killed", FAIL), ("", OK)]) == OK
    assert calls == [("pretrain", 0), ("pretrain", 0)]


def test_one_run_stops_starting_tasks_after_a_failure(monkeypatch):
    tap = _ErrorTap(io.StringIO(), quiet=True)
    ran: list[str] = []

    def fake(*, task_name, task_spec, **kw):
        ran.append(task_name)
        tap.write(f"Executing task '{task_name}'\n")
        if task_name == "ingest":
            tap.write(BAD[0] + "\nTask 'ingest' finished with status FAILURE\n")
            return {}, FAIL
        tap.write(f"Task '{task_name}' finished with status FAILURE\n")  # the exit handler sees the failed run
        return {}, FAIL if task_name.startswith("finalize") else OK

    monkeypatch.setattr(task_executor, "execute_single_task", fake)
    with no_retry_on_bad_input(tap):
        ex = task_executor.execute_single_task
        assert ex(task_name="ingest", task_spec=_spec(3))[1] == FAIL
        assert ex(task_name="ingest-2", task_spec=_spec(3))[1] == FAIL  # not started
        assert ex(task_name="finalize", task_spec=_spec(0, exit_task=True))[1] == FAIL
    assert ran == ["ingest", "finalize"]
    task, msg = tap.blame()
    assert task == "ingest" and msg.startswith("dataset path /x does not exist")  # not "finalize"


def test_second_run_in_the_same_state_is_refused(tmp_path):
    with run_lock(tmp_path, "uft run"):
        code = ("import sys; from pathlib import Path; from uft.orchestrate.lifecycle import run_lock\n"
                f"with run_lock(Path({str(tmp_path)!r})): print('got it')")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "got it" not in out.stdout
        assert f"another uft run (pid {os.getpid()}, started" in out.stderr and "UFT_STATE_DIR=" in out.stderr
    with run_lock(tmp_path):  # released: the next one gets it
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()


def test_lock_of_a_dead_run_does_not_block(tmp_path):
    code = ("import os; from pathlib import Path; from uft.orchestrate.lifecycle import run_lock\n"
            f"with run_lock(Path({str(tmp_path)!r})): os._exit(9)")  # dies holding it, no cleanup
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 9
    with run_lock(tmp_path):
        pass

