"""Replay and mixing against naive finetuning under the current protocol, with paired 95 % intervals.

A lean, in-memory version of :mod:`bench.uft_sweep` sized for a shared 2-core machine: it runs the
library's own training loop (:func:`uft.ssl.train.train_ssl`), replay selection
(:func:`uft.transfer.replay.select_replay`) and mixing plan on tensors held in memory, so 300
finetunes fit in about an hour of CPU. Data come from the pipeline's ingest step (train / val /
test splits).

Protocol:
- Every seed is an independent replicate: its own base pretraining per (pair, objective), its own
  unlabelled target subset (the first ``size`` images of a seeded permutation of the target
  *train* split, nested across sizes), its own replay set S (uniform, ``replay_mult`` × size), its
  own finetuning randomness and its own probe label draws. Within a seed every variant shares all
  of these, so a variant's difference to naive is paired.
- ``none`` is the base itself; finetunes continue the base's SSL head (same objective).
- Evaluation on ``--split`` (``val`` for choices such as the finetune budget, ``test`` to report),
  capped at ``--eval-cap`` images: 1- and 10-shot linear probes (labels drawn from the target
  train split), full linear probe, 20-NN; source retention = 20-NN on held-out source images of
  the same split (bank: source train rows).
- Intervals: paired differences per seed, then mean ± t(0.975, n−1)·s/√n over the independent
  seeds. A difference "holds" when its interval excludes 0.

Run: ``nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python -m bench.uft_grid --help``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from bench.uft_sweep import PAIRS, Pair, _ints, _strs, check_names  # the same pairs, parsers and name check

VARIANTS = ("none", "naive", "replay", "mixing", "replay+mixing")
METRICS = ("linear_1shot", "linear_10shot", "linear_full", "knn", "source_knn")
HEADERS = ("1-shot lin", "10-shot lin", "full lin", "k-NN", "source k-NN")
RESULTS = Path(__file__).resolve().parent / "results"
# Splits for the grid: optdigits has 1,797 images, so test 0.3 / val 0.2 of the rest leaves ≥ 1,000
# train images for the largest unlabelled set.
TEST_FRACTION = {"mnist-optdigits": 0.3, "fashion-mnist": 0.5}
VAL_FRACTION = 0.2


@dataclass
class GridConfig:
    pairs: list[str] = field(default_factory=lambda: list(PAIRS))
    sizes: list[int] = field(default_factory=lambda: [100, 300, 1000])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    objectives: list[str] = field(default_factory=lambda: ["simclr", "act"])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    encoder_width: int = 16
    image_size: int = 16
    pretrain_steps: int = 150
    pretrain_batch: int = 128
    pretrain_lr: float = 2e-3
    finetune_steps: int = 60
    finetune_lr: float = 0.1  # the budget chosen on val: the one where naive finetuning damages the base most clearly (docs/results.md)
    batch_size: int = 64
    replay_ratio: float = 0.5
    replay_mult: int = 4
    mix_op: str = "mixup"
    mix_alpha: float = 1.0
    mix_fraction: float = 0.5
    shots: list[int] = field(default_factory=lambda: [1, 10])
    draws: int = 3
    knn_k: int = 20
    eval_cap: int = 500
    source_bank: int = 2000
    source_limit: int = 6000  # ≥ 4,000 source train rows after val/test, so |S| = 4 × 1,000 fits
    split: str = "test"
    budgets: list[str] = field(default_factory=list)  # "steps@lr" finetune budgets to compare (val stage)


# --- data --------------------------------------------------------------------------------------------

@dataclass
class PairData:
    """uint8 images ``(N, 1, H, W)`` and int64 labels of the splits the grid reads."""

    src_train: torch.Tensor
    src_train_y: torch.Tensor
    src_eval: torch.Tensor
    src_eval_y: torch.Tensor
    tgt_train: torch.Tensor
    tgt_train_y: torch.Tensor
    tgt_eval: torch.Tensor
    tgt_eval_y: torch.Tensor
    n_src_classes: int
    n_tgt_classes: int


def _cap(images: torch.Tensor, labels: torch.Tensor, cap: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (seed 0) random subset of at most ``cap`` rows: the same eval set for every cell."""
    if len(labels) <= cap:
        return images, labels
    idx = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(labels))[:cap]))
    return images[idx], labels[idx]


