"""Encoders from the ecosystem: ``timm:<name>`` (PyTorch Image Models) and ``torchvision:<name>``.

Each builds the library's architecture (random weights: nothing is downloaded; load a checkpoint
with ``encoder_weights``, :mod:`uft.models.weights`) as a feature extractor — classifier removed,
the library's own global pooling kept — wrapped in :class:`LibraryEncoder`, which gives it uft's
encoder contract: images ``(N, C, H, W)`` in [0, 1] → ``(N, feature_dim)``, normalised inside
with the model's own statistics (timm: its ``pretrained_cfg`` mean/std; torchvision: ImageNet's),
grey images repeated to the three channels the model was built for.

torchvision on the CPU wheel: its wheels carry C++ ops built against the CUDA torch, and beside
the pinned CPU torch ``import torchvision`` fails in ``torchvision/_meta_registrations.py``
("operator torchvision::nms does not exist"). The model definitions are pure Python, so on that
known failure (and only on it) the module is replaced by an empty stub and the import retried,
with one warning: torchvision's ops (``torchvision.ops.nms`` …) are then unavailable, and uft uses
none of them. timm imports torchvision, so it goes through the same door.
"""

from __future__ import annotations

import sys
import types
import warnings
from typing import Any

import torch
from torch import nn

from uft.errors import UftError
from uft.models.encoders import register_family

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_META = "torchvision._meta_registrations"
_stubbed = False


def import_torchvision() -> types.ModuleType:
    """``import torchvision``; on the known CPU-wheel failure, again with ``_meta_registrations``
    stubbed (warns once). Any other import error is raised as it is."""
    global _stubbed
    try:
        import torchvision
    except ImportError as e:
        raise UftError("torchvision is not installed: pip install torchvision==0.28.0 --no-deps "
                       "(or `make install`)") from e
    except RuntimeError as e:
        if "torchvision::" not in str(e) or "does not exist" not in str(e):
            raise
        # The failed import left torchvision half-registered in sys.modules: drop it, stub the one
        # module that registers meta kernels for the (unloadable) C++ ops, import again.
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules[_META] = types.ModuleType(_META)
        if not _stubbed:
            warnings.warn(f"torchvision's C++ ops do not load with this torch ({e}); imported its models without "
                          "them (torchvision.ops is unavailable, uft does not use it)", RuntimeWarning, stacklevel=2)
        _stubbed = True
        import torchvision
    return torchvision


def import_timm() -> types.ModuleType:
    """``import timm`` (after :func:`import_torchvision`, which timm imports)."""
    import_torchvision()
    try:
        import timm
    except ImportError as e:
        raise UftError("timm is not installed: pip install timm==1.0.31 (or `make install`)") from e
    return timm


