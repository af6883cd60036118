"""ResNet-18/50 (small-image stem) and EfficientNet-Lite0 with its packaged ImageNet weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uft.errors import UftError
from uft.models.efficientnet import EfficientNetLite0, SameConv2d, load_lite0_state_dict
from uft.models.encoders import build_encoder, encoder_names


# bit-exact reference comparisons: one torch thread, even after a test elsewhere changed it
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_new_encoders_are_registered():
    assert {"resnet18", "resnet50", "efficientnet_lite0"} <= set(encoder_names())


# ---- ResNet ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_feature_dim_and_small_image_stem(name, dim):
    torch.manual_seed(0)
    enc = build_encoder(name, in_channels=1)
    assert enc.feature_dim == dim
    stem = enc.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.in_channels == 1
    assert not any(isinstance(m, nn.MaxPool2d) for m in enc.modules())
    out = enc(torch.rand(2, 1, 8, 8))
    assert out.shape == (2, dim) and torch.isfinite(out).all()


def test_resnet_downsamples_32px_to_4px_and_trains():
    torch.manual_seed(0)
    enc = build_encoder("resnet18", in_channels=3, width=8)
    x = torch.rand(2, 3, 32, 32)
    fmap = enc.stages(enc.stem(x))
    assert fmap.shape[-2:] == (4, 4)  # strides 1·1·2·2·2: no ImageNet stem downsampling
    enc(x).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_resnet_normalises_input_internally():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    enc = build_encoder("resnet18", in_channels=3, width=8).eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc.pool(enc.stages(enc.stem((x - mean) / std))).flatten(1))
        grey = build_encoder("resnet18", in_channels=1, width=8).eval()
        torch.testing.assert_close(grey(x[:, :1]), grey.pool(grey.stages(grey.stem(2 * x[:, :1] - 1))).flatten(1))


def test_resnet_rejects_wrong_channel_count():
    with pytest.raises(UftError, match="channels"):
        build_encoder("resnet18", in_channels=1, width=4)(torch.rand(1, 3, 8, 8))


# ---- EfficientNet-Lite0 ------------------------------------------------------------------------

def test_efficientnet_pretrained_weights_load_strictly():
    state = load_lite0_state_dict()
    model = EfficientNetLite0(pretrained=False)
    assert set(model.state_dict()) == set(state)
    model.load_state_dict(state, strict=True)  # raises on any missing/unexpected key or shape
    built = EfficientNetLite0(pretrained=True)
    torch.testing.assert_close(built._conv_stem.weight, state["_conv_stem.weight"])
    torch.testing.assert_close(built._bn1.running_var, state["_bn1.running_var"])


def test_efficientnet_grey_input_is_finite_and_replicated():
    enc = build_encoder("efficientnet_lite0", in_channels=1)
    assert enc.feature_dim == 1280
    x = torch.rand(2, 1, 32, 32)
    rgb = EfficientNetLite0(in_channels=3).eval()
    with torch.no_grad():
        torch.testing.assert_close(enc.eval()(x), rgb(x.repeat(1, 3, 1, 1)))
    for mode in (enc.eval, enc.train):
        mode()
        out = enc(x)
        assert out.shape == (2, 1280) and torch.isfinite(out).all()


def test_efficientnet_pretrained_recognises_a_daisy():
    """The architecture, TF padding and input scaling must all match the checkpoint for this to
    hold: sklearn's sample photo of a daisy is classified as ImageNet class 985 ("daisy"). (With
    symmetric PyTorch padding it drops to rank 3; with torchvision mean/std out of the top 5.)"""
    from sklearn.datasets import load_sample_image

    img = torch.from_numpy(np.array(load_sample_image("flower.jpg"))).permute(2, 0, 1).float()[None] / 255
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    model = EfficientNetLite0().eval()
    with torch.no_grad():
        pred = int(model.logits(img).argmax())
    assert pred == 985


@pytest.mark.parametrize("size", [7, 8])
def test_same_conv_matches_tensorflow_padding(size):
    conv = SameConv2d(1, 1, 3, stride=2)
    x = torch.rand(1, 1, size, size)
    # TF SAME: total padding max((ceil(n/s) − 1)·s + k − n, 0), extra pixel at the bottom/right.
    total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
    lo, hi = total // 2, total - total // 2
    ref = F.conv2d(F.pad(x, [lo, hi, lo, hi]), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), ref)
    assert conv(x).shape[-1] == -(-size // 2)


def test_efficientnet_rejects_unsupported_channels():
    with pytest.raises(UftError, match="in_channels"):
        EfficientNetLite0(in_channels=2, pretrained=False)


# ---- library encoders: timm:<name>, torchvision:<name> ------------------------------------------

_IMNET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_IMNET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def test_torchvision_resnet18_is_torchvisions_pooled_features():
    from uft.models.library import import_torchvision

    tv = import_torchvision()
    torch.manual_seed(0)
    enc = build_encoder("torchvision:resnet18", in_channels=1).eval()
    assert enc.feature_dim == 512 and enc.arch == "torchvision:resnet18"
    assert not any(isinstance(m, nn.Linear) for m in enc.modules())  # the classifier is gone
    ref = tv.models.resnet18().eval()
    ref.load_state_dict({**enc.model.state_dict(), "fc.weight": ref.fc.weight, "fc.bias": ref.fc.bias})
    ref.fc = nn.Identity()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():  # grey repeated to RGB, ImageNet statistics: what torchvision's models expect
        torch.testing.assert_close(enc(x), ref((x.expand(-1, 3, -1, -1) - _IMNET_MEAN) / _IMNET_STD), rtol=0, atol=0)
    with pytest.raises(UftError, match="channels"):
        enc(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["test_efficientnet", "test_convnext", "mobilenetv3_small_050"])
def test_timm_encoder_uses_its_pretrained_cfg_and_pooled_width(name):
    from uft.models.library import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    enc = build_encoder(f"timm:{name}", in_channels=3).eval()
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    torch.testing.assert_close(enc.mean.flatten(), torch.tensor(cfg["mean"], dtype=torch.float32))
    torch.testing.assert_close(enc.std.flatten(), torch.tensor(cfg["std"], dtype=torch.float32))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = enc(x)
        torch.testing.assert_close(out, enc.model((x - enc.mean) / enc.std), rtol=0, atol=0)
    assert out.shape == (2, enc.feature_dim)  # mobilenetv3: the pre-logits width (1024), not num_features (576)
    assert enc.head_keys and all(k.split(".")[0] in cfg["classifier"] for k in enc.head_keys)


def test_library_names_are_validated_in_one_line():
    from uft.config import validate_config

    assert validate_config({"encoder": "timm:test_efficientnet"}).encoder == "timm:test_efficientnet"
    assert validate_config({"encoder": "torchvision:mobilenet_v3_small"}).encoder == "torchvision:mobilenet_v3_small"
    for bad, said in (("timm:resnet_nope", "timm has no model"), ("torchvision:resnet_nope", "torchvision has no"),
                      ("keras:resnet18", "unknown encoder")):
        with pytest.raises(UftError, match=said) as e:
            validate_config({"encoder": bad})
        assert "\n" not in str(e.value) and "encoder" in str(e.value)
    with pytest.raises(UftError, match="timm has no model"):
        build_encoder("timm:resnet_nope")


def test_torchvision_import_fallback_warns_once_and_builds_models():
    """In a fresh process: torchvision imports (normally, or with the known-failure stub and one
    warning), and its models and timm's build on this torch."""
    import subprocess
    import sys

    code = ("import warnings, sys\n"
            "warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    from uft.models.library import import_torchvision, import_timm\n"
            "    tv = import_torchvision(); import_torchvision(); import_timm()\n"
            "stub = type(sys.modules.get('torchvision._meta_registrations')).__name__ == 'module' and "
            "not getattr(sys.modules['torchvision._meta_registrations'], '__file__', None)\n"
            "n = sum('C++ ops' in str(x.message) for x in w)\n"
            "assert n == (1 if stub else 0), (n, stub)\n"
            "print(stub, tv.models.resnet18().fc.in_features)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "512"


def test_uft_resnet18_is_not_torchvisions_so_it_stays_uft_own():
    """uft's ``resnet18`` has the small-image stem (3×3 stride-1 conv, no max-pool): another
    architecture than torchvision's (7×7 stride 2 + max-pool), so it cannot be a thin name over it;
    torchvision's is ``torchvision:resnet18``. Its weights do not load into uft's, by name and shape."""
    from uft.models.library import import_torchvision
    from uft.models.weights import Checkpoint, fit_state_dict

    ours = build_encoder("resnet18", in_channels=3)
    theirs = import_torchvision().models.resnet18()
    with pytest.raises(UftError, match="another architecture"):
        fit_state_dict(ours, Checkpoint(theirs.state_dict(), "torchvision.pth", "0"), "resnet18")


def test_efficientnet_lite0_equals_timms_with_the_same_weights():
    """uft's EfficientNet-Lite0 and timm's ``tf_efficientnet_lite0`` (TF "SAME" padding, BN eps 1e-3)
    are the same network: the packaged ImageNet weights, mapped tensor by tensor (same order and
    shapes, other names), give bit-equal features and the same classes on uft's normalised input.
    uft's module stays (not a thin name over timm's): its parameter names are the packaged
    checkpoint's and every published uft artifact's, which a rename would stop loading."""
    from uft.models.library import import_timm

    ours = EfficientNetLite0(in_channels=3, pretrained=True).eval()
    theirs = import_timm().create_model("tf_efficientnet_lite0", pretrained=False).eval()
    a = [(k, v) for k, v in ours.state_dict().items() if not k.endswith("num_batches_tracked")]
    b = [k for k in theirs.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(a) == len(b) == 247
    mapped = dict(theirs.state_dict())
    for (_, v), k in zip(a, b):
        assert mapped[k].shape == v.shape, k
        mapped[k] = v
    theirs.load_state_dict(mapped)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        h = (x - ours.mean) / ours.std  # uft's inception scaling (timm's cfg says 0.5/0.5: close, not equal)
        torch.testing.assert_close(ours(x), theirs.forward_head(theirs.forward_features(h), pre_logits=True),
                                   rtol=0, atol=0)
        assert torch.equal(ours.logits(x).argmax(1), theirs(h).argmax(1))
