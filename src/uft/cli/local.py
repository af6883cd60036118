"""``uft`` subcommands that work on this machine: run the pipeline, promote, open the UI, ingest,
list the methods."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from uft.cli.common import TaskLog, absolute_spec, app, console, err, fail, parse_params
from uft.errors import UftError
from uft.orchestrate import forkserver


@app.command()
def run(
    source: str = typer.Option("mnist", help="bundled name, ImageFolder dir, s3:// prefix or manifest URI"),
    target: str = typer.Option("optdigits", help="same forms as --source"),
    param: list[str] = typer.Option([], "--param", "-p", help="any pipeline parameter, KEY=VALUE (repeatable)"),
    store: str = typer.Option("", help="artifact store URI (default: s3://uft-artifacts/uft on the local S3 server)"),
    experiment: str = typer.Option("uft", help="MLflow experiment"),
    run_id: str = typer.Option("", help="MLflow key of this run (default: a hash of the config, so reruns reuse it)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="stream every step's logs"),
) -> None:
    """Run the whole pipeline locally (kfp.local + local S3 + MLflow on sqlite) and print the results."""
    from uft.orchestrate.lifecycle import paused_tasks, run_lock, signals_raise
    from uft.orchestrate.local import local_services, run_local, state_dir
    from uft.config import default_bucket, validate_config
    from uft.preflight import check, needs_remote, preflight

    try:
        # Steps run in other processes (and directories): make local data paths absolute first.
        source, target = absolute_spec(source), absolute_spec(target)
        store_uri = store or f"s3://{default_bucket()}/uft"
        external = bool(os.environ.get("AWS_ENDPOINT_URL"))  # no local S3 server to wait for
        params = parse_params(param)
        state = state_dir()
        with contextlib.ExitStack() as stack:
            stack.enter_context(run_lock(state))  # first: a second run is refused in a second, not after imports
            # MLflow's imports (≈ 2 s, the longest part of a cached rerun's start) overlap the fork
            # server's and the S3 server's start, the estimate and the first tasks: the run needs
            # MLflow first for its task cache's key, after the fingerprints (an import in progress
            # in this thread makes any other importer wait for it, so no join is needed).
            _import_ahead(("mlflow", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store"))
            shim = None
            if forkserver.enabled():  # warms up (imports torch, MLflow, …) while the services start
                shim = stack.enter_context(forkserver.serving())
            # Bad input fails here, in seconds, before any service or task starts.
            cfg, checked = check({"source": source, "target": target, **params}, store_uri=store_uri,
                                 stages=("local", "remote") if external else ("local",))
            stack.enter_context(signals_raise())
            env = stack.enter_context(local_services(state, say=lambda m: err.print(f"[dim]{m}[/]", highlight=False)))
            layouts = dict(checked.datasets)
            if not external and needs_remote(cfg, store_uri):  # s3:// data on the local server
                layouts.update(preflight(cfg, store_uri=store_uri, stages=("remote",)).datasets)
            console.print(f"[dim]{checked.summary()}[/]", highlight=False)
            # After the services: an s3:// dataset on the local server can be sampled now; the
            # listings preflight made are reused, so a large folder is listed once per run.
            choice = infer_defaults(source, target, params,
                                     listings={r: d.listing for r, d in layouts.items()})
            if choice.values:
                cfg = validate_config({**cfg.model_dump(), **choice.values})
            # A step timed while the fork server imports on the other core took 2.3× as long as the
            # run's own steps (0.24 against 0.105 s, demo shape, 2 cores), and waiting for its
            # preload, or pausing it for the whole measurement, cost 6-15 s: the server is paused
            # only for the timed steps (≈ 0.3 s); torch's import and the warm-up steps overlap it.
            # (Measured beside the first tasks instead, in one trial it saved no time on 2 busy cores and read
            # -33 % against the training.)
            with contextlib.ExitStack() as pause:  # entered only when a step is timed (not kept)
                estimate_s, estimate_line = _estimate(cfg, state / "step-seconds.json",
                                                      lambda: pause.enter_context(paused_tasks()))
            console.print(f"[dim]{estimate_line}[/]", soft_wrap=True)
            console.print(f"[dim]state: {state}  ·  S3: {env.get('AWS_ENDPOINT_URL', os.environ.get('AWS_ENDPOINT_URL', '-'))}"
                          f"  ·  MLflow: {os.environ['MLFLOW_TRACKING_URI']}[/]")
            extra = choice.params()
            if verbose:
                res = run_local(cfg, store_uri=store, experiment=experiment, run_id=run_id, quiet=False,
                                extra_params=extra, after_tasks=env.leave_s3)
            else:
                # Bound to the real stdout now: run_local redirects sys.stdout while the tasks run.
                live = Console(file=sys.stdout)
                with live.status("running the pipeline (kfp.local) …", spinner="dots") as status:
                    res = run_local(cfg, store_uri=store, experiment=experiment, run_id=run_id, quiet=True,
                                    on_event=TaskLog(status), extra_params=extra, after_tasks=env.leave_s3)
            from uft.promote import promotion_summary

            res.promotion = promotion_summary(experiment, res.run_id)  # read while MLflow is reachable
            from uft.tracking import report_route

            res.report_route = report_route(experiment, res.run_id)
            res.estimate_s = estimate_s  # compared with the training the run did (print_result)
    except UftError as e:
        fail(e)
    except KeyboardInterrupt as e:
        _interrupted(e)
    print_result(res, state, cfg.model_dump())


def _interrupted(e: KeyboardInterrupt) -> None:
    import signal

    signum = getattr(e, "signum", signal.SIGINT)
    err.print(f"[bold red]stopped[/] by {signal.Signals(signum).name}: running tasks and the local services were "
              "stopped; the MLflow runs are marked KILLED/FAILED", highlight=False)
    raise typer.Exit(128 + signum)


def _import_ahead(modules: tuple[str, ...]):
    """Import ``modules`` in a background thread → the thread. Another thread's import of a module
    this one is importing waits for it to finish, so a join is needed only to wait for all of them.
    A failure there is left for the import that needs the module to raise, in its own words."""
    import importlib
    import threading

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 — reported where the module is imported for use
                return

    t = threading.Thread(target=load, name="uft-import-ahead", daemon=True)
    t.start()
    return t


def _estimate(cfg, memo: Path | None = None, before_timing=None) -> tuple[float | None, str]:
    """The run's training time, estimated from steps timed here (or kept in ``memo`` from an
    earlier run of the same shape) → (seconds or None, the line to print); a failure to time is not
    fatal. ``before_timing``: called right before steps are timed (:func:`uft.budget.measure_step_seconds`)."""
    from uft.budget import estimate_seconds

    try:
        return estimate_seconds(cfg, memo, before_timing)
    except Exception as e:  # noqa: BLE001 — an estimate must never stop a run
        return None, f"estimated training time: unknown ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def infer_defaults(source: str, target: str, params: dict[str, str], listings: dict[str, tuple[str, ...]] | None = None):
    """Image size / channels / encoder from the data when not given; print the choice and any loss.

    ``listings``: ``{"source"|"target": file paths}`` already listed by preflight (else listed here)."""
    from uft.config import RunConfig
    from uft.data.profile import profile_dataset
    from uft.defaults import infer_defaults, has_accelerator

    current = {k: params.get(k, RunConfig.model_fields[k].default)
               for k in ("image_size", "channels", "encoder", "source_test_fraction", "target_test_fraction")}
    for k, kind in (("image_size", int), ("channels", int), ("source_test_fraction", float), ("target_test_fraction", float)):
        try:  # a malformed value is the config check's to report
            current[k] = kind(current[k])
        except (TypeError, ValueError):
            current[k] = RunConfig.model_fields[k].default
    listings = listings or {}
    choice = infer_defaults(profile_dataset(source, listing=listings.get("source", ())),
                            profile_dataset(target, listing=listings.get("target", ())), explicit=params, current=current,
                            accelerator=has_accelerator())
    console.print(f"[dim]{choice.line()}[/]", soft_wrap=True)
    for w in choice.warnings:
        err.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    return choice


def print_result(res, state: Path, config: dict | None = None) -> None:
    from uft.report import baseline_hint

    t = Table(title=f"uft run {res.run_id} — {res.seconds:.0f} s",
              caption="± = sd over the few-label probe's label draws (one run: not an interval over seeds)")
    t.add_column("metric")
    t.add_column("base", justify="right")
    t.add_column("finetuned", justify="right")
    names = sorted({k.split("_", 1)[1] for k in res.metrics if k.startswith(("base_", "finetuned_")) and not k.endswith("_std")})
    for n in names:
        def cell(tag: str) -> str:
            v, sd = res.metrics.get(f"{tag}_{n}"), res.metrics.get(f"{tag}_{n}_std")
            return "–" if v is None else f"{v:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
        t.add_row(n, cell("base"), cell("finetuned"))
    console.print(t)
    from uft.verdict import finetune_verdicts, summary_line

    for line in [*finetune_verdicts(res.metrics, config), summary_line(res.metrics, config)]:  # did finetuning change anything?
        if line:
            console.print(line, soft_wrap=True, highlight=False)
    if config and (hint := baseline_hint(config)):  # replay/mixing vs plain target-only finetuning
        console.print(f"[dim]{hint}[/]", soft_wrap=True)
    hol = sorted({k for k in res.metrics if k.startswith("holistic_") and not k.startswith("holistic_start_")})
    if res.metrics.get("holistic_start_degenerate"):
        console.print(f"[bold red]WARNING: the source classifier is degenerate on the target (accuracy "
                      f"{res.metrics.get('holistic_start_accuracy', float('nan')):.3f}): the holistic rows are not "
                      "meaningful (see the report)[/]")
    if hol:
        h = Table(title="holistic transfer (seen = classes with target labels)")
        for c in ("method", "overall", "seen", "unseen"):
            h.add_column(c, justify="right" if c != "method" else "left")
        methods = sorted({k[len("holistic_"):].rsplit("_", 1)[0] for k in hol})
        for m in methods:
            h.add_row(m, *[f"{res.metrics.get(f'holistic_{m}_{c}', float('nan')):.3f}" for c in ("overall", "seen", "unseen")])
        console.print(h)
    decision = getattr(res, "promotion", None)
    if decision:  # the promotion gate's verdict and why (uft.promote)
        console.print(f"Promotion: [bold]{decision}[/]", soft_wrap=True)
    from uft.budget import estimate_vs_actual

    if line := estimate_vs_actual(getattr(res, "estimate_s", None), getattr(res, "train_seconds", {})):
        console.print(f"[dim]{line}[/]", soft_wrap=True, highlight=False)
    for line in forkserver.fallback_lines(getattr(res, "fallbacks", [])):  # each distinct reason once
        err.print(f"fork server: {line}", style="yellow", soft_wrap=True, highlight=False, markup=False)
    console.print(f"MLflow parent run: [bold]{res.parent_run_id}[/] (experiment {res.experiment!r})")
    for k, v in sorted(res.artifacts.items()):
        console.print(f"  {k}: {v}", soft_wrap=True)  # URIs stay whole, to copy and paste
    console.print(f"Open the MLflow UI: [bold]make ui[/]  (or: UFT_STATE_DIR={shlex.quote(str(state))} .venv/bin/uft ui)",
                  soft_wrap=True)
    route = getattr(res, "report_route", None)
    if route:  # last: the one line to open
        from uft.tracking import ui_url

        console.print(f"Report (parent run, after `make ui`): {ui_url(route)}", soft_wrap=True, highlight=False)


@app.command("promote")
def promote_cmd(
    run_id: str = typer.Argument(..., help="the pipeline run id (`uft run` prints it)"),
    force: bool = typer.Option(False, "--force", help="make its version champion without applying the gate"),
    explain: bool = typer.Option(False, "--explain", help="show why the run's gate decided as it did; change nothing"),
    registered_model: str = typer.Option("uft-encoder", help="registered model name (if the run did not record one)"),
    experiment: str = typer.Option("uft", help="MLflow experiment of the run"),
) -> None:
    """Manual promotion decision for the encoder version a run registered (see `uft.promote`)."""
    from contextlib import nullcontext

    from uft.orchestrate.local import local_services, state_dir
    from uft.promote import explain as explain_decision, manual_promote

    if explain and force:
        fail(UftError("--explain shows a decision and --force makes one: pass one of them"))
    try:
        # --explain reads the decision logged with the run: MLflow's artifacts live on the local S3 server
        ctx = nullcontext() if os.environ.get("MLFLOW_TRACKING_URI") else local_services(state_dir(), start_s3=explain)
        with ctx:
            if explain:
                console.print("\n".join(explain_decision(run_id, experiment=experiment)), soft_wrap=True, highlight=False,
                              markup=False)
                return
            d = manual_promote(run_id, registered_model=registered_model, experiment=experiment, force=force)
    except UftError as e:
        fail(e)
    console.print(d.summary(), soft_wrap=True)


@app.command()
def ui(port: int = typer.Option(5000, help="port for the MLflow UI on 127.0.0.1"),
       experiment: str = typer.Option("uft", help="MLflow experiment whose latest report is linked")) -> None:
    """Start the local S3 server and the MLflow UI on the local run's state (Ctrl-C to stop).

    Safe while `uft run` runs: both use the same S3 server, which stops when the last one leaves."""
    import signal
    import subprocess

    from uft.orchestrate.lifecycle import signals_raise
    from uft.orchestrate.local import local_services, state_dir

    try:
        with signals_raise(), local_services(state_dir(), say=lambda m: err.print(f"[dim]{m}[/]", highlight=False)) as env:
            console.print(f"MLflow UI on http://127.0.0.1:{port}  (Ctrl-C to stop)")
            from uft.tracking import UI_QUERY, report_route, ui_url

            route = report_route(experiment)
            console.print(f"  latest run's report: {ui_url(route, port)}" if route else
                          f"  no finished run yet in experiment {experiment!r}: `make run` first", soft_wrap=True,
                          highlight=False)
            console.print(f"  runs and model registry: {ui_url('#/experiments' + UI_QUERY, port)}", soft_wrap=True,
                          highlight=False)
            # Its own session, so stopping `uft ui` (any signal) stops MLflow's workers with it.
            # One worker: a local UI has one reader, and MLflow's default four take minutes to start on 2 cores.
            proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
                                     "--workers", "1", "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"]],
                                    env={**os.environ, **env},
                                    start_new_session=True)
            try:
                proc.wait()
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
    except UftError as e:
        fail(e)
    except KeyboardInterrupt:
        pass


@app.command("ingest")
def ingest_cmd(
    path: str = typer.Argument(..., help="ImageFolder dir (PATH#unlabelled / #strict), s3://bucket/prefix, bundled name or manifest URI"),
    store: str = typer.Option(..., help="where to publish: s3://bucket/prefix or a local directory"),
    image_size: int = typer.Option(16, help="square side every image is resized to"),
    channels: int = typer.Option(1, help="1 (grey) or 3 (RGB)"),
    test_fraction: float = typer.Option(0.5, help="held-out share per class when the data has no train/ and test/"),
    val_fraction: float = typer.Option(0.2, help="share of the non-test rows per class held out from training for decisions"),
    limit: int = typer.Option(0, help="keep at most this many images (class-proportional; 0 = all)"),
    seed: int = typer.Option(0, help="seed of the split and of --limit"),
    name: str = typer.Option("", help="dataset name in the manifest (default: PATH)"),
    unlabelled: bool = typer.Option(False, "--unlabelled", help="ignore class directories: every image unlabelled"),
    strict: bool = typer.Option(False, "--strict", help="fail on the first unusable file instead of skipping it"),
    framing: str = typer.Option("auto", help="auto | content_box | keep: crop each image to its content (auto: "
                                "bundled MNIST to its 20x20 box, user data kept)"),
    workers: int = typer.Option(0, help="decode processes (0 = $UFT_INGEST_WORKERS, else the CPUs this process may use)"),
) -> None:
    """Read a dataset, print what was found and skipped, publish it; the last line is the manifest URI."""
    from uft.data.imagefolder import load_imagefolder, summary_lines
    from uft.data.ingest import ingest as ingest_raw
    from uft.data.sources import BUNDLED, load_source
    from uft.store import open_store, read_manifest

    try:
        if path.endswith("manifest.json"):  # already ingested: show it and pass the URI through
            manifest, _, _ = read_manifest(path)
            if manifest.get("kind") != "dataset":
                raise UftError(f"{path} is not a dataset manifest (kind={manifest.get('kind')!r}): pass the output of `uft ingest`")
            console.print(f"dataset {manifest.get('name')!r}: {manifest['num_rows']} rows, image shape {manifest['image_shape']}, "
                          f"classes {manifest['classes'] or 'none (unlabelled)'}, splits {manifest['splits']}")
            console.print(path, soft_wrap=True, highlight=False)
            return
        if path in BUNDLED:
            raw = load_source(path, image_size=image_size, channels=channels, framing=framing)
        else:
            raw = load_imagefolder(path, image_size=image_size, channels=channels, strict=strict, unlabelled=unlabelled,
                                   framing=framing, workers=workers or None)
        for line in summary_lines(raw.info):
            console.print(line, soft_wrap=True, highlight=False, markup=False)
        dest = open_store(store, create_bucket=True)
        with console.status(f"publishing to {dest.uri} …", spinner="dots"):
            uri = ingest_raw(raw, dest, name=name or path, image_size=image_size, channels=channels,
                             test_fraction=test_fraction, val_fraction=val_fraction, limit=limit, seed=seed)
        manifest, _, _ = read_manifest(uri)
        console.print(f"published {manifest['num_rows']} rows ({', '.join(f'{k} {v}' for k, v in sorted(manifest['splits'].items()))}) "
                      f"at {image_size}x{image_size}x{channels}:", highlight=False)
        console.print(uri, soft_wrap=True, highlight=False)
    except UftError as e:
        fail(e)


@app.command()
def methods() -> None:
    """List the registered SSL methods, encoders, replay rules and holistic methods."""
    from uft.config import MIX_OPS, REPLAY_RULES
    from uft.models.encoders import encoder_names
    from uft.ssl.base import method_names
    from uft.transfer.holistic import HOLISTIC_METHODS

    console.print(f"ssl methods: {', '.join(method_names())}")
    from uft.choices import ENCODER_FAMILIES

    console.print(f"encoders: {', '.join(encoder_names())}, " + ", ".join(f"{f}:<name>" for f in ENCODER_FAMILIES), highlight=False)
    console.print(f"replay rules: {', '.join(REPLAY_RULES)}")
    console.print(f"mix ops: {', '.join(MIX_OPS)}")
    console.print(f"holistic methods: {', '.join(HOLISTIC_METHODS)}")