def load_pair(pair: Pair, store: str, cfg: GridConfig) -> PairData:
    """Ingest both sides with the pipeline's ingest step (cached in ``store``) → in-memory splits."""
    from uft import steps
    from uft.data.dataset import load_dataset

    src = steps.ingest(pair.source, store, role="source", image_size=cfg.image_size, channels=1,
                       limit=cfg.source_limit, test_fraction=pair.source_test_fraction, val_fraction=0.1)
    tgt = steps.ingest(pair.target, store, role="target", image_size=cfg.image_size, channels=1,
                       limit=pair.target_limit, test_fraction=TEST_FRACTION.get(pair.name, pair.target_test_fraction), val_fraction=VAL_FRACTION)
    s, t = load_dataset(src["dataset_uri"]), load_dataset(tgt["dataset_uri"])
    s_tr, s_ev, t_tr, t_ev = s.subset("train"), s.subset(cfg.split), t.subset("train"), t.subset(cfg.split)
    s_e = _cap(s_ev.images, s_ev.labels, cfg.eval_cap)
    t_e = _cap(t_ev.images, t_ev.labels, cfg.eval_cap)
    return PairData(s_tr.images, s_tr.labels, s_e[0], s_e[1], t_tr.images, t_tr.labels, t_e[0], t_e[1],
                    len(s.classes), len(t.classes))


def target_order(n: int, seed: int) -> np.ndarray:
    """The seed's permutation of the target train rows; a size-``k`` set is its first ``k`` (nested)."""
    return np.random.default_rng(10_000 + seed).permutation(n)


# --- training ----------------------------------------------------------------------------------------

def pretrain(images: torch.Tensor, objective: str, seed: int, cfg: GridConfig, **train_kw: Any):
    """A fresh tiny encoder + the objective's SSL head, pretrained on ``images`` → the method (eval mode)."""
    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method
    from uft.ssl.train import TrainConfig, train_ssl

    torch.manual_seed(seed)
    method = build_method(objective, build_encoder("tiny", in_channels=1, width=cfg.encoder_width))
    tc = TrainConfig(steps=cfg.pretrain_steps, batch_size=cfg.pretrain_batch, lr=cfg.pretrain_lr, seed=seed,
                     log_every=max(1, cfg.pretrain_steps), **{k: v for k, v in train_kw.items() if k in TrainConfig.model_fields})
    train_ssl(method, images, tc, **{k: v for k, v in train_kw.items() if k not in TrainConfig.model_fields})
    return method


def finetune(base, target: torch.Tensor, seed: int, cfg: GridConfig, *, replay: torch.Tensor | None,
             mixing: bool, replay_on: bool, **train_kw: Any):
    """Continue ``base`` (encoder and SSL head, copied) on ``target`` (+ replay, + mixing) → the method."""
    from uft.ssl.train import TrainConfig, train_ssl
    from uft.transfer.mixing import MixPlan

    method = copy.deepcopy(base)
    plan = MixPlan(op=cfg.mix_op, alpha=cfg.mix_alpha, fraction=cfg.mix_fraction) if mixing else MixPlan()
    tc = TrainConfig(steps=cfg.finetune_steps, batch_size=cfg.batch_size, lr=cfg.finetune_lr, seed=seed,
                     replay_ratio=cfg.replay_ratio if replay_on else 0.0, log_every=max(1, cfg.finetune_steps),
                     **{k: v for k, v in train_kw.items() if k in TrainConfig.model_fields})
    train_ssl(method, target, tc, replay=replay if (replay_on or mixing) else None, mix_plan=plan,
              **{k: v for k, v in train_kw.items() if k not in TrainConfig.model_fields})
    return method


# --- evaluation --------------------------------------------------------------------------------------

