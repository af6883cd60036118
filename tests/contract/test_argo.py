"""Retries as Argo runs them under KFP: the compiler (backend/src/v2/compiler/argocompiler/
container.go, getTaskRetryParametersWithValues + getTaskRetryStrategyFromInput, 2.15.0 and 2.17.0)
turns a task's ``retryPolicy`` into an Argo ``retryStrategy``, ``backoffMaxDuration`` becoming
``backoff.maxDuration``. Argo (workflow/controller/operator.go, processNodeRetries, v3.7.3 under
KFP 2.15 and v4.0.5 under 2.17) measures that as ONE window from the first attempt's start: past
it no retry ("Max duration limit exceeded"), a backoff ending past it no retry ("Backoff would
exceed max duration limit"), and a retry that starts is killed when it ends (executionDeadline →
``ARGO_DEADLINE``, workflowpod.go; executor.go monitorDeadline). It is not a cap on one backoff
(kfp.local's reading). test_citations.py holds the quoted lines."""

from __future__ import annotations

import io

import pytest

from tests.contract.conftest import container_tasks
from uft.orchestrate.backend import RETRY_SLACK_S, RetryStrategy, next_attempt, retry_window

#: The policy uft compiled before this was read (600 s "max backoff"), as Argo sees it.
OLD = RetryStrategy(limit=3, duration_s=30, factor=2, max_duration_s=600)


def test_the_window_counts_from_the_first_attempt_and_bounds_every_retry():
    t0 = 1_000_000.0
    # an attempt that ran (hung) longer than the window is never retried: killed once, run failed
    d = next_attempt(OLD, [(t0, t0 + 700)], now=t0 + 701)
    assert (d.retry, d.reason) == (False, "Max duration limit exceeded")
    # failing 580 s in: the 30 s backoff would end past the window
    assert next_attempt(OLD, [(t0, t0 + 580)], now=t0 + 580).reason == "Backoff would exceed max duration limit"
    # an early failure is retried after 30 s, and the retry is killed at t0 + 600 (not 600 s after it starts)
    d = next_attempt(OLD, [(t0, t0 + 60)], now=t0 + 60)
    assert d.retry and d.wait_s == 30 and d.deadline == t0 + 600
    # a second failure is judged against the FIRST attempt's start: 560 s in, a 60 s backoff ends past 600
    d = next_attempt(OLD, [(t0, t0 + 500), (t0 + 530, t0 + 560)], now=t0 + 560)
    assert (d.retry, d.reason) == (False, "Backoff would exceed max duration limit")
    assert next_attempt(OLD, [(t0, t0 + 10), (t0 + 40, t0 + 50)], now=t0 + 50).deadline == t0 + 600
    # backoffs double: 30, 60, 120 s; after limit retries, no more
    attempts = [(t0, t0 + 1), (t0 + 31, t0 + 32), (t0 + 92, t0 + 93)]
    assert next_attempt(OLD, attempts, now=t0 + 93).wait_s == 120
    assert next_attempt(OLD, attempts + [(t0 + 213, t0 + 214)], now=t0 + 214).reason == "No more retries left"
    # no maxDuration: no window, only the count
    assert next_attempt(RetryStrategy(1, 30, 2, None), [(t0, t0 + 10**6)], now=t0 + 10**6).deadline is None


def test_the_compiled_policy_compiles_to_argo_s_fields():
    """container.go passes ``GetBackoffMaxDuration().Seconds`` as ``backoff.maxDuration`` (seconds)."""
    s = RetryStrategy.from_policy({"maxRetryCount": 3, "backoffDuration": "30s", "backoffFactor": 2.0,
                                   "backoffMaxDuration": "600s"})
    assert s == OLD
    assert RetryStrategy.from_policy({}) is None


