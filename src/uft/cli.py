"""The ``uft`` command."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from uft.errors import UftError
from uft.orchestrate import forkserver
from uft.orchestrate.forkserver import CPU_LINE

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, help="Unsupervised finetuning of vision encoders, as a Kubeflow pipeline.")
console = Console()
err = Console(stderr=True)


def _params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise UftError(f"--param {p!r} is not KEY=VALUE: write e.g. --param finetune_steps=100")
        k, v = p.split("=", 1)
        out[k.strip()] = v
    return out


def _absolute(spec: str) -> str:
    path, sep, opts = spec.partition("#")
    return str(Path(path).resolve()) + sep + opts if path and "://" not in path and Path(path).exists() else spec


def _fail(e: UftError) -> None:
    err.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(2)


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
    from uft.orchestrate.lifecycle import run_lock, signals_raise
    from uft.orchestrate.local import local_services, run_local, state_dir
    from uft.config import default_bucket, validate_config
    from uft.preflight import check, needs_remote, preflight

    try:
        # Steps run in other processes (and directories): make local data paths absolute first.
        source, target = _absolute(source), _absolute(target)
        store_uri = store or f"s3://{default_bucket()}/uft"
        external = bool(os.environ.get("AWS_ENDPOINT_URL"))  # no local S3 server to wait for
        params = _params(param)
        state = state_dir()
        with contextlib.ExitStack() as stack:
            stack.enter_context(run_lock(state))  # first: a second run is refused in a second, not after imports
            if forkserver.enabled():  # warms up (imports torch, MLflow, …) while the services start
                stack.enter_context(forkserver.serving())
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
            choice = _infer_defaults(source, target, params,
                                     listings={r: d.listing for r, d in layouts.items()})
            if choice.values:
                cfg = validate_config({**cfg.model_dump(), **choice.values})
            console.print(f"[dim]{_estimate_line(cfg)}[/]", soft_wrap=True)
            console.print(f"[dim]state: {state}  ·  S3: {env.get('AWS_ENDPOINT_URL', os.environ.get('AWS_ENDPOINT_URL', '-'))}"
                          f"  ·  MLflow: {os.environ['MLFLOW_TRACKING_URI']}[/]")
            extra = choice.params()
            if verbose:
                res = run_local(cfg, store_uri=store, experiment=experiment, run_id=run_id, quiet=False,
                                extra_params=extra)
            else:
                # Bound to the real stdout now: run_local redirects sys.stdout while the tasks run.
                live = Console(file=sys.stdout)
                with live.status("running the pipeline (kfp.local) …", spinner="dots") as status:
                    res = run_local(cfg, store_uri=store, experiment=experiment, run_id=run_id, quiet=True,
                                    on_event=_TaskLog(status), extra_params=extra)
            from uft.promote import promotion_summary

            res.promotion = promotion_summary(experiment, res.run_id)  # read while MLflow is reachable
            from uft.tracking import report_route

            res.report_route = report_route(experiment, res.run_id)
    except UftError as e:
        _fail(e)
    except KeyboardInterrupt as e:
        _interrupted(e)
    _print_result(res, state, cfg.model_dump())


def _interrupted(e: KeyboardInterrupt) -> None:
    import signal

    signum = getattr(e, "signum", signal.SIGINT)
    err.print(f"[bold red]stopped[/] by {signal.Signals(signum).name}: running tasks and the local services were "
              "stopped; the MLflow runs are marked KILLED/FAILED", highlight=False)
    raise typer.Exit(128 + signum)


def _estimate_line(cfg) -> str:
    """The run's training time, estimated from two steps timed here (a failure to time is not fatal)."""
    from uft.budget import estimate_seconds

    try:
        return estimate_seconds(cfg)[1]
    except Exception as e:  # noqa: BLE001 — an estimate must never stop a run
        return f"estimated training time: unknown ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def _infer_defaults(source: str, target: str, params: dict[str, str], listings: dict[str, tuple[str, ...]] | None = None):
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


