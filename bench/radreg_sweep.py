"""RadReg as its paper uses it: added during pretraining, estimated on unlabelled target images.

For each seed (an independent replicate: its own pretraining init, unlabelled target subset and
probe label draws) the source is pretrained once without the regulariser and once per (form, μ):
``closed`` = closed-form sup over norm-ball linear heads on raw features, ``adversarial`` = a
norm-bounded ReLU head moved by gradient ascent on standardised features (:mod:`uft.ssl.radreg`).
Each base is evaluated on the target's val and test splits (same probes as :mod:`bench.uft_grid`)
together with the complexity estimates of :func:`uft.ssl.radreg.complexity_estimates` on the target
eval features, so a regulariser that leaves the probes alone still shows whether it moved the
representation. Differences to the unregularised base are paired by seed; 95 % t intervals.

Run: ``nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python -m bench.radreg_sweep --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.uft_grid import PAIRS, GridConfig, evaluate, features, load_pair, pretrain, t_interval, target_order

RESULTS = Path(__file__).resolve().parent / "results"
PROBES = ("linear_1shot", "linear_10shot", "linear_full", "knn", "source_knn")
ESTIMATES = ("rad_closed_raw", "rad_closed_std", "rad_adversarial", "feature_rms")
HEADERS = {"linear_1shot": "1-shot lin", "linear_10shot": "10-shot lin", "linear_full": "full lin", "knn": "k-NN",
           "source_knn": "source k-NN", "rad_closed_raw": "R̂ closed (raw)", "rad_closed_std": "R̂ closed (std)",
           "rad_adversarial": "R̂ adversarial", "feature_rms": "feature RMS"}


def configs(mus: list[float], forms: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(label, TrainConfig overrides): no regulariser first, then every form × μ."""
    out = [("none", {})]
    for form in forms:
        feats = "raw" if form == "closed" else "standardized"
        out += [(f"{form} μ={mu:g}", {"radreg_weight": mu, "radreg_form": form, "radreg_features": feats}) for mu in mus]
    return out


def run(cfg: GridConfig, pair: str, size: int, mus: list[float], forms: list[str], store: str,
        log=print, on_cell=None) -> list[dict[str, Any]]:
    """Every (seed, config) → ``{"seed", "config", "val": metrics, "test": metrics}``."""
    from uft.ssl.radreg import complexity_estimates

    data = {sp: load_pair(PAIRS[pair], store, replace(cfg, split=sp)) for sp in ("val", "test")}
    cells: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for seed in cfg.seeds:
        d = data["test"]
        target = d.tgt_train[torch.from_numpy(np.sort(target_order(len(d.tgt_train), seed)[:size]))]
        for label, kw in configs(mus, forms):
            tp = time.perf_counter()
            base = pretrain(d.src_train, cfg.objectives[0], seed, cfg, radreg_target=target if kw else None, **kw)
            cell: dict[str, Any] = {"seed": seed, "config": label}
            for sp, dd in data.items():
                m = evaluate(base.encoder, dd, cfg, seed)
                m.update(complexity_estimates(features(base.encoder, dd.tgt_eval), seed=seed, draws=4))
                cell[sp] = m
            cells.append(cell)
            log(f"[{time.perf_counter() - t0:7.1f}s] seed {seed} {label:22s} ({time.perf_counter() - tp:.0f}s) "
                + " ".join(f"{k}={v:.3f}" for k, v in cell["test"].items()))
            if on_cell:
                on_cell(cells)
    return cells


def _diffs(cells: list[dict[str, Any]], label: str, split: str, metric: str) -> np.ndarray:
    ref = {c["seed"]: c[split][metric] for c in cells if c["config"] == "none"}
    return np.array([c[split][metric] - ref[c["seed"]] for c in cells if c["config"] == label and c["seed"] in ref])


