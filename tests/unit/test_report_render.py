"""The report as a person reads it: markdown rendered by markdown-it-py (no raw markup left), text
columns left and numbers right, plots embedded, the gate's figures named apart from the
evaluation's with their sample stated, and the parent run's description with the registry link."""

from __future__ import annotations

import inspect
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from uft.report import build_report, run_description

SIG = {"gate_score": 0.18, "effective_rank": 20.0, "view_retrieval": 0.6, "alignment": 0.4, "uniformity": -2.0,
       "snd": 5.0, "val_probe": 0.895, "source_retention": 0.878, "n_views": 180, "feature_dim": 64, "finite": True,
       "signals_split": "val"}
PROMOTE = {"decision": "champion", "promoted": True, "version": "1", "registered_model": "uft-encoder",
           "reasons": ["first version on an empty registry; sanity check passed (not collapsed, gate score 0.1800)"],
           "signals": SIG, "base_signals": {**SIG, "val_probe": 0.85}, "reference": "base encoder",
           "champion_signals": {**SIG, "val_probe": 0.85}, "policy": {"noise": "σ over 5 seeds"}}
COLLECTED = [{"step": "linear_base", "metrics": {"linear_5shot": 0.839, "linear_5shot_std": 0.01}},
             {"step": "linear_finetuned", "metrics": {"linear_5shot": 0.883, "linear_5shot_std": 0.02}},
             {"step": "knn_base", "metrics": {"source_knn": 0.916}},
             {"step": "knn_finetuned", "metrics": {"source_knn": 0.921}},
             {"step": "promote", "metrics": PROMOTE}]
CONFIG = {"replay_ratio": 0.5, "replay_size": 2000, "mix_op": "none", "probe_draws": 5, "seed": 0}


class _Cells(HTMLParser):
    """Visible text, and each table's cells as (text, style) rows."""

    def __init__(self):
        super().__init__()
        self.text, self.rows, self.images, self._cell, self._skip = [], [], [], None, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("style", "title"):
            self._skip += 1
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = [a.get("style", ""), ""]
        if tag == "img":
            self.images.append(a)

    def handle_endtag(self, tag):
        if tag in ("style", "title"):
            self._skip -= 1
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((self._cell[1].strip(), self._cell[0]))
            self._cell = None

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell[1] += data


@pytest.fixture(scope="module")
def report():
    curves = {"pretrain": [(0, 5.0), (10, 4.0)], "finetune": [(0, 4.5), (10, 4.2)]}
    rng = np.random.default_rng(0)
    proj = {n: (rng.normal(size=(30, 2)), rng.integers(0, 10, 30)) for n in ("pretrain", "finetune")}
    files, _ = build_report(COLLECTED, CONFIG, curves, projections=proj)
    page = _Cells()
    page.feed(files["report.html"].decode())
    return files, page


def test_html_has_no_raw_markdown(report):
    files, page = report
    text = "".join(page.text)
    for marker in ("**", "`", "![", "](", "|---", "- first version"):
        assert marker not in text, marker
    assert "Decision: champion" in text and "first version on an empty registry" in text  # rendered, not dropped


def test_text_columns_left_numbers_right(report):
    _, page = report
    rows = {r[0][0]: r for r in page.rows if r}
    gate = rows["val_probe"]
    assert gate[1] == ("0.8950", "text-align:right") and gate[-1][1] == "text-align:left"  # the rule sentence
    acc = rows["linear_5shot"]
    assert acc[0][1] == "text-align:left" and acc[2] == ("0.883 ± 0.020", "text-align:right")


def test_every_plot_is_embedded_in_markdown_and_html(report):
    files, page = report
    md = files["report.md"].decode()
    pngs = sorted(n for n in files if n.endswith(".png"))
    assert {"accuracy.png", "loss.png", "projection.png"} <= set(pngs)
    assert not re.search(r"!\[[^\]]*\]\([^)]*\.png\)", md)  # no relative image link left
    assert md.count("](data:image/png;base64,") == len(pngs)
    assert len(page.images) == len(pngs) and all(i["src"].startswith("data:image/png;base64,") for i in page.images)
    assert len(md.encode()) < 100 * 1024  # MLflow's markdown viewer renders only files below 100 KB


