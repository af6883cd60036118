"""Issue 4: the measured UFT comparison — none / scratch / naive / replay / mixing / replay+mixing.

For each domain pair, target unlabelled-set size, SSL objective and seed, the sweep runs the
pipeline's own step functions in-process (:mod:`uft.steps`, a local directory as the store, MLflow
off) and evaluates every encoder with ``linear_eval`` (1/5/10-shot probes, mean over 5 label
draws, and the full probe) and ``knn_eval`` (target k-NN and source retention: k-NN on held-out
source images).

Protocol (what is fixed and what varies):
- The target is ingested once per pair with a fixed stratified train/test split. SSL sees a
  deterministic, *unlabelled* subsample of the target train split (nested: the 100 images are a
  prefix of the 300, which are a prefix of the 1,000); evaluation always uses the full target
  test split and the few-label probes draw their labels from the full target train split. So the
  test split is the same across sizes.
- Every seed is an independent replicate: its own base pretraining (seed = the seed), its own
  replay set S (uniform, ``--replay-mult`` × target size, subsample seed = the seed), its own
  finetuning randomness, and its own few-label draws. So the ± in the tables is the standard
  deviation over independent seeds, not a standard error over cells sharing one base.
- The base of an objective is pretrained with the same objective (``--pretrain-method same``, the
  default); with ``--pretrain-method simclr`` every objective finetunes one SimCLR base and its rows
  are labelled ``simclr base → act finetune``. ``none`` is the base itself.
- Finetuning continues the base's SSL head (projector, predictor, momentum branch) when the
  methods match; ``naive_fresh_head`` is naive with a freshly initialised head instead, and
  ``radreg`` / ``radreg_raw`` are naive plus RadReg (μ = ``--radreg-weight``) on standardised /
  raw target features (opt-in variants).

Run: ``.venv/bin/python -m bench.uft_sweep`` (``--help`` for the knobs). Writes
``bench/results/uft_sweep.md`` and ``.json`` (raw numbers per seed); partial results are written
after every cell so an interrupted sweep still leaves a table. Its earlier tables are in
``bench/results/archive/`` (superseded, see the README there); the method comparison in
``docs/results.md`` comes from :mod:`bench.uft_grid` (in memory, val-chosen budget, 95 % intervals).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from uft import steps

DEFAULT_VARIANTS = ("none", "scratch", "naive", "replay", "mixing", "replay+mixing")
#: opt-in: naive with a fresh SSL head, and naive + RadReg on standardised / raw features
VARIANTS = (*DEFAULT_VARIANTS, "naive_fresh_head", "radreg", "radreg_raw")
METRICS = ("linear_1shot", "linear_5shot", "linear_10shot", "linear_full", "knn", "source_knn")
HEADERS = ("1-shot lin", "5-shot lin", "10-shot lin", "full lin", "k-NN", "source k-NN")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Pair:
    """A source → target domain pair and how each side is ingested."""

    name: str
    source: str
    target: str
    source_limit: int = 5000  # pretraining cost depends on steps; this bounds source-retention eval cost
    target_limit: int = 0
    target_test_fraction: float = 0.4  # optdigits: 1,078 train (≥ the largest size) / 719 test
    source_test_fraction: float = 0.1  # held-out source images for retention (bundled MNIST has no split)


PAIRS = {
    "mnist-optdigits": Pair("mnist-optdigits", "mnist", "optdigits"),
    # Fashion-MNIST has its own train/test split; MNIST as target: 3,000 images → 1,500 train / 1,500 test.
    "fashion-mnist": Pair("fashion-mnist", "fashion_mnist", "mnist", target_limit=3000, target_test_fraction=0.5),
}


@dataclass
class SweepConfig:
    pairs: list[str] = field(default_factory=lambda: list(PAIRS))
    sizes: list[int] = field(default_factory=lambda: [100, 300, 1000])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    objectives: list[str] = field(default_factory=lambda: ["simclr", "act"])
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    pretrain_method: str = "same"  # one base per objective; or a method name: every objective finetunes that base
    pretrain_steps: int = 300
    pretrain_batch: int = 256
    pretrain_lr: float = 2e-3  # separate from the finetune lr, so an lr sweep keeps the same base
    finetune_steps: int = 40
    batch_size: int = 128
    lr: float = 2e-3
    replay_ratio: float = 0.5
    replay_mult: int = 4  # |S| = replay_mult × target size ("a few times the target set", METHODS §1)
    mix_op: str = "mixup"
    mix_alpha: float = 1.0
    mix_fraction: float = 0.5
    radreg_weight: float = 0.1  # μ of the radreg / radreg_raw variants (largest of METHODS §4's sweep)
    encoder_width: int = 32
    image_size: int = 16
    shots: str = "1,5,10"
    draws: int = 5
    knn_k: int = 20
    source_limit: int | None = None  # override every pair's source_limit
    target_limit: int | None = None  # override every pair's target_limit
    threads: int = 2


# --- target subsets ----------------------------------------------------------------------------------

def target_subset(target_uri: str, store_uri: str, size: int, *, image_size: int, channels: int = 1,
                  seed: int = 0) -> str:
    """Publish the first ``size`` images of a seeded permutation of the target *train* split as an
    unlabelled dataset (labels -1, all rows "train") → its manifest URI. Nested across sizes."""
    from uft.data.dataset import load_dataset
    from uft.data.ingest import ingest
    from uft.data.sources import RawImages
    from uft.errors import UftError
    from uft.store import open_store

    tr = load_dataset(target_uri).subset("train")
    if size > len(tr):
        raise UftError(f"target size {size} exceeds the target train split ({len(tr)} images): "
                       "use a smaller --sizes value or a larger target_limit / smaller test fraction")
    order = np.random.default_rng(seed).permutation(len(tr))[:size]
    idx = np.sort(order)
    images = tr.images[torch.from_numpy(idx)].permute(0, 2, 3, 1).contiguous().numpy()
    raw = RawImages(images, np.full(size, -1, dtype=np.int64), list(tr.classes), np.array(["train"] * size),
                    info={"subset_of": target_uri, "size": size, "seed": seed})
    return ingest(raw, open_store(store_uri, create_bucket=True), name=f"target-subset-{size}",
                  image_size=image_size, channels=channels)


# --- the sweep ---------------------------------------------------------------------------------------

def _evaluate(encoder_uri: str, target_uri: str, source_uri: str, store: str, cfg: SweepConfig, tag: str,
              seed: int) -> dict[str, float]:
    """Probes with this seed's label draws (the same draws for every variant of the seed)."""
    lin = steps.linear_eval(encoder_uri, target_uri, store, tag=tag, shots=cfg.shots, draws=cfg.draws, seed=seed)
    knn = steps.knn_eval(encoder_uri, target_uri, store, tag=tag, source_uri=source_uri, k=cfg.knn_k)
    return {**lin["metrics"], **knn["metrics"]}


