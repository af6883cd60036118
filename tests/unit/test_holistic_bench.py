"""The holistic benchmark (bench/holistic_table.py) on a micro config, and the report's per-class plot."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from bench.holistic_table import (
    VARIANTS,
    BenchData,
    DegenerateStart,
    main,
    markdown_tables,
    per_class_png,
    run_bench,
    summarise,
)
from uft.models.encoders import TinyConvNet
from uft.report import build_report

SEEN = [0, 1, 2, 3, 4]
PNG = b"\x89PNG\r\n\x1a\n"
MICRO = {"steps": 3, "source_steps": 8, "batch_size": 16, "lolsgd_rounds": 1, "lolsgd_local_models": 2,
         "lolsgd_local_steps": 2, "pcv_splits": 1, "eval_batch_size": 128}


@pytest.fixture(scope="module")
def micro_data() -> BenchData:
    """sklearn digits at 16 px: 240 source images; target = the next 240 with a contrast shift,
    half train / half test (every class present in both)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = F.interpolate(torch.tensor(d.images[:480], dtype=torch.float32)[:, None] / 16.0, size=16, mode="bilinear",
                      align_corners=False).clamp(0, 1)
    y = torch.tensor(d.target[:480], dtype=torch.long)
    xt = (0.7 * x[240:] + 0.2).clamp(0, 1)
    return BenchData((x[:240], y[:240]), (xt[::2], y[240::2]), (xt[1::2], y[241::2]), [str(c) for c in range(10)])


@pytest.fixture(scope="module")
def micro(micro_data):
    torch.manual_seed(0)
    enc = TinyConvNet(width=8).eval()
    checks: dict = {}
    runs = run_bench(micro_data, enc, seen=SEEN, seeds=[0], inits=("source", "adabn"), base=MICRO,
                     allow_degenerate=True, checks=checks)  # a micro source model may well be degenerate
    return runs, checks


@pytest.fixture(scope="module")
def micro_runs(micro):
    return micro[0]


def test_start_models_are_checked_first(micro):
    _, checks = micro
    assert set(checks) == {"source", "adabn"} and list(checks["source"]) == [0]
    for c in (checks["source"][0], checks["adabn"][0]):
        assert 0.0 <= c["accuracy"] <= 1.0 and isinstance(c["degenerate"], bool)
    # the checked AdaBN start is the model the AdaBN table starts from
    assert checks["adabn"][0]["accuracy"] == pytest.approx(micro[0]["adabn"]["source"][0]["overall"], abs=1e-12)


def _constant_head(encoder, images, labels, num_classes, cfg=None):
    """A 'source classifier' that predicts class 8 for everything (the bug this guard exists for)."""
    head = torch.nn.Linear(encoder.feature_dim, num_classes)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[8] = 1.0
    return head.eval()


def test_degenerate_start_refuses_to_build_a_table(micro_data, monkeypatch, tmp_path):
    import bench.holistic_table as ht

    monkeypatch.setattr(ht, "train_source_classifier", _constant_head)
    torch.manual_seed(0)
    enc = TinyConvNet(width=8).eval()
    seen_rows = []
    with pytest.raises(DegenerateStart, match="seed 0: DEGENERATE START.*class 8 takes 100%.*No table is written"):
        run_bench(micro_data, enc, seen=SEEN, seeds=[0], base=MICRO, on_result=lambda *a: seen_rows.append(a))
    assert seen_rows == []  # refused before any variant ran

    # the CLI: a clear error, exit code 2, nothing written
    monkeypatch.setattr(ht, "load_bench_data", lambda *a, **k: (micro_data, {}))
    monkeypatch.setattr(ht, "pretrained_encoder", lambda *a, **k: enc)
    out = tmp_path / "out"
    assert main(["--seeds", "0", "--variants", "source,naive", "--out", str(out)]) == 2
    assert not out.exists()
    # --allow-degenerate writes the tables, marked as not for the README
    assert main(["--seeds", "0", "--variants", "source,naive", "--steps", "2", "--out", str(out), "--allow-degenerate"]) == 0
    md = (out / "holistic.md").read_text()
    assert md.count("WARNING: degenerate start") == 1 and "| 1.00 | **yes** |" in md
    assert json.loads((out / "holistic.json").read_text())["meta"]["degenerate"] is True
    # ... and such a run cannot be re-rendered into a table either
    assert main(["--from-json", str(out / "holistic.json"), "--out", str(tmp_path / "again")]) == 2
    assert not (tmp_path / "again").exists()


