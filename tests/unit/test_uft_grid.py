"""The replay/mixing grid and the RadReg sweep (bench/uft_grid.py, bench/radreg_sweep.py): paired
intervals computed right, and micro runs that produce every cell from the splits they name."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import radreg_sweep
from bench.uft_grid import (
    METRICS,
    PAIRS,
    VARIANTS,
    GridConfig,
    diff_table,
    load_pair,
    paired,
    run_grid,
    t_interval,
)
from tests.micro_pair import register_micro_pair


def test_t_interval_matches_the_textbook_formula():
    x = np.array([0.01, 0.03, -0.02, 0.04, 0.00])
    mean, half = t_interval(x)
    # t(0.975, 4) = 2.7764451: Student t table
    assert mean == pytest.approx(0.012)
    assert half == pytest.approx(2.7764451 * x.std(ddof=1) / math.sqrt(5), rel=1e-6)
    assert math.isnan(t_interval(np.array([0.1]))[1])


def _cell(seed, size, variant, val, obj="simclr"):
    return {"pair": "p", "size": size, "objective": obj, "variant": variant, "seed": seed,
            "metrics": {m: val for m in METRICS}}


def test_paired_differences_are_per_seed_and_averaged_over_sizes():
    cells = []
    for seed, (a, b) in enumerate([(0.1, 0.3), (0.2, 0.2), (0.0, 0.4)]):
        for size, base in ((100, a), (1000, b)):
            cells += [_cell(seed, size, "naive", base), _cell(seed, size, "replay", base + 0.01 * (seed + 1))]
    d = paired(cells, "p", "simclr", "replay", "knn")
    assert d == pytest.approx([0.01, 0.02, 0.03])  # the large between-seed spread of the levels cancels
    assert paired(cells, "p", "simclr", "replay", "knn", size=100) == pytest.approx([0.01, 0.02, 0.03])
    row = [r for r in diff_table(cells).splitlines() if "| replay |" in r][0]
    assert "+0.020 ± " in row
    m, h = t_interval(np.array([0.01, 0.02, 0.03]))
    assert (abs(m) > h) == ("*" in row)


@pytest.fixture
def micro_pair(monkeypatch):
    return register_micro_pair(monkeypatch, source_limit=400, target_limit=500, target_test_fraction=0.3)


def _micro_cfg(pair: str, **kw) -> GridConfig:
    return GridConfig(pairs=[pair], sizes=[40], seeds=[0], objectives=["simclr"], encoder_width=4, image_size=8,
                      pretrain_steps=2, pretrain_batch=32, finetune_steps=2, batch_size=16, replay_mult=2, draws=1,
                      eval_cap=60, source_bank=100, source_limit=400, **kw)


def test_micro_grid_has_every_variant_and_reads_the_named_split(tmp_path, micro_pair):
    store = str(tmp_path / "store")
    cfg = _micro_cfg(micro_pair, split="val")
    val, test = load_pair(PAIRS[micro_pair], store, cfg), load_pair(PAIRS[micro_pair], store, _micro_cfg(micro_pair))
    assert len(val.tgt_eval) != len(test.tgt_eval) or not (val.tgt_eval == test.tgt_eval).all()
    cells = run_grid(cfg, store, log=lambda s: None)
    assert [c["variant"] for c in cells] == list(VARIANTS)
    for c in cells:
        assert all(0.0 <= c["metrics"][m] <= 1.0 for m in METRICS)
    by = {c["variant"]: c["metrics"] for c in cells}
    assert by["naive"] != by["none"] and by["replay"] != by["naive"]
    budget = run_grid(_micro_cfg(micro_pair, split="val", variants=["none", "naive"], budgets=["2@1e-3", "3@1e-2"]),
                      store, log=lambda s: None)
    assert [c["objective"] for c in budget] == ["simclr 2@0.001"] * 2 + ["simclr 3@0.01"] * 2


def test_micro_radreg_sweep_runs_every_form_and_mu(tmp_path, micro_pair):
    cfg = _micro_cfg(micro_pair)
    cells = radreg_sweep.run(cfg, micro_pair, 40, [1e-2], ["closed", "adversarial"], str(tmp_path / "s"),
                             log=lambda s: None)
    assert [c["config"] for c in cells] == ["none", "closed μ=0.01", "adversarial μ=0.01"]
    for c in cells:
        assert set(radreg_sweep.ESTIMATES) <= set(c["test"]) and set(radreg_sweep.PROBES) <= set(c["val"])
    text = radreg_sweep.render(cells, {"command": "cmd", "wall_s": 1.0, "pair": micro_pair, "size": 40,
                                       "config": {**cfg.__dict__}})
    assert "closed μ=0.01 − none" in text


def test_merge_results_joins_parts_of_one_run(tmp_path):
    """`--merge` of bench.uft_grid and bench.damage_curve: parts run in parallel (one per pair) → one result."""
    import json

    from bench.uft_grid import merge_results

    parts = [{"command": "a", "wall_s": 5.0, "notes": {"n": 1}, "cells": [{"pair": "p1"}],
              "config": {"pairs": ["p1"], "budgets": ["60@0.1"], "seeds": [0]}},
             {"command": "b", "wall_s": 7.5, "notes": {"n": 2}, "cells": [{"pair": "p2"}, {"pair": "p2"}],
              "config": {"pairs": ["p2", "p1"], "budgets": ["150@0.01", "60@0.1"], "seeds": [0]}}]
    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(part))
    merged = merge_results(paths, list_keys=("pairs", "budgets"))
    assert merged["command"] == "a ; b" and merged["wall_s"] == 7.5 and merged["notes"] == {"n": 1}
    assert merged["cells"] == [{"pair": "p1"}, {"pair": "p2"}, {"pair": "p2"}]
    assert merged["config"] == {"pairs": ["p1", "p2"], "budgets": ["60@0.1", "150@0.01"], "seeds": [0]}
    assert merge_results(paths)["config"]["budgets"] == ["60@0.1"]  # only the named lists are merged
