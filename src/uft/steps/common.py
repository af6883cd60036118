"""What the steps share: the device they compute on."""

from __future__ import annotations


def step_device() -> str:
    """``cuda`` where a GPU is visible (the training and holistic pods request one), else ``cpu``."""
    import torch  # here, not at the top: a step whose outputs are cached never imports torch

    return "cuda" if torch.cuda.is_available() else "cpu"
