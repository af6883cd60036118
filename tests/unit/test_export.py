"""uft export: each format reloaded as a consumer would, parity within the stated tolerance
(uft.models.export.TOLERANCE: safetensors 0, TorchScript 1e-5, ONNX 1e-4 max |feature difference|)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from uft.errors import UftError
from uft.models.encoders import build_encoder
from uft.models.export import FORMATS, TOLERANCE, export_encoder, resolve, sample_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _published(tmp_path, name: str, in_channels: int = 1, **kwargs) -> tuple[str, torch.nn.Module]:
    """An encoder with non-default BN statistics, published as `uft run` publishes one → manifest URI."""
    from uft.models.artifact import publish_encoder
    from uft.store import LocalStore

    torch.manual_seed(0)
    enc = build_encoder(name, in_channels=in_channels, **kwargs)
    enc.train()
    with torch.no_grad():  # a few batches move the running statistics away from (0, 1)
        for _ in range(3):
            enc(torch.rand(8, in_channels, 32, 32))
    enc.eval()
    spec = {"name": name, "in_channels": in_channels, "kwargs": kwargs}
    return publish_encoder(LocalStore(tmp_path / "store"), f"models/finetune/{name.replace(':', '_')}", enc, spec, {}), enc


@pytest.mark.parametrize("encoder, kwargs", [("tiny", {"width": 8}), ("timm:test_efficientnet", {})])
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_parity_within_tolerance(tmp_path, fmt, encoder, kwargs):
    uri, enc = _published(tmp_path, encoder, **kwargs)
    loaded, spec, from_uri = resolve(uri)
    assert from_uri == uri and spec["name"] == encoder
    res = export_encoder(loaded, spec, fmt, tmp_path / f"enc.{fmt}", image_size=32)
    assert res.max_abs_diff is not None and res.max_abs_diff <= TOLERANCE[fmt], res
    assert res.feature_dim == enc.feature_dim and "max |feature diff|" in res.line()

    # Loaded again without uft's encoder classes, on a batch size the export never saw.
    x = sample_batch(spec, 32, n=5, seed=7)
    with torch.no_grad():
        want = enc(x)
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(res.path, "pt") as f:
            meta = f.metadata()
        assert meta["uft.encoder"] == encoder and json.loads(meta["uft.input"])["channels"] == 1
        back = build_encoder(meta["uft.encoder"], in_channels=int(meta["uft.in_channels"]), **json.loads(meta["uft.kwargs"]))
        from safetensors.torch import load_file

        back.load_state_dict(load_file(res.path))
        with torch.no_grad():
            got = back.eval()(x)
    elif fmt == "torchscript":
        files = {"uft.json": ""}
        with torch.no_grad():
            got = torch.jit.load(res.path, _extra_files=files)(x)
        assert json.loads(files["uft.json"])["uft.encoder"] == encoder
    else:
        import onnx
        import onnxruntime as ort

        props = {p.key: p.value for p in onnx.load(res.path).metadata_props}
        assert props["uft.encoder"] == encoder and int(props["uft.feature_dim"]) == enc.feature_dim
        sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["images"]
        got = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= TOLERANCE[fmt]


def test_a_parity_failure_is_refused(tmp_path, monkeypatch):
    """The check can fail: below any possible difference (a negative tolerance), the export is refused."""
    import uft.models.export as ex

    uri, _ = _published(tmp_path, "tiny", width=8)
    enc, spec, _ = resolve(uri)
    monkeypatch.setitem(ex.TOLERANCE, "torchscript", -1.0)
    with pytest.raises(UftError, match="torchscript export .* differs from the encoder by .* do not deploy it"):
        export_encoder(enc, spec, "torchscript", tmp_path / "bad.pt")


def test_export_cli_prints_the_parity(tmp_path):
    from typer.testing import CliRunner

    from uft.cli import app

    uri, _ = _published(tmp_path, "tiny", width=8)
    res = CliRunner().invoke(app, ["export", uri, "--format", "safetensors", "--out", str(tmp_path / "e.safetensors")])
    assert res.exit_code == 0, res.output
    assert "max |feature diff| 0 (tolerance 0)" in res.output and (tmp_path / "e.safetensors").is_file()
    bad = CliRunner().invoke(app, ["export", uri, "--format", "tflite", "--out", str(tmp_path / "e.tflite")])
    assert bad.exit_code == 2 and "tflite" in bad.output and "safetensors, torchscript, onnx" in bad.output


def test_exported_safetensors_load_back_as_encoder_weights(tmp_path):
    """Out and back in: an exported file is a valid ``-p encoder_weights`` of the next run."""
    from uft.models.weights import import_encoder

    uri, enc = _published(tmp_path, "timm:test_efficientnet")
    loaded, spec, _ = resolve(uri)
    res = export_encoder(loaded, spec, "safetensors", tmp_path / "e.safetensors")
    again, _ = import_encoder(res.path, "timm:test_efficientnet", in_channels=1)
    x = sample_batch(spec, 32)
    with torch.no_grad():
        np.testing.assert_array_equal(again(x).numpy(), enc(x).numpy())


def test_resolve_a_registered_version_and_a_run(tmp_path, mlflow_env):
    from mlflow import MlflowClient

    from uft import tracking

    uri, enc = _published(tmp_path, "tiny", width=8)
    client = MlflowClient()
    client.create_registered_model("xtest-encoder")
    mv = client.create_model_version("xtest-encoder", source=str(tmp_path / "model"), tags={"uft.encoder_uri": uri})
    client.set_registered_model_alias("xtest-encoder", "champion", mv.version)
    assert resolve("models:/xtest-encoder@champion")[2] == uri

    with tracking.step_run("xexp", "pipe-7", "ssl_finetune", {}):
        tracking.log_outputs({"encoder_uri": uri})
    assert resolve("pipe-7")[2] == uri
    with pytest.raises(UftError, match="neither an encoder manifest"):
        resolve("no-such-run")


def test_the_registered_model_names_its_architecture_and_input(mlflow_env):
    import mlflow

    from uft.promote.registry import log_encoder_model

    enc = build_encoder("timm:test_efficientnet", in_channels=1).eval()
    with mlflow.start_run():
        uri = log_encoder_model(enc, 32, 1, serialization_format="pickle")
    meta = mlflow.models.get_model_info(uri).metadata
    assert meta["architecture"] == "timm:test_efficientnet" and meta["feature_dim"] == 256
    assert meta["preprocessing"]["channels"] == 1 and meta["preprocessing"]["image_size"] == 32
    assert "inside the encoder" in meta["preprocessing"]["normalisation"]
