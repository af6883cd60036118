"""bench/promotion_gate.py's validation arithmetic: exact binomial intervals, the paired truth over
seeds, and the label-free validity table on val (Spearman of each signal against the test probe)."""

from __future__ import annotations

import math

import pytest

from bench.promotion_gate import clopper_pearson, paired_truth, validity_rows


def test_clopper_pearson_matches_known_values():
    lo, hi = clopper_pearson(15, 15)
    assert hi == 1.0 and lo == pytest.approx(0.7820, abs=1e-4)  # (α/2)^(1/n) for k = n
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.3085, abs=1e-4)
    assert all(math.isnan(x) for x in clopper_pearson(0, 0))


def test_paired_truth_needs_the_interval_above_zero():
    assert paired_truth([0.02, 0.03, 0.025, 0.028, 0.022])["truth"] == "better"
    assert paired_truth([0.02, -0.01, 0.03, -0.02, 0.0])["truth"] == "tie"
    assert paired_truth([-0.02, -0.03, -0.025, -0.028, -0.022])["truth"] == "worse"


def _row(probe: float, retrieval: float, align: float) -> dict:
    return {"test_probe": probe, "signals": {"view_retrieval": retrieval, "rank_fraction": 0.5, "alignment": align,
                                             "finite": True}}


def test_validity_ranks_each_signal_against_the_test_probe_with_its_sign():
    rows = [_row(0.6 + 0.05 * i, 0.1 * i, 1.0 - 0.1 * i) for i in range(6)]  # both signals track the probe
    rows.append({"test_probe": 0.1, "signals": {"finite": False, "view_retrieval": float("nan")}})  # left out
    out = {(r[1]): (r[2], r[3]) for r in validity_rows([{"pair": "p", "rows": rows}])}
    assert out["view_retrieval"] == (pytest.approx(1.0), 6)
    assert out["alignment"] == (pytest.approx(1.0), 6)  # lower alignment is better: sign-corrected
    assert out["gate_score"] == (pytest.approx(1.0), 6)  # computed from its parts when not stored
    assert math.isnan(out["snd"][0]) and out["snd"][1] == 0


def test_the_results_file_keeps_signals_and_decisions_but_not_per_row_outcomes(monkeypatch):
    import bench.promotion_gate as pg

    rows = [{"seed": 0, "role": "base", "config": "base", "test_probe": 0.8,
             "signals": {"val_probe": 0.7, "paired": {"rows": [1, 0, 1]}}}]
    monkeypatch.setattr(pg, "validate_decisions", lambda p: [{"pair": p["pair"], "promoted": False}])
    out = pg.slim([{"pair": "p", "held_out": False, "rows": rows, "split_sizes": {}}])
    assert out["pairs"][0]["rows"][0]["signals"] == {"val_probe": 0.7}
    assert out["decisions"] == [{"pair": "p", "promoted": False}]
    assert "paired" in rows[0]["signals"]  # the measurements themselves are left as they were
