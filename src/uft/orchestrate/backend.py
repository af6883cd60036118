"""What uft relies on from the Kubeflow Pipelines backend, as the backend's own code does it.

Each function here restates a piece of kubeflow/pipelines that decides how our compiled pipeline
behaves on a cluster, read from the source at the oldest supported release (2.15.0) and at the
newest one (2.17.0). The container harness (:mod:`uft.orchestrate.containers`) and the wiring
tests resolve the compiled YAML through these functions, and ``tests/contract`` pins every
statement to the file and function it was read from, so a change in KFP shows up as one failing
test naming the place to re-read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: The releases the contract was read at: the oldest uft supports and the newest published.
READ_AT = ("2.15.0", "2.17.0")

#: MLMD execution states (ml_metadata Execution.State enum names). The exit handler's
#: ``PipelineTaskFinalStatus.state`` is one of these: backend/src/v2/driver/resolve.go,
#: resolveInputParameter (TaskFinalStatus case) sets ``State:
#: producer.GetExecution().GetLastKnownState().String()``; the producer is the exit handler's
#: DAG, whose state backend/src/v2/metadata/client.go, UpdateDAGExecutionsState, sets to
#: COMPLETE (all tasks COMPLETE/CACHED/CANCELED) or FAILED.
MLMD_STATES = ("UNKNOWN", "NEW", "RUNNING", "COMPLETE", "FAILED", "CACHED", "CANCELED")
#: The final states that mean "the pipeline's work succeeded". kfp.local sends ``SUCCEEDED``
#: (kfp/local/orchestrator/orchestrator_utils.py, make_task_arguments) where the backend sends
#: ``COMPLETE``; both are accepted so the same exit handler closes local and cluster runs.
SUCCESS_STATES = frozenset({"COMPLETE", "SUCCEEDED"})
#: Pod label the API server puts on every pod of a run (backend/src/apiserver/template/
#: v2_template.go, V2Spec.RunWorkflow: SetPodMetadataLabels(util.LabelKeyWorkflowRunId, RunID);
#: common/util/consts.go LabelKeyWorkflowRunId = "pipeline/runid").
RUN_ID_LABEL = "pipeline/runid"
#: Annotation the API server puts on every template of a run unless already set (same function:
#: SetAnnotationsToAllTemplatesIfKeyNotExist(AnnotationKeyIstioSidecarInject, "false")): KFP
#: step pods run outside the Istio mesh.
ISTIO_INJECT_ANNOTATION = ("sidecar.istio.io/inject", "false")

_PLACEHOLDER = re.compile(r"^\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}$")


def mlflow_status(final_state: str) -> str:
    """MLflow status for the parent run, from the exit handler's ``PipelineTaskFinalStatus.state``:
    ``FINISHED`` for COMPLETE (backend) or SUCCEEDED (kfp.local), ``FAILED`` for anything else.

    There is no ``KILLED``: a run terminated in KFP never reaches the exit handler as CANCELED.
    Terminating is an ``activeDeadlineSeconds: 0`` patch of the workflow (backend/src/common/util/
    execution_spec.go, GetTerminatePatch); Argo stops the running pods but still runs exit hooks,
    and the exit-handler DAG's MLMD state is whatever UpdateDAGExecutionsState last wrote (it only
    writes COMPLETE or FAILED; a DAG whose task was killed before reporting stays RUNNING). MLMD's
    CANCELED means "not triggered" (metadata/client.go, CreateExecution: NotTriggered). So a
    cancelled run is closed FAILED, like any run that did not complete, and says so honestly.
    """
    return "FINISHED" if str(final_state or "").upper() in SUCCESS_STATES else "FAILED"


def placeholder_input(value: str) -> str | None:
    """``'{{$.inputs.parameters['x']}}'`` → ``'x'``; None for a literal."""
    m = _PLACEHOLDER.match(str(value))
    return m.group(1) if m else None


def resolve_pod_spec_param(value: str, inputs: dict[str, Any]) -> str:
    """A pod-spec field (image, resources, accelerator) as the driver resolves it.

    backend/src/v2/driver/resolve.go, resolvePodSpecInputRuntimeParameter: a placeholder of an
    input parameter becomes ``executorInput.Inputs.ParameterValues[name].GetStringValue()`` —
    the string of a string value and ``""`` for a number, bool, list or struct (protobuf's
    GetStringValue of another kind); a missing input is an error; anything else is literal.
    ``inputs``: the task's input parameter values as Python values (``str`` ↔ string_value).
    """
    name = placeholder_input(value)
    if name is None:
        return str(value)
    if name not in inputs:
        raise KeyError(f"executorInput did not contain container Image input parameter {name!r}")
    v = inputs[name]
    return v if isinstance(v, str) else ""


_RESOURCE_FIELDS = (("resourceCpuRequest", "cpuRequest", "requests", "cpu"),
                    ("resourceCpuLimit", "cpuLimit", "limits", "cpu"),
                    ("resourceMemoryRequest", "memoryRequest", "requests", "memory"),
                    ("resourceMemoryLimit", "memoryLimit", "limits", "memory"))
_QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


class PodSpecError(ValueError):
    """The driver could not build the pod (it fails the task: "failed to init podSpecPatch")."""


def pod_resources(resources: dict, inputs: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``{"limits": {...}, "requests": {...}}`` of a step's container, as the driver builds them.

    backend/src/v2/driver/driver.go, initPodSpecPatch + getPodResource: CPU and memory come from
    the ``resource*`` field resolved with :func:`resolve_pod_spec_param` (else the old numeric
    field), then ``k8sres.ParseQuantity`` — which fails on ``""``, so a non-string parameter fails
    the task. The accelerator limit is set only when both the resolved type and the resolved
    count are non-empty: a count from a number parameter resolves to ``""`` and the pod gets
    **no** accelerator limit at all, without any error.
    """
    out: dict[str, dict[str, str]] = {"limits": {}, "requests": {}}
    for new, old, kind, name in _RESOURCE_FIELDS:
        if resources.get(new):
            q = resolve_pod_spec_param(resources[new], inputs)
        elif resources.get(old):
            q = f"{resources[old]}G" if name == "memory" else f"{resources[old]}"
        else:
            continue
        if not _QUANTITY.match(q):
            raise PodSpecError(f"failed to init podSpecPatch: {new}={resources[new]!r} resolved to {q!r}, "
                               "not a quantity (the driver resolves pod-spec parameters from string values only)")
        out[kind][name] = q
    acc = resources.get("accelerator") or {}
    kind = resolve_pod_spec_param(acc["resourceType"], inputs) if acc.get("resourceType") else acc.get("type", "")
    if acc.get("resourceCount"):
        count = resolve_pod_spec_param(acc["resourceCount"], inputs)
    else:
        count = str(acc["count"]) if int(acc.get("count") or 0) > 0 else ""
    if kind and count:
        if not _QUANTITY.match(count):
            raise PodSpecError(f"failed to init podSpecPatch: accelerator count {count!r} is not a quantity")
        out["limits"][kind] = count
    return out