def test_gate_figures_are_named_apart_and_state_their_sample(report):
    files, _ = report
    md = files["report.md"].decode()
    gate_table = md[md.index("| signal |"):]
    assert "| linear_5shot |" not in gate_table and "| source_knn |" not in gate_table
    assert "| val_probe | 0.8950 | 0.8500 |" in gate_table and "| source_retention | 0.8780 |" in gate_table
    assert "on 180 target val images" in md and "5-shot linear probe scored within the target val split" in md
    assert "source val images" in md and "Hence its figures differ from the tables above" in md
    assert "| n_views |" not in md and "| finite |" not in md  # bookkeeping, not signals


def test_plots_use_the_tables_names():
    from uft import report as rep

    seen = {}

    def spy(panels):
        seen.update(panels)
        return b"png"

    rng = np.random.default_rng(0)
    orig = rep._projection_plot
    rep._projection_plot = spy
    try:
        build_report(COLLECTED[:2], {}, projections={n: (rng.normal(size=(5, 2)), np.zeros(5)) for n in ("pretrain", "finetune")})
    finally:
        rep._projection_plot = orig
    assert list(seen) == ["base", "finetuned"]


def test_run_description_links_the_version_and_the_report():
    text = run_description(COLLECTED, "7", "abc123")
    assert "[uft-encoder version 1](#/models/uft-encoder/versions/1?workflowType=machine_learning)" in text
    assert "(#/experiments/7/runs/abc123/artifacts/report.md?workflowType=machine_learning)" in text
    assert "| linear 5-shot | 0.839 ± 0.010 | 0.883 ± 0.020 |" in text
    assert "|:---|---:|---:|" in text
    unregistered = run_description([{"step": "promote", "metrics": {**PROMOTE, "version": None}}], "7", "abc123")
    assert "not registered" in unregistered and "#/models/" not in unregistered


def test_gate_sample_matches_what_promote_measures(monkeypatch):
    """The report states promote's sample; read it from promote's own code, so a changed gate
    fails here instead of the report silently stating stale sizes."""
    import torch

    import uft.data.stream as stream
    import uft.store as store
    from uft import promote

    assert inspect.signature(promote.promote_step).parameters["max_images"].default == 1000
    md = "\n".join(build_report([{"step": "promote", "metrics": PROMOTE}], {})[0]["report.md"].decode().splitlines())
    assert f"{promote.VAL_SHOTS}-shot" in md and "up to 2000 source train images to up to 1000 source val" in md
    big = {"train": (np.zeros(5000, np.int64), np.arange(5000)), "val": (np.zeros(3000, np.int64), np.arange(3000)),
           "test": (np.zeros(3000, np.int64), np.arange(3000))}
    monkeypatch.setattr(stream, "split_rows", lambda uri: big)
    monkeypatch.setattr(stream, "load_rows", lambda uri, rows: torch.zeros(len(rows)))
    monkeypatch.setattr(store, "read_manifest", lambda uri: ({"classes": [0]}, None, None))
    tr_x, _, va_x, _, _ = promote.signals._source_eval("s3://b/source/manifest.json", 1000, 0)
    assert (len(tr_x), len(va_x)) == (2000, 1000)


def test_mlflow_copy_reads_its_plots_from_the_run(report):
    """MLflow's markdown viewer blanks data: URLs and prints scheme-less ones as text; the copy
    logged to a run points each plot to that run's artifact through the server's /get-artifact."""
    from uft.report import mlflow_markdown

    files, _ = report
    md = mlflow_markdown(files["report.md"].decode(), files, "run42")
    assert "data:image" not in md
    assert "![loss](http:get-artifact?path=loss.png&run_uuid=run42)" in md
    assert md.count("](http:get-artifact?") == sum(n.endswith(".png") for n in files)