def test_rows_and_value_ranges(micro_runs):
    assert list(micro_runs) == ["source", "adabn"]
    assert list(micro_runs["source"]) == list(VARIANTS)
    assert list(micro_runs["adabn"]) == [v for v in VARIANTS if v != "adabn"]  # adabn row = the AdaBN start
    for init, rows in micro_runs.items():
        for name, results in rows.items():
            (r,) = results
            assert r["seed"] == 0 and r["seconds"] >= 0
            for m in ("overall", "seen", "unseen", "seen_seen", "unseen_unseen", "ausuc", "ncm"):
                assert 0.0 <= r[m] <= 1.0, (init, name, m, r[m])
            assert len(r["per_class"]) == 10 and all(0.0 <= v <= 1.0 for v in r["per_class"])
            assert ("gamma" in r) == name.startswith("naive+"), (init, name)
            if "gamma" in r:
                assert math.isfinite(r["gamma"])


def test_adabn_init_starts_from_the_adabn_model(micro_runs):
    """The AdaBN-init 'source' row must be exactly the source-init 'adabn' row (same seed)."""
    a, b = micro_runs["adabn"]["source"][0], micro_runs["source"]["adabn"][0]
    for m in ("overall", "seen", "unseen", "ausuc", "ncm"):
        assert a[m] == pytest.approx(b[m], abs=1e-12)
    assert a["per_class"] == pytest.approx(b["per_class"], abs=1e-12)


def test_summary_table_and_plot(micro_runs, micro_data):
    summary = summarise(micro_runs)
    s = summary["source"]["naive+ALG"]
    assert s["overall"]["n"] == 1 and s["overall"]["std"] == 0.0
    assert s["overall"]["mean"] == pytest.approx(micro_runs["source"]["naive+ALG"][0]["overall"])
    d = summary["source"]["frozen_head"]["d_unseen_vs_naive"]["mean"]
    assert d == pytest.approx(micro_runs["source"]["frozen_head"][0]["unseen"] - micro_runs["source"]["naive"][0]["unseen"])
    assert "d_unseen_vs_naive" not in summary["source"]["naive"]
    md = markdown_tables(summary)
    for name in VARIANTS:
        assert f"| {name} |" in md
    assert "| source (AdaBN) |" in md
    png = per_class_png(summary, SEEN, micro_data.classes, 1)
    assert png.startswith(PNG) and len(png) > 10_000


def test_cli_writes_results(tmp_path):
    from uft.data.sources import vendor_dir

    if not (vendor_dir() / "mnist").is_dir():
        pytest.skip("bundled MNIST not installed (make install)")
    out = tmp_path / "out"
    rc = main(["--seeds", "0", "--init", "adabn", "--variants", "source,naive,naive+ALG", "--steps", "2",
               "--source-steps", "4", "--pretrain-steps", "0", "--width", "8", "--source-limit", "200",
               "--target-limit", "200", "--store", str(tmp_path / "store"), "--out", str(out), "--allow-degenerate"])
    assert rc == 0
    data = json.loads((out / "holistic.json").read_text())  # strict JSON (no NaN)
    assert list(data["summary"]["adabn"]) == ["source", "naive", "naive+ALG"]
    assert data["meta"]["data"]["n_source_train"] == 180  # 200 minus the 10 % held-out source test split
    assert "| naive+ALG |" in (out / "holistic.md").read_text()
    assert (out / "holistic_per_class.png").read_bytes().startswith(PNG)
    # re-rendering the saved runs reproduces the summary (with degenerate marked false to allow it)
    data["meta"]["degenerate"] = False
    (tmp_path / "saved.json").write_text(json.dumps(data))
    assert main(["--from-json", str(tmp_path / "saved.json"), "--out", str(tmp_path / "re")]) == 0
    again = json.loads((tmp_path / "re" / "holistic.json").read_text())
    assert again["summary"]["adabn"]["naive"]["overall"] == data["summary"]["adabn"]["naive"]["overall"]
    assert "Δoverall vs AdaBN" in (tmp_path / "re" / "holistic.md").read_text()


def _holistic_collected(seen_key: bool) -> list[dict]:
    res = {m: {"overall": 0.5, "seen": 0.7, "unseen": 0.3, "ausuc": 0.4, "ncm": 0.6,
               "per_class": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, None]} for m in ("source", "naive", "adabn")}
    metrics = {"results": res, "flat": {}}
    if seen_key:
        metrics["seen"] = SEEN
    return [{"step": "holistic", "metrics": metrics}]


@pytest.mark.parametrize("where", ["metrics", "config", "nowhere"])
def test_report_has_per_class_plot(where):
    config = {"seed": 0, **({"holistic_seen": "0,1,2,3,4"} if where == "config" else {})}
    files, summary = build_report(_holistic_collected(where == "metrics"), config)
    assert files["holistic_per_class.png"].startswith(PNG)
    md = files["report.md"].decode()
    assert "![per-class accuracy](data:image/png;base64," in md  # embedded: the markdown shows it alone
    assert "data:image/png;base64," in files["report.html"].decode()
    assert summary["holistic_naive_overall"] == 0.5


def test_report_without_per_class_has_no_plot():
    collected = _holistic_collected(True)
    for r in collected[0]["metrics"]["results"].values():
        del r["per_class"]
    files, _ = build_report(collected, {})
    assert "holistic.png" in files and "holistic_per_class.png" not in files
