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
- The base encoder is pretrained once per pair (``--pretrain-method``, default simclr) and shared
  across sizes, objectives, variants and seeds; ``none`` is that base. With
  ``--pretrain-method same`` each objective gets its own base.
- The replay set S (uniform, ``--replay-mult`` × target size, subsample seed 0) is shared across
  seeds and variants of one (pair, size). Seeds change finetuning only (projector init, batch
  order, augmentations, mixing λ; and the init of ``scratch``). The probe's label draws use seed 0
  for every encoder, so variants are compared on the same labelled subsets.

Run: ``.venv/bin/python -m bench.uft_sweep`` (``--help`` for the knobs). Writes
``bench/results/uft_sweep.md`` and ``.json`` (raw numbers per seed); partial results are written
after every cell so an interrupted sweep still leaves a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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

VARIANTS = ("none", "scratch", "naive", "replay", "mixing", "replay+mixing")
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
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    pretrain_method: str = "simclr"  # or "same": one base per objective
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

def _evaluate(encoder_uri: str, target_uri: str, source_uri: str, store: str, cfg: SweepConfig, tag: str) -> dict[str, float]:
    lin = steps.linear_eval(encoder_uri, target_uri, store, tag=tag, shots=cfg.shots, draws=cfg.draws, seed=0)
    knn = steps.knn_eval(encoder_uri, target_uri, store, tag=tag, source_uri=source_uri, k=cfg.knn_k)
    return {**lin["metrics"], **knn["metrics"]}


