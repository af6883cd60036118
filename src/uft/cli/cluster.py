"""``uft`` subcommands for a Kubeflow Pipelines cluster: compile, submit, schedule, trigger, load-target."""

from __future__ import annotations

from pathlib import Path

import typer

from uft.cli.common import absolute_spec, app, console, fail, parse_params
from uft.errors import UftError


_HOST = typer.Option(..., "--host", envvar="KFP_HOST", help="KFP API URL, e.g. http://localhost:8080 (or $KFP_HOST)")
_PARAM = typer.Option([], "--param", "-p", help="pipeline parameter KEY=VALUE (repeatable)")
_NAMESPACE = typer.Option("uft", help="namespace the run's pods start in (the KFP client's namespace)")
_SA = typer.Option("uft-pipeline-runner", "--service-account", help="ServiceAccount the run's pods use")
_KFP_EXPERIMENT = typer.Option("uft", help="KFP experiment (created if missing)")
_KFP_VERSION = typer.Option("", "--kfp-version", envvar="UFT_KFP_VERSION",
                            help="the KFP backend's version, if its API does not report it (checked against the minimum)")
_UNPINNED = typer.Option(False, "--allow-unpinned-images",
                         help="development clusters: allow UFT_IMAGE/UFT_GPU_IMAGE given by tag, not @sha256 digest")


def _cluster_call(fn, *args, param: list[str], namespace: str, service_account: str, kfp_version: str,
                  allow_unpinned_images: bool, **kwargs):
    """``fn(*args, params, ...)`` with the keyword arguments every cluster call takes, the pipeline
    parameters checked for a cluster run first (:func:`uft.preflight.for_cluster`)."""
    from uft.preflight import for_cluster

    params = parse_params(param)
    for_cluster(params)
    return fn(*args, params, namespace=namespace, service_account=service_account, kfp_version=kfp_version or None,
              allow_unpinned=allow_unpinned_images or None, **kwargs)


@app.command("compile")
def compile_cmd(out: Path = typer.Option(Path("build/uft_pipeline.yaml"), help="output YAML")) -> None:
    """Compile the pipeline to KFP YAML."""
    from uft.orchestrate.compile import compile_pipeline

    console.print(f"wrote {compile_pipeline(out)}")


@app.command("submit")
def submit_cmd(
    host: str = _HOST,
    experiment: str = typer.Option("uft", help="KFP experiment (created if missing); also the MLflow experiment unless --param experiment=..."),
    namespace: str = _NAMESPACE,
    service_account: str = _SA,
    run_name: str = typer.Option("", help="name shown in the KFP UI (default: source→target, method, seed, GPUs, time)"),
    param: list[str] = _PARAM,
    kfp_version: str = _KFP_VERSION,
    allow_unpinned_images: bool = _UNPINNED,
) -> None:
    """Compile the pipeline, upload it as a version of pipeline 'uft' and start one run (KFP >= 2.15)."""
    from uft.orchestrate.submit import submit

    try:
        run_id = _cluster_call(submit, host, param=param, namespace=namespace, service_account=service_account,
                               kfp_version=kfp_version, allow_unpinned_images=allow_unpinned_images,
                               experiment=experiment, run_name=run_name or None)
    except UftError as e:
        fail(e)
    console.print(f"started run {run_id} in experiment {experiment!r}: {host.rstrip('/')}/#/runs/details/{run_id}", highlight=False)


@app.command("schedule")
def schedule_cmd(
    host: str = _HOST,
    cron: str = typer.Option(..., help='5-field cron, e.g. "0 3 * * *" (KFP\'s seconds field is added)'),
    name: str = typer.Option("uft-schedule", help="name of the recurring run"),
    replace: bool = typer.Option(False, "--replace", help="replace a recurring run of the same name"),
    experiment: str = _KFP_EXPERIMENT,
    namespace: str = _NAMESPACE,
    service_account: str = _SA,
    param: list[str] = _PARAM,
    kfp_version: str = _KFP_VERSION,
    allow_unpinned_images: bool = _UNPINNED,
) -> None:
    """Create a recurring run: at most one at a time, no catch-up of missed runs."""
    from uft.orchestrate.submit import kfp_cron, schedule

    try:
        rid = _cluster_call(schedule, host, cron, param=param, namespace=namespace, service_account=service_account,
                            kfp_version=kfp_version, allow_unpinned_images=allow_unpinned_images,
                            experiment=experiment, name=name, replace=replace)
        console.print(f"recurring run {name!r} ({rid}) on cron {kfp_cron(cron)!r} in experiment {experiment!r}", highlight=False)
    except UftError as e:
        fail(e)


