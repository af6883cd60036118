"""Run a compiled pipeline YAML in real containers, each task seeing what its pod would see.

kfp.local's ``DockerRunner`` runs every task of the compiled spec in its image, but it ignores the
Kubernetes platform spec (Secrets and ConfigMaps as env, ``/dev/shm``, resources). Here each task
gets exactly its pod's environment: the executor's own env plus the keys its ``secretAsEnv`` /
``configMapAsEnv`` entries map, resolved against the Secret and ConfigMap data given (as applied
to the cluster). A task whose spec does not mount the ConfigMap does not see it here either, and a
missing non-optional Secret/ConfigMap or key fails the task, as the kubelet would refuse the pod.
Labels mapped by ``fieldPathAsEnv`` get the values KFP gives them (``pipeline/runid``: the run id).
Memory-backed ``emptyDir`` mounts become tmpfs (``/dev/shm`` its size), CPU and memory limits
become Docker limits (CPU capped at this machine's cores), a pod's ``activeDeadlineSeconds`` a
kill after that long; node placement is ignored. Containers run on the host network, so services
on 127.0.0.1 are reachable.

Where kfp.local and the KFP backend differ, the backend wins (:mod:`uft.orchestrate.backend`):
pod-spec fields (resources, accelerator) resolve from string values only, as the driver does — a
number parameter becomes "" (a CPU/memory field then fails the task, an accelerator count drops the
GPU limit; each task records the limits its pod would get) — and an exit handler receives the
``PipelineTaskFinalStatus`` the backend sends (state ``COMPLETE``, not kfp.local's ``SUCCEEDED``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from uft.errors import UftError
from uft.orchestrate.backend import PodSpecError, final_status, pod_resources


@dataclass
class ClusterObjects:
    """The Secret and ConfigMap data a cluster holds: ``{name: {key: value}}``."""

    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class TaskRun:
    task: str
    executor: str
    image: str
    seconds: float
    status: str
    env_keys: list[str]
    #: The pod's resources as the KFP driver would set them ({"limits": {...}, "requests": {...}}).
    resources: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class ContainerRun:
    outputs: dict[str, Any]
    tasks: list[TaskRun]
    seconds: float


def load_compiled(path: str | Path) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec ``deploymentSpec.executors``) of a compiled YAML."""
    import yaml

    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    if not docs or "root" not in docs[0]:
        raise UftError(f"{path}: not a compiled KFP pipeline: compile it with `uft compile`")
    platform: dict = {}
    for d in docs[1:]:
        platform = d.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {}) or platform
    return docs[0], platform


def _source(entry: dict, kind: str) -> str:
    name = entry.get(f"{kind}Name")
    if not name:
        const = entry.get(f"{kind}NameParameter", {}).get("runtimeValue", {}).get("constant")
        if not const:
            raise UftError(f"a {kind} name set from a pipeline parameter is not supported by this harness: use a constant")
        name = const
    return name


_LABEL_FIELD = re.compile(r"metadata\.labels\['([^']+)'\]")


def pod_env(platform: dict, executor: str, cluster: ClusterObjects, labels: dict[str, str] | None = None) -> dict[str, str]:
    """The env vars a pod of ``executor`` gets from Secrets, ConfigMaps and its own labels (platform
    spec ``fieldPathAsEnv``, downward API; ``labels``: the pod's, e.g. KFP's ``pipeline/runid``)."""
    spec = platform.get(executor, {})
    env: dict[str, str] = {}
    for entry in spec.get("fieldPathAsEnv", []):
        m = _LABEL_FIELD.fullmatch(entry["fieldPath"])
        if not m:
            raise UftError(f"task {executor}: field path {entry['fieldPath']!r} is not supported by this harness: "
                           "use metadata.labels['<key>']")
        env[entry["name"]] = (labels or {}).get(m.group(1), "")  # the kubelet, too, gives "" for a missing label
    for kind, store, key_field in (("secret", cluster.secrets, "secretKey"), ("configMap", cluster.config_maps, "configMapKey")):
        for entry in spec.get(f"{kind}AsEnv", []):
            name = _source(entry, kind)
            data = store.get(name)
            optional = bool(entry.get("optional", False))
            if data is None:
                if optional:
                    continue
                raise UftError(f"task {executor}: {kind} {name!r} does not exist: its pod would not start (CreateContainerConfigError)")
            for pair in entry.get("keyToEnv", []):
                key = pair[key_field]
                if key in data:
                    env[pair["envVar"]] = data[key]
                elif not optional:
                    raise UftError(f"task {executor}: {kind} {name!r} has no key {key!r}: its pod would not start")
    return env


