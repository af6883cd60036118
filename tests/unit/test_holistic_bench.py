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
    half train (40 of them val) / half test (every class present in each)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = F.interpolate(torch.tensor(d.images[:480], dtype=torch.float32)[:, None] / 16.0, size=16, mode="bilinear",
                      align_corners=False).clamp(0, 1)
    y = torch.tensor(d.target[:480], dtype=torch.long)
    xt = (0.7 * x[240:] + 0.2).clamp(0, 1)
    tr, yt = xt[::2], y[240::2]
    return BenchData((x[:240], y[:240]), (tr[40:], yt[40:]), (tr[:40], yt[:40]), (xt[1::2], y[241::2]),
                     [str(c) for c in range(10)])


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


def test_start_models_are_checked_first_on_val(micro, micro_data):
    _, checks = micro
    assert set(checks) == {"base", "base+adabn"} and list(checks["base"]) == [0]
    for c in (checks["base"][0], checks["base+adabn"][0]):
        assert 0.0 <= c["accuracy"] <= 1.0 and isinstance(c["degenerate"], bool) and c["split"] == "val"
    # the checked AdaBN start is the model the AdaBN table starts from; the check read val, the row test
    assert checks["base+adabn"][0]["test_accuracy"] == pytest.approx(micro[0]["base+adabn"]["source"][0]["overall"],
                                                                      abs=1e-12)


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
    with pytest.raises(DegenerateStart, match="seed 0 .base encoder.: DEGENERATE START.*class 8 takes 100%.*No table"):
        run_bench(micro_data, enc, seen=SEEN, seeds=[0], base=MICRO, on_result=lambda *a: seen_rows.append(a))
    assert seen_rows == []  # refused before any variant ran

    # the CLI: a clear error, exit code 2, nothing written
    monkeypatch.setattr(ht, "load_bench_data", lambda *a, **k: (micro_data, {}))
    monkeypatch.setattr(ht, "pretrained_encoder", lambda *a, **k: enc)
    out = tmp_path / "out"
    assert main(["--seeds", "0", "--encoders", "base", "--variants", "source,naive", "--out", str(out)]) == 2
    assert not out.exists()
    # --allow-degenerate writes the tables, marked as not for the results page
    assert main(["--seeds", "0", "--encoders", "base", "--variants", "source,naive", "--steps", "2", "--out", str(out),
                 "--allow-degenerate"]) == 0
    md = (out / "holistic.md").read_text()
    assert md.count("WARNING: degenerate start") == 1 and "| 1.00 | **yes** |" in md
    assert json.loads((out / "holistic.json").read_text())["meta"]["degenerate"] is True
    # ... and such a run cannot be re-rendered into a table either
    assert main(["--from-json", str(out / "holistic.json"), "--out", str(tmp_path / "again")]) == 2
    assert not (tmp_path / "again").exists()


def test_rows_and_value_ranges(micro_runs):
    assert list(micro_runs) == ["base", "base+adabn"]
    assert list(micro_runs["base"]) == list(VARIANTS)
    assert list(micro_runs["base+adabn"]) == [v for v in VARIANTS if v != "adabn"]  # adabn row = the AdaBN start
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
    a, b = micro_runs["base+adabn"]["source"][0], micro_runs["base"]["adabn"][0]
    for m in ("overall", "seen", "unseen", "ausuc", "ncm"):
        assert a[m] == pytest.approx(b[m], abs=1e-12)
    assert a["per_class"] == pytest.approx(b["per_class"], abs=1e-12)


