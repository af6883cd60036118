"""The names a run configuration may choose from, and the one-line check every validator uses.

The lowest layer of the configuration: it imports nothing, so that
:mod:`uft.config`, the data modules and the science modules can all check names against it without
importing one another (or torch).
"""

from __future__ import annotations

FRAMINGS = ("auto", "content_box", "keep")
REPLAY_RULES = ("uniform", "class_balanced", "kmeans", "nearest_target")
MIX_OPS = ("none", "mixup", "cutmix")
MIX_PAIRINGS = ("target_source", "target_target")
#: The built-in encoders, SSL objectives and holistic methods by name, so that checking a config
#: that uses them imports no torch (seconds, before `uft run` can even start its services). A name
#: not listed is looked up in the registries themselves (uft.models, uft.ssl, uft.transfer.holistic);
#: tests/unit/test_config.py keeps these lists equal to the registries.
BUILTIN_ENCODERS = ("efficientnet_lite0", "resnet18", "resnet50", "tiny")
#: Library encoders are named ``FAMILY:<architecture>`` (uft.models.library), e.g. ``timm:convnext_atto``.
ENCODER_FAMILIES = ("timm", "torchvision")
#: Checkpoint files ``encoder_weights`` reads (uft.models.weights); ``models:/`` URIs name registered versions.
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
BUILTIN_SSL_METHODS = ("act", "barlow", "byol", "moco", "simclr")
BUILTIN_HOLISTIC_METHODS = ("source", "adabn", "naive", "frozen_head", "lolsgd", "distill", "rank_reg", "oracle")


def one_of(value: str, choices: tuple[str, ...] | list[str], what: str) -> str:
    """``value`` if it is one of ``choices``, else the one-line ValueError every config validator raises."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value