_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(q: str) -> float | None:
    """A Kubernetes quantity ('8Gi', '2G', '500m', '4') as a number (bytes or cores); None for a
    value only known at run time (a placeholder of a pipeline parameter or task output)."""
    m = re.fullmatch(r"([0-9.]+)(m|k|K|M|G|T|Ki|Mi|Gi|Ti)?", str(q).strip())
    return float(m.group(1)) * _UNITS[m.group(2) or ""] if m else None


def pod_run_args(platform: dict, executor: str, container: dict, resolved: dict | None = None) -> dict[str, Any]:
    """docker-py ``containers.run`` options for the pod's tmpfs mounts and CPU/memory limits
    (``resolved``: the limits the driver resolved, :func:`uft.orchestrate.backend.pod_resources`;
    else the container spec's literal ones)."""
    args: dict[str, Any] = {}
    tmpfs: dict[str, str] = {}
    for mount in platform.get(executor, {}).get("emptyDirMounts", []):
        if mount.get("medium") != "Memory":
            continue
        size = int(_quantity(mount.get("sizeLimit", "")) or 0)
        if mount["mountPath"] == "/dev/shm":
            args["shm_size"] = size or "64m"
        else:
            tmpfs[mount["mountPath"]] = f"size={size}" if size else ""
    if tmpfs:
        args["tmpfs"] = tmpfs
    res = container.get("resources", {})
    limits = (resolved or {}).get("limits", {})
    if cpu := _quantity(limits.get("cpu") or res.get("resourceCpuLimit") or res.get("cpuLimit") or ""):
        args["nano_cpus"] = int(min(cpu, os.cpu_count() or 1) * 1e9)
    if mem := _quantity(limits.get("memory") or res.get("resourceMemoryLimit") or res.get("memoryLimit") or ""):
        args["mem_limit"] = int(mem)
    return args


def backend_arguments(task_inputs_spec: Any, arguments: dict[str, Any], run_name: str) -> dict[str, Any]:
    """A task's arguments as the KFP backend would hand them over: every ``task_final_status``
    input becomes the backend's ``PipelineTaskFinalStatus`` (uft.orchestrate.backend.final_status)."""
    out = dict(arguments)
    for name, spec in task_inputs_spec.parameters.items():
        if spec.HasField("task_final_status") and isinstance(out.get(name), dict):
            out[name] = final_status(out[name].get("state", ""), spec.task_final_status.producer_task, run_name)
    return out


_current = threading.local()


@contextlib.contextmanager
def _pod_runner(spec: dict, platform: dict, cluster: ClusterObjects, record: list[TaskRun],
                images: dict[str, str]) -> Iterator[None]:
    """Patch kfp.local so that its Docker tasks run as pods would (see the module docstring)."""
    import docker
    from kfp.local import docker_task_handler, status
    from kfp.local.orchestrator import task_executor
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    executors = spec["deploymentSpec"]["executors"]

    class PodTaskHandler(docker_task_handler.DockerTaskHandler):
        def run(self) -> status.Status:
            executor = _current.executor
            container_spec = executors[executor]["container"]
            env = {**self.env_vars, **pod_env(platform, executor, cluster, _current.labels)}
            _current.env_keys = sorted(env)
            try:
                _current.resources = pod_resources(container_spec.get("resources", {}), _current.arguments)
            except PodSpecError as e:  # the driver fails the task before any pod exists
                print(f"task {executor}: {e}")
                return status.Status.FAILURE
            deadline = platform.get(executor, {}).get("activeDeadlineSeconds")
            image = images.get(self.image, self.image)
            client = docker.from_env()
            try:
                try:
                    client.images.get(image)
                except docker.errors.ImageNotFound:
                    raise UftError(f"task {executor}: image {image} is not on this machine: build it (make images)") from None
                # Not kfp's run_docker_container: it auto-removes the container and, when the
                # container is gone before `wait`, reports success whatever the exit code.
                box = client.containers.run(
                    image=image, command=self.full_command, detach=True, volumes=self.get_volumes_to_mount(client),
                    environment=env, network_mode="host",
                    **pod_run_args(platform, executor, container_spec, _current.resources))
                # activeDeadlineSeconds: the kubelet kills the pod after that long (phase Failed).
                timer = threading.Timer(float(deadline), box.kill) if deadline else None
                try:
                    if timer:
                        timer.start()
                    for line in box.logs(stream=True, follow=True):
                        print(line.decode(errors="replace"), end="")
                    code = box.wait()["StatusCode"]
                finally:
                    if timer:
                        timer.cancel()
                    box.remove(force=True)
            finally:
                client.close()
            return status.Status.SUCCESS if code == 0 else status.Status.FAILURE

    original = task_executor.execute_single_task
    original_handler = docker_task_handler.DockerTaskHandler
    original_arguments = OrchestratorUtils.__dict__["make_task_arguments"]

    def arguments_as_backend(cls, task_inputs_spec, io_store):
        args = original_arguments.__func__(cls, task_inputs_spec, io_store)
        args = backend_arguments(task_inputs_spec, args, getattr(_current, "run_name", ""))
        _current.arguments = args
        return args

    def timed(task_name, task_spec, pipeline_resource_name, components, *args, **kwargs):
        executor = components[task_spec.component_ref.name].executor_label
        _current.executor, _current.env_keys, _current.resources = executor, [], {}
        _current.arguments, _current.run_name = {}, pipeline_resource_name
        # KFP labels every pod of a run with its id, the value {{$.pipeline_job_uuid}} resolves to.
        _current.labels = {"pipeline/runid": str(kwargs.get("unique_pipeline_id", ""))}
        t0 = time.perf_counter()
        outputs, task_status = original(task_name, task_spec, pipeline_resource_name, components, *args, **kwargs)
        image = executors[executor].get("container", {}).get("image", "")  # importers have none
        record.append(TaskRun(task_name, executor, images.get(image, image), time.perf_counter() - t0,
                              task_status.name, _current.env_keys, _current.resources))
        return outputs, task_status

    task_executor.execute_single_task = timed
    docker_task_handler.DockerTaskHandler = PodTaskHandler
    OrchestratorUtils.make_task_arguments = classmethod(arguments_as_backend)
    try:
        yield
    finally:
        task_executor.execute_single_task = original
        docker_task_handler.DockerTaskHandler = original_handler
        OrchestratorUtils.make_task_arguments = original_arguments