def test_summary_table_and_plot(micro_runs, micro_data):
    summary = summarise(micro_runs)
    s = summary["base"]["naive+ALG"]
    assert s["overall"]["n"] == 1 and s["overall"]["std"] == 0.0
    assert s["overall"]["mean"] == pytest.approx(micro_runs["base"]["naive+ALG"][0]["overall"])
    d = summary["base"]["frozen_head"]["d_unseen_vs_naive"]["mean"]
    assert d == pytest.approx(micro_runs["base"]["frozen_head"][0]["unseen"] - micro_runs["base"]["naive"][0]["unseen"])
    assert "d_unseen_vs_naive" not in summary["base"]["naive"]
    # the calibrated rows share naive's finetune: same AUSUC and NCM (calibration-invariant), same seed
    for row in ("naive+ALG", "naive+PCV"):
        assert micro_runs["base"][row][0]["ausuc"] == micro_runs["base"]["naive"][0]["ausuc"]
        assert micro_runs["base"][row][0]["ncm"] == micro_runs["base"]["naive"][0]["ncm"]
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
    rc = main(["--seeds", "0,1", "--init", "adabn", "--variants", "source,naive,naive+ALG", "--steps", "2",
               "--source-steps", "4", "--pretrain-steps", "2", "--finetune-steps", "2", "--finetune-batch", "32",
               "--width", "8", "--source-limit", "200", "--target-limit", "200", "--store", str(tmp_path / "store"),
               "--out", str(out), "--allow-degenerate"])
    assert rc == 0
    data = json.loads((out / "holistic.json").read_text())  # strict JSON (no NaN)
    assert set(data["summary"]) == {"base+adabn", "finetuned+adabn"}
    assert list(data["summary"]["base+adabn"]) == ["source", "naive", "naive+ALG"]
    # 200 minus the 10 % source test split and 10 % of the rest (val): 162 expected; the split is by
    # content (a hash per image), so the count is binomial (sd ≈ 5.5), no longer exact
    assert abs(data["meta"]["data"]["n_source_train"] - 162) <= 17
    assert "target_uri" not in data["meta"]["data"]  # no store path in a committed result
    # the finetuned encoder is its own per-seed SSL finetune: its rows differ from the base's
    b, f = (data["runs"][k]["naive"] for k in ("base+adabn", "finetuned+adabn"))
    assert [r["seed"] for r in f] == [0, 1] and [r["ncm"] for r in f] != [r["ncm"] for r in b]
    md = (out / "holistic.md").read_text()
    assert "| naive+ALG |" in md and "### Finetuned − base encoder" in md
    assert (out / "holistic_per_class.png").read_bytes().startswith(PNG)
    # re-rendering the saved runs reproduces the summary (with degenerate marked false to allow it)
    data["meta"]["degenerate"] = False
    (tmp_path / "saved.json").write_text(json.dumps(data))
    assert main(["--from-json", str(tmp_path / "saved.json"), "--out", str(tmp_path / "re")]) == 0
    again = json.loads((tmp_path / "re" / "holistic.json").read_text())
    assert again["summary"]["base+adabn"]["naive"]["overall"] == data["summary"]["base+adabn"]["naive"]["overall"]
    assert "Δoverall vs AdaBN" in (tmp_path / "re" / "holistic.md").read_text()


def test_encoder_comparison_is_paired_by_seed_with_a_t_interval():
    """finetuned − base per seed: diffs 0.10 and 0.20 → mean 0.15, sd 0.0707, t(0.975, 1) = 12.706."""
    from bench.holistic_table import binomial_halfwidth, compare_encoders

    def rows(vals):
        return {"naive": [{"seed": s, **{m: v for m in ("overall", "seen", "unseen", "ausuc", "ncm")}}
                          for s, v in enumerate(vals)]}

    d = compare_encoders({"base": rows([0.5, 0.6]), "finetuned": rows([0.6, 0.8])})["source"]["naive"]["overall"]
    assert d["mean"] == pytest.approx(0.15) and d["n"] == 2
    assert d["hw"] == pytest.approx(12.7062 * 0.070711 / math.sqrt(2), rel=1e-4)
    # seeds missing on one side are not paired
    assert compare_encoders({"base": rows([0.5]), "finetuned": rows([0.6, 0.8])})["source"]["naive"]["overall"]["n"] == 1
    assert binomial_halfwidth(0.5, 900) == pytest.approx(1.96 * 0.5 / 30)


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


def test_runs_on_disjoint_seeds_merge_into_one_table(tmp_path, micro_data):
    """Two saved runs (seeds 0 and 1, run apart) re-render as one table over both seeds; runs that
    share a seed or differ in configuration are refused."""
    from bench.holistic_table import merge_saved, rerender

    torch.manual_seed(0)
    enc = TinyConvNet(width=8).eval()
    saved = []
    for seed in (0, 1):
        checks: dict = {}
        runs = run_bench(micro_data, enc, seen=SEEN, seeds=[seed], variants=["source", "naive"], base=MICRO,
                         allow_degenerate=True, checks=checks)
        meta = {"command": f"cmd {seed}", "wall_seconds": 10.0 + seed, "cpu_seconds": 5.0, "pretrain_seconds": 0.0,
                "seeds": [seed], "seen": SEEN, "inits": ["source"], "encoders": ["base"], "config": MICRO,
                "width": 8, "start_checks": {st: {str(k): v for k, v in c.items()} for st, c in checks.items()},
                "degenerate": False, "date_utc": f"2026-12-0{seed + 1}", "data": {}, "threads": 1,
                "pretrain_steps": 0}
        saved.append({"meta": meta, "runs": json.loads(json.dumps(runs))})
    meta, runs = merge_saved(saved)
    assert meta["seeds"] == [0, 1] and meta["wall_seconds"] == 11.0 and meta["cpu_seconds"] == 10.0
    assert [r["seed"] for r in runs["base"]["naive"]] == [0, 1] and set(meta["start_checks"]["base"]) == {"0", "1"}
    assert summarise(runs)["base"]["naive"]["overall"]["n"] == 2
    with pytest.raises(Exception, match="share .start, seed. pairs"):
        merge_saved([saved[0], saved[0]])
    other = json.loads(json.dumps(saved[1]))
    other["meta"]["width"] = 16
    with pytest.raises(Exception, match="differ in"):
        merge_saved([saved[0], other])
