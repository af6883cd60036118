"""The one setting that names the component images (env at compile time).

Pin them by digest (``repo@sha256:...``, what the ``images`` workflow reports): a tag can be moved
after a pipeline version was uploaded, a digest cannot.
"""

import os

#: CPU image for every step without a GPU; override with UFT_IMAGE when compiling for your registry.
IMAGE = os.environ.get("UFT_IMAGE", "ghcr.io/uft-project/uft:0.1.0-cpu")
#: CUDA image for the GPU steps (pretrain, ssl_finetune, holistic); override with UFT_GPU_IMAGE.
GPU_IMAGE = os.environ.get("UFT_GPU_IMAGE", "ghcr.io/uft-project/uft:0.1.0-cuda")
