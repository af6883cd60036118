"""Start the pipeline on a Kubeflow Pipelines cluster: one run now, or a recurring run on a cron.

The package is compiled here (image names from ``UFT_IMAGE``/``UFT_GPU_IMAGE`` at this moment),
parameters are checked against :class:`uft.config.RunConfig` and the compiled pipeline's inputs
before anything reaches the cluster. Then, on the cluster:

1. the KFP backend must be at least :data:`MIN_KFP_VERSION` (checked, see :func:`check_backend`);
2. the package is uploaded as a version of the named pipeline ``uft`` (created on first use); the
   version is named after the package's content hash, so the same code and images reuse it;
3. the run (or recurring run) starts from that pipeline version, with a name that says what it
   runs, under the ServiceAccount that ``infra/base`` creates.

``client`` is anything with ``kfp.Client``'s methods (tests pass a fake).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from uft.errors import UftError

NAMESPACE = "uft"
SERVICE_ACCOUNT = "uft-pipeline-runner"
PIPELINE_NAME = "uft"
#: The oldest KFP backend that runs the compiled spec. kfp 2.17's compiler emits fields older
#: backends reject when they unmarshal the Kubernetes config ("unknown field \"optional\" in
#: kfp_kubernetes.SecretAsEnv", kubeflow/pipelines#12495, seen with SDK 2.15.1 on an older
#: backend); the pipeline also needs the exit handler's PipelineTaskFinalStatus and resources
#: taken from pipeline parameters. SDK and backend are released together, and 2.15 is the
#: first backend built with the kubernetes_platform proto that has `optional`.
MIN_KFP_VERSION = "2.15.0"
#: Set to the backend's version when it does not report one (``kubectl -n kubeflow get deploy
#: ml-pipeline -o jsonpath='{..image}'`` shows it); ``uft submit --kfp-version`` does the same.
KFP_VERSION_ENV = "UFT_KFP_VERSION"
#: A bearer token for the KFP API (multi-user Kubeflow behind an auth proxy); in a pod, kfp reads
#: the projected ServiceAccount token itself.
TOKEN_ENV = "KFP_TOKEN"
#: Set to 1 to submit images given by tag (a development cluster); otherwise every image of the
#: compiled pipeline must be pinned by digest (``repo@sha256:…``), see :func:`require_pinned_images`.
ALLOW_UNPINNED_ENV = "UFT_ALLOW_UNPINNED_IMAGES"


def default_store() -> str:
    """The store a run uses when it names none: ``s3://$UFT_BUCKET/uft`` (see uft.config)."""
    from uft.config import default_store_uri

    return default_store_uri()


# --- the compiled package and its parameters ------------------------------------------------------

@contextlib.contextmanager
def compiled_package() -> Iterator[Path]:
    """Compile :func:`pipelines.uft_pipeline.uft_pipeline` into a temporary YAML; yields its path."""
    with tempfile.TemporaryDirectory(prefix="uft-kfp-") as d:
        path = Path(d) / "uft_pipeline.yaml"
        path.write_bytes(_compiled())
        yield path


@functools.cache
def _compiled() -> bytes:
    """The compiled package, once per process: the image names are read when the components are
    first imported, so every later compile would give the same bytes (a sweep submits many runs)."""
    from uft.orchestrate.compile import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="uft-kfp-") as d:
        return compile_pipeline(Path(d) / "uft_pipeline.yaml").read_bytes()


