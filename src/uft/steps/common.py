"""What the steps share: the device they compute on, and an allocator setting for long streamed passes."""

from __future__ import annotations

import ctypes

#: glibc's ``mallopt`` parameter number for the mmap threshold (``M_MMAP_THRESHOLD`` in malloc.h).
M_MMAP_THRESHOLD = -3
#: Buffers from this size up are mmapped and handed back to the OS when freed (glibc's initial value).
MMAP_THRESHOLD_BYTES = 128 * 1024


def step_device() -> str:
    """``cuda`` where a GPU is visible (the training and holistic pods request one), else ``cpu``."""
    import torch  # here, not at the top: a step whose outputs are cached never imports torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def keep_heap_flat() -> bool:
    """Fix glibc's mmap threshold for this process, so large buffers keep going to mmap and back to
    the OS when freed. By default glibc raises the threshold to the size of each large buffer freed
    (up to 32 MB) and serves later buffers of that size from the heap; over a streamed pass that
    allocates and frees the same large image and feature buffers thousands of times, the heap then
    grows by fragmentation. Measured on `linear_eval` over 1M images: the peak crept from 768 to
    858 MB during the pass by default, and stayed at 750–754 MB with the threshold fixed
    (docs/results.md, "Evaluation memory by dataset size"). Returns False where the C library has
    no ``mallopt`` (not glibc): nothing changes there."""
    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