def table(cells: list[dict[str, Any]], split: str, metrics: tuple[str, ...]) -> str:
    """Markdown: each config's level (none) or paired difference to none, mean ± 95 % t half-width."""
    labels = list(dict.fromkeys(c["config"] for c in cells))
    lines = ["| config | " + " | ".join(HEADERS[m] for m in metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for lab in labels:
        row = []
        for m in metrics:
            if lab == "none":
                mean, h = t_interval(np.array([c[split][m] for c in cells if c["config"] == "none"]))
                row.append(f"{mean:.3f} ± {h:.3f}")
            else:
                mean, h = t_interval(_diffs(cells, lab, split, m))
                row.append(f"{mean:+.3f} ± {h:.3f}{' *' if not math.isnan(h) and abs(mean) > h else ''}")
        lines.append(f"| {lab if lab == 'none' else lab + ' − none'} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def best_on_val(cells: list[dict[str, Any]], metric: str = "linear_10shot") -> str:
    """The regularised config with the highest mean val ``metric`` (the choice a user would make)."""
    labels = [c for c in dict.fromkeys(x["config"] for x in cells) if c != "none"]
    if not labels:
        return "none"
    return max(labels, key=lambda lab: float(np.mean([c["val"][metric] for c in cells if c["config"] == lab])))


def render(cells: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    best = best_on_val(cells)
    sel = [c for c in cells if c["config"] in ("none", best)]
    return "\n".join([
        "# RadReg during pretraining vs no regulariser",
        "",
        f"Command: `{meta['command']}`  ",
        f"Wall time: {meta['wall_s']:.0f} s, CPU, 1 torch thread; seeds: {sorted({c['seed'] for c in cells})}",
        "",
        f"Setup: pair {meta['pair']}, objective {meta['config']['objectives'][0]}, tiny convnet width "
        f"{meta['config']['encoder_width']}, {meta['config']['image_size']} px; pretraining "
        f"{meta['config']['pretrain_steps']} steps × batch {meta['config']['pretrain_batch']} on the source train split; "
        f"RadReg on {meta['size']} unlabelled target train images per seed (batch of 128 per step, no augmentation). "
        "Probes as in `bench.uft_grid` (eval split capped at "
        f"{meta['config']['eval_cap']} images); R̂ estimates on the target eval features (4 σ draws; adversarial: "
        "a fresh head after 100 ascent steps per draw).",
        "",
        "Test split: `none` row = level; other rows = paired difference to `none` (mean ± 95 % t half-width over "
        "seeds; `*` = interval excludes 0).",
        "",
        table(cells, "test", PROBES),
        "",
        table(cells, "test", ESTIMATES),
        "",
        f"Config chosen on val (highest mean val 10-shot linear): **{best}**; its test difference to none:",
        "",
        table(sel, "test", PROBES),
        "",
        "Val split (for the choice):",
        "",
        table(cells, "val", PROBES),
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.radreg_sweep", description=__doc__.splitlines()[0])
    p.add_argument("--pair", default="mnist-optdigits", choices=list(PAIRS))
    p.add_argument("--size", type=int, default=300, help="unlabelled target images RadReg reads")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--objective", default="simclr")
    p.add_argument("--mus", default="1e-3,1e-2,1e-1")
    p.add_argument("--forms", default="closed,adversarial")
    p.add_argument("--pretrain-steps", type=int, default=GridConfig.pretrain_steps)
    p.add_argument("--store", default=".uft/uft_grid_store_mnist-optdigits")
    p.add_argument("--out", default=str(RESULTS / "radreg_sweep"))
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--merge", default="", help="comma list of result .json files (seed chunks run in parallel) → OUT")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.merge:
        parts = [json.loads(Path(f).read_text()) for f in a.merge.split(",")]
        merged = {**parts[0], "command": " ; ".join(x["command"] for x in parts),
                  "wall_s": max(x["wall_s"] for x in parts), "cells": [c for x in parts for c in x["cells"]]}
        Path(f"{out}.json").write_text(json.dumps(merged, indent=1))
        a.render_only = True
    if a.render_only:
        saved = json.loads(Path(f"{out}.json").read_text())
        Path(f"{out}.md").write_text(render(saved["cells"], saved))
        print(Path(f"{out}.md").read_text())
        return
    torch.set_num_threads(1)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = GridConfig(seeds=[int(s) for s in a.seeds.split(",")], objectives=[a.objective], pretrain_steps=a.pretrain_steps)
    command = "nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python -m bench.radreg_sweep " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()

    def save(cells: list[dict[str, Any]]) -> None:
        meta = {"command": command, "config": asdict(cfg), "pair": a.pair, "size": a.size,
                "wall_s": round(time.perf_counter() - t0, 1)}
        Path(f"{out}.json").write_text(json.dumps({**meta, "cells": cells}, indent=1))
        Path(f"{out}.md").write_text(render(cells, meta))

    cells = run(cfg, a.pair, a.size, [float(x) for x in a.mus.split(",")], a.forms.split(","), a.store,
                log=lambda s: print(s, flush=True), on_cell=save)
    save(cells)
    print(Path(f"{out}.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