class _TaskLog:
    """One line per finished task (its wall time, the CPU seconds of its process, or "cached" when
    kfp.local's task cache answered it) above a status line showing the running task and its
    progress (pretrain 120/300 · loss 4.1 · eta_s 20)."""

    def __init__(self, status, quiet_tasks: bool = False, label: str = "running the pipeline (kfp.local)"):
        self.status, self.started, self.done, self.quiet_tasks, self.label = status, {}, 0, quiet_tasks, label
        self.rows: list[tuple[str, str, float, float]] = []  # (task, outcome, wall s, cpu s) in finishing order
        self.forked_cpu: dict[str, float] = {}

    def __call__(self, task: str, text: str) -> None:
        import time

        if text == "started":
            self.started[task] = (time.perf_counter(), _children_cpu())
            text = "…"
        elif text.startswith(CPU_LINE):  # a task forked by the fork server: its CPU, as it ended
            self.forked_cpu[task] = self.forked_cpu.get(task, 0.0) + float(text.split()[1])
            return
        elif text in ("success", "failure", "cached"):
            t0, c0 = self.started.pop(task, (time.perf_counter(), _children_cpu()))
            # A task's process has been waited for when kfp reports its end: its CPU is in
            # RUSAGE_CHILDREN, or (forked by the fork server, not our child) reported by its shim.
            took, cpu = time.perf_counter() - t0, _children_cpu() - c0 + self.forked_cpu.pop(task, 0.0)
            self.rows.append((task, text, took, cpu))
            self.done += text != "failure"
            if not self.quiet_tasks or text == "failure":
                mark = "[red]✗[/]" if text == "failure" else "[green]✓[/]"
                how = "cached (no process)" if text == "cached" else f"cpu {cpu:5.1f} s"
                self.status.console.print(f"  {mark} {task:<22} {took:6.1f} s  [dim]{how}[/]")
            return
        self.status.update(f"{self.label} · {self.done} tasks done · {task}: {text}")


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _print_result(res, state: Path, config: dict | None = None) -> None:
    from uft.report import baseline_hint

    t = Table(title=f"uft run {res.run_id} — {res.seconds:.0f} s")
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

    for line in [*finetune_verdicts(res.metrics), summary_line(res.metrics)]:  # did finetuning change anything?
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
        _fail(UftError("--explain shows a decision and --force makes one: pass one of them"))
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
        _fail(e)
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
        _fail(e)
    except KeyboardInterrupt:
        pass


@app.command("compile")
def compile_cmd(out: Path = typer.Option(Path("build/uft_pipeline.yaml"), help="output YAML")) -> None:
    """Compile the pipeline to KFP YAML."""
    from uft.orchestrate.compile import compile_pipeline

    console.print(f"wrote {compile_pipeline(out)}")


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
        _fail(e)