def run_compiled(path: str | Path, *, arguments: dict[str, Any], cluster: ClusterObjects, pipeline_root: str | Path,
                 images: dict[str, str] | None = None, retries: bool = True) -> ContainerRun:
    """Run the compiled pipeline at ``path`` in containers with kfp.local (see the module docstring).

    ``images`` maps an image named in the YAML to a local one (e.g. a registry tag to a local
    tag); ``retries=False`` drops the tasks' retry policies so a failure fails at once.
    """
    from google.protobuf import json_format
    from kfp import local
    from kfp.local import pipeline_orchestrator
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec, platform = load_compiled(path)
    if not retries:
        spec = copy.deepcopy(spec)
        _drop_retries(spec["root"])
        for comp in spec.get("components", {}).values():
            _drop_retries(comp)
    proto = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o777)  # the image's non-root user writes task outputs into this bind mount
    local.init(runner=local.DockerRunner(), pipeline_root=str(root), raise_on_error=True)
    record: list[TaskRun] = []
    t0 = time.perf_counter()
    with _pod_runner(spec, platform, cluster, record, images or {}):
        outputs = pipeline_orchestrator.run_local_pipeline(pipeline_spec=proto, arguments=arguments)
    return ContainerRun(outputs=outputs, tasks=record, seconds=time.perf_counter() - t0)


def _drop_retries(component: dict) -> None:
    for task in component.get("dag", {}).get("tasks", {}).values():
        task.pop("retryPolicy", None)


def cluster_objects(manifests: list[dict], services: dict[str, str]) -> ClusterObjects:
    """Secret and ConfigMap data from rendered manifests (``kubectl kustomize`` output), with every
    ``http(s)://<service>[.<namespace>.svc…][:port]`` URL of a service in ``services`` rewritten to
    ``services[<service>]`` (e.g. ``{"seaweedfs": "http://127.0.0.1:8333"}``), as cluster DNS would
    resolve it."""
    import base64

    pattern = re.compile(r"https?://([a-z0-9-]+)(?:\.[a-z0-9.-]*)?(?::\d+)?")

    def rewrite(value: str) -> str:
        return pattern.sub(lambda m: services.get(m.group(1), m.group(0)), value)

    out = ClusterObjects()
    for doc in manifests:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        if kind == "ConfigMap":
            out.config_maps[name] = {k: rewrite(str(v)) for k, v in (doc.get("data") or {}).items()}
        elif kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
            data.update({k: str(v) for k, v in (doc.get("stringData") or {}).items()})
            out.secrets[name] = data
    return out
