"""The degenerate-start guard: the pure check, the report's red warning and one table per start."""

from __future__ import annotations

import numpy as np
import pytest

from uft.errors import UftError
from uft.transfer.holistic import start_check, start_warning

Y = np.repeat(np.arange(10), 20)  # balanced, 200 labels


def test_constant_predictor_is_degenerate():
    c = start_check(np.full(200, 8), Y, 10)
    assert c["degenerate"] and c["accuracy"] == pytest.approx(0.1) and c["chance"] == pytest.approx(0.1)
    assert c["top_class"] == 8 and c["top_class_share"] == 1.0
    assert any("class 8 takes 100%" in r for r in c["reasons"]) and any("accuracy 0.100" in r for r in c["reasons"])
    assert "DEGENERATE START" in start_warning(c)


def test_near_chance_is_degenerate_even_when_spread():
    rng = np.random.default_rng(0)
    c = start_check(rng.integers(0, 10, 200), Y, 10)
    assert c["degenerate"] and c["top_class_share"] < 0.5
    assert [r for r in c["reasons"] if r.startswith("accuracy")]


def test_collapse_with_decent_accuracy_is_degenerate():
    p = Y.copy()
    p[Y >= 4] = 3  # 4 classes right, the other 6 all predicted "3": accuracy 0.4, share 0.7
    c = start_check(p, Y, 10)
    assert c["accuracy"] == pytest.approx(0.4) and c["top_class_share"] == pytest.approx(0.7)
    assert c["degenerate"] and len(c["reasons"]) == 1 and "class 3 takes 70%" in c["reasons"][0]


def test_good_predictor_passes():
    p = Y.copy()
    p[::5] = (p[::5] + 1) % 10  # 80 % right, predictions spread evenly
    c = start_check(p, Y, 10)
    assert c["accuracy"] == pytest.approx(0.8) and not c["degenerate"] and c["reasons"] == []


def test_thresholds_are_knobs_and_binary_bars_stay_below_one():
    p = Y.copy()
    p[::2] = 0  # accuracy 0.55, class 0 takes 55 %
    assert not start_check(p, Y, 10, max_class_share=0.6, chance_mult=2)["degenerate"]
    assert start_check(p, Y, 10, max_class_share=0.5)["degenerate"]
    yb = np.repeat([0, 1], 50)
    good = yb.copy()
    good[:10] = 1  # 90 % accuracy, class 1 takes 60 %: fine for two classes
    assert not start_check(good, yb, 2)["degenerate"]
    assert start_check(np.ones(100, int), yb, 2)["degenerate"]


def test_unbalanced_chance_is_the_majority_rate():
    y = np.array([0] * 80 + [1] * 10 + [2] * 10)
    c = start_check(np.zeros(100, int), y, 3)  # the constant majority vote: accuracy 0.8 = chance
    assert c["chance"] == pytest.approx(0.8) and c["degenerate"]


def test_bad_input():
    with pytest.raises(UftError, match="3 predictions and 2 labels"):
        start_check([0, 1, 2], [0, 1], 3)
    with pytest.raises(UftError, match=r"must be in \[0, 3\)"):
        start_check([0, 5], [0, 1], 3)


# ----------------------------------------------------------------------------- report


def _collected(degenerate: bool, starts: tuple[str, ...] = ("source",)) -> list[dict]:
    res = {}
    for start in starts:
        for m in ("source", "naive") if start == "source" else ("naive",):
            name = m if start == "source" else f"{m}@{start}"
            res[name] = {"overall": 0.5, "seen": 0.7, "unseen": 0.3, "ausuc": 0.4, "ncm": 0.6, "start": start}
    pred = np.full(200, 8) if degenerate else Y
    return [{"step": "holistic", "metrics": {"results": res, "flat": {}, "seen": [0, 1, 2, 3, 4],
                                             "start_check": start_check(pred, Y, 10)}}]


def test_report_shows_a_degenerate_start_in_red():
    from uft.report import build_report

    files, summary = build_report(_collected(True), {})
    md, page = files["report.md"].decode(), files["report.html"].decode()
    assert "> **WARNING: degenerate start.**" in md and "class 8 takes 100%" in md
    assert "<blockquote>\n<p><strong>WARNING: degenerate start.</strong>" in page and "blockquote{color:#b00020" in page
    assert summary["holistic_start_degenerate"] == 1.0 and summary["holistic_start_accuracy"] == pytest.approx(0.1)


def test_report_without_problem_has_no_warning():
    from uft.report import build_report

    files, summary = build_report(_collected(False), {})
    md = files["report.md"].decode()
    assert "WARNING" not in md and "<blockquote>" not in files["report.html"].decode()
    assert "before any adaptation: accuracy 1.000" in md and summary["holistic_start_degenerate"] == 0.0


def test_report_has_one_table_per_start():
    from uft.report import build_report

    md = build_report(_collected(False, ("source", "adabn")), {})[0]["report.md"].decode()
    tables = [t for t in md.split("\n\n") if t.startswith("| method | start |")]
    assert len(tables) == 2
    assert "| source classifier |" in tables[0] and "AdaBN" not in tables[0]
    assert "| naive@adabn | AdaBN-adapted source classifier |" in tables[1] and "| source classifier |" not in tables[1]