@app.command("compare")
def compare_cmd(
    run_ids: list[str] = typer.Argument(None, help="MLflow run ids or pipeline run ids (default: every run of --experiment)"),
    experiment: str = typer.Option("", help="MLflow experiment (default 'uft' when no run ids are given)"),
    group_by: str = typer.Option("", help="comma-separated params to group by (default: ssl_method, replay_*, mix_op, … present)"),
    metric: list[str] = typer.Option([], "--metric", "-m", help="metric name or glob (repeatable; default: the report's metrics)"),
    show_param: list[str] = typer.Option([], "--show-param", help="extra param shown per group (repeatable)"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | markdown | csv | json"),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="also write a bar-chart PNG here"),
    include_unfinished: bool = typer.Option(False, "--all", help="include pipeline runs that did not finish"),
) -> None:
    """Compare pipeline runs side by side: params and metrics, grouped by method, mean ± std over seeds."""
    from uft.compare import FORMATS, compare, plot, render, table_rows, tracking_env

    try:
        if fmt not in FORMATS:
            raise UftError(f"--format {fmt!r} is unknown: use one of {', '.join(FORMATS)}")
        keys = [k.strip() for k in group_by.split(",") if k.strip()] if group_by else None
        with tracking_env():
            cmp = compare(run_ids or (), experiment or (None if run_ids else "uft"), group_by=keys, metrics=metric,
                          show_params=show_param, include_unfinished=include_unfinished)
        if fmt == "table":
            header, rows = table_rows(cmp)
            t = Table(title=f"{sum(len(g.runs) for g in cmp.groups)} runs in {len(cmp.groups)} groups (mean ± std over runs)")
            for i, h in enumerate(header):
                t.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
            split_at = len(cmp.group_keys) + len(cmp.show_params) + 2
            for i, r in enumerate(rows):
                t.add_row(*r, end_section=i == split_at - 1)
            console.print(t)
        else:
            sys.stdout.write(render(cmp, fmt))
        if plot_path is not None:
            out = plot(cmp, str(plot_path))
            (console if fmt == "table" else err).print(f"plot: {out}")
    except UftError as e:
        _fail(e)


_HOST = typer.Option(..., "--host", envvar="KFP_HOST", help="KFP API URL, e.g. http://localhost:8080 (or $KFP_HOST)")
_PARAM = typer.Option([], "--param", "-p", help="pipeline parameter KEY=VALUE (repeatable)")
_NAMESPACE = typer.Option("uft", help="namespace the run's pods start in (the KFP client's namespace)")
_SA = typer.Option("uft-pipeline-runner", "--service-account", help="ServiceAccount the run's pods use")
_KFP_EXPERIMENT = typer.Option("uft", help="KFP experiment (created if missing)")
_KFP_VERSION = typer.Option("", "--kfp-version", envvar="UFT_KFP_VERSION",
                            help="the KFP backend's version, if its API does not report it (checked against the minimum)")
_UNPINNED = typer.Option(False, "--allow-unpinned-images",
                         help="development clusters: allow UFT_IMAGE/UFT_GPU_IMAGE given by tag, not @sha256 digest")


@app.command("sweep")
def sweep_cmd(
    grid: list[str] = typer.Option([], "--grid", "-g", help="axis KEY=V1,V2,… (repeatable; runs = product of axes × seeds)"),
    seeds: str = typer.Option("0,1,2", help="comma-separated seeds; each grid point runs once per seed"),
    param: list[str] = typer.Option([], "--param", "-p", help="fixed pipeline parameter KEY=VALUE (repeatable)"),
    experiment: str = typer.Option("uft-sweep", help="MLflow (and KFP) experiment of the runs"),
    host: str = typer.Option("", "--host", envvar="KFP_HOST", help="submit to this KFP API instead of running locally"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the runs and stop"),
) -> None:
    """Run the pipeline for every point of a grid × seeds, then compare them (mean ± std over seeds)."""
    from uft.orchestrate.sweep import describe, expand, parse_axes, submit_all

    try:
        axes, fixed = parse_axes(grid), _params(param)
        for k in ("source", "target"):  # local paths: absolute, as in `uft run`
            if k in fixed:
                fixed[k] = _absolute(fixed[k])
            if k in axes:
                axes[k] = [_absolute(v) for v in axes[k]]
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise UftError(f"--seeds {seeds!r} is not a comma-separated list of integers: pass e.g. --seeds 0,1,2") from None
        configs = expand(axes, seed_list, fixed)
        from uft.preflight import for_cluster, preflight

        for c in configs:  # every point's data and class layouts, before the first run starts
            if host:
                for_cluster(c.model_dump())
            else:
                preflight(c, stages=("local",))
        console.print(f"{len(configs)} runs in experiment {experiment!r}:")
        for i, c in enumerate(configs, 1):
            console.print(f"  {i:3d}. {describe(c, axes)}", highlight=False)
        if dry_run:
            return
        if host:
            ids = submit_all(configs, axes, host, experiment)
            console.print(f"submitted {len(ids)} runs to {host}; when they finish: uft compare --experiment {experiment}")
            return
        _sweep_local(configs, axes, experiment)
    except UftError as e:
        _fail(e)


def _sweep_local(configs, axes: dict[str, list[str]], experiment: str) -> None:
    from uft.compare import compare, log_comparison, render
    from uft.orchestrate.lifecycle import run_lock, signals_raise
    from uft.orchestrate.local import local_services, run_local, state_dir
    from uft.orchestrate.sweep import describe, run_sweep

    state = state_dir()
    with contextlib.ExitStack() as stack:
        stack.enter_context(run_lock(state, "uft sweep"))
        if forkserver.enabled():  # one warm server for every run of the sweep
            stack.enter_context(forkserver.serving())
        stack.enter_context(signals_raise())
        stack.enter_context(local_services(state))
        live = Console(file=sys.stdout)  # bound before run_local redirects sys.stdout

        def one(cfg):
            with live.status(f"{describe(cfg, axes)} …", spinner="dots") as status:
                return run_local(cfg, experiment=experiment,
                                 on_event=_TaskLog(status, quiet_tasks=True, label=describe(cfg, axes)))

        def done(i, cfg, res) -> None:
            live.print(f"[green]✓[/] {i + 1}/{len(configs)} {describe(cfg, axes)}  ({res.seconds:.0f} s, run {res.run_id})",
                       highlight=False)

        results = run_sweep(configs, one, done)
        # Only this sweep's runs: the experiment may hold earlier sweeps over other grids.
        cmp = compare([r.run_id for r in results], experiment, group_by=list(axes) or None)
        sys.stdout.write(render(cmp, "markdown"))
        grid = " ".join(f"{k}={','.join(v)}" for k, v in axes.items())
        seeds = ",".join(sorted({str(c.seed) for c in configs}, key=int))
        summary = log_comparison(cmp, experiment, params={"grid": grid, "seeds": seeds, "runs": len(configs)})
        live.print(f"MLflow: comparison logged as run {summary} in experiment {experiment!r}", highlight=False)


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
    from uft.preflight import for_cluster

    try:
        for_cluster(_params(param))
        run_id = submit(host, _params(param), experiment=experiment, namespace=namespace,
                        service_account=service_account, run_name=run_name or None, kfp_version=kfp_version or None,
                        allow_unpinned=allow_unpinned_images or None)
    except UftError as e:
        _fail(e)
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
    from uft.preflight import for_cluster

    try:
        for_cluster(_params(param))
        rid = schedule(host, cron, _params(param), experiment=experiment, namespace=namespace,
                       service_account=service_account, name=name, replace=replace, kfp_version=kfp_version or None,
                       allow_unpinned=allow_unpinned_images or None)
        console.print(f"recurring run {name!r} ({rid}) on cron {kfp_cron(cron)!r} in experiment {experiment!r}", highlight=False)
    except UftError as e:
        _fail(e)


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
            res = trigger_local(target, source=_absolute(source), params=_params(param),
                                state=Path(state) if state else None, experiment=experiment)
        except UftError as e:
            _fail(e)
        console.print(describe_local(res), highlight=False, soft_wrap=True)
        return
    from uft.orchestrate.trigger import describe, trigger

    if not host:
        _fail(UftError("--host is empty: pass the KFP API URL (or $KFP_HOST), or --local to run here"))
    try:
        res = trigger(host, target, _params(param), experiment=experiment, namespace=namespace,
                      service_account=service_account, state_uri=state or None, kfp_version=kfp_version or None,
                      max_attempts=max_attempts, reset_attempts=reset_attempts, allow_unpinned=allow_unpinned_images or None)
    except UftError as e:
        _fail(e)
    if res["action"] == "stopped":
        _fail(UftError(describe(res)))
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


@app.command()
def methods() -> None:
    """List the registered SSL methods, encoders, replay rules and holistic methods."""
    from uft.config import MIX_OPS, REPLAY_RULES
    from uft.models.encoders import encoder_names
    from uft.ssl.base import method_names
    from uft.transfer.holistic import HOLISTIC_METHODS

    console.print(f"ssl methods: {', '.join(method_names())}")
    console.print(f"encoders: {', '.join(encoder_names())}")
    console.print(f"replay rules: {', '.join(REPLAY_RULES)}")
    console.print(f"mix ops: {', '.join(MIX_OPS)}")
    console.print(f"holistic methods: {', '.join(HOLISTIC_METHODS)}")


def main() -> None:  # pragma: no cover
    """The ``uft`` command: :data:`app`, then a quick exit (see :func:`forkserver.exit_like_python`)."""
    try:
        app()
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    forkserver.exit_like_python(code)


if __name__ == "__main__":  # pragma: no cover
    main()
