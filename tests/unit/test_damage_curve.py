"""The damage curve (bench/damage_curve.py): its pre-registered analyses computed right on known
numbers, and a micro run end to end — one training run per variant, evaluated along it without
disturbing it, and a table whose every ± is an interval over the seeds."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bench import damage_curve as dc
from bench.uft_grid import t_interval
from tests.micro_pair import register_micro_pair


def _cells(curve: dict[int, list[float]], source: dict[int, list[float]], variant: str = "naive",
           split: str = "val") -> list[dict]:
    """Cells of one (pair, size) from per-step lists of per-seed values (target metrics share ``curve``)."""
    out = []
    for t, xs in curve.items():
        for seed, x in enumerate(xs):
            out.append({"pair": "p", "size": 100, "variant": variant, "seed": seed, "step": t, "split": split,
                        "metrics": {"linear_10shot": x, "knn": x, "source_knn": source[t][seed]}})
    return out


def test_peak_and_damage_follow_the_protocol_on_val():
    flat = {t: [0.9, 0.91, 0.89] for t in (0, 100, 300)}
    # target rises to step 100, then falls clearly; source flat
    rise_fall = {0: [0.50, 0.52, 0.51], 100: [0.60, 0.61, 0.62], 300: [0.55, 0.56, 0.565]}
    cells = _cells(rise_fall, flat)
    assert dc.peak_step(cells, "p", 100, "linear_10shot") == 100
    t, why = dc.damage_step(cells, "p", 100)
    assert t == 300 and "below its peak at 100" in why
    # the test split does not enter the choice: a test-only fall changes nothing
    test_only = cells + _cells({0: [0.5] * 3, 100: [0.9] * 3, 300: [0.1] * 3}, flat, split="test")
    assert dc.damage_step(test_only, "p", 100) == (300, why)
    # source damage at step 100 fires first, even with the target still rising
    src_drop = {0: [0.90, 0.91, 0.89], 100: [0.80, 0.80, 0.79], 300: [0.80, 0.81, 0.80]}
    t, why = dc.damage_step(_cells(rise_fall, src_drop), "p", 100)
    assert t == 100 and why.startswith("source k-NN below the base")
    # noise around a flat curve is not damage
    noisy = {0: [0.5, 0.6, 0.4], 100: [0.55, 0.45, 0.5], 300: [0.45, 0.6, 0.5]}
    assert dc.damage_step(_cells(noisy, flat), "p", 100) == (None, "")


def _remedy_cells(src_naive: dict[int, list[float]], remedy_gain: float) -> list[dict]:
    """naive and replay on both splits; replay's source k-NN = naive's + ``remedy_gain`` after step 0."""
    flat = {t: [0.5 + 0.01 * s for s in range(5)] for t in src_naive}
    out = []
    for split in dc.SPLITS:
        out += _cells(flat, src_naive, "naive", split)
        out += _cells(flat, {t: [x + (remedy_gain if t else 0) for x in xs] for t, xs in src_naive.items()}, "replay", split)
    return out


def test_claims_apply_the_pre_registered_rules():
    drop = {0: [0.90, 0.91, 0.89, 0.90, 0.92], 100: [0.80, 0.82, 0.79, 0.81, 0.80]}
    text = "\n".join(dc.claims(_remedy_cells(drop, 0.05)))
    assert "**holds**" in text and "confirmed on test" in text and "replay − naive at step 100 on source k-NN" in text
    assert text.rstrip().endswith("→ holds")
    assert "→ hurts" in "\n".join(dc.claims(_remedy_cells(drop, -0.05)))
    # no damage, and the test drop's lower bound above −0.02: the premise does not hold here
    flat = {0: [0.90, 0.91, 0.89, 0.90, 0.92], 100: [0.901, 0.909, 0.891, 0.899, 0.921]}
    assert "**does not hold**" in "\n".join(dc.claims(_remedy_cells(flat, 0.0)))
    # no damage on val but too noisy to exclude a drop of 0.02: not resolved
    noisy = {0: [0.90, 0.91, 0.89, 0.90, 0.92], 100: [0.95, 0.85, 0.93, 0.86, 0.92]}
    assert "**not resolved**" in "\n".join(dc.claims(_remedy_cells(noisy, 0.0)))


def test_source_damage_is_confirmed_on_the_source_metric_only():
    # val: source k-NN drops at step 100 (damage fires there, "source k-NN below the base"); test: the
    # source does not drop, while the target k-NN is still rising to its step-300 peak. "k-NN below" is a
    # substring of "source k-NN below": the target's rise must not count as confirming the source damage.
    src = {"val": {0: [0.90, 0.91, 0.89, 0.90, 0.92], 100: [0.80, 0.82, 0.79, 0.81, 0.80],
                   300: [0.80, 0.82, 0.79, 0.81, 0.80]},
           "test": {t: [0.90, 0.91, 0.89, 0.90, 0.92] for t in (0, 100, 300)}}
    rising = {0: [0.50, 0.52, 0.51, 0.50, 0.53], 100: [0.60, 0.61, 0.62, 0.60, 0.61],
              300: [0.70, 0.71, 0.72, 0.70, 0.71]}
    cells = _cells(rising, src["val"], split="val") + _cells(rising, src["test"], split="test")
    assert dc.damage_step(cells, "p", 100) == (100, "source k-NN below the base")
    text = "\n".join(dc.claims(cells))
    assert "not confirmed on test" in text and "**not resolved**" in text


def test_intervals_are_paired_t_intervals_over_seeds():
    a, b = {0: 0.5, 1: 0.7, 2: 0.6}, {0: 0.45, 1: 0.66, 2: 0.56}
    d = dc.diff(a, b)
    assert d == pytest.approx([0.05, 0.04, 0.04])  # paired: the between-seed spread of the levels cancels
    m, h = t_interval(d)
    assert dc.fmt(d) == f"{m:+.3f} ± {h:.3f} *" and dc.above(d) and not dc.below(d)
    assert dc.fmt(np.array([0.1])) == "+0.100 (n = 1: no interval)" and not dc.below(np.array([-1.0]))


@pytest.fixture
def micro(monkeypatch):
    return register_micro_pair(monkeypatch, source_limit=400, target_limit=500, target_test_fraction=0.3)


def _micro_cfg(pair: str) -> dc.CurveConfig:
    # naive and replay + mixing (the latter runs both the replay and the mixing path): the probes' fits
    # dominate the cost, so two variants keep the test well under 20 s on a loaded 2-core machine
    return dc.CurveConfig(pairs=[pair], sizes=[40], seeds=[0, 1], checkpoints=[0, 2, 3], encoder_width=4,
                          variants=["naive", "replay+mixing"],
                          image_size=8, pretrain_steps=2, pretrain_batch=32, batch_size=16, replay_mult=2,
                          draws=1, eval_cap=40, source_bank=100, source_limit=400, shots=[10])


def test_micro_damage_curve_end_to_end(tmp_path, micro, monkeypatch):
    import uft.ssl.train as train

    calls = []
    real = train.train_ssl
    monkeypatch.setattr(train, "train_ssl", lambda *a, **k: calls.append(a[2].steps) or real(*a, **k))
    cfg = _micro_cfg(micro)
    store = str(tmp_path / "store")
    cells, _ = dc.run(cfg, store, log=lambda s: None)
    # one run per (seed, size, variant) of max(checkpoints) steps, after one base per seed
    assert calls == ([cfg.pretrain_steps] + [3] * len(cfg.variants)) * 2
    keys = {(c["variant"], c["seed"], c["step"], c["split"]) for c in cells}
    assert keys == {(v, s, t, sp) for v in cfg.variants for s in (0, 1) for t in (0, 2, 3) for sp in dc.SPLITS}
    assert all(0.0 <= x <= 1.0 for c in cells for x in c["metrics"].values())
    # evaluating along the run leaves it as it would have been: step 3 = a plain 3-step run's end
    data = dc.load_grey(micro, store, cfg)
    base = dc.base_for(cfg, data, 1)
    order = dc.target_order(len(data.tgt_train), 1)
    import torch
    from uft.transfer.replay import select_replay
    target = data.tgt_train[torch.from_numpy(np.sort(order[:40]))]
    replay = data.src_train[torch.from_numpy(select_replay("uniform", 80, seed=1, source_size=len(data.src_train)))]
    plain = dc.finetune_curve(base, target, replay, "replay+mixing", 1, dc.CurveConfig(**{**cfg.__dict__, "checkpoints": [0, 3]}), data)
    along = {c["split"]: c["metrics"] for c in cells if (c["variant"], c["seed"], c["step"]) == ("replay+mixing", 1, 3)}
    assert plain[3] == along
    assert along != {c["split"]: c["metrics"] for c in cells if (c["variant"], c["seed"], c["step"]) == ("replay+mixing", 1, 0)}
    text = dc.render(cells, cfg, "cmd", 1.0, {})
    assert "n = 2" in text and "95 % Student-t interval" in text and "## Claims" in text
    rows = [r for r in text.splitlines() if r.startswith(f"| {micro} | 40 | naive | 3 |")]
    assert len(rows) == 1 and rows[0].count(" ± ") == 3  # 10-shot, k-NN, source k-NN
    diffs = [r for r in text.splitlines() if "naive(3) − base" in r]
    assert len(diffs) == 1 and all(re.search(r"[+-]\d\.\d{3} ± \d\.\d{3}", c) for c in diffs[0].split("|")[4:7])


def test_device_option_is_checked_and_features_come_back_on_cpu():
    import torch

    assert dc.parse_args([])[0].device == "cpu"
    with pytest.raises(SystemExit):
        dc.parse_args(["--device", "tpu"])
    if not torch.cuda.is_available():  # a GPU run must be asked for where there is a GPU
        with pytest.raises(SystemExit):
            dc.parse_args(["--device", "cuda"])
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    f = dc._features(enc, torch.zeros(300, 1, 2, 2, dtype=torch.uint8))
    assert f.shape == (300, 3) and f.device.type == "cpu" and f.dtype == torch.float32


def test_realistic_arm_runs_end_to_end_from_the_shipped_imagenet_weights(tmp_path, monkeypatch):
    """The arm no run has used yet at full size (it needs a GPU): EfficientNet-Lite0 from the shipped
    ImageNet weights on the colour pair, its input size chosen, every variant's curve evaluated.
    Tiny sizes and steps; on CPU (`--device cpu`, what a GPU run changes)."""
    import json

    monkeypatch.setattr(dc.torch, "set_num_threads", lambda n: None)  # the test process keeps its threads
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # main() unsets it and sets UFT_PROGRESS:
    monkeypatch.setenv("UFT_PROGRESS", "off")  # restored for the tests after this one
    out = tmp_path / "dc"
    dc.main(["--arm", "realistic", "--seeds", "0", "--sizes", "20", "--checkpoints", "0,2",
             "--variants", "naive,replay+mixing", "--colour-sizes", "32", "--colour-per-class", "10",
             "--eval-cap", "40", "--source-bank", "60", "--batch-size", "8", "--draws", "1", "--knn-k", "3",
             "--device", "cpu", "--store", str(tmp_path / "store"), "--out", str(out)])
    saved = json.loads((out.with_suffix(".json")).read_text())
    assert saved["notes"]["colour_size"]["chosen"] == 32
    keys = {(c["variant"], c["step"], c["split"]) for c in saved["cells"]}
    assert keys == {(v, t, sp) for v in ("naive", "replay+mixing") for t in (0, 2) for sp in dc.SPLITS}
    assert all(0.0 <= x <= 1.0 for c in saved["cells"] for x in c["metrics"].values())