def objective_label(objective: str, base_method: str) -> str:
    """The row label: the objective, or ``"simclr base → act finetune"`` when the base differs."""
    return objective if base_method == objective else f"{base_method} base → {objective} finetune"


def run_sweep(cfg: SweepConfig, store: str, *, log: Callable[[str], None] = print,
              on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every (pair, size, objective, variant, seed) cell → ``{"cells": [...], "timing": {...}}``.

    Each cell: ``{"pair", "size", "objective", "base_method", "variant", "seed", "metrics": {...},
    "ssl_head", "seconds"}``. Order: seed-major, so a sweep cut short still holds complete grids for
    the first seeds. Each seed pretrains its own bases and draws its own replay sets and labels.
    """
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    timing = {"ingest": 0.0, "pretrain": 0.0, "finetune": 0.0, "eval": 0.0}
    cells: list[dict[str, Any]] = []
    ctx: dict[str, dict[str, Any]] = {}

    def clock(phase: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        timing[phase] += time.perf_counter() - t
        return out

    for name in cfg.pairs:  # seed-independent parts: ingest and the target subsets
        pair = PAIRS[name]
        s_lim = pair.source_limit if cfg.source_limit is None else cfg.source_limit
        t_lim = pair.target_limit if cfg.target_limit is None else cfg.target_limit
        src = clock("ingest", lambda: steps.ingest(pair.source, store, role="source", image_size=cfg.image_size, channels=1,
                                                   limit=s_lim, test_fraction=pair.source_test_fraction))
        tgt = clock("ingest", lambda: steps.ingest(pair.target, store, role="target", image_size=cfg.image_size, channels=1,
                                                   limit=t_lim, test_fraction=pair.target_test_fraction))
        subsets = {n: clock("ingest", lambda n=n: target_subset(tgt["dataset_uri"], store, n, image_size=cfg.image_size))
                   for n in cfg.sizes}
        ctx[name] = {"src": src, "tgt": tgt, "subsets": subsets}

    bases: dict[tuple, dict[str, Any]] = {}
    replays: dict[tuple, dict[str, Any]] = {}

    def base_for(name: str, method: str, seed: int) -> dict[str, Any]:
        if (name, method, seed) not in bases:
            src = ctx[name]["src"]
            bases[name, method, seed] = out = clock("pretrain", lambda: steps.pretrain(
                src["dataset_uri"], src["dataset_sha"], store, encoder_width=cfg.encoder_width, method=method,
                steps=cfg.pretrain_steps, batch_size=cfg.pretrain_batch, lr=cfg.pretrain_lr, seed=seed,
                checkpoint_every=cfg.pretrain_steps))
            log(f"[{time.perf_counter() - t_start:7.1f}s] seed {seed} {name}: base ({method}) ready"
                f"{' (cached)' if out['cached'] else ''}, final loss {out.get('final_loss')}")
        return bases[name, method, seed]

    def replay_for(name: str, size: int, seed: int) -> str:
        if (name, size, seed) not in replays:
            src = ctx[name]["src"]
            replays[name, size, seed] = clock("ingest", lambda: steps.subsample_source(
                src["dataset_uri"], src["dataset_sha"], store, rule="uniform", size=cfg.replay_mult * size, seed=seed))
        return replays[name, size, seed]["replay_uri"]

    plan_mix = steps.mix_plan(store, op=cfg.mix_op, alpha=cfg.mix_alpha, fraction=cfg.mix_fraction,
                              pairing="target_source")["plan_uri"]
    for seed in cfg.seeds:
        for name in cfg.pairs:
            c = ctx[name]
            src_uri, tgt_uri = c["src"]["dataset_uri"], c["tgt"]["dataset_uri"]
            for size in cfg.sizes:
                for obj in cfg.objectives:
                    base_method = obj if cfg.pretrain_method == "same" else cfg.pretrain_method
                    base = base_for(name, base_method, seed)["encoder_uri"]
                    for variant in cfg.variants:
                        t0 = time.perf_counter()
                        head = ""
                        if variant == "none":
                            enc = base
                        else:
                            replay = variant in ("replay", "replay+mixing")
                            mixing = variant in ("mixing", "replay+mixing")
                            radreg = variant in ("radreg", "radreg_raw")
                            ft = clock("finetune", lambda: steps.finetune(
                                base, c["subsets"][size], store, source_uri=src_uri,
                                replay_uri=replay_for(name, size, seed) if replay or mixing else "",
                                plan_uri=plan_mix if mixing else "", method=obj, steps=cfg.finetune_steps,
                                batch_size=cfg.batch_size, lr=cfg.lr, replay_ratio=cfg.replay_ratio if replay else 0.0,
                                radreg_weight=cfg.radreg_weight if radreg else 0.0,
                                radreg_features="raw" if variant == "radreg_raw" else "standardized",
                                seed=seed, checkpoint_every=cfg.finetune_steps, from_scratch=variant == "scratch",
                                ssl_head="fresh" if variant == "naive_fresh_head" else "continue"))
                            enc = ft["encoder_uri"]
                            head = _ssl_head_note(enc)
                        metrics = clock("eval", lambda: _evaluate(enc, tgt_uri, src_uri, store, cfg, f"{variant}", seed))
                        cell = {"pair": name, "size": size, "objective": obj, "base_method": base_method,
                                "variant": variant, "seed": seed, "metrics": metrics, "ssl_head": head,
                                "seconds": round(time.perf_counter() - t0, 2)}
                        cells.append(cell)
                        log(f"[{time.perf_counter() - t_start:7.1f}s] seed {seed} {name} n={size} "
                            f"{objective_label(obj, base_method):6s} {variant:13s} "
                            + " ".join(f"{m}={metrics[m]:.3f}" for m in METRICS if m in metrics))
                        if on_cell:
                            on_cell({"cells": cells, "timing": timing})
    timing["total"] = time.perf_counter() - t_start
    return {"cells": cells, "timing": {k: round(v, 1) for k, v in timing.items()}}


def _ssl_head_note(encoder_uri: str) -> str:
    from uft.store import read_manifest

    return read_manifest(encoder_uri)[0].get("info", {}).get("ssl_head", "")


# --- the table ---------------------------------------------------------------------------------------

def _label(c: dict[str, Any]) -> str:
    return objective_label(c["objective"], c.get("base_method", c["objective"]))


def _std(vals: list[float]) -> float:
    """Sample standard deviation over seeds (0 for a single seed)."""
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def aggregate(cells: list[dict[str, Any]], shared_base: bool) -> list[dict[str, Any]]:
    """Cells → one row per (pair, size, objective label, variant): ``{metric: (mean, std, n_seeds)}``,
    the sample std over independent seeds.

    With a shared base, ``none`` does not depend on the objective: it gets one row, objective "—"."""
    groups: dict[tuple, list[dict[str, float]]] = {}
    for c in cells:
        obj = "—" if c["variant"] == "none" and shared_base else _label(c)
        key = (c["pair"], c["size"], obj, c["variant"], c["seed"])
        groups.setdefault(key, []).append(c["metrics"])
    by_row: dict[tuple, list[dict[str, float]]] = {}
    for (pair, size, obj, variant, _seed), ms in groups.items():
        by_row.setdefault((pair, size, obj, variant), []).append(ms[0])  # none is identical across objectives
    rows = []
    for (pair, size, obj, variant), ms in by_row.items():
        stats = {}
        for m in METRICS:
            vals = [x[m] for x in ms if m in x]
            if vals:
                stats[m] = (float(np.mean(vals)), _std(vals), len(vals))
        rows.append({"pair": pair, "size": size, "objective": obj, "variant": variant, "stats": stats})
    order = {v: i for i, v in enumerate(VARIANTS)}
    pairs = list(dict.fromkeys(c["pair"] for c in cells))
    objs = list(dict.fromkeys(_label(c) for c in cells))
    rows.sort(key=lambda r: (pairs.index(r["pair"]), r["size"], -1 if r["objective"] == "—" else objs.index(r["objective"]),
                             order[r["variant"]]))
    return rows


def _present(metric_dicts: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(metric, header) for the metrics any row has (e.g. no 5-shot column with ``--shots 1,10``)."""
    return [(m, h) for m, h in zip(METRICS, HEADERS) if any(m in d for d in metric_dicts)]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = _present([r["stats"] for r in rows])
    lines = ["| pair | size | objective | variant | " + " | ".join(h for _, h in cols) + " |",
             "|---|---:|---|---|" + "---:|" * len(cols)]
    for r in rows:
        vals = []
        for m, _ in cols:
            if m in r["stats"]:
                mean, std, _ = r["stats"][m]
                vals.append(f"{mean:.3f} ± {std:.3f}")
            else:
                vals.append("")
        lines.append(f"| {r['pair']} | {r['size']} | {r['objective']} | {r['variant']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def paired_vs_naive(cells: list[dict[str, Any]]) -> str:
    """Per pair, objective and variant: the difference to naive, averaged within each seed over the
    target sizes, then mean ± sample std over the independent seeds, and in how many seeds it is > 0.
    Paired (same seed: same base, replay set and label draws), so noise shared by both cancels."""
    idx = {(c["pair"], c["size"], _label(c), c["variant"], c["seed"]): c["metrics"] for c in cells}
    cols = _present([c["metrics"] for c in cells])
    lines = ["| pair | objective | variant − naive | " + " | ".join(h for _, h in cols) + " |",
             "|---|---|---|" + "---:|" * len(cols)]
    pairs = list(dict.fromkeys(c["pair"] for c in cells))
    labels = list(dict.fromkeys(_label(c) for c in cells))
    for pair in pairs:
        for obj in labels:
            for v in [x for x in VARIANTS if x != "naive"]:
                row = []
                for m, _ in cols:
                    per_seed: dict[int, list[float]] = {}
                    for k, ms in idx.items():
                        ref = idx.get((k[0], k[1], k[2], "naive", k[4]))
                        if k[0] == pair and k[2] == obj and k[3] == v and ref is not None and m in ms and m in ref:
                            per_seed.setdefault(k[4], []).append(ms[m] - ref[m])
                    if not per_seed:
                        row.append("")
                        continue
                    d = np.array([np.mean(x) for x in per_seed.values()])
                    row.append(f"{d.mean():+.3f} ± {_std(list(d)):.3f} ({int((d > 0).sum())}/{len(d)})")
                if any(row):
                    lines.append(f"| {pair} | {obj} | {v} | " + " | ".join(row) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def render(result: dict[str, Any], cfg: SweepConfig, command: str) -> str:
    shared = cfg.pretrain_method != "same"
    rows = aggregate(result["cells"], shared)
    t = result["timing"]
    per_seed = {s: sum(c["seed"] == s for c in result["cells"]) for s in {c["seed"] for c in result["cells"]}}
    full = max(per_seed.values(), default=0)
    seeds_done = sorted(s for s, n in per_seed.items() if n == full)  # a cut-short seed is not "done"
    parts = [
        "# UFT sweep: " + " / ".join(dict.fromkeys(c["variant"] for c in result["cells"])),
        "",
        f"Command: `{command}`  ",
        f"Wall time: {t.get('total', float('nan')):.0f} s (ingest {t['ingest']:.0f}, pretrain {t['pretrain']:.0f}, "
        f"finetune {t['finetune']:.0f}, eval {t['eval']:.0f}); {torch.get_num_threads()} torch threads, CPU; "
        f"seeds done: {seeds_done}",
        "",
        f"Setup: tiny convnet width {cfg.encoder_width}, {cfg.image_size} px grey; base = "
        + (cfg.pretrain_method if shared else "the objective's own")
        + f" pretrain, {cfg.pretrain_steps} steps × batch {cfg.pretrain_batch}, lr {cfg.pretrain_lr}, one per seed "
        f"(seed = the seed); finetune {cfg.finetune_steps} steps × batch min({cfg.batch_size}, size), lr {cfg.lr}, "
        f"continuing the base's SSL head when the methods match; "
        f"replay: uniform S of {cfg.replay_mult}× size drawn per seed, ρ = {cfg.replay_ratio}; mixing: {cfg.mix_op} "
        f"α = {cfg.mix_alpha}, fraction {cfg.mix_fraction}, target×source; radreg variants μ = {cfg.radreg_weight}. "
        f"Probes: {cfg.shots}-shot (mean of {cfg.draws} label draws from the full target train split, drawn per seed), "
        f"full linear probe, {cfg.knn_k}-NN, all on the full target test split; source k-NN on held-out source images. "
        "Cells: mean ± sample std over independent seeds (each its own pretraining, replay set and label draws).",
        "",
        markdown_table(rows),
        "",
    ]
    paired = paired_vs_naive(result["cells"])
    if paired:
        parts += ["Paired difference to naive (same seed: same base, replay set and label draws), averaged over "
                  "sizes within a seed: mean ± sample std over seeds (seeds > 0 / seeds).", "", paired, ""]
    heads = sorted({c.get("ssl_head", "") for c in result["cells"] if c.get("ssl_head")})
    if heads:
        parts += ["SSL heads of the finetunes: " + "; ".join(heads) + ".", ""]
    return "\n".join(parts)


def metric_key(row: dict[str, Any], metric: str) -> str:
    """An MLflow metric name for one table cell (MLflow allows no "+" or "—" in names)."""
    variant = row["variant"].replace("+", "_")
    objective = "shared" if row["objective"] == "—" else row["objective"].replace(" base → ", "_base_to_").replace(" finetune", "")
    return f"{row['pair']}/{row['size']}/{objective}/{variant}/{metric}"


def log_to_mlflow(result: dict[str, Any], cfg: SweepConfig, command: str, *, experiment: str) -> str:
    """One MLflow run for the whole sweep: the config as params, every cell's mean and std as
    metrics (``pair/size/objective/variant/metric_mean``), and the table (md) and raw per-seed
    numbers (json) as artifacts, so sweeps can be compared in the MLflow UI. → the run id."""
    import mlflow

    from uft import tracking

    rows = aggregate(result["cells"], cfg.pretrain_method != "same")
    metrics = {}
    for r in rows:
        for m, (mean, std, n) in r["stats"].items():
            metrics[f"{metric_key(r, m)}_mean"], metrics[f"{metric_key(r, m)}_std"] = mean, std
    mlflow.set_experiment(experiment_id=tracking.experiment_id(experiment))
    with mlflow.start_run(run_name="uft-sweep") as run:
        mlflow.set_tags({"uft.kind": "sweep", "uft.command": command})
        mlflow.log_params({k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in asdict(cfg).items()})
        mlflow.log_metrics(metrics)
        mlflow.log_metric("wall_seconds", float(result["timing"].get("total", float("nan"))))
        mlflow.log_text(render(result, cfg, command), "uft_sweep.md")
        mlflow.log_text(json.dumps({"command": command, "config": asdict(cfg), **result}, indent=1), "uft_sweep.json")
        return run.info.run_id


# --- CLI ---------------------------------------------------------------------------------------------

def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _strs(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def check_names(parser: argparse.ArgumentParser, pairs: list[str], variants: list[str], known: tuple[str, ...]) -> None:
    """Exit through ``parser`` naming any pair not in :data:`PAIRS` or variant not in ``known``."""
    bad = [x for x in pairs if x not in PAIRS] + [x for x in variants if x not in known]
    if bad:
        parser.error(f"unknown pair/variant {bad}: choose pairs from {list(PAIRS)} and variants from {list(known)}")


def parse_args(argv: list[str] | None = None) -> tuple[SweepConfig, argparse.Namespace]:
    d = SweepConfig()
    p = argparse.ArgumentParser(prog="python -m bench.uft_sweep", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=_strs, default=d.pairs, help=f"comma list of {', '.join(PAIRS)}")
    p.add_argument("--sizes", type=_ints, default=d.sizes, help="target unlabelled set sizes")
    p.add_argument("--seeds", type=_ints, default=d.seeds)
    p.add_argument("--objectives", type=_strs, default=d.objectives)
    p.add_argument("--variants", type=_strs, default=d.variants, help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--pretrain-method", default=d.pretrain_method,
                   help="'same' (each objective's own base, default) or one SSL method for every objective's base")
    p.add_argument("--pretrain-steps", type=int, default=d.pretrain_steps)
    p.add_argument("--pretrain-batch", type=int, default=d.pretrain_batch)
    p.add_argument("--shots", default=d.shots, help="few-label probe sizes, labels per class")
    p.add_argument("--draws", type=int, default=d.draws, help="label draws per few-label probe")
    p.add_argument("--finetune-steps", type=int, default=d.finetune_steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="finetune learning rate")
    p.add_argument("--pretrain-lr", type=float, default=d.pretrain_lr)
    p.add_argument("--replay-ratio", type=float, default=d.replay_ratio)
    p.add_argument("--replay-mult", type=int, default=d.replay_mult)
    p.add_argument("--mix-op", default=d.mix_op)
    p.add_argument("--mix-fraction", type=float, default=d.mix_fraction)
    p.add_argument("--radreg-weight", type=float, default=d.radreg_weight, help="μ of the radreg variants")
    p.add_argument("--source-limit", type=int, default=None)
    p.add_argument("--target-limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 pair, size 100, 1 seed, simclr, 5 steps")
    p.add_argument("--store", default=".uft/uft_sweep_store", help="local store dir (cache: reruns reuse it)")
    p.add_argument("--fresh", action="store_true", help="delete the store first (for honest wall times)")
    p.add_argument("--out", default=str(RESULTS / "uft_sweep"), help="output path without extension (.md, .json)")
    p.add_argument("--render-only", action="store_true", help="rewrite OUT.md from OUT.json without running anything")
    p.add_argument("--mlflow", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///.uft/mlflow.db"),
                   help="MLflow tracking URI for the sweep's summary run ('' = none; default: $MLFLOW_TRACKING_URI "
                        "or the local runs' sqlite, so `make ui` shows it)")
    p.add_argument("--experiment", default="uft-sweep", help="MLflow experiment of the summary run")
    a = p.parse_args(argv)
    cfg = SweepConfig(pairs=a.pairs, sizes=a.sizes, seeds=a.seeds, objectives=a.objectives, variants=a.variants,
                      pretrain_method=a.pretrain_method, pretrain_steps=a.pretrain_steps, pretrain_batch=a.pretrain_batch,
                      shots=a.shots, draws=a.draws, pretrain_lr=a.pretrain_lr, finetune_steps=a.finetune_steps,
                      batch_size=a.batch_size, lr=a.lr, replay_ratio=a.replay_ratio, replay_mult=a.replay_mult,
                      mix_op=a.mix_op, mix_fraction=a.mix_fraction, radreg_weight=a.radreg_weight,
                      source_limit=a.source_limit,
                      target_limit=a.target_limit, threads=a.threads)
    if a.quick:
        cfg.pairs, cfg.sizes, cfg.seeds, cfg.objectives = cfg.pairs[:1], [100], [0], ["simclr"]
        cfg.pretrain_steps, cfg.finetune_steps = 20, 5
    check_names(p, cfg.pairs, cfg.variants, VARIANTS)
    return cfg, a


def main(argv: list[str] | None = None) -> None:
    cfg, a = parse_args(argv)
    if a.render_only:  # re-render a finished sweep's table (e.g. after changing the table code)
        saved = json.loads(Path(f"{a.out}.json").read_text())
        cfg = SweepConfig(**saved["config"])
        Path(f"{a.out}.md").write_text(render(saved, cfg, saved["command"]))
        print(Path(f"{a.out}.md").read_text())
        _log(a, saved, cfg, saved["command"])
        return
    # Hundreds of tiny step runs: keep per-step tracking off (the store is enough); the sweep as a
    # whole is logged as one MLflow run at the end.
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    logging.basicConfig(level=logging.WARNING)
    if a.fresh and Path(a.store).exists():
        shutil.rmtree(a.store)
    command = ".venv/bin/python -m bench.uft_sweep " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(result: dict[str, Any]) -> None:
        result = {**result, "timing": {**{k: round(v, 1) for k, v in result["timing"].items()},
                                       **({} if "total" in result["timing"] else {"total": time.perf_counter() - t0})}}
        Path(f"{out}.json").write_text(json.dumps({"command": command, "config": asdict(cfg), **result}, indent=1))
        Path(f"{out}.md").write_text(render(result, cfg, command))

    t0 = time.perf_counter()
    result = run_sweep(cfg, a.store, log=lambda s: print(s, flush=True), on_cell=save)
    save(result)
    print(render(result, cfg, command), flush=True)
    _log(a, result, cfg, command)


def _log(a: argparse.Namespace, result: dict[str, Any], cfg: SweepConfig, command: str) -> None:
    if not a.mlflow:
        return
    os.environ["MLFLOW_TRACKING_URI"] = a.mlflow
    # Without an artifact root, MLflow would drop ./mlruns into the working directory.
    os.environ.setdefault("UFT_MLFLOW_ARTIFACTS", str(Path(".uft/mlartifacts").resolve()))
    Path(".uft").mkdir(exist_ok=True)
    run_id = log_to_mlflow(result, cfg, command, experiment=a.experiment)
    print(f"MLflow: run {run_id} in experiment {a.experiment!r} at {a.mlflow}", flush=True)


if __name__ == "__main__":
    main()
