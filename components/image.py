"""The one setting that names the component images (env at compile time)."""

import os

#: CPU image for every step; override with UFT_IMAGE when compiling for your registry.
IMAGE = os.environ.get("UFT_IMAGE", "ghcr.io/uft-project/uft:0.1.0-cpu")
#: CUDA image for the training step; override with UFT_GPU_IMAGE.
GPU_IMAGE = os.environ.get("UFT_GPU_IMAGE", "ghcr.io/uft-project/uft:0.1.0-cuda")