class LibraryEncoder(nn.Module):
    """A library feature extractor under uft's contract: ``(N, in_channels, H, W)`` in [0, 1] →
    ``(N, feature_dim)``.

    Args:
        arch: the uft name, ``timm:<name>`` or ``torchvision:<name>`` (recorded in exports).
        model: the library module, classifier removed: normalised ``(N, model_channels, H, W)`` →
            pooled ``(N, feature_dim)``. Its state dict is the library's own, under ``model.``.
        feature_dim: width of the pooled features.
        in_channels: channels of uft's images (1 = grey, repeated to ``model_channels``).
        model_channels: channels the library model was built for (3 for every ImageNet model).
        mean, std: per-channel input statistics of the model, for inputs in [0, 1].
        head_keys: the removed classifier's parameter names (relative to ``model``), which a
            classification checkpoint carries and loading ignores.
    """

    def __init__(self, arch: str, model: nn.Module, feature_dim: int, in_channels: int, model_channels: int,
                 mean: tuple[float, ...], std: tuple[float, ...], head_keys: tuple[str, ...] = ()):
        super().__init__()
        if in_channels not in (1, model_channels):
            raise UftError(f"encoder {arch} takes {model_channels}-channel images (or grey, repeated): "
                           f"in_channels={in_channels} does not fit; ingest with channels={model_channels} or 1")
        if len(mean) != model_channels or len(std) != model_channels:
            mean, std = (sum(mean) / len(mean),) * model_channels, (sum(std) / len(std),) * model_channels
        self.arch, self.model = arch, model
        self.feature_dim, self.in_channels, self.model_channels = int(feature_dim), int(in_channels), int(model_channels)
        self.head_keys = tuple(head_keys)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` in [0, 1] → ``(N, feature_dim)``."""
        if x.shape[1] != self.in_channels:
            raise UftError(f"input with {x.shape[1]} channels to {self.arch} built for {self.in_channels}: "
                           "build the encoder with the images' channel count")
        if self.in_channels != self.model_channels:  # grey → the RGB stem, as the weights expect
            x = x.expand(-1, self.model_channels, -1, -1)
        return self.model((x - self.mean) / self.std)


# --- timm -----------------------------------------------------------------------------------------

def timm_encoder(name: str, in_channels: int = 3, **kwargs: Any) -> LibraryEncoder:
    """``timm.create_model(name, num_classes=0)`` (pooled features, no classifier) as an encoder."""
    timm = import_timm()
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        raise UftError(f"timm has no model {name!r}: pick one from timm.list_models()"
                       + (f" (close: {', '.join(close)})" if close else ""))
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    mean, std = tuple(cfg.get("mean") or _IMAGENET[0]), tuple(cfg.get("std") or _IMAGENET[1])
    channels = int((cfg.get("input_size") or (3,))[0])
    # With num_classes=0 the output is the pre-logits width (head_hidden_size) where a model has one.
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    head_keys = tuple(f"{h}.{p}" for h in heads for p in ("weight", "bias"))
    return LibraryEncoder(f"timm:{name}", model, dim, in_channels, channels, mean, std, head_keys)


# --- torchvision ----------------------------------------------------------------------------------

def torchvision_names() -> list[str]:
    """torchvision's classification architectures (``torchvision.models.list_models``)."""
    tv = import_torchvision()
    return sorted(tv.models.list_models(module=tv.models))


def _drop_classifier(model: nn.Module) -> tuple[int, tuple[str, ...]]:
    """Replace the model's last classification ``Linear`` (``fc``, ``classifier[-1]``, ``heads.head``
    …) by an identity → (its input width = the pooled feature width, its parameter names)."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return head.in_features, (f"{attr}.weight", f"{attr}.bias")
        if isinstance(head, nn.Sequential):
            for i in reversed(range(len(head))):
                if isinstance(head[i], nn.Linear):
                    dim, key = head[i].in_features, f"{attr}.{list(head._modules)[i]}"
                    head[i] = nn.Identity()
                    return dim, (f"{key}.weight", f"{key}.bias")
    raise UftError(f"{type(model).__name__} has no linear classifier to remove: use another torchvision "
                   "architecture (resnet*, efficientnet_*, mobilenet_*, convnext_*, regnet_*, densenet*, …)")


def torchvision_encoder(name: str, in_channels: int = 3, **kwargs: Any) -> LibraryEncoder:
    """``torchvision.models.get_model(name, weights=None)`` without its classifier, as an encoder."""
    tv = import_torchvision()
    names = torchvision_names()
    if name not in names:
        close = [n for n in names if name.split("_")[0] in n][:5]
        raise UftError(f"torchvision has no classification model {name!r}: choose one of "
                       f"torchvision.models.list_models(){' (close: ' + ', '.join(close) + ')' if close else ''}")
    if name in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)  # one output, not a training-time tuple
        kwargs.setdefault("init_weights", True)
    model = tv.models.get_model(name, weights=None, **kwargs)
    dim, head_keys = _drop_classifier(model)
    return LibraryEncoder(f"torchvision:{name}", model, dim, in_channels, 3, *_IMAGENET, head_keys=head_keys)


def check_name(name: str) -> None:
    """Raise :class:`UftError` unless ``timm:<x>`` / ``torchvision:<x>`` names a known architecture
    (no model is built: used by config validation)."""
    prefix, _, arch = name.partition(":")
    if prefix == "timm":
        timm = import_timm()
        if not timm.is_model(arch):
            close = timm.list_models(f"*{arch}*")[:5]
            raise UftError(f"timm has no model {arch!r}" + (f" (close: {', '.join(close)})" if close else ""))
    elif prefix == "torchvision":
        if arch not in torchvision_names():
            raise UftError(f"torchvision has no classification model {arch!r}: see torchvision.models.list_models()")
    else:
        raise UftError(f"unknown encoder family {prefix!r}: use timm:<name> or torchvision:<name>")


register_family("timm", timm_encoder)
register_family("torchvision", torchvision_encoder)