def run_sweep(cfg: SweepConfig, store: str, *, log: Callable[[str], None] = print,
              on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every (pair, size, objective, variant, seed) cell → ``{"cells": [...], "timing": {...}}``.

    Each cell: ``{"pair", "size", "objective", "variant", "seed", "metrics": {...}, "seconds"}``.
    Order: seed-major, so a sweep cut short still holds complete grids for the first seeds.
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

    for name in cfg.pairs:  # shared, seed-independent parts: ingest, subsets, replay sets, bases
        pair = PAIRS[name]
        s_lim = pair.source_limit if cfg.source_limit is None else cfg.source_limit
        t_lim = pair.target_limit if cfg.target_limit is None else cfg.target_limit
        src = clock("ingest", lambda: steps.ingest(pair.source, store, role="source", image_size=cfg.image_size, channels=1,
                                                   limit=s_lim, test_fraction=pair.source_test_fraction))
        tgt = clock("ingest", lambda: steps.ingest(pair.target, store, role="target", image_size=cfg.image_size, channels=1,
                                                   limit=t_lim, test_fraction=pair.target_test_fraction))
        subsets = {n: clock("ingest", lambda n=n: target_subset(tgt["dataset_uri"], store, n, image_size=cfg.image_size))
                   for n in cfg.sizes}
        replays = {n: clock("ingest", lambda n=n: steps.subsample_source(src["dataset_uri"], src["dataset_sha"], store,
                                                                         rule="uniform", size=cfg.replay_mult * n, seed=0))
                   for n in cfg.sizes}
        bases = {}
        for obj in cfg.objectives:
            method = obj if cfg.pretrain_method == "same" else cfg.pretrain_method
            bases[obj] = clock("pretrain", lambda method=method: steps.pretrain(
                src["dataset_uri"], src["dataset_sha"], store, encoder_width=cfg.encoder_width, method=method,
                steps=cfg.pretrain_steps, batch_size=cfg.pretrain_batch, lr=cfg.pretrain_lr, seed=0,
                checkpoint_every=cfg.pretrain_steps))
            log(f"[{time.perf_counter() - t_start:7.1f}s] {name}: base ({method}) ready"
                f"{' (cached)' if bases[obj]['cached'] else ''}, final loss {bases[obj].get('final_loss')}")
        ctx[name] = {"src": src, "tgt": tgt, "subsets": subsets, "replays": replays, "bases": bases}

    plan_mix = steps.mix_plan(store, op=cfg.mix_op, alpha=cfg.mix_alpha, fraction=cfg.mix_fraction,
                              pairing="target_source")["plan_uri"]
    for seed in cfg.seeds:
        for name in cfg.pairs:
            c = ctx[name]
            src_uri, tgt_uri = c["src"]["dataset_uri"], c["tgt"]["dataset_uri"]
            for size in cfg.sizes:
                for obj in cfg.objectives:
                    base = c["bases"][obj]["encoder_uri"]
                    for variant in cfg.variants:
                        t0 = time.perf_counter()
                        if variant == "none":
                            enc = base
                        else:
                            replay = variant in ("replay", "replay+mixing")
                            mixing = variant in ("mixing", "replay+mixing")
                            ft = clock("finetune", lambda: steps.finetune(
                                base, c["subsets"][size], store, source_uri=src_uri,
                                replay_uri=c["replays"][size]["replay_uri"] if replay or mixing else "",
                                plan_uri=plan_mix if mixing else "", method=obj, steps=cfg.finetune_steps,
                                batch_size=cfg.batch_size, lr=cfg.lr, replay_ratio=cfg.replay_ratio if replay else 0.0,
                                seed=seed, checkpoint_every=cfg.finetune_steps, from_scratch=variant == "scratch"))
                            enc = ft["encoder_uri"]
                        metrics = clock("eval", lambda: _evaluate(enc, tgt_uri, src_uri, store, cfg, f"{variant}"))
                        cell = {"pair": name, "size": size, "objective": obj, "variant": variant, "seed": seed,
                                "metrics": metrics, "seconds": round(time.perf_counter() - t0, 2)}
                        cells.append(cell)
                        log(f"[{time.perf_counter() - t_start:7.1f}s] seed {seed} {name} n={size} {obj:6s} {variant:13s} "
                            + " ".join(f"{m}={metrics[m]:.3f}" for m in METRICS if m in metrics))
                        if on_cell:
                            on_cell({"cells": cells, "timing": timing})
    timing["total"] = time.perf_counter() - t_start
    return {"cells": cells, "timing": {k: round(v, 1) for k, v in timing.items()}}


# --- the table ---------------------------------------------------------------------------------------

def aggregate(cells: list[dict[str, Any]], shared_base: bool) -> list[dict[str, Any]]:
    """Cells → one row per (pair, size, objective, variant): ``{metric: (mean, std, n_seeds)}``.

    With a shared base, ``none`` does not depend on the objective: it gets one row, objective "—"."""
    groups: dict[tuple, list[dict[str, float]]] = {}
    for c in cells:
        obj = "—" if c["variant"] == "none" and shared_base else c["objective"]
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
                stats[m] = (float(np.mean(vals)), float(np.std(vals)), len(vals))
        rows.append({"pair": pair, "size": size, "objective": obj, "variant": variant, "stats": stats})
    order = {v: i for i, v in enumerate(VARIANTS)}
    pairs = list(dict.fromkeys(c["pair"] for c in cells))
    objs = list(dict.fromkeys(c["objective"] for c in cells))
    rows.sort(key=lambda r: (pairs.index(r["pair"]), r["size"], -1 if r["objective"] == "—" else objs.index(r["objective"]),
                             order[r["variant"]]))
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| pair | size | objective | variant | " + " | ".join(HEADERS) + " |",
             "|---|---:|---|---|" + "---:|" * len(HEADERS)]
    for r in rows:
        vals = []
        for m in METRICS:
            if m in r["stats"]:
                mean, std, _ = r["stats"][m]
                vals.append(f"{mean:.3f} ± {std:.3f}")
            else:
                vals.append("")
        lines.append(f"| {r['pair']} | {r['size']} | {r['objective']} | {r['variant']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def paired_vs_naive(cells: list[dict[str, Any]]) -> str:
    """Per pair and variant: the difference to naive on the same (size, objective, seed), mean ± standard
    error over those cells, and how many cells it is > 0. Paired, so seed-to-seed noise shared by
    both variants cancels. (Cells of one pair are not independent — nested subsets, one base —
    so read the standard error as a rough guide.)"""
    idx = {(c["pair"], c["size"], c["objective"], c["variant"], c["seed"]): c["metrics"] for c in cells}
    lines = ["| pair | variant − naive | " + " | ".join(HEADERS) + " |", "|---|---|" + "---:|" * len(HEADERS)]
    pairs = list(dict.fromkeys(c["pair"] for c in cells))
    for pair in pairs:
        for v in ("none", "scratch", "replay", "mixing", "replay+mixing"):
            row = []
            for m in METRICS:
                d = np.array([idx[k][m] - idx[k[:3] + ("naive", k[4])][m] for k in idx
                              if k[0] == pair and k[3] == v and k[:3] + ("naive", k[4]) in idx and m in idx[k]])
                if len(d) == 0:
                    row.append("")
                    continue
                se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
                row.append(f"{d.mean():+.3f} ± {se:.3f} ({int((d > 0).sum())}/{len(d)})")
            if any(row):
                lines.append(f"| {pair} | {v} | " + " | ".join(row) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def render(result: dict[str, Any], cfg: SweepConfig, command: str) -> str:
    shared = cfg.pretrain_method != "same"
    rows = aggregate(result["cells"], shared)
    t = result["timing"]
    per_seed = {s: sum(c["seed"] == s for c in result["cells"]) for s in {c["seed"] for c in result["cells"]}}
    full = max(per_seed.values(), default=0)
    seeds_done = sorted(s for s, n in per_seed.items() if n == full)  # a cut-short seed is not "done"
    parts = [
        "# UFT sweep (issue 4): none / scratch / naive / replay / mixing / replay+mixing",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {t.get('total', float('nan')):.0f} s (ingest {t['ingest']:.0f}, pretrain {t['pretrain']:.0f}, "
        f"finetune {t['finetune']:.0f}, eval {t['eval']:.0f}); {torch.get_num_threads()} torch threads, CPU; "
        f"seeds done: {seeds_done}",
        "",
        f"Setup: tiny convnet width {cfg.encoder_width}, {cfg.image_size} px grey; base = {cfg.pretrain_method} pretrain, "
        f"{cfg.pretrain_steps} steps × batch {cfg.pretrain_batch}, lr {cfg.pretrain_lr}, seed 0, "
        + ("shared by every size, objective, variant and seed" if shared else "one per objective, shared by sizes/variants/seeds")
        + f"; finetune {cfg.finetune_steps} steps × batch min({cfg.batch_size}, size), lr {cfg.lr}; "
        f"replay: uniform S of {cfg.replay_mult}× size, ρ = {cfg.replay_ratio}; mixing: {cfg.mix_op} α = {cfg.mix_alpha}, "
        f"fraction {cfg.mix_fraction}, target×source. Probes: {cfg.shots}-shot (mean of {cfg.draws} label draws from "
        f"the full target train split), full linear probe, {cfg.knn_k}-NN, all on the full target test split; source k-NN on "
        "held-out source images. Cells: mean ± std over seeds (std 0 for `none`: it does not depend on the seed).",
        "",
        markdown_table(rows),
        "",
    ]
    paired = paired_vs_naive(result["cells"])
    if paired:
        parts += ["Paired difference to naive (same size, objective and seed): mean ± standard error over cells "
                  "(cells > 0 / cells). Cells of one pair share the base and nested subsets, so the standard "
                  "error is a rough guide.", "", paired, ""]
    return "\n".join(parts)


def metric_key(row: dict[str, Any], metric: str) -> str:
    """An MLflow metric name for one table cell (MLflow allows no "+" or "—" in names)."""
    variant = row["variant"].replace("+", "_")
    objective = "shared" if row["objective"] == "—" else row["objective"]
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


def parse_args(argv: list[str] | None = None) -> tuple[SweepConfig, argparse.Namespace]:
    d = SweepConfig()
    p = argparse.ArgumentParser(prog="python -m bench.uft_sweep", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=_strs, default=d.pairs, help=f"comma list of {', '.join(PAIRS)}")
    p.add_argument("--sizes", type=_ints, default=d.sizes, help="target unlabelled set sizes")
    p.add_argument("--seeds", type=_ints, default=d.seeds)
    p.add_argument("--objectives", type=_strs, default=d.objectives)
    p.add_argument("--variants", type=_strs, default=d.variants, help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--pretrain-method", default=d.pretrain_method, help="SSL method of the base, or 'same' (one per objective)")
    p.add_argument("--pretrain-steps", type=int, default=d.pretrain_steps)
    p.add_argument("--finetune-steps", type=int, default=d.finetune_steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="finetune learning rate")
    p.add_argument("--pretrain-lr", type=float, default=d.pretrain_lr)
    p.add_argument("--replay-ratio", type=float, default=d.replay_ratio)
    p.add_argument("--replay-mult", type=int, default=d.replay_mult)
    p.add_argument("--mix-op", default=d.mix_op)
    p.add_argument("--mix-fraction", type=float, default=d.mix_fraction)
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
                      pretrain_method=a.pretrain_method, pretrain_steps=a.pretrain_steps, pretrain_lr=a.pretrain_lr, finetune_steps=a.finetune_steps,
                      batch_size=a.batch_size, lr=a.lr, replay_ratio=a.replay_ratio, replay_mult=a.replay_mult,
                      mix_op=a.mix_op, mix_fraction=a.mix_fraction, source_limit=a.source_limit,
                      target_limit=a.target_limit, threads=a.threads)
    if a.quick:
        cfg.pairs, cfg.sizes, cfg.seeds, cfg.objectives = cfg.pairs[:1], [100], [0], ["simclr"]
        cfg.pretrain_steps, cfg.finetune_steps = 20, 5
    bad = [x for x in cfg.pairs if x not in PAIRS] + [x for x in cfg.variants if x not in VARIANTS]
    if bad:
        p.error(f"unknown pair/variant {bad}: choose pairs from {list(PAIRS)} and variants from {list(VARIANTS)}")
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
