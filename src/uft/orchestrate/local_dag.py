"""Run a local pipeline's independent tasks at the same time, as Kubeflow Pipelines does on a cluster.

On a cluster each task of a DAG starts as soon as its upstream tasks have succeeded: KFP's Argo
compiler gives every task ``depends: "<upstream>.Succeeded && …"`` (kubeflow/pipelines
``backend/src/v2/compiler/argocompiler/dag.go``, ``depends``), and Argo's controller starts, in one
pass over the DAG, every task whose ``depends`` holds (argo-workflows ``workflow/controller/dag.go``,
``executeDAGTask`` → ``evaluateDependsLogic``); KFP sets no workflow-wide ``parallelism``.
kfp.local (2.17) runs a DAG's tasks one after another instead, in a topological order
(``kfp/local/orchestrator/enhanced_dag_orchestrator.py``, ``run_enhanced_dag``; ``dag_orchestrator.py``,
``run_dag``, for a DAG without control flow or exit handler).

:func:`concurrent_dag` swaps in a scheduler with the cluster's rule: every task whose dependencies
have succeeded is started, up to ``workers`` at a time, each through kfp.local's own
``execute_task`` (so task caching, the runner and the outputs are kfp.local's). What it keeps from
``run_enhanced_dag``: a task whose upstream failed is skipped (unless it opts in to run on
completion, ``ignore_upstream_failure``), exit-handler tasks run after the body, whatever its outcome,
and the DAG's outputs are collected the same way. A DAG with ``dsl.Condition`` or ``dsl.ParallelFor``
tasks goes to kfp.local's own runner.

kfp.local's per-task logging is not thread-safe: each task swaps the root logger's handlers
(``logging_utils.local_logger_context``) and ``builtins.print`` (``logging_utils.indented_print``)
and restores them when it ends, which interleaved tasks would leave crossed (a task ending while
another runs took the logger's handler away from it, and its lines were lost). In the block the
first installs kfp's handler when the first task enters and removes it when the last one leaves,
whichever thread that is; the second indents the print of the thread that entered it only.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

#: ``UFT_LOCAL_WORKERS``: how many tasks a local run runs at once (1: one after another, as kfp.local).
WORKERS_ENV = "UFT_LOCAL_WORKERS"


def default_workers() -> int:
    """``$UFT_LOCAL_WORKERS``, else 1 (kfp.local's one by one). Not more by default: on the 2-core
    machine `make run` is timed on, 2 workers did not make the demo faster (2026-12-07, alternating
    first runs: 58.3 and 58.4 s against 55.3 and 63.3 s with 1) and took more CPU (101 against
    85-96 CPU s): its training, holistic and promote tasks each keep both cores busy, and two at once
    slowed each other (holistic 8.8 → 16.9 s beside promote). Machines with more cores are untested."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return 1
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        from uft.errors import UftError

        raise UftError(f"{WORKERS_ENV}={raw!r}: give a whole number ≥ 1 (1 runs the tasks one after another)")
    return n


_tls = threading.local()


@contextlib.contextmanager
def concurrent_dag(workers: int) -> Iterator[None]:
    """In the block, kfp.local runs each DAG's ready tasks ``workers`` at a time (``workers`` ≤ 1:
    kfp.local's own one-by-one runner, untouched)."""
    if workers <= 1:
        yield
        return
    from kfp.local import logging_utils
    from kfp.local.orchestrator import dag_orchestrator
    from kfp.local.orchestrator import enhanced_dag_orchestrator as edo

    original_simple, original_run = dag_orchestrator.run_dag, edo.run_enhanced_dag
    original_logger, original_indent = logging_utils.local_logger_context, logging_utils.indented_print
    original_print = builtins.print
    inside: dict[str, Any] = {"n": 0, "cm": None}  # kfp's context, entered by the first in, left by the last out
    lock = threading.Lock()

    @contextlib.contextmanager
    def local_logger_context() -> Iterator[None]:
        with lock:
            if inside["n"] == 0:
                inside["cm"] = original_logger()
                inside["cm"].__enter__()
            inside["n"] += 1
        try:
            yield
        finally:
            with lock:
                inside["n"] -= 1
                if inside["n"] == 0:  # whichever thread leaves last (tasks end in any order)
                    inside["cm"].__exit__(None, None, None)

    @contextlib.contextmanager
    def indented_print(num_spaces: int = 4) -> Iterator[None]:
        before = getattr(_tls, "indent", 0)
        _tls.indent = num_spaces
        try:
            yield
        finally:
            _tls.indent = before

    def thread_print(*args: Any, **kwargs: Any) -> None:
        if getattr(_tls, "indent", 0):  # as kfp's indented print: the spaces, then the line
            original_print(" " * _tls.indent, end="")
        return original_print(*args, **kwargs)

    def run_enhanced_dag(**kw: Any):
        return run_dag_concurrently(original_run, workers, **kw)

    def run_dag(**kw: Any):  # kfp.local's runner for DAGs without control flow or exit handler
        return run_dag_concurrently(original_simple, workers, **kw)

    edo.run_enhanced_dag, dag_orchestrator.run_dag = run_enhanced_dag, run_dag
    logging_utils.local_logger_context, logging_utils.indented_print = local_logger_context, indented_print
    builtins.print = thread_print
    try:
        yield
    finally:
        edo.run_enhanced_dag, dag_orchestrator.run_dag = original_run, original_simple
        logging_utils.local_logger_context, logging_utils.indented_print = original_logger, original_indent
        builtins.print = original_print


def run_dag_concurrently(original, workers: int, *, pipeline_resource_name: str, dag_component_spec, executors,
                         components, dag_arguments, pipeline_root: str, runner, unique_pipeline_id: str,
                         fail_stack: list[str], parent_io_store=None):
    """``run_enhanced_dag``'s contract (same arguments, → (outputs, status)), each ready task started
    as soon as a worker is free; ``original`` runs DAGs with conditions or loops."""
    from kfp.local import graph_utils, io, status
    from kfp.local.orchestrator import enhanced_dag_orchestrator as edo
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils
    from kfp.pipeline_spec import pipeline_spec_pb2

    kw = dict(pipeline_resource_name=pipeline_resource_name, dag_component_spec=dag_component_spec,
              executors=executors, components=components, dag_arguments=dag_arguments, pipeline_root=pipeline_root,
              runner=runner, unique_pipeline_id=unique_pipeline_id, fail_stack=fail_stack,
              parent_io_store=parent_io_store)
    on_completion = pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.TriggerStrategy.ALL_UPSTREAM_TASKS_COMPLETED
    tasks = dict(dag_component_spec.dag.tasks.items())
    exit_tasks = {n: t for n, t in tasks.items()
                  if t.trigger_policy.strategy == on_completion and edo._has_task_final_status_input(t)}
    body = {n: t for n, t in tasks.items() if n not in exit_tasks}
    if any(t.trigger_policy.condition or (t.WhichOneof("iterator") and edo._has_valid_iterator(t))
           for t in body.values()):
        return original(**kw)

    io_store = io.IOStore(parent=parent_io_store)
    for k, v in OrchestratorUtils.join_user_inputs_and_defaults(
            dag_arguments=dag_arguments, dag_inputs_spec=dag_component_spec.input_definitions).items():
        io_store.put_parent_input(k, v)
    common = dict(pipeline_resource_name=pipeline_resource_name, components=components, executors=executors,
                  io_store=io_store, pipeline_root=pipeline_root, runner=runner,
                  unique_pipeline_id=unique_pipeline_id, fail_stack=fail_stack)

    def record(name: str, outputs: dict, result) -> bool:
        io_store.put_task_status(name, "SUCCEEDED" if result == status.Status.SUCCESS else "FAILED")
        if result != status.Status.SUCCESS:
            fail_stack.append(name)
            return False
        for key, output in outputs.items():
            io_store.put_task_output(name, key, output)
        return True

    # kfp.local's order (popped from the right) breaks ties between ready tasks, so a run starts
    # its tasks in a reproducible order.
    order = list(reversed(graph_utils.topological_sort_tasks(body)))
    succeeded: set[str] = set()
    failed: set[str] = set()
    running: dict[concurrent.futures.Future, str] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kfp-task")
    try:
        while order or running:
            for name in list(order):
                spec = body[name]
                deps = [d for d in spec.dependent_tasks if d in body]
                if any(d in failed for d in deps) and spec.trigger_policy.strategy != on_completion:
                    order.remove(name)  # as kfp.local: skipped, and counted as failed downstream
                    failed.add(name)
                    io_store.put_task_status(name, "FAILED")
                    continue
                if len(running) < workers and all(d in succeeded or d in failed for d in deps):
                    order.remove(name)
                    running[pool.submit(edo.execute_task, task_name=name, task_spec=spec, **common)] = name
            if not running:
                if order:  # nothing ready, nothing to wait for: a dependency that never runs
                    raise RuntimeError(f"tasks {order} wait for tasks that never run")
                break
            # A timeout, so this thread wakes to take a pending Ctrl-C even when the signal went to another thread.
            done, _ = concurrent.futures.wait(running, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                outputs, result = future.result()  # an exception ends the run, as in kfp.local
                (succeeded if record(name, outputs, result) else failed).add(name)
    except BaseException:
        # Ctrl-C (or an error) in this thread: do not wait here for the running tasks, which would
        # hold the interrupt until they end; the caller stops them (run_local: lifecycle.stop_tasks).
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)

    exit_failed = False
    for name, spec in exit_tasks.items():  # after the body, whatever its outcome
        outputs, result = edo.execute_task(task_name=name, task_spec=spec, **common)
        exit_failed |= not record(name, outputs, result)
    if failed or exit_failed:
        return {}, status.Status.FAILURE
    return OrchestratorUtils.get_dag_outputs(dag_outputs_spec=dag_component_spec.dag.outputs,
                                             io_store=io_store), status.Status.SUCCESS
