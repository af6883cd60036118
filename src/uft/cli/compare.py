"""``uft compare`` and ``uft sweep``: runs side by side, and a grid of runs then compared."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from uft.cli.common import TaskLog, absolute_spec, app, console, err, fail, parse_params
from uft.errors import UftError
from uft.orchestrate import forkserver


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
        fail(e)


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
        axes, fixed = parse_axes(grid), parse_params(param)
        for k in ("source", "target"):  # local paths: absolute, as in `uft run`
            if k in fixed:
                fixed[k] = absolute_spec(fixed[k])
            if k in axes:
                axes[k] = [absolute_spec(v) for v in axes[k]]
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
        fail(e)


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
                                 on_event=TaskLog(status, quiet_tasks=True, label=describe(cfg, axes)))

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
