"""Compile the pipeline(s) to KFP IR YAML."""

from __future__ import annotations

from pathlib import Path


def compile_pipeline(out: str | Path = "build/uft_pipeline.yaml") -> Path:
    from kfp import compiler

    from pipelines.uft_pipeline import uft_pipeline

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(uft_pipeline, str(out))
    return out