def final_status(local_state: str, producer_task: str, run_name: str) -> dict[str, Any]:
    """The ``PipelineTaskFinalStatus`` struct the backend hands an exit handler, from kfp.local's
    producer state (``SUCCEEDED``/``FAILED``). Shape: protojson of the proto (camelCase keys,
    ``error`` an empty Status), as resolve.go marshals it; state: the DAG's MLMD state name."""
    state = {"SUCCEEDED": "COMPLETE", "SUCCESS": "COMPLETE", "CANCELLED": "CANCELED"}.get(str(local_state).upper(),
                                                                                          str(local_state).upper())
    return {"state": state, "pipelineTaskName": producer_task, "pipelineJobResourceName": run_name, "error": {}}


# --- the API server's and the UI's healthz --------------------------------------------------------

#: ``GET /apis/v1beta1/healthz`` of the API server (ml-pipeline:8888): backend/src/apiserver/
#: main.go (2.15.0: an inline handler writing commit_sha, tag_name, multi_user; 2.17.0:
#: newHealthzResponse / healthzResponse with the same JSON names). TAG_NAME defaults to "unknown".
API_SERVER_HEALTHZ = {"version": "tag_name", "multi_user": "multi_user"}
#: The same path served by ml-pipeline-ui (frontend/server/app.ts routes it to
#: handlers/healthz.ts, getHealthzHandler): the API server's fields renamed — apiServerTagName,
#: apiServerMultiUser (and multi_user) — next to the UI's own build fields.
UI_HEALTHZ = {"version": "apiServerTagName", "multi_user": "apiServerMultiUser"}


def healthz_fields(data: Any) -> tuple[str | None, bool | None]:
    """(version, multi_user) from a healthz answer of either the API server or the UI; None where
    the answer does not say (an "unknown" tag, a UI whose API server is down).

    The UI keeps one ``healthzStats`` object for its lifetime and, when it cannot reach the API
    server, only sets ``apiServerReady = false`` (frontend/server/handlers/healthz.ts,
    getHealthzHandler, catch branch): the last ``apiServerTagName``/``apiServerMultiUser`` it saw
    stay in the answer. So a UI answer is read only when ``apiServerReady`` is true."""
    if not isinstance(data, dict) or data.get("apiServerReady") is False:
        return None, None
    version = data.get(API_SERVER_HEALTHZ["version"]) or data.get(UI_HEALTHZ["version"])
    multi = data.get(API_SERVER_HEALTHZ["multi_user"])
    if multi is None:
        multi = data.get(UI_HEALTHZ["multi_user"])
    version = str(version) if version and re.match(r"^v?\d+\.\d+\.\d+", str(version)) else None
    return version, (bool(multi) if multi is not None else None)