@torch.no_grad()
def features(encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    encoder.eval()
    return torch.cat([encoder(images[i:i + 1024].float().div(255)) for i in range(0, len(images), 1024)])


def evaluate(encoder: torch.nn.Module, data: PairData, cfg: GridConfig, seed: int) -> dict[str, float]:
    """Probes on the capped eval split; label draws depend on the seed only (paired across variants)."""
    from uft.evaluate.knn import knn_accuracy
    from uft.evaluate.linear import few_label_probe, linear_probe_accuracy

    ftr, fev = features(encoder, data.tgt_train), features(encoder, data.tgt_eval)
    out: dict[str, float] = {}
    for k in cfg.shots:
        out[f"linear_{k}shot"] = few_label_probe(ftr, data.tgt_train_y, fev, data.tgt_eval_y, k, draws=cfg.draws,
                                                 seed=seed)[0]
    out["linear_full"] = linear_probe_accuracy(ftr.numpy(), data.tgt_train_y.numpy(), fev.numpy(), data.tgt_eval_y.numpy())
    out["knn"] = knn_accuracy(ftr, data.tgt_train_y, fev, data.tgt_eval_y, data.n_tgt_classes, k=cfg.knn_k)
    bank = _cap(data.src_train, data.src_train_y, cfg.source_bank)
    out["source_knn"] = knn_accuracy(features(encoder, bank[0]), bank[1], features(encoder, data.src_eval),
                                     data.src_eval_y, data.n_src_classes, k=cfg.knn_k)
    return out


# --- the grid ----------------------------------------------------------------------------------------

def run_grid(cfg: GridConfig, store: str, *, log: Callable[[str], None] = print,
             on_cell: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Every (seed, pair, objective, size, variant) cell → ``[{"pair", "size", "objective", "variant",
    "seed", "metrics", "seconds"}]``, seed-major so a cut-short run holds complete seeds."""
    from uft.transfer.replay import select_replay

    t0 = time.perf_counter()
    data = {name: load_pair(PAIRS[name], store, cfg) for name in cfg.pairs}
    cells: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        for name in cfg.pairs:
            d = data[name]
            order = target_order(len(d.tgt_train), seed)
            for obj in cfg.objectives:
                tp = time.perf_counter()
                base = pretrain(d.src_train, obj, seed, cfg)
                log(f"[{time.perf_counter() - t0:7.1f}s] seed {seed} {name} {obj}: base in {time.perf_counter() - tp:.1f}s")
                for size in cfg.sizes:
                    target = d.tgt_train[torch.from_numpy(np.sort(order[:size]))]
                    rows = select_replay("uniform", cfg.replay_mult * size, seed=seed, source_size=len(d.src_train))
                    replay = d.src_train[torch.from_numpy(rows)]
                    base_metrics = evaluate(base.encoder, d, cfg, seed)
                    for label, bcfg in budget_configs(cfg, obj):
                        for variant in cfg.variants:
                            tc = time.perf_counter()
                            if variant == "none":
                                m = base_metrics
                            else:
                                m = evaluate(finetune(base, target, seed, bcfg, replay=replay, replay_on="replay" in variant,
                                                      mixing="mixing" in variant).encoder, d, cfg, seed)
                            cells.append({"pair": name, "size": size, "objective": label, "variant": variant,
                                          "seed": seed, "metrics": m, "seconds": round(time.perf_counter() - tc, 2)})
                            log(f"[{time.perf_counter() - t0:7.1f}s] seed {seed} {name} n={size} {label:6s} {variant:13s} "
                                + " ".join(f"{k}={v:.3f}" for k, v in m.items()))
                            if on_cell:
                                on_cell(cells)
    return cells


def budget_configs(cfg: GridConfig, obj: str) -> list[tuple[str, GridConfig]]:
    """(row label, config) per finetune budget: the objective alone, or ``"simclr 200@0.01"`` per
    ``--budgets`` entry (``steps@lr``)."""
    if not cfg.budgets:
        return [(obj, cfg)]
    out = []
    for b in cfg.budgets:
        steps, lr = b.split("@")
        out.append((f"{obj} {int(steps)}@{float(lr):g}",
                    GridConfig(**{**asdict(cfg), "finetune_steps": int(steps), "finetune_lr": float(lr)})))
    return out


# --- statistics and tables ---------------------------------------------------------------------------

def t_interval(x: np.ndarray) -> tuple[float, float]:
    """Mean and 95 % half-width, Student t over the independent seeds ``x`` (n,); half-width nan if n < 2."""
    from scipy import stats

    n = len(x)
    if n < 2:
        return float(np.mean(x)), float("nan")
    return float(np.mean(x)), float(stats.t.ppf(0.975, n - 1) * np.std(x, ddof=1) / math.sqrt(n))


def paired(cells: list[dict[str, Any]], pair: str, obj: str, variant: str, metric: str,
           size: int | None = None, ref: str = "naive") -> np.ndarray:
    """Per-seed differences ``variant − ref`` (averaged over sizes within a seed unless ``size``) → (seeds,)."""
    idx = {(c["pair"], c["size"], c["objective"], c["variant"], c["seed"]): c["metrics"][metric] for c in cells}
    per_seed: dict[int, list[float]] = {}
    for (p, s, o, v, seed), val in idx.items():
        if p == pair and o == obj and v == variant and (size is None or s == size) and (p, s, o, ref, seed) in idx:
            per_seed.setdefault(seed, []).append(val - idx[p, s, o, ref, seed])
    return np.array([np.mean(v) for _, v in sorted(per_seed.items())])


def _fmt(x: np.ndarray) -> str:
    if len(x) == 0:
        return ""
    m, h = t_interval(x)
    mark = "" if math.isnan(h) or abs(m) <= h else " *"
    return f"{m:+.3f} ± {h:.3f}{mark}"


def diff_table(cells: list[dict[str, Any]], ref: str = "naive", by_size: bool = False) -> str:
    """Markdown: variant − ref per pair / objective (/ size), mean ± 95 % t half-width over seeds;
    ``*`` marks intervals that exclude 0."""
    pairs = list(dict.fromkeys(c["pair"] for c in cells))
    objs = list(dict.fromkeys(c["objective"] for c in cells))
    sizes = sorted({c["size"] for c in cells}) if by_size else [None]
    variants = [v for v in VARIANTS if v != ref and any(c["variant"] == v for c in cells)]
    metrics = [m for m in METRICS if any(m in c["metrics"] for c in cells)]
    head = "| pair | objective | " + ("size | " if by_size else "") + f"variant − {ref} | "
    lines = [head + " | ".join(HEADERS[METRICS.index(m)] for m in metrics) + " |",
             "|---|---|" + ("---:|" if by_size else "") + "---|" + "---:|" * len(metrics)]
    for p in pairs:
        for o in objs:
            for s in sizes:
                for v in variants:
                    row = [_fmt(paired(cells, p, o, v, m, s, ref)) for m in metrics]
                    if any(row):
                        lines.append(f"| {p} | {o} | " + (f"{s} | " if by_size else "") + f"{v} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def level_table(cells: list[dict[str, Any]]) -> str:
    """Markdown: mean ± 95 % t half-width over seeds of each metric per pair / size / objective / variant."""
    groups: dict[tuple, list[dict[str, float]]] = {}
    for c in cells:
        groups.setdefault((c["pair"], c["size"], c["objective"], c["variant"]), []).append(c["metrics"])
    metrics = [m for m in METRICS if any(m in c["metrics"] for c in cells)]
    lines = ["| pair | size | objective | variant | n | " + " | ".join(HEADERS[METRICS.index(m)] for m in metrics) + " |",
             "|---|---:|---|---|---:|" + "---:|" * len(metrics)]
    for (p, s, o, v), ms in groups.items():
        vals = []
        for m in metrics:
            mean, h = t_interval(np.array([x[m] for x in ms]))
            vals.append(f"{mean:.3f} ± {h:.3f}")
        lines.append(f"| {p} | {s} | {o} | {v} | {len(ms)} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def render(cells: list[dict[str, Any]], cfg: GridConfig, command: str, wall: float) -> str:
    seeds = sorted({c["seed"] for c in cells})
    return "\n".join([
        f"# Replay and mixing vs naive finetuning ({cfg.split} split)",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {wall:.0f} s, CPU, 1 torch thread; seeds: {seeds}",
        "",
        f"Setup: tiny convnet width {cfg.encoder_width}, {cfg.image_size} px grey. Base: the objective's own "
        f"pretraining on the source train split, {cfg.pretrain_steps} steps × batch {cfg.pretrain_batch}, lr "
        f"{cfg.pretrain_lr}, one per (pair, objective, seed). Finetune: "
        + ("steps@lr as in the objective column" if cfg.budgets else f"{cfg.finetune_steps} steps, lr {cfg.finetune_lr}")
        + f", batch min({cfg.batch_size}, size), continuing the base's SSL head; unlabelled target set = "
        f"first `size` images of a per-seed permutation of the target train split. Replay: uniform S of "
        f"{cfg.replay_mult}× size per seed, ρ = {cfg.replay_ratio}. Mixing: {cfg.mix_op} α = {cfg.mix_alpha}, "
        f"fraction {cfg.mix_fraction}, target × source (partners from S). Probes on the {cfg.split} split capped at "
        f"{cfg.eval_cap} images: {','.join(map(str, cfg.shots))}-shot linear (mean of {cfg.draws} label draws from "
        f"the target train split, per seed), full linear, {cfg.knn_k}-NN; source k-NN: bank of {cfg.source_bank} "
        f"source train images, queries = ≤ {cfg.eval_cap} source {cfg.split} images.",
        "",
        "Paired differences to naive (same seed: same base, target subset, replay set and label draws), averaged "
        "over sizes within a seed; mean ± 95 % t half-width over seeds; `*` = interval excludes 0.",
        "",
        diff_table(cells, "naive"),
        "",
        "No finetuning vs naive (`none − naive` > 0: naive finetuning lowered the metric):",
        "",
        diff_table([c for c in cells if c["variant"] in ("none", "naive")], "naive"),
        "",
        "Per size:",
        "",
        diff_table(cells, "naive", by_size=True),
        "",
        "Levels (mean ± 95 % t half-width over seeds):",
        "",
        level_table(cells),
        "",
    ])


def merge_results(paths: Sequence[str | Path], list_keys: Sequence[str] = ("pairs",)) -> dict[str, Any]:
    """The result JSONs of one bench run made in parts (e.g. one per pair, run in parallel) → one:
    the first part's fields, the commands joined, the longest wall time, every part's cells, and
    each config list in ``list_keys`` merged in first-seen order."""
    parts = [json.loads(Path(f).read_text()) for f in paths]
    merged = {**parts[0], "command": " ; ".join(x["command"] for x in parts),
              "wall_s": max(x["wall_s"] for x in parts), "cells": [c for x in parts for c in x["cells"]]}
    for key in list_keys:
        merged["config"][key] = list(dict.fromkeys(v for x in parts for v in x["config"].get(key, [])))
    return merged


# --- CLI ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> tuple[GridConfig, argparse.Namespace]:
    d = GridConfig()
    p = argparse.ArgumentParser(prog="python -m bench.uft_grid", description=__doc__.splitlines()[0])
    for name, typ in (("pairs", _strs), ("sizes", _ints), ("seeds", _ints), ("objectives", _strs), ("variants", _strs),
                      ("shots", _ints)):
        p.add_argument(f"--{name}", type=typ, default=getattr(d, name))
    for name in ("encoder_width", "image_size", "pretrain_steps", "pretrain_batch", "finetune_steps", "batch_size",
                 "replay_mult", "draws", "knn_k", "eval_cap", "source_bank", "source_limit"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("pretrain_lr", "finetune_lr", "replay_ratio", "mix_alpha", "mix_fraction"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--mix-op", default=d.mix_op)
    p.add_argument("--budgets", type=_strs, default=d.budgets,
                   help="finetune budgets steps@lr to compare (rows per budget; overrides --finetune-steps/-lr)")
    p.add_argument("--split", choices=("val", "test"), default=d.split,
                   help="val for choices (finetune budget), test to report")
    p.add_argument("--store", default=".uft/uft_grid_store", help="local store dir for the ingested pairs")
    p.add_argument("--out", default=str(RESULTS / "uft_grid"), help="output path without extension (.md, .json)")
    p.add_argument("--render-only", action="store_true", help="rewrite OUT.md from OUT.json")
    p.add_argument("--merge", type=_strs, default=[],
                   help="comma list of result .json files (e.g. one per pair, run in parallel) → OUT.json/.md")
    a = p.parse_args(argv)
    cfg = GridConfig(**{k: getattr(a, k) for k in asdict(d)})
    check_names(p, cfg.pairs, cfg.variants, VARIANTS)
    return cfg, a


def main(argv: list[str] | None = None) -> None:
    cfg, a = parse_args(argv)
    out = Path(a.out)
    if a.merge:
        merged = merge_results(a.merge, list_keys=("pairs", "budgets"))
        Path(f"{out}.json").write_text(json.dumps(merged, indent=1))
        a.render_only = True
    if a.render_only:
        saved = json.loads(Path(f"{out}.json").read_text())
        Path(f"{out}.md").write_text(render(saved["cells"], GridConfig(**saved["config"]), saved["command"], saved["wall_s"]))
        print(Path(f"{out}.md").read_text())
        return
    torch.set_num_threads(1)
    command = "nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python -m bench.uft_grid " + " ".join(sys.argv[1:] if argv is None else argv)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def save(cells: list[dict[str, Any]]) -> None:
        wall = time.perf_counter() - t0
        Path(f"{out}.json").write_text(json.dumps({"command": command, "config": asdict(cfg), "wall_s": round(wall, 1),
                                                   "cells": cells}, indent=1))
        Path(f"{out}.md").write_text(render(cells, cfg, command, wall))

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # per-step tracking off: hundreds of tiny runs
    cells = run_grid(cfg, a.store, log=lambda s: print(s, flush=True), on_cell=save)
    save(cells)
    print(Path(f"{out}.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
