"""``uft export``: a finetuned (or registered) encoder → safetensors, TorchScript or ONNX, with a
parity check (:mod:`uft.models.export`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import typer

from uft.cli.common import app, console, fail
from uft.errors import UftError


@app.command("export")
def export_cmd(
    ref: str = typer.Argument(..., help="pipeline run id, MLflow run id, models:/name@alias | models:/name/version, "
                                        "or an encoder manifest URI"),
    fmt: str = typer.Option(..., "--format", "-f", help="safetensors | torchscript | onnx"),
    out: Path = typer.Option(..., "--out", "-o", help="file to write"),
    image_size: int = typer.Option(32, help="image size of the parity batch (and the ONNX/TorchScript example)"),
) -> None:
    """Export an encoder for deployment; prints the max feature difference against uft's encoder on a sample batch."""
    from uft.models.export import FORMATS, export_encoder, resolve

    try:
        if fmt not in FORMATS:
            raise UftError(f"--format {fmt!r} is unknown: use one of {', '.join(FORMATS)}")
        with _services(ref):
            enc, spec, uri = resolve(ref)
        res = export_encoder(enc, spec, fmt, out, image_size=image_size)
        console.print(f"encoder {uri}", highlight=False, soft_wrap=True)
        console.print(res.line(), highlight=False, soft_wrap=True)
    except UftError as e:
        fail(e)


def _services(ref: str):
    """A local manifest needs nothing; a run id or ``models:/`` needs MLflow (and the store): the
    environment's, else the local state `uft run` left (its S3 server started for the read)."""
    if Path(ref).exists() or os.environ.get("MLFLOW_TRACKING_URI") or ref.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        return contextlib.nullcontext()
    from uft.orchestrate.local import local_services, state_dir

    state = state_dir()
    if not (state / "mlflow.db").is_file():
        raise UftError(f"{ref!r}: no MLflow runs here ({state / 'mlflow.db'} does not exist): run `uft run` first, "
                       "or set MLFLOW_TRACKING_URI")
    return local_services(state)
