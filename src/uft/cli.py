"""The ``uft`` command."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from uft.errors import UftError

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
    from uft.config import validate_config
    from uft.orchestrate.local import local_services, run_local, state_dir

    try:
        cfg = validate_config({"source": source, "target": target, **_params(param)})
        state = state_dir()
        with local_services(state) as env:
            console.print(f"[dim]state: {state}  ·  S3: {env.get('AWS_ENDPOINT_URL', os.environ.get('AWS_ENDPOINT_URL', '-'))}"
                          f"  ·  MLflow: {os.environ['MLFLOW_TRACKING_URI']}[/]")
            with console.status("running the pipeline (kfp.local) …", spinner="dots") if not verbose else _null():
                res = run_local(cfg, store_uri=store, experiment=experiment, run_id=run_id, quiet=not verbose)
    except UftError as e:
        _fail(e)
    _print_result(res, state)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _print_result(res, state: Path) -> None:
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
    hol = sorted({k for k in res.metrics if k.startswith("holistic_")})
    if hol:
        h = Table(title="holistic transfer (seen = classes with target labels)")
        for c in ("method", "overall", "seen", "unseen"):
            h.add_column(c, justify="right" if c != "method" else "left")
        methods = sorted({k[len("holistic_"):].rsplit("_", 1)[0] for k in hol})
        for m in methods:
            h.add_row(m, *[f"{res.metrics.get(f'holistic_{m}_{c}', float('nan')):.3f}" for c in ("overall", "seen", "unseen")])
        console.print(h)
    console.print(f"MLflow parent run: [bold]{res.parent_run_id}[/] (experiment {res.experiment!r})")
    for k, v in sorted(res.artifacts.items()):
        console.print(f"  {k}: {v}")
    console.print(f"Open the MLflow UI: [bold]make ui[/]  (or: UFT_STATE_DIR={shlex.quote(str(state))} .venv/bin/uft ui)")


@app.command()
def ui(port: int = typer.Option(5000, help="port for the MLflow UI on 127.0.0.1")) -> None:
    """Start the local S3 server and the MLflow UI on the local run's state (Ctrl-C to stop)."""
    import subprocess

    from uft.orchestrate.local import local_services, state_dir

    try:
        with local_services(state_dir()) as env:
            console.print(f"MLflow UI on http://127.0.0.1:{port}  (Ctrl-C to stop)")
            subprocess.run([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
                            "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"]], env={**os.environ, **env})
    except UftError as e:
        _fail(e)
    except KeyboardInterrupt:
        pass


@app.command("compile")
def compile_cmd(out: Path = typer.Option(Path("build/uft_pipeline.yaml"), help="output YAML")) -> None:
    """Compile the pipeline to KFP YAML."""
    from uft.orchestrate.compile import compile_pipeline

    console.print(f"wrote {compile_pipeline(out)}")


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
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
