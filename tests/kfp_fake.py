"""A stand-in for ``kfp.Client`` (no KFP server here): records calls the way kfp.Client receives
them, checks every call binds to the real kfp.Client method, and keeps uploaded pipelines,
versions, runs and their states like the KFP API does."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import yaml

HOST = "http://kfp.example:8080"


def _real_signature(name: str, *args, **kwargs) -> None:
    """The call the fake received must also bind to kfp.Client's own method (names, no extras)."""
    import kfp

    inspect.signature(getattr(kfp.Client, name)).bind(None, *args, **kwargs)


class _FakeApi:
    """The generated API client's ``call_api``, answering ``GET /apis/v1beta1/healthz`` like KFP:
    the API server's fields (backend/src/apiserver/main.go) or, ``via_ui``, the ml-pipeline-ui's
    (frontend/server/handlers/healthz.ts, getHealthzHandler)."""

    def __init__(self, version: str | None, multi_user: bool = False, via_ui: bool = False):
        self.version, self.multi_user, self.via_ui, self.calls = version, multi_user, via_ui, []

    def call_api(self, resource_path, method, *a, **kw):
        self.calls.append((resource_path, method))
        if self.version is None:
            raise ConnectionError("404 Not Found")
        if self.via_ui:
            return {"apiServerCommitHash": "abc", "apiServerTagName": self.version, "apiServerMultiUser": self.multi_user,
                    "multi_user": self.multi_user, "apiServerReady": True, "buildDate": "", "frontendCommitHash": "",
                    "frontendTagName": self.version}
        return {"commit_sha": "abc", "tag_name": self.version, "multi_user": self.multi_user}


