"""A micro source → target pair for the benchmark tests: optdigits → optdigits, so a run reads only
the small bundled set (no 10k MNIST parse)."""

from __future__ import annotations

import pytest

from bench.uft_sweep import PAIRS, Pair


def register_micro_pair(monkeypatch: pytest.MonkeyPatch, *, source_limit: int, target_limit: int,
                        target_test_fraction: float) -> str:
    """Add pair ``micro`` to the benchmarks' pairs for this test, tracking off; returns its name."""
    monkeypatch.setitem(PAIRS, "micro", Pair("micro", "optdigits", "optdigits", source_limit=source_limit,
                                             target_limit=target_limit, target_test_fraction=target_test_fraction,
                                             source_test_fraction=0.2))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return "micro"
