"""Encoders out: a published or registered uft encoder → a file you deploy, checked for parity.

Formats (:data:`FORMATS`):

- ``safetensors``: the state dict, with the architecture and input spec in the file's metadata
  (``uft.encoder``, ``uft.in_channels``, ``uft.kwargs``, ``uft.feature_dim``, ``uft.input``), so
  ``build_encoder(meta["uft.encoder"], …)`` + ``load_state_dict`` rebuilds it — and it loads back
  as ``-p encoder_weights=`` of a later run;
- ``torchscript``: ``torch.jit.trace`` of the encoder (normalisation included): ``torch.jit.load``
  runs it without uft;
- ``onnx``: ``torch.onnx.export`` (the torch.export-based exporter; the legacy one as fallback),
  input ``images`` ``(batch, C, H, W)`` float32 in [0, 1] with a dynamic batch, output
  ``features`` ``(batch, feature_dim)``; the same metadata as ``metadata_props``.

Each export is reloaded the way a consumer would load it and run on a sample batch (seeded uniform
noise in [0, 1], batch 4 — unlike the traced batch of 2, so a batch size baked into the graph shows)
against the encoder itself; the max absolute feature difference must stay within
:data:`TOLERANCE` (safetensors is bit-exact; the traced and ONNX graphs may reorder float sums).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uft.errors import UftError

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMATS = ("safetensors", "torchscript", "onnx")
#: Max |feature difference| allowed between the export and the encoder on the sample batch.
TOLERANCE = {"safetensors": 0.0, "torchscript": 1e-5, "onnx": 1e-4}
SAMPLE_BATCH, TRACE_BATCH = 4, 2


@dataclass
class Exported:
    """What :func:`export_encoder` wrote and how closely it matches the encoder."""

    format: str
    path: str
    encoder: str
    feature_dim: int
    max_abs_diff: float | None  # None: parity not run (no runtime for the format)
    tolerance: float
    note: str = ""

    def line(self) -> str:
        diff = "parity not run" if self.max_abs_diff is None else f"max |feature diff| {self.max_abs_diff:.3g} (tolerance {self.tolerance:g})"
        return f"{self.format} → {self.path}: {self.encoder}, {self.feature_dim}-d features; {diff}" + (f"; {self.note}" if self.note else "")


def input_spec(spec: dict[str, Any], image_size: int) -> dict[str, Any]:
    """What a consumer feeds the encoder (normalisation happens inside it)."""
    return {"layout": "NCHW", "dtype": "float32", "channels": int(spec["in_channels"]), "image_size": int(image_size),
            "value_range": [0.0, 1.0], "normalisation": "inside the encoder", "output": "features (N, feature_dim)"}


def _metadata(spec: dict[str, Any], enc: nn.Module, image_size: int) -> dict[str, str]:
    return {"uft.encoder": str(spec["name"]), "uft.in_channels": str(spec["in_channels"]),
            "uft.kwargs": json.dumps(spec.get("kwargs", {}), sort_keys=True),
            "uft.feature_dim": str(int(getattr(enc, "feature_dim", 0))),
            "uft.input": json.dumps(input_spec(spec, image_size), sort_keys=True)}


def sample_batch(spec: dict[str, Any], image_size: int, n: int = SAMPLE_BATCH, seed: int = 0) -> torch.Tensor:
    """Seeded images ``(n, in_channels, image_size, image_size)`` uniform in [0, 1]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, int(spec["in_channels"]), image_size, image_size, generator=g)


