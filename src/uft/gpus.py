"""How many GPUs a run's training steps use, and the CPU/memory that follow from it.

``gpus`` is a pipeline parameter (``uft submit --param gpus=4``): ``pretrain`` and ``ssl_finetune``
run under DDP with one process per GPU (:mod:`uft.ssl.ddp_entry`) and ask Kubernetes for ``gpus``
GPUs and the CPU and memory below; /dev/shm is a memory-backed emptyDir without a size of its own,
so it is bounded by the pod's memory limit and grows with it. One node's GPUs at most: uft has no
multi-node launcher (for that, run the training step as a Kubeflow Trainer job).
"""

from __future__ import annotations

from uft.errors import UftError

#: The most GPUs one training pod may ask for: one node's worth. The GPU overlay's LimitRange max
#: and ResourceQuota (infra/components/gpu) are set to this (tests/infra checks it).
MAX_GPUS = 8
#: Per GPU: (request, limit) CPUs, and (request, limit) GiB of memory (data loading and
#: augmentation run on the CPU, one DDP process per GPU; /dev/shm lives in the memory limit).
CPU_PER_GPU = (4, 8)
MEMORY_GIB_PER_GPU = (16, 32)


def check_gpus(gpus: int) -> int:
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= MAX_GPUS:
        raise UftError(f"gpus={gpus!r}: pass a whole number from 1 to {MAX_GPUS} (the GPUs of one node; "
                       "multi-node training is not supported)")
    return gpus


def training_resources(gpus: int) -> dict[str, str]:
    """Kubernetes quantities for a training pod with ``gpus`` GPUs:
    ``{"cpu_request", "cpu_limit", "memory_request", "memory_limit"}`` (e.g. ``"8"``, ``"64Gi"``)."""
    g = check_gpus(gpus)
    return {"cpu_request": str(CPU_PER_GPU[0] * g), "cpu_limit": str(CPU_PER_GPU[1] * g),
            "memory_request": f"{MEMORY_GIB_PER_GPU[0] * g}Gi", "memory_limit": f"{MEMORY_GIB_PER_GPU[1] * g}Gi"}