@app.command("trigger")
def trigger_cmd(
    host: str = typer.Option("", "--host", envvar="KFP_HOST", help="KFP API URL, e.g. http://localhost:8080 (or $KFP_HOST)"),
    target: str = typer.Option(..., envvar="UFT_TARGET_URI", help="target data prefix: s3://bucket/prefix or a directory"),
    state: str = typer.Option("", help="where the last submitted hash is kept (default: STORE_URI/triggers)"),
    experiment: str = _KFP_EXPERIMENT,
    namespace: str = _NAMESPACE,
    service_account: str = _SA,
    param: list[str] = _PARAM,
    kfp_version: str = _KFP_VERSION,
    max_attempts: int = typer.Option(3, "--max-attempts", help="runs per target content before retrying stops"),
    reset_attempts: bool = typer.Option(False, "--reset-attempts", help="forget the failed runs of the current content (after a fix)"),
    allow_unpinned_images: bool = _UNPINNED,
    local: bool = typer.Option(False, "--local", help="no cluster: run the pipeline here through `uft run` when the "
                               "target directory changed (uft.orchestrate.local_trigger)"),
    source: str = typer.Option("mnist", help="with --local: the source dataset of the run"),
) -> None:
    """Submit a run for this target unless its content already has a run that succeeded or is going,
    or had --max-attempts runs that failed (then exit 1 naming them); --local runs it here instead."""
    if local:
        from uft.orchestrate.local_trigger import describe_local, trigger_local

        try:
            res = trigger_local(target, source=absolute_spec(source), params=parse_params(param),
                                state=Path(state) if state else None, experiment=experiment)
        except UftError as e:
            fail(e)
        console.print(describe_local(res), highlight=False, soft_wrap=True)
        return
    from uft.orchestrate.trigger import describe, trigger

    if not host:
        fail(UftError("--host is empty: pass the KFP API URL (or $KFP_HOST), or --local to run here"))
    try:
        res = trigger(host, target, parse_params(param), experiment=experiment, namespace=namespace,
                      service_account=service_account, state_uri=state or None, kfp_version=kfp_version or None,
                      max_attempts=max_attempts, reset_attempts=reset_attempts, allow_unpinned=allow_unpinned_images or None)
    except UftError as e:
        fail(e)
    if res["action"] == "stopped":
        fail(UftError(describe(res)))
    console.print(describe(res), highlight=False)
    _warn_token()


def _warn_token() -> None:
    """The KFP token's last days, as a GitHub Actions warning in the trigger workflow."""
    import os

    from uft.orchestrate.submit import TOKEN_ENV, token_warning

    line = token_warning(os.environ.get(TOKEN_ENV))
    if line:
        prefix = "::warning::" if os.environ.get("GITHUB_ACTIONS") == "true" else "warning: "
        print(prefix + line)


@app.command("load-target")
def load_target_cmd(
    directory: Path = typer.Argument(..., help="folder of target images (class folders, or flat for unlabelled data)"),
    to: str = typer.Argument(..., help="where the pipeline reads them: s3://bucket/data/target (or a directory)"),
    delete: bool = typer.Option(False, "--delete", help="also remove objects under TO that DIRECTORY lacks (a mirror)"),
) -> None:
    """Upload the target images to the prefix a run's `target` names, with the loader identity
    (Secret uft-s3-loader: read/write data/ only; docs/deploy.md). Unchanged files are skipped."""
    from uft.store import open_store, upload_tree

    try:
        counts = upload_tree(directory, open_store(to), delete=delete)
    except UftError as e:
        fail(e)
    extra = f"; {counts['extra']} objects there are not in {directory} (kept; --delete removes them)" if counts["extra"] else ""
    console.print(f"{to}: {counts['uploaded']} uploaded, {counts['unchanged']} unchanged, {counts['deleted']} deleted{extra}",
                  highlight=False, soft_wrap=True)