# --- retries: KFP's retryPolicy as Argo runs it -----------------------------------------------------

#: Pod scheduling and start-up time allowed per attempt on top of its timeout when sizing a retry
#: window (:func:`retry_window`): Argo's window runs from the first attempt's node start, a pod's
#: ``activeDeadlineSeconds`` from the kubelet's start of the pod (a GPU pod may wait for a node).
RETRY_SLACK_S = 600


@dataclass(frozen=True)
class RetryStrategy:
    """The Argo ``retryStrategy`` KFP compiles from a task's ``retryPolicy``.

    backend/src/v2/compiler/argocompiler/container.go (2.15.0 and 2.17.0),
    getTaskRetryParametersWithValues + getTaskRetryStrategyFromInput: ``limit`` ← maxRetryCount,
    ``backoff.duration`` ← backoffDuration, ``backoff.factor`` ← backoffFactor and
    ``backoff.maxDuration`` ← backoffMaxDuration, each in seconds. No ``retryPolicy`` is set, so
    Argo's default applies (OnFailure: a Failed attempt is retried, an Errored one is not)."""

    limit: int
    duration_s: float
    factor: float
    max_duration_s: float | None

    @classmethod
    def from_policy(cls, policy: dict) -> "RetryStrategy | None":
        """From a compiled task's ``retryPolicy`` (``{"maxRetryCount": 3, "backoffDuration": "30s",
        "backoffFactor": 2.0, "backoffMaxDuration": "600s"}``); None without one."""
        if not policy:
            return None

        def seconds(v: Any) -> float | None:
            return None if v in (None, "") else float(str(v).removesuffix("s"))

        return cls(int(policy.get("maxRetryCount", 0)), seconds(policy.get("backoffDuration")) or 0.0,
                   float(policy.get("backoffFactor") or 0), seconds(policy.get("backoffMaxDuration")))


@dataclass(frozen=True)
class RetryDecision:
    """What Argo does after a failed attempt: ``retry`` after ``wait_s`` seconds, the new attempt
    killed at ``deadline`` (absolute, the pod's ``ARGO_DEADLINE``; None: only its own timeout), or
    stop with ``reason`` (Argo's node message)."""

    retry: bool
    wait_s: float
    deadline: float | None
    reason: str


def next_attempt(strategy: RetryStrategy, attempts: list[tuple[float, float]], now: float) -> RetryDecision:
    """Argo's answer to a task whose last attempt failed, as workflow/controller/operator.go,
    processNodeRetries (v3.7 under KFP 2.15, v4.0 under 2.17) decides it.

    ``attempts``: (start, finish) of each attempt so far, oldest first (epoch seconds). The
    ``backoff.maxDuration`` window is measured from the **first** attempt's start, not per attempt:
    past it, no retry ("Max duration limit exceeded"); a retry whose backoff would end past it is
    not started ("Backoff would exceed max duration limit"); a retry that starts gets the window's
    end as its execution deadline (workflowpod.go, getDeadline → ``ARGO_DEADLINE``; the wait
    container kills the main container then, executor.go monitorDeadline). The wait before retry
    n (1-based) is ``duration * factor**(n-1)``.
    """
    if not attempts:
        raise ValueError("next_attempt needs at least the failed attempt")
    first_start, last_finish, n = attempts[0][0], attempts[-1][1], len(attempts)
    window_end = first_start + strategy.max_duration_s if strategy.max_duration_s else None
    if window_end is not None and now > window_end:
        return RetryDecision(False, 0.0, None, "Max duration limit exceeded")
    wait = strategy.duration_s * (strategy.factor ** (n - 1) if strategy.factor > 0 else 1)
    if window_end is not None and last_finish + wait > window_end:
        return RetryDecision(False, 0.0, None, "Backoff would exceed max duration limit")
    if n > strategy.limit:
        return RetryDecision(False, 0.0, None, "No more retries left")
    return RetryDecision(True, max(0.0, last_finish + wait - now), window_end, "")


def retry_window(timeout_s: int, retries: int, backoff_s: float, factor: float, slack_s: int = RETRY_SLACK_S) -> int:
    """The smallest ``backoff_max_duration`` (s) under which each of ``retries + 1`` attempts that
    run into their timeout still gets all of it: every attempt's timeout and slack, plus every
    backoff. With less, Argo (see :func:`next_attempt`) never retries an attempt that ran longer
    than the window, and kills a retry when the window, counted from the first start, ends."""
    backoffs = sum(backoff_s * (factor ** i if factor > 0 else 1) for i in range(retries))
    return int((retries + 1) * (timeout_s + slack_s) + backoffs)
