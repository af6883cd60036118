"""uft: unsupervised finetuning of vision encoders, as a Kubeflow pipeline."""

__version__ = "0.1.0"
