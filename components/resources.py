from typing import NamedTuple

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_resources(gpus: int) -> NamedTuple("Outputs", [("cpu_request", str), ("cpu_limit", str),
                                                         ("memory_request", str), ("memory_limit", str),
                                                         ("gpu_limit", str)]):
    """CPU, memory and GPU limit of a training pod with ``gpus`` GPUs (KFP has no arithmetic on
    parameters). All strings: the KFP driver resolves pod-spec fields from string values only
    (a number resolves to "", which drops the GPU limit), see uft.orchestrate.backend."""
    from uft.gpus import training_resources

    r = training_resources(gpus)
    return (r["cpu_request"], r["cpu_limit"], r["memory_request"], r["memory_limit"], str(gpus))