def _hang_every_attempt(strategy: RetryStrategy, timeout: int) -> list[tuple[float, float, float | None]]:
    """Attempts of a step that hangs until killed each time: (start, end, Argo's deadline)."""
    t, deadline, out = 0.0, None, []
    attempts: list[tuple[float, float]] = []
    while True:
        start = t + RETRY_SLACK_S  # scheduling and image pull before the pod's own clock starts
        end = start + timeout if deadline is None else min(start + timeout, deadline)
        attempts.append((t, end))
        out.append((start, end, deadline))
        d = next_attempt(strategy, attempts, now=end)
        if not d.retry:
            return out
        t, deadline = end + d.wait_s, d.deadline


def test_every_step_gets_each_retry_with_its_full_timeout(compiled):
    """What docs/deploy.md says: each attempt gets the step's timeout afresh; CPU steps retry 3
    times, GPU steps once, the exit handler never. Simulated with Argo's rules on the compiled
    policy and timeout of every task, each attempt hanging until killed."""
    spec, executors = compiled
    seen = {}
    for name, (_, task) in container_tasks(spec).items():
        ex = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]
        timeout = int(ex["activeDeadlineSeconds"])
        strategy = RetryStrategy.from_policy(task.get("retryPolicy", {}))
        if name == "finalize":
            assert strategy is None
            continue
        gpu = "accelerator" in spec["deploymentSpec"]["executors"][ex_label(spec, task)]["container"].get("resources", {})
        assert strategy.limit == (1 if gpu else 3), name
        assert strategy.max_duration_s == retry_window(timeout, strategy.limit, 30, 2.0), name
        runs = _hang_every_attempt(strategy, timeout)
        assert len(runs) == strategy.limit + 1, f"{name}: {len(runs)} attempts"
        assert all(end - start == timeout for start, end, _ in runs), f"{name}: a retry was cut short by the window"
        seen[name] = strategy.limit
    assert seen["pretrain"] == seen["ssl-finetune"] == seen["holistic"] == 1 and seen["ingest"] == 3


def test_the_old_600s_window_would_kill_a_retry_early_and_never_retry_a_hung_step():
    """The same simulation on the policy uft had: a 4 h CPU step hangs once and is never retried."""
    assert len(_hang_every_attempt(OLD, 4 * 3600)) == 1


def ex_label(spec: dict, task: dict) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def test_the_local_runner_retries_as_argo_would(monkeypatch):
    """uft.orchestrate.local.no_retry_on_bad_input decides the first retry with next_attempt: a
    first attempt that ran past the window is not retried, as on a cluster."""
    from kfp.local import status
    from kfp.local.orchestrator import task_executor
    from kfp.pipeline_spec import pipeline_spec_pb2

    import uft.orchestrate.local as local_mod
    from uft.orchestrate.local import _ErrorTap, no_retry_on_bad_input

    clock = iter(range(0, 10**6, 1000))  # every time.time() call 1000 s later
    monkeypatch.setattr(local_mod.time, "time", lambda: float(next(clock)))
    monkeypatch.setattr(local_mod.time, "sleep", lambda s: None)
    calls = []

    def fake(*, task_name, task_spec, **kw):
        calls.append(task_spec.retry_policy.max_retry_count)
        return {}, status.Status.FAILURE

    monkeypatch.setattr(task_executor, "execute_single_task", fake)
    tap = _ErrorTap(io.StringIO(), quiet=True)
    spec = pipeline_spec_pb2.PipelineTaskSpec()
    spec.retry_policy.max_retry_count = 3
    spec.retry_policy.backoff_duration.seconds = 30
    spec.retry_policy.backoff_factor = 2
    for window, want in ((600, [0]), (10**5, [0, 2])):
        calls.clear()
        spec.retry_policy.backoff_max_duration.seconds = window
        with no_retry_on_bad_input(tap):
            assert task_executor.execute_single_task(task_name="ingest", task_spec=spec)[1] == status.Status.FAILURE
        assert calls == want, (window, calls)


@pytest.mark.parametrize("timeout,retries", [(4 * 3600, 3), (24 * 3600, 1)])
def test_retry_window_holds_all_attempts(timeout, retries):
    w = retry_window(timeout, retries, 30, 2.0)
    assert w == (retries + 1) * (timeout + RETRY_SLACK_S) + sum(30 * 2 ** i for i in range(retries))