def export_encoder(enc: nn.Module, spec: dict[str, Any], fmt: str, out: str | Path, *, image_size: int = 32) -> Exported:
    """Write ``enc`` (built from ``spec`` = {"name", "in_channels", "kwargs"}) as ``fmt`` to ``out``,
    reload it and compare features on :func:`sample_batch` → :class:`Exported`. Raises
    :class:`UftError` when the difference exceeds :data:`TOLERANCE`."""
    import torch

    if fmt not in FORMATS:
        raise UftError(f"--format {fmt!r} is unknown: use one of {', '.join(FORMATS)}")
    if image_size < 8:
        raise UftError(f"--image-size {image_size}: use the size the encoder was trained at (≥ 8)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    enc = enc.cpu().eval()
    meta = _metadata(spec, enc, image_size)
    x = sample_batch(spec, image_size)
    with torch.no_grad():
        want = enc(x)
    note = ""
    if fmt == "safetensors":
        got = _safetensors(enc, spec, meta, out, x)
    elif fmt == "torchscript":
        got = _torchscript(enc, meta, out, x, image_size)
    else:
        got, note = _onnx(enc, meta, out, x, image_size)
    diff = None if got is None else float((got - want).abs().max())
    res = Exported(fmt, str(out), str(spec["name"]), int(want.shape[1]), diff, TOLERANCE[fmt], note)
    if diff is not None and not diff <= TOLERANCE[fmt]:  # NaN fails too
        raise UftError(f"{fmt} export {out} differs from the encoder by {diff:.3g} (> {TOLERANCE[fmt]:g}) on the "
                       "sample batch: do not deploy it; report the encoder and format")
    return res


def _safetensors(enc: nn.Module, spec: dict[str, Any], meta: dict[str, str], out: Path, x: torch.Tensor) -> torch.Tensor:
    import torch
    from safetensors.torch import load_file, save_file

    from uft.models.encoders import build_encoder

    save_file({k: v.detach().contiguous() for k, v in enc.state_dict().items()}, str(out), metadata=meta)
    back = build_encoder(spec["name"], in_channels=int(spec["in_channels"]), **spec.get("kwargs", {}))
    back.load_state_dict(load_file(str(out)), strict=True)
    with torch.no_grad():
        return back.eval()(x)


def _torchscript(enc: nn.Module, meta: dict[str, str], out: Path, x: torch.Tensor, image_size: int) -> torch.Tensor:
    import torch

    example = x[:TRACE_BATCH]
    with warnings.catch_warnings():  # the channel check in forward is a Python bool: constant in the trace, as intended
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(enc, example)
    torch.jit.save(traced, str(out), _extra_files={"uft.json": json.dumps(meta, sort_keys=True)})
    back = torch.jit.load(str(out), map_location="cpu")
    with torch.no_grad():
        return back(x)


def _onnx(enc: nn.Module, meta: dict[str, str], out: Path, x: torch.Tensor, image_size: int) -> tuple[torch.Tensor | None, str]:
    import torch

    try:
        import onnx
    except ImportError:
        raise UftError("--format onnx needs the onnx package: pip install onnx onnxscript (or `make install`)") from None
    example = (x[:TRACE_BATCH],)
    names = dict(input_names=["images"], output_names=["features"])
    note = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # torch.export-based: the exporter torch maintains
            torch.onnx.export(enc, example, str(out), dynamo=True, verbose=False, external_data=False,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}}, **names)
        except Exception as e:  # an architecture torch.export cannot capture: the TorchScript-based exporter
            note = f"legacy exporter (torch.export failed: {type(e).__name__})"
            torch.onnx.export(enc, example, str(out), dynamo=False,
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, **names)
    model = onnx.load(str(out))
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(out))
    onnx.checker.check_model(str(out))
    try:
        import onnxruntime as ort
    except ImportError:
        return None, (note + "; " if note else "") + "onnx.checker passed; parity not run (onnxruntime not installed)"
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return torch.from_numpy(got), note


# --- what to export -------------------------------------------------------------------------------

def resolve(ref: str) -> tuple[nn.Module, dict[str, Any], str]:
    """``ref`` → (encoder in eval mode, its spec, the encoder manifest URI it came from).

    ``ref``: an encoder manifest URI (path or ``s3://…/manifest.json``); ``models:/name@alias`` or
    ``models:/name/version`` (the uft artifact the version was registered from); or an MLflow run:
    a pipeline run id (``uft run`` prints it) or an MLflow run id — the finetuned encoder of that
    run (its ``ssl_finetune`` step), or the encoder a step run output."""
    from uft.models.artifact import load_encoder

    if ref.startswith("models:/"):
        from uft.models.weights import read_checkpoint

        uri = read_checkpoint(ref).info["encoder_uri"]
    elif ref.startswith("s3://") or ref.endswith(".json") or Path(ref).exists():
        uri = ref
    else:
        uri = _run_encoder_uri(ref)
    enc, manifest = load_encoder(uri)
    return enc, manifest["spec"], uri


def _run_encoder_uri(ref: str) -> str:
    from uft import tracking

    if not tracking.enabled():
        raise UftError(f"{ref!r} is not a file or models:/ URI, and MLFLOW_TRACKING_URI is not set to look it up as a run")
    client = tracking._client()
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string=f"tags.`{tracking.TAG_RUN}` = '{ref}' and tags.`{tracking.TAG_STEP}` = 'ssl_finetune'",
                              max_results=1) if exps else []
    if runs and runs[0].data.tags.get("encoder_uri"):
        return runs[0].data.tags["encoder_uri"]
    try:
        run = client.get_run(ref)
    except Exception:
        raise UftError(f"{ref!r} is neither an encoder manifest, a models:/ URI, a pipeline run id nor an MLflow run id: "
                       "pass what `uft run` printed (run id) or models:/uft-encoder@champion") from None
    if run.data.tags.get("encoder_uri"):
        return run.data.tags["encoder_uri"]
    pipeline_run = run.data.tags.get(tracking.TAG_RUN)  # a parent run: its finetune step's encoder
    if pipeline_run and pipeline_run != ref:
        return _run_encoder_uri(pipeline_run)
    raise UftError(f"MLflow run {ref} has no encoder output (tag encoder_uri): pass the pipeline run id or its ssl_finetune run")


def as_dict(e: Exported) -> dict[str, Any]:
    return asdict(e)