def _pipeline_spec(path: str | Path) -> dict:
    """The first document of a compiled package (the pipeline spec; the second is the platform spec)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the package is ~3000 lines
    return next(yaml.load_all(Path(path).read_text(), Loader=loader))


def package_parameters(path: str | Path) -> dict[str, str]:
    """Pipeline input name → KFP parameter type (``STRING``, ``NUMBER_INTEGER``, ...) of a package."""
    spec = _pipeline_spec(path)
    return {k: v["parameterType"] for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}


def pipeline_arguments(params: dict[str, Any], spec_params: dict[str, str], experiment: str = "") -> dict[str, Any]:
    """Validate user parameters (strings from ``--param`` or typed values) → typed KFP arguments.

    RunConfig fields go through :func:`uft.config.validate_config` (ranges, method names, ...);
    the pipeline's other inputs (``store_uri``, ``experiment``, ``run_id``, ...) are converted to
    their declared type. Only the given parameters are returned (the package's defaults, which
    come from RunConfig, apply to the rest); ``experiment`` defaults to the KFP experiment name.
    """
    from uft.config import RunConfig, validate_config

    unknown = sorted(set(params) - set(spec_params))
    if unknown:
        raise UftError(f"unknown pipeline parameter(s) {', '.join(unknown)}: valid ones are {', '.join(sorted(spec_params))}")
    fields = {k: v for k, v in params.items() if k in RunConfig.model_fields}
    cfg = validate_config(fields).model_dump()
    args: dict[str, Any] = {k: cfg[k] for k in fields}
    for k, v in params.items():
        if k not in fields:
            args[k] = _convert(k, v, spec_params[k])
    if "gpus" in args:
        from uft.gpus import check_gpus

        check_gpus(args["gpus"])
    if experiment and "experiment" in spec_params:
        args.setdefault("experiment", experiment)
    return args


def _convert(name: str, value: Any, kind: str) -> Any:
    try:
        if kind == "NUMBER_INTEGER":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "NUMBER_DOUBLE":
            return float(value)
        if kind == "BOOLEAN":
            if isinstance(value, str):
                if value.lower() not in {"true", "false", "1", "0"}:
                    raise ValueError
                return value.lower() in {"true", "1"}
            return bool(value)
    except ValueError:
        raise UftError(f"parameter {name}={value!r} is not a {kind.lower().replace('number_', '')}: pass e.g. {name}=1") from None
    return str(value)


def kfp_client(host: str, namespace: str = NAMESPACE, token: str | None = None):
    """A real ``kfp.Client`` for ``host`` (the KFP API, e.g. http://localhost:8080).

    ``token`` (default: ``$KFP_TOKEN``) is sent as a bearer token: a multi-user Kubeflow's API
    rejects anonymous calls. Inside a pod, kfp uses the projected ServiceAccount token by itself.
    An expired token is refused here, before any call (:func:`check_token`).
    """
    if not host or "://" not in host:
        raise UftError(f"--host {host!r} is not a URL: pass the KFP API address, e.g. http://localhost:8080")
    import warnings

    from kfp import Client

    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    if token:
        check_token(token)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP >= 2.0.0-beta.2": we target 2.x
        return Client(host=host, namespace=namespace, existing_token=token)


def _cluster_error(host: str, what: str, e: Exception) -> UftError:
    first = (str(e).strip().splitlines() or [""])[0][:120]
    return UftError(f"{what} on KFP at {host} failed ({type(e).__name__}: {first}): check --host, that the KFP API "
                    "is reachable from here (and $KFP_TOKEN for a multi-user Kubeflow), and the namespace/experiment")


# --- the KFP token -------------------------------------------------------------------------------

def token_expiry(token: str) -> dt.datetime | None:
    """The ``exp`` of a JWT bearer token (a Kubernetes ServiceAccount token is one), UTC; None for
    a token that is not a JWT or carries no expiry (nothing to check then)."""
    import base64

    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return dt.datetime.fromtimestamp(int(claims["exp"]), dt.timezone.utc)
    except (ValueError, KeyError, TypeError):
        return None


def check_token(token: str, now: dt.datetime | None = None) -> dt.datetime | None:
    """Refuse an expired ``$KFP_TOKEN`` with the command that makes a new one; returns its expiry.

    ``kubectl create token`` gives one hour unless ``--duration`` asks for more (the API server
    may cap it): a token stored as a CI secret otherwise dies an hour after it was made and every
    scheduled call fails with an opaque 401. The token itself is never printed.
    """
    exp = token_expiry(token)
    now = now or dt.datetime.now(dt.timezone.utc)
    if exp is not None and exp <= now:
        raise UftError(f"${TOKEN_ENV} expired at {exp:%Y-%m-%d %H:%MZ}: make a new one (kubectl -n {NAMESPACE} create "
                       "token uft-ci --audience=pipelines.kubeflow.org --duration=720h, docs/deploy.md) and update "
                       f"the {TOKEN_ENV} secret")
    return exp


def token_warning(token: str | None, now: dt.datetime | None = None, days: int = 7) -> str | None:
    """A line to show while ``token`` has less than ``days`` left (a CI secret needs renewing
    before the scheduled job starts failing); None otherwise or for a token without expiry."""
    exp = token_expiry(token) if token else None
    now = now or dt.datetime.now(dt.timezone.utc)
    if exp is None or exp - now > dt.timedelta(days=days):
        return None
    return (f"${TOKEN_ENV} expires at {exp:%Y-%m-%d %H:%MZ} (in {max(exp - now, dt.timedelta()).days} days): renew "
            f"it (kubectl -n {NAMESPACE} create token uft-ci --audience=pipelines.kubeflow.org --duration=720h)")


# --- images ---------------------------------------------------------------------------------------

def require_pinned_images(path: str | Path, allow_unpinned: bool | None = None) -> list[str]:
    """Every image of the compiled package must be pinned by digest (``repo@sha256:<64 hex>``):
    a tag that was never pushed leaves the pods in ImagePullBackOff and the run hanging, a moved
    tag runs other bytes. ``allow_unpinned`` (default ``$UFT_ALLOW_UNPINNED_IMAGES``) lets a
    development cluster run tags. Returns the images."""
    images = sorted({e["container"]["image"] for e in _pipeline_spec(path)["deploymentSpec"]["executors"].values()
                     if "container" in e})
    if allow_unpinned is None:
        allow_unpinned = os.environ.get(ALLOW_UNPINNED_ENV, "").lower() in {"1", "true", "yes"}
    loose = [i for i in images if not re.search(r"@sha256:[0-9a-f]{64}$", i)]
    if loose and not allow_unpinned:
        raise UftError(f"image(s) {', '.join(loose)} not pinned by digest: set UFT_IMAGE and UFT_GPU_IMAGE to "
                       "repo@sha256:<digest> (the images workflow's summary, or the digest `docker push` printed), "
                       f"or pass --allow-unpinned-images (${ALLOW_UNPINNED_ENV}=1) for a development cluster")
    return images


# --- the backend ----------------------------------------------------------------------------------

def _version_tuple(v: str) -> tuple[int, int, int] | None:
    m = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", str(v).strip())
    return tuple(int(x) for x in m.groups()) if m else None  # type: ignore[return-value]


def backend_info(client: Any) -> tuple[str | None, bool | None]:
    """(release, multi-user) from ``GET /apis/v1beta1/healthz``, asked through the client's own
    connection and credentials. The API server answers ``tag_name``/``multi_user``, the UI
    (``ml-pipeline-ui``, what docs/deploy.md port-forwards) ``apiServerTagName``/
    ``apiServerMultiUser``: both are read (uft.orchestrate.backend.healthz_fields). None where
    the answer does not say."""
    from uft.orchestrate.backend import healthz_fields

    api = getattr(getattr(client, "_run_api", None), "api_client", None)
    if api is None:
        return None, None
    try:
        data = api.call_api("/apis/v1beta1/healthz", "GET", header_params={"Accept": "application/json"},
                            auth_settings=["Bearer"], response_type="object", _return_http_data_only=True)
    except Exception:  # an older or newer server without this endpoint: fall back to the stated version
        return None, None
    if isinstance(data, dict) and data.get("apiServerReady") is False:
        # The UI answers, but its last try to reach the API server failed (the version it still
        # carries is stale: uft.orchestrate.backend.healthz_fields); every call would fail too.
        raise UftError("the KFP UI answers but cannot reach its API server (healthz apiServerReady: false): "
                       "check `kubectl -n kubeflow rollout status deployment/ml-pipeline`, then retry")
    return healthz_fields(data)


def backend_version(client: Any) -> str | None:
    """The KFP API server's release as healthz reports it (:func:`backend_info`); None when it does not say."""
    return backend_info(client)[0]


def check_backend(client: Any, host: str, stated: str | None = None) -> str:
    """Refuse a KFP backend older than :data:`MIN_KFP_VERSION`; returns its version."""
    return check_backend_info(client, host, stated)[0]


def check_backend_info(client: Any, host: str, stated: str | None = None) -> tuple[str, bool]:
    """Refuse a KFP backend older than :data:`MIN_KFP_VERSION`; returns (version, multi-user).

    The server's own report wins; ``stated`` (``--kfp-version`` / ``$UFT_KFP_VERSION``) is used
    when it reports none. No version at all is an error, not a guess.
    """
    stated = stated or os.environ.get(KFP_VERSION_ENV) or None
    reported, multi_user = backend_info(client)
    version = reported or stated
    if not version:
        raise UftError(f"KFP at {host} does not report its version and none was given: uft needs KFP >= "
                       f"{MIN_KFP_VERSION}; look it up (kubectl -n kubeflow get deploy ml-pipeline -o "
                       f"jsonpath='{{..image}}') and pass --kfp-version X.Y.Z or set {KFP_VERSION_ENV}")
    have = _version_tuple(version)
    if have is None:
        raise UftError(f"--kfp-version {version!r} is not a version: pass X.Y.Z, e.g. --kfp-version {MIN_KFP_VERSION}")
    if have < _version_tuple(MIN_KFP_VERSION):  # type: ignore[operator]
        source = "reports" if reported else "was stated as"
        raise UftError(f"KFP at {host} {source} version {version}, older than {MIN_KFP_VERSION}, the oldest that runs "
                       f"uft's compiled pipeline (Kubernetes secrets/config with `optional`, exit-handler status, "
                       f"resources from parameters): upgrade Kubeflow Pipelines to {MIN_KFP_VERSION} or newer")
    return version, bool(multi_user)


# --- named, versioned pipelines -------------------------------------------------------------------

def pipeline_version_name(path: str | Path) -> str:
    """``uft-<package version>-<sha256 of the compiled YAML, 12 hex>``: same code and images, same name."""
    from uft import __version__

    return f"uft-{__version__}-{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]}"


def upload_version(client: Any, path: str | Path, namespace: str | None = None) -> tuple[str, str, str]:
    """Make the package a version of pipeline :data:`PIPELINE_NAME` (creating the pipeline on
    first use; reusing a version of the same name) → (pipeline id, version id, version name).

    ``namespace``: on a multi-user KFP, the profile namespace the pipeline belongs to. A shared
    (namespace-less) pipeline is written with the rights of KFP's own namespace on 2.17
    (apiserver/server/pipeline_server.go, canAccessPipeline) and refused outright where
    REQUIRE_NAMESPACE_FOR_PIPELINES is set (validation/namespace.go, ValidateNamespaceRequired);
    a profile's editor has rights in its own namespace only. Versions inherit the pipeline's
    namespace (pipeline_upload_server.go, canUploadVersionedPipeline)."""
    name = pipeline_version_name(path)
    images = _images_of(path)
    pid = _pipeline_named(client, PIPELINE_NAME, namespace)
    if pid is None:
        pid = client.upload_pipeline(str(path), pipeline_name=PIPELINE_NAME, namespace=namespace,
                                     description="uft: unsupervised finetuning with source replay, data mixing and "
                                                 "holistic evaluation (uploaded by `uft submit`)").pipeline_id
    vid = _version_named(client, pid, name)
    if vid is None:
        vid = client.upload_pipeline_version(str(path), pipeline_version_name=name, pipeline_id=pid,
                                             description=f"images: {images}").pipeline_version_id
    return str(pid), str(vid), name


def _pipeline_named(client: Any, name: str, namespace: str | None) -> str | None:
    """The id of pipeline ``name`` in ``namespace`` (None: the shared pipelines). kfp.Client's
    get_pipeline_id lists without a namespace, i.e. shared pipelines only."""
    if not namespace:
        return client.get_pipeline_id(name)
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    page = client.list_pipelines(page_size=100, filter=flt, namespace=namespace)
    ids = [p.pipeline_id for p in (getattr(page, "pipelines", None) or []) if p.display_name == name]
    return str(ids[0]) if ids else None


def _images_of(path: str | Path) -> str:
    spec = _pipeline_spec(path)
    return ", ".join(sorted({e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}))


def _version_named(client: Any, pipeline_id: str, name: str) -> str | None:
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    token = ""
    while True:
        page = client.list_pipeline_versions(pipeline_id=pipeline_id, page_token=token, page_size=100, filter=flt)
        for v in getattr(page, "pipeline_versions", None) or []:
            if v.display_name == name:
                return str(v.pipeline_version_id)
        token = getattr(page, "next_page_token", "") or ""
        if not token:
            return None


def run_title(args: dict[str, Any], experiment: str, now: dt.datetime | None = None) -> str:
    """A run name that says what runs: ``uft mnist→optdigits simclr seed=0 gpus=1 · 2026-12-01 14:05Z``."""
    from uft.config import RunConfig

    d = {**RunConfig().model_dump(), "gpus": 1, **args}

    def short(v: Any) -> str:
        s = str(v).rstrip("/")
        return s.rsplit("/", 1)[-1] or s

    when = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d %H:%MZ")
    return (f"uft {short(d['source'])}→{short(d['target'])} {d['ssl_method']} seed={d['seed']} gpus={d['gpus']}"
            f" [{experiment}] · {when}")


# --- one run --------------------------------------------------------------------------------------

@contextlib.contextmanager
def _cluster_session(host: str, params: dict[str, Any], experiment: str, namespace: str, client: Any,
                     kfp_version: str | None, allow_unpinned: bool | None, doing: str):
    """Compile, check the images and the backend, get the experiment → (package path, arguments,
    client, multi-user?, experiment). The cluster's own errors (HTTP, connection) become one line
    naming the host and what was being done."""
    with compiled_package() as path:
        args = pipeline_arguments(params, package_parameters(path), experiment)
        require_pinned_images(path, allow_unpinned)
        client = client or kfp_client(host, namespace)
        try:
            _, multi_user = check_backend_info(client, host, kfp_version)
            exp = client.create_experiment(name=experiment, namespace=namespace)  # gets it when it exists
            yield path, args, client, multi_user, exp
        except UftError:
            raise
        except Exception as e:
            raise _cluster_error(host, doing, e) from None


def submit(host: str, params: dict[str, Any], experiment: str = "uft", namespace: str = NAMESPACE,
           service_account: str = SERVICE_ACCOUNT, run_name: str | None = None, client: Any = None,
           kfp_version: str | None = None, allow_unpinned: bool | None = None) -> str:
    """Compile, check images and backend, upload as a version of pipeline ``uft`` and start one
    run in ``experiment`` (created if missing); returns the KFP run id."""
    if not experiment:
        raise UftError("--experiment is empty: name the KFP experiment, e.g. --experiment uft")
    with _cluster_session(host, params, experiment, namespace, client, kfp_version, allow_unpinned,
                          "starting a run") as (path, args, client, multi_user, exp):
        pid, vid, _ = upload_version(client, path, namespace if multi_user else None)
        res = client.run_pipeline(experiment_id=exp.experiment_id, job_name=run_name or run_title(args, experiment),
                                  params=args, pipeline_id=pid, version_id=vid, service_account=service_account)
    return str(res.run_id)


# --- recurring runs -------------------------------------------------------------------------------

_MONTHS = {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
#: (name, lowest, highest, names) of KFP's six cron fields, seconds first (robfig/cron's format).
_CRON_FIELDS = [("second", 0, 59, {}), ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
                ("month", 1, 12, _MONTHS), ("day of week", 0, 6, _DAYS)]
_DESCRIPTORS = {"@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
                "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *", "@hourly": "0 0 * * * *"}
_ITEM = re.compile(r"^(?:(\*|\?)|([A-Za-z0-9]+)(?:-([A-Za-z0-9]+))?)(?:/(\d+))?$")


def kfp_cron(expr: str) -> str:
    """A standard 5-field cron (``"0 3 * * *"``) → KFP's 6-field form, seconds first (``"0 0 3 * * *"``).

    A 6-field expression is checked and passed through; ``@daily``-style shorthands are expanded.
    Raises :class:`UftError` naming the bad field.
    """
    text = " ".join(str(expr).split())
    fields = _DESCRIPTORS.get(text.lower(), text).split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise UftError(f"--cron {expr!r} has {len(fields)} fields: use 5 (minute hour day-of-month month day-of-week), "
                       "e.g. \"0 3 * * *\" for 03:00 every day")
    for value, (name, lo, hi, names) in zip(fields, _CRON_FIELDS):
        for item in value.split(","):
            problem = _cron_item(item, name, lo, hi, names)
            if problem:
                raise UftError(f"--cron {expr!r}: {name} field {value!r} {problem}; e.g. \"0 3 * * *\" runs at 03:00 daily")
    return " ".join(fields)


def _cron_item(item: str, name: str, lo: int, hi: int, names: dict[str, int]) -> str:
    m = _ITEM.match(item)
    if not m:
        return "is not a number, range (a-b), list (a,b) or step (*/n)"
    wild, a, b, step = m.groups()
    if wild == "?" and name not in {"day of month", "day of week"}:
        return "may not be '?' (only the day fields may)"
    if step is not None and int(step) < 1:
        return "has a step of 0"
    vals = []
    for v in (a, b):
        if v is None:
            continue
        n = names.get(v.upper()) if not v.isdigit() else int(v)
        if n is None or not lo <= n <= hi:
            return f"has {v!r} outside {lo}-{hi}" + (f" (or {', '.join(names)})" if names else "")
        vals.append(n)
    if len(vals) == 2 and vals[0] > vals[1]:
        return f"has a backwards range {a}-{b}"
    return ""


def schedule(host: str, cron: str, params: dict[str, Any], experiment: str = "uft", namespace: str = NAMESPACE,
             service_account: str = SERVICE_ACCOUNT, name: str = "uft-schedule", replace: bool = False,
             client: Any = None, kfp_version: str | None = None, allow_unpinned: bool | None = None) -> str:
    """Create a KFP recurring run ``name`` on ``cron`` (5-field): one run at a time, no catch-up of
    runs missed while paused. A recurring run of that name in the experiment is an error unless
    ``replace`` (then it is deleted after the new one exists). Returns the recurring run id."""
    kcron = kfp_cron(cron)
    if not name:
        raise UftError("--name is empty: name the recurring run, e.g. --name uft-nightly")
    with _cluster_session(host, params, experiment, namespace, client, kfp_version, allow_unpinned,
                          "creating a recurring run") as (path, args, client, multi_user, exp):
        existing = _recurring_runs_named(client, exp.experiment_id, name, namespace)
        if existing and not replace:
            raise UftError(f"a recurring run named {name!r} already exists in experiment {experiment!r} "
                           f"(id {existing[0]}): pass --replace to swap it, or another --name")
        pid, vid, version = upload_version(client, path, namespace if multi_user else None)
        rr = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name, description=f"uft on cron {cron!r}, pipeline version {version}",
            cron_expression=kcron, max_concurrency=1, no_catchup=True, params=args,
            pipeline_id=pid, version_id=vid, enabled=True, service_account=service_account)
        for old in existing:
            client.delete_recurring_run(old)
    return str(rr.recurring_run_id)


def _recurring_runs_named(client: Any, experiment_id: str, name: str, namespace: str) -> list[str]:
    ids, token = [], ""
    while True:
        page = client.list_recurring_runs(experiment_id=experiment_id, namespace=namespace, page_size=100, page_token=token)
        ids += [r.recurring_run_id for r in (getattr(page, "recurring_runs", None) or []) if r.display_name == name]
        token = getattr(page, "next_page_token", "") or ""
        if not token:
            return ids