class FakeClient:
    """Records calls the way kfp.Client receives them; uploaded packages are parsed while they exist."""

    def __init__(self, fail: bool = False, version: str | None = "2.15.0", states: dict[str, str] | None = None,
                 multi_user: bool = False, via_ui: bool = False, require_namespace: bool = False):
        self.fail = fail
        self._run_api = SimpleNamespace(api_client=_FakeApi(version, multi_user, via_ui))
        #: multi-user KFP with REQUIRE_NAMESPACE_FOR_PIPELINES (validation/namespace.go,
        #: ValidateNamespaceRequired): pipeline calls without a namespace are refused.
        self.require_namespace = multi_user and require_namespace
        self.pipeline_namespaces: dict[str, str | None] = {}
        self.states = states if states is not None else {}
        self.runs: list[dict] = []
        self.recurring: list[dict] = []
        self.deleted: list[str] = []
        self.experiments: dict[str, str] = {}
        self.pipelines: dict[str, str] = {}
        self.versions: dict[str, dict] = {}  # version id -> {name, pipeline_id, spec}

    def _package(self, path: str) -> dict:
        assert Path(path).is_file()
        spec, platform = list(yaml.load_all(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
        assert spec["pipelineInfo"]["name"] == "uft" and "kubernetes" in platform["platforms"]
        return spec

    def _namespace_required(self, namespace):
        if self.require_namespace and not namespace:
            raise RuntimeError("(400) Reason: Bad Request: Namespace is required for pipeline operations")

    def get_pipeline_id(self, name):
        _real_signature("get_pipeline_id", name)
        self._namespace_required(None)  # kfp.Client lists without a namespace
        return self.pipelines.get(name) if self.pipeline_namespaces.get(name) is None else None

    def list_pipelines(self, page_token="", page_size=10, sort_by="", filter=None, namespace=None):
        _real_signature("list_pipelines", page_token=page_token, page_size=page_size, sort_by=sort_by, filter=filter,
                        namespace=namespace)
        self._namespace_required(namespace)
        rows = [SimpleNamespace(pipeline_id=pid, display_name=n) for n, pid in self.pipelines.items()
                if self.pipeline_namespaces.get(n) == (namespace or None)]
        return SimpleNamespace(pipelines=rows or None, next_page_token="")

    def upload_pipeline(self, pipeline_package_path, pipeline_name=None, description=None, namespace=None):
        _real_signature("upload_pipeline", pipeline_package_path, pipeline_name=pipeline_name, description=description,
                        namespace=namespace)
        if self.fail:
            raise ConnectionError("connection refused")
        self._namespace_required(namespace)
        assert pipeline_name not in self.pipelines, "a pipeline of that name exists: KFP would refuse"
        self.pipelines[pipeline_name] = pid = f"pipeline-{len(self.pipelines) + 1}"
        self.pipeline_namespaces[pipeline_name] = namespace
        # KFP makes the first version from the same package, named like the pipeline.
        self.versions[f"v-{len(self.versions) + 1}"] = dict(name=pipeline_name, pipeline_id=pid,
                                                            spec=self._package(pipeline_package_path))
        return SimpleNamespace(pipeline_id=pid, display_name=pipeline_name)

    def upload_pipeline_version(self, pipeline_package_path, pipeline_version_name, pipeline_id=None,
                                pipeline_name=None, description=None):
        _real_signature("upload_pipeline_version", pipeline_package_path, pipeline_version_name,
                        pipeline_id=pipeline_id, pipeline_name=pipeline_name, description=description)
        assert not [v for v in self.versions.values() if v["name"] == pipeline_version_name
                    and v["pipeline_id"] == pipeline_id], "KFP refuses a second version of the same name"
        vid = f"v-{len(self.versions) + 1}"
        self.versions[vid] = dict(name=pipeline_version_name, pipeline_id=pipeline_id, description=description,
                                  spec=self._package(pipeline_package_path))
        return SimpleNamespace(pipeline_version_id=vid, display_name=pipeline_version_name)

    def list_pipeline_versions(self, pipeline_id, page_token="", page_size=10, sort_by="", filter=None):
        _real_signature("list_pipeline_versions", pipeline_id, page_token=page_token, page_size=page_size,
                        sort_by=sort_by, filter=filter)
        rows = [SimpleNamespace(pipeline_version_id=k, display_name=v["name"]) for k, v in self.versions.items()
                if v["pipeline_id"] == pipeline_id]
        return SimpleNamespace(pipeline_versions=rows or None, next_page_token="")

    def run_pipeline(self, experiment_id, job_name, pipeline_package_path=None, params=None, pipeline_id=None,
                     version_id=None, pipeline_root=None, enable_caching=None, cache_key=None, service_account=None):
        _real_signature("run_pipeline", experiment_id, job_name, pipeline_package_path=pipeline_package_path,
                        params=params, pipeline_id=pipeline_id, version_id=version_id, service_account=service_account)
        assert pipeline_package_path is None, "runs start from an uploaded pipeline version, not an inline spec"
        assert self.versions[version_id]["pipeline_id"] == pipeline_id
        self.runs.append(dict(arguments=params, run_name=job_name, experiment_id=experiment_id,
                              experiment_name={v: k for k, v in self.experiments.items()}[experiment_id],
                              service_account=service_account, version_id=version_id,
                              spec=self.versions[version_id]["spec"]))
        run_id = f"run-{len(self.runs)}"
        self.states.setdefault(run_id, "RUNNING")
        return SimpleNamespace(run_id=run_id)

    def get_run(self, run_id):
        _real_signature("get_run", run_id)
        if run_id not in self.states:
            raise RuntimeError(f"(404) Reason: Not Found: run {run_id} not found")
        return SimpleNamespace(run_id=run_id, state=self.states[run_id])

    def create_experiment(self, name, description=None, namespace=None):
        _real_signature("create_experiment", name, description=description, namespace=namespace)
        self.namespace = namespace
        eid = self.experiments.setdefault(name, f"exp-{len(self.experiments) + 1}")
        return SimpleNamespace(experiment_id=eid, display_name=name)

    def list_recurring_runs(self, page_token="", page_size=10, sort_by="", experiment_id=None, namespace=None, filter=None):
        _real_signature("list_recurring_runs", page_token=page_token, page_size=page_size, experiment_id=experiment_id,
                        namespace=namespace)
        rows = [SimpleNamespace(recurring_run_id=r["id"], display_name=r["job_name"]) for r in self.recurring
                if r["experiment_id"] == experiment_id and r["id"] not in self.deleted]
        return SimpleNamespace(recurring_runs=rows or None, next_page_token="")

    def create_recurring_run(self, experiment_id, job_name, pipeline_package_path=None, **kw):
        _real_signature("create_recurring_run", experiment_id, job_name, pipeline_package_path=pipeline_package_path, **kw)
        assert pipeline_package_path is None and kw["version_id"] in self.versions
        self.recurring.append(dict(id=f"rr-{len(self.recurring) + 1}", experiment_id=experiment_id, job_name=job_name, **kw))
        return SimpleNamespace(recurring_run_id=self.recurring[-1]["id"])

    def delete_recurring_run(self, recurring_run_id):
        _real_signature("delete_recurring_run", recurring_run_id)
        self.deleted.append(recurring_run_id)
        return {}
