"""The damage curve: does long unsupervised finetuning on a small target damage the pretrained
representation, and do replay and mixing prevent it? The protocol is pre-registered in
docs/results.md ("Damage curve — protocol (pre-registered)"); this module runs exactly that and
prints its tables with 95 % paired t-intervals over independent seeds.

Two arms:
- ``grey`` (default): the tiny convnet on 16 px grey images of ``mnist-optdigits`` and
  ``fashion-mnist`` (the pairs and splits of :mod:`bench.uft_grid`), a SimCLR base per (pair, seed),
  finetuned at the pretraining learning rate.
- ``realistic``: EfficientNet-Lite0 with its shipped ImageNet weights on the scikit-image colour pair
  (:mod:`bench.colour_pair`), at the smallest input size whose base val k-NN is within
  ``size_tolerance`` of the best candidate (chosen on val from the base alone, before finetuning).

Every (pair, seed, size, variant) is **one** finetuning run of ``max(checkpoints)`` steps; the encoder
is evaluated at each checkpoint along it (training RNG untouched by the evaluation), so the value at
step t is that run's state after t steps — not a separate, shorter run with its own schedule.
Checkpoint 0 is the base. Each checkpoint is evaluated on val (for every choice: peak, damage,
val-picked length) and test (reported only).

Run: ``nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python -m bench.damage_curve --help``.
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
from typing import Any, Callable

import numpy as np
import torch

from bench.uft_grid import PAIRS, GridConfig, _cap, load_pair, merge_results, pretrain, t_interval, target_order
from bench.uft_sweep import _ints, _strs, check_names

VARIANTS = ("naive", "replay", "mixing", "replay+mixing")
REMEDIES = VARIANTS[1:]
SPLITS = ("val", "test")
PRIMARY_TARGET = ("linear_10shot", "knn")  # the protocol's primary target metrics
METRICS = ("linear_10shot", "knn", "source_knn", "linear_1shot")
HEADERS = {"linear_10shot": "10-shot lin", "knn": "k-NN", "source_knn": "source k-NN", "linear_1shot": "1-shot lin"}
RESULTS = Path(__file__).resolve().parent / "results"
COLOUR = "colour"  # the realistic arm's pair name
ARM_DEFAULTS = {  # what the protocol fixes per arm; flags given on the command line override
    "grey": {"pairs": ["mnist-optdigits", "fashion-mnist"], "seeds": [0, 1, 2, 3, 4], "sizes": [100, 1000],
             "checkpoints": [0, 100, 300, 1000, 3000]},
    "realistic": {"pairs": [COLOUR], "seeds": [0, 1, 2], "sizes": [100], "checkpoints": [0, 100, 300, 1000]},
}


@dataclass
class CurveConfig:
    arm: str = "grey"
    pairs: list[str] = field(default_factory=lambda: list(ARM_DEFAULTS["grey"]["pairs"]))
    sizes: list[int] = field(default_factory=lambda: [100, 1000])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    checkpoints: list[int] = field(default_factory=lambda: [0, 100, 300, 1000, 3000])
    encoder_width: int = 16
    image_size: int = 16
    pretrain_steps: int = 1000
    pretrain_batch: int = 128
    lr: float = 2e-3  # the pretraining learning rate; finetuning uses the same (the protocol's point)
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
    source_limit: int = 6000
    # realistic arm
    colour_sizes: list[int] = field(default_factory=lambda: [32, 64, 96, 128])
    colour_per_class: int = 200
    size_tolerance: float = 0.02
    #: Where training and feature extraction run ("cpu", "cuda", "cuda:1"); the metrics (probes,
    #: k-NN) are computed on CPU from the features either way.
    device: str = "cpu"

    def grid(self, split: str = "test", **kw: Any) -> GridConfig:
        """The :class:`bench.uft_grid.GridConfig` whose loaders and pretraining this arm reuses."""
        return GridConfig(pairs=self.pairs, sizes=self.sizes, seeds=self.seeds, objectives=["simclr"],
                          encoder_width=self.encoder_width, image_size=self.image_size,
                          pretrain_steps=self.pretrain_steps, pretrain_batch=self.pretrain_batch, pretrain_lr=self.lr,
                          finetune_steps=max(self.checkpoints), finetune_lr=self.lr, batch_size=self.batch_size,
                          replay_ratio=self.replay_ratio, replay_mult=self.replay_mult, mix_op=self.mix_op,
                          mix_alpha=self.mix_alpha, mix_fraction=self.mix_fraction, shots=self.shots,
                          draws=self.draws, knn_k=self.knn_k, eval_cap=self.eval_cap, source_bank=self.source_bank,
                          source_limit=self.source_limit, split=split, **kw)


# --- data --------------------------------------------------------------------------------------------

@dataclass
class Splits:
    """uint8 images ``(N, C, H, W)`` + int64 labels: the train rows and both evaluation splits."""

    src_train: torch.Tensor
    src_train_y: torch.Tensor
    tgt_train: torch.Tensor
    tgt_train_y: torch.Tensor
    src_eval: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split → (images, labels), capped
    tgt_eval: dict[str, tuple[torch.Tensor, torch.Tensor]]
    n_src_classes: int
    n_tgt_classes: int


def load_grey(name: str, store: str, cfg: CurveConfig) -> Splits:
    """A grey pair of :mod:`bench.uft_grid` (its ingest and splits), val and test both loaded."""
    d = {s: load_pair(PAIRS[name], store, cfg.grid(split=s)) for s in SPLITS}
    v = d["val"]
    return Splits(v.src_train, v.src_train_y, v.tgt_train, v.tgt_train_y,
                  {s: (d[s].src_eval, d[s].src_eval_y) for s in SPLITS},
                  {s: (d[s].tgt_eval, d[s].tgt_eval_y) for s in SPLITS}, v.n_src_classes, v.n_tgt_classes)


def load_colour(store: str, cfg: CurveConfig, image_size: int) -> Splits:
    """The colour pair (built once at the largest candidate size, then ingested at ``image_size``)."""
    from bench.colour_pair import build_pair
    from uft import steps
    from uft.data.dataset import load_dataset

    root = Path(store) / f"colour_pair_{max(cfg.colour_sizes)}_{cfg.colour_per_class}"
    if not (root / ".built").exists():
        build_pair(root, per_class=cfg.colour_per_class, size=max(cfg.colour_sizes), seed=0)
        (root / ".built").write_text("ok")
    sides = {}
    for role in ("source", "target"):
        out = steps.ingest(str(root / role), store, role=role, image_size=image_size, channels=3,
                           test_fraction=0.3, val_fraction=0.2)
        sides[role] = load_dataset(out["dataset_uri"])
    s, t = sides["source"], sides["target"]
    s_tr, t_tr = s.subset("train"), t.subset("train")
    ev = {role: {sp: _cap(ds.subset(sp).images, ds.subset(sp).labels, cfg.eval_cap) for sp in SPLITS}
          for role, ds in sides.items()}
    return Splits(s_tr.images, s_tr.labels, t_tr.images, t_tr.labels, ev["source"], ev["target"],
                  len(s.classes), len(t.classes))


# --- models ------------------------------------------------------------------------------------------

def imagenet_start(seed: int):
    """EfficientNet-Lite0 with the shipped ImageNet weights + a fresh SimCLR projector (seeded)."""
    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method

    torch.manual_seed(seed)
    return build_method("simclr", build_encoder("efficientnet_lite0", in_channels=3, pretrained=True)).eval()


def _on(module, cfg: CurveConfig):
    """``module`` moved to ``cfg.device``."""
    return module.to(torch.device(cfg.device))


def base_for(cfg: CurveConfig, data: Splits, seed: int):
    """The start of every finetune of this (pair, seed): a SimCLR base on the source, or the ImageNet start."""
    if cfg.arm == "realistic":
        return _on(imagenet_start(seed), cfg)
    return pretrain(data.src_train, "simclr", seed, cfg.grid(), device=cfg.device).eval()


# --- evaluation --------------------------------------------------------------------------------------

@torch.no_grad()
def _features(encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` → features ``(N, D)`` on CPU, in eval mode, 256 rows at a time on the
    encoder's device."""
    encoder.eval()
    dev = next(encoder.parameters()).device
    return torch.cat([encoder(images[i:i + 256].to(dev).float().div(255)).float().cpu()
                      for i in range(0, len(images), 256)])


def evaluate(encoder: torch.nn.Module, data: Splits, cfg: CurveConfig, seed: int) -> dict[str, dict[str, float]]:
    """Both splits' metrics ``{split: {metric: value}}``; label draws depend on the seed only, so they are
    paired across variants, sizes and checkpoints. Banks (target train, source train sample) are
    featurised once for both splits."""
    from uft.evaluate.knn import knn_accuracy
    from uft.evaluate.linear import few_label_probe

    ftr = _features(encoder, data.tgt_train)
    bank_x, bank_y = _cap(data.src_train, data.src_train_y, cfg.source_bank)
    fbank = _features(encoder, bank_x)
    out: dict[str, dict[str, float]] = {}
    for split in SPLITS:
        tx, ty = data.tgt_eval[split]
        sx, sy = data.src_eval[split]
        fev = _features(encoder, tx)
        m = {f"linear_{k}shot": few_label_probe(ftr, data.tgt_train_y, fev, ty, k, draws=cfg.draws, seed=seed)[0]
             for k in cfg.shots}
        m["knn"] = knn_accuracy(ftr, data.tgt_train_y, fev, ty, data.n_tgt_classes, k=cfg.knn_k)
        m["source_knn"] = knn_accuracy(fbank, bank_y, _features(encoder, sx), sy, data.n_src_classes, k=cfg.knn_k)
        out[split] = m
    return out


def finetune_curve(base, target: torch.Tensor, replay: torch.Tensor, variant: str, seed: int, cfg: CurveConfig,
                   data: Splits) -> dict[int, dict[str, dict[str, float]]]:
    """One finetuning run of ``max(checkpoints)`` steps from a copy of ``base``, evaluated at every
    checkpoint t > 0 along it → ``{t: {split: metrics}}``.

    Evaluation runs inside the training loop's log callback (``log_every`` = the gcd of the
    checkpoints) under ``torch.random.fork_rng``, and puts the model back in train mode: the run's
    batches, augmentations and weights are those of an uninterrupted run.
    """
    from uft.ssl.train import TrainConfig, train_ssl
    from uft.transfer.mixing import MixPlan

    method = copy.deepcopy(base)
    points = sorted(t for t in cfg.checkpoints if t > 0)
    mixing, replay_on = "mixing" in variant, "replay" in variant
    plan = MixPlan(op=cfg.mix_op, alpha=cfg.mix_alpha, fraction=cfg.mix_fraction) if mixing else MixPlan()
    tc = TrainConfig(steps=points[-1], batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
                     replay_ratio=cfg.replay_ratio if replay_on else 0.0, log_every=math.gcd(*points))
    curve: dict[int, dict[str, dict[str, float]]] = {}

    def on_log(step: int, _loss: float) -> None:
        if step in points:
            with torch.random.fork_rng(devices=[]):
                curve[step] = evaluate(method.encoder, data, cfg, seed)
            method.train()

    train_ssl(method, target, tc, replay=replay if (replay_on or mixing) else None, mix_plan=plan, on_log=on_log,
              device=cfg.device)
    return curve


# --- the experiment ----------------------------------------------------------------------------------

def choose_colour_size(cfg: CurveConfig, store: str, log: Callable[[str], None] = print) -> tuple[int, dict[int, float]]:
    """The realistic arm's input size: the smallest candidate whose base (ImageNet start, seed 0) val
    20-NN on the target is within ``size_tolerance`` of the best candidate's → (size, {size: val k-NN})."""
    scores = {}
    for s in sorted(cfg.colour_sizes):
        scores[s] = evaluate(_on(imagenet_start(0), cfg).encoder, load_colour(store, cfg, s), cfg, 0)["val"]["knn"]
        log(f"colour pair at {s} px: base val k-NN {scores[s]:.3f}")
    best = max(scores.values())
    return min(s for s, v in scores.items() if v >= best - cfg.size_tolerance), scores


def run(cfg: CurveConfig, store: str, *, log: Callable[[str], None] = print,
        on_cell: Callable[[list[dict[str, Any]]], None] | None = None,
        notes: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every (seed, pair, size, variant, checkpoint, split) → cells ``{"pair", "size", "variant", "seed",
    "step", "split", "metrics"}`` (seed-major: a cut-short run holds complete seeds), and ``notes`` (the
    realistic arm's size choice; filled in place, so ``on_cell`` sees it)."""
    from uft.transfer.replay import select_replay

    t0 = time.perf_counter()
    notes = {} if notes is None else notes
    if cfg.arm == "realistic":
        size, scores = choose_colour_size(cfg, store, log)
        cfg.image_size = size
        notes["colour_size"] = {"chosen": size, "base_val_knn": scores}
        data = {COLOUR: load_colour(store, cfg, size)}
    else:
        data = {name: load_grey(name, store, cfg) for name in cfg.pairs}
    cells: list[dict[str, Any]] = []

    def add(pair: str, size: int, variant: str, seed: int, step: int, res: dict[str, dict[str, float]]) -> None:
        for split, m in res.items():
            cells.append({"pair": pair, "size": size, "variant": variant, "seed": seed, "step": step,
                          "split": split, "metrics": m})

    for seed in cfg.seeds:
        for name, d in data.items():
            tb = time.perf_counter()
            base = base_for(cfg, d, seed)
            at0 = evaluate(base.encoder, d, cfg, seed)
            log(f"[{time.perf_counter() - t0:7.1f}s] seed {seed} {name}: base in {time.perf_counter() - tb:.1f}s, "
                + " ".join(f"{k}={v:.3f}" for k, v in at0["test"].items()))
            order = target_order(len(d.tgt_train), seed)
            for size in cfg.sizes:
                target = d.tgt_train[torch.from_numpy(np.sort(order[:size]))]
                rows = select_replay("uniform", min(cfg.replay_mult * size, len(d.src_train)), seed=seed,
                                     source_size=len(d.src_train))
                replay = d.src_train[torch.from_numpy(rows)]
                for variant in cfg.variants:
                    tv = time.perf_counter()
                    add(name, size, variant, seed, 0, at0)  # step 0 is the base, shared by every variant
                    for step, res in finetune_curve(base, target, replay, variant, seed, cfg, d).items():
                        add(name, size, variant, seed, step, res)
                    last = cells[-1]["metrics"]
                    log(f"[{time.perf_counter() - t0:7.1f}s] seed {seed} {name} n={size} {variant:13s} "
                        f"{time.perf_counter() - tv:.0f}s; test at {max(cfg.checkpoints)}: "
                        + " ".join(f"{k}={v:.3f}" for k, v in last.items()))
                    if on_cell:
                        on_cell(cells)
    return cells, notes


# --- analysis (the protocol's, fixed in advance) -----------------------------------------------------

def values(cells: list[dict[str, Any]], pair: str, size: int, variant: str, step: int, split: str,
           metric: str) -> dict[int, float]:
    """{seed: value} of one (pair, size, variant, checkpoint, split, metric)."""
    return {c["seed"]: c["metrics"][metric] for c in cells
            if (c["pair"], c["size"], c["variant"], c["step"], c["split"]) == (pair, size, variant, step, split)
            and metric in c["metrics"]}


def diff(a: dict[int, float], b: dict[int, float]) -> np.ndarray:
    """Per-seed paired differences ``a − b`` over the seeds both hold → (n,)."""
    return np.array([a[s] - b[s] for s in sorted(set(a) & set(b))])


def below(x: np.ndarray) -> bool:
    """The 95 % interval lies entirely below 0 (never with n < 2)."""
    m, h = t_interval(x) if len(x) else (float("nan"), float("nan"))
    return bool(len(x) >= 2 and math.isfinite(h) and m + h < 0)


def above(x: np.ndarray) -> bool:
    m, h = t_interval(x) if len(x) else (float("nan"), float("nan"))
    return bool(len(x) >= 2 and math.isfinite(h) and m - h > 0)


def fmt(x: np.ndarray) -> str:
    """``mean ± half-width`` (95 % t over the n seeds), ``*`` when the interval excludes 0."""
    if len(x) == 0:
        return "n/a"
    m, h = t_interval(x)
    if not math.isfinite(h):
        return f"{m:+.3f} (n = 1: no interval)"
    return f"{m:+.3f} ± {h:.3f}" + (" *" if abs(m) > h else "")


def steps_of(cells: list[dict[str, Any]]) -> list[int]:
    return sorted({c["step"] for c in cells})


def peak_step(cells: list[dict[str, Any]], pair: str, size: int, metric: str, variant: str = "naive") -> int:
    """The checkpoint with the highest **val** mean over seeds of ``variant``'s ``metric`` (ties → earlier)."""
    best, best_t = -math.inf, 0
    for t in steps_of(cells):
        v = values(cells, pair, size, variant, t, "val", metric)
        if v and (m := float(np.mean(list(v.values())))) > best + 1e-12:
            best, best_t = m, t
    return best_t


def damage_step(cells: list[dict[str, Any]], pair: str, size: int) -> tuple[int | None, str]:
    """The smallest checkpoint t > 0 at which naive is damaged on **val** (source k-NN below the base's,
    or a primary target metric below its own val peak; 95 % intervals) → (t, what fired) or (None, "")."""
    peaks = {m: peak_step(cells, pair, size, m) for m in PRIMARY_TARGET}
    for t in [s for s in steps_of(cells) if s > 0]:
        fired = []
        if below(diff(values(cells, pair, size, "naive", t, "val", "source_knn"),
                      values(cells, pair, size, "naive", 0, "val", "source_knn"))):
            fired.append("source k-NN below the base")
        for m, tp in peaks.items():
            if tp < t and below(diff(values(cells, pair, size, "naive", t, "val", m),
                                     values(cells, pair, size, "naive", tp, "val", m))):
                fired.append(f"{HEADERS[m]} below its peak at {tp}")
        if fired:
            return t, "; ".join(fired)
    return None, ""


def _metrics(cells: list[dict[str, Any]]) -> list[str]:
    return [m for m in METRICS if any(m in c["metrics"] for c in cells)]


def curve_table(cells: list[dict[str, Any]]) -> str:
    """Levels on test, mean ± 95 % t half-width over seeds, every variant at every checkpoint."""
    ms = _metrics(cells)
    lines = ["| pair | size | variant | step | n | " + " | ".join(HEADERS[m] for m in ms) + " |",
             "|---|---:|---|---:|---:|" + "---:|" * len(ms)]
    for p in dict.fromkeys(c["pair"] for c in cells):
        for s in sorted({c["size"] for c in cells if c["pair"] == p}):
            for v in [x for x in VARIANTS if any(c["variant"] == x for c in cells)]:
                for t in steps_of(cells):
                    if t == 0 and v != "naive":
                        continue  # the base: one row per (pair, size)
                    row, n = [], 0
                    for m in ms:
                        x = np.array(list(values(cells, p, s, v, t, "test", m).values()))
                        n = max(n, len(x))
                        mean, h = t_interval(x) if len(x) else (float("nan"), float("nan"))
                        row.append(f"{mean:.3f}" + (f" ± {h:.3f}" if math.isfinite(h) else ""))
                    lines.append(f"| {p} | {s} | {'base' if t == 0 else v} | {t} | {n} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def analysis_table(cells: list[dict[str, Any]]) -> str:
    """The protocol's analyses 2–5 per (pair, size): naive − base, peak and fall, damage, length."""
    lines = ["| pair | size | quantity (test unless said) | 10-shot lin | k-NN | source k-NN |", "|---|---:|---|---:|---:|---:|"]
    for p in dict.fromkeys(c["pair"] for c in cells):
        sizes = sorted({c["size"] for c in cells if c["pair"] == p})
        last = steps_of(cells)[-1]
        for s in sizes:
            def nv(t: int, m: str, v: str = "naive") -> dict[int, float]:
                return values(cells, p, s, v, t, "test", m)

            rows: list[tuple[str, list[str]]] = []
            for t in [x for x in steps_of(cells) if x > 0]:
                rows.append((f"naive({t}) − base", [fmt(diff(nv(t, m), nv(0, m))) for m in ("linear_10shot", "knn", "source_knn")]))
            peaks = {m: peak_step(cells, p, s, m) for m in PRIMARY_TARGET}
            rows.append(("val peak of naive (step)", [str(peaks["linear_10shot"]), str(peaks["knn"]), "–"]))
            rows.append((f"fall: naive({last}) − naive(peak)",
                         [fmt(diff(nv(last, m), nv(peaks[m], m))) for m in PRIMARY_TARGET] + ["–"]))
            td, why = damage_step(cells, p, s)
            rows.append(("damaged from (val)", [f"step {td}: {why}" if td else f"not damaged within {last} steps", "", ""]))
            mid = [x for x in steps_of(cells) if 0 < x < last]
            if mid:
                ref = 300 if 300 in mid else mid[-1]
                rows.append((f"length: D({last}) − D({ref}), D = naive − base",
                             ["–", "–", fmt(diff(nv(last, "source_knn"), nv(ref, "source_knn")))]))
            for q, r in rows:
                lines.append(f"| {p} | {s} | {q} | " + " | ".join(r) + " |")
        if len(sizes) >= 2:
            lo, hi = sizes[0], sizes[-1]

            def change(sz: int, m: str) -> dict[int, float]:
                """Source: the drop from the base D; target: the fall from that size's val peak."""
                ref = 0 if m == "source_knn" else peak_step(cells, p, sz, m)
                a, b = values(cells, p, sz, "naive", last, "test", m), values(cells, p, sz, "naive", ref, "test", m)
                return {k: a[k] - b[k] for k in set(a) & set(b)}

            lines.append(f"| {p} | {lo} vs {hi} | size: change at {last} for {lo} − for {hi} (target: fall from "
                         "peak; source: D) | "
                         + " | ".join(fmt(diff(change(lo, m), change(hi, m))) for m in ("linear_10shot", "knn", "source_knn"))
                         + " |")
    return "\n".join(lines)


def claims(cells: list[dict[str, Any]]) -> list[str]:
    """The protocol's item 6, applied as written: the premise at the smallest size, and each remedy at
    naive's damage step on the metric that was damaged → markdown lines."""
    out = []
    last = steps_of(cells)[-1]
    pairs = list(dict.fromkeys(c["pair"] for c in cells))
    small = {p: min(c["size"] for c in cells if c["pair"] == p) for p in pairs}
    confirmed, clean = [], []
    for p in pairs:
        s = small[p]
        td, why = damage_step(cells, p, s)
        if td is None:
            d = diff(values(cells, p, s, "naive", last, "test", "source_knn"), values(cells, p, s, "naive", 0, "test", "source_knn"))
            m, h = t_interval(d) if len(d) else (float("nan"), float("nan"))
            clean.append(bool(len(d) >= 2 and m - h > -0.02))
            out.append(f"- {p}, {s} images: naive not damaged within {last} steps (val); test source drop at {last}: {fmt(d)}.")
            continue
        ok = []
        # the criteria that fired, one per item: "k-NN below" is also a substring of "source k-NN below"
        target_fired = [m for m in PRIMARY_TARGET if any(f.startswith(f"{HEADERS[m]} below") for f in why.split("; "))]
        if why.startswith("source"):
            ok.append(below(diff(values(cells, p, s, "naive", td, "test", "source_knn"),
                                 values(cells, p, s, "naive", 0, "test", "source_knn"))))
        for m in target_fired:
            tp = peak_step(cells, p, s, m)
            ok.append(below(diff(values(cells, p, s, "naive", td, "test", m), values(cells, p, s, "naive", tp, "test", m))))
        confirmed.append(any(ok))
        out.append(f"- {p}, {s} images: naive damaged from step {td} on val ({why}); "
                   f"{'confirmed' if any(ok) else 'not confirmed'} on test.")
        for v in [x for x in REMEDIES if any(c["variant"] == x for c in cells)]:
            metric = "source_knn" if why.startswith("source") else target_fired[0]
            d = diff(values(cells, p, s, v, td, "test", metric), values(cells, p, s, "naive", td, "test", metric))
            word = "holds" if above(d) else "hurts" if below(d) else "no effect detected"
            out.append(f"  - {v} − naive at step {td} on {HEADERS[metric]}: {fmt(d)} → {word}")
    if len(confirmed) == len(pairs) and all(confirmed):
        verdict = "holds"
    elif len(clean) == len(pairs) and all(clean):
        verdict = "does not hold"
    else:
        verdict = "not resolved"
    return [f"Premise (naive finetuning on the smallest target is damaged, on every pair): **{verdict}**.", ""] + out


def remedy_table(cells: list[dict[str, Any]]) -> str:
    """Analysis 5: each remedy − naive at naive's damage step, and each at its own val-picked length."""
    lines = ["| pair | size | variant | comparison (test) | 10-shot lin | k-NN | source k-NN |",
             "|---|---:|---|---|---:|---:|---:|"]
    ms = ("linear_10shot", "knn", "source_knn")
    for p in dict.fromkeys(c["pair"] for c in cells):
        for s in sorted({c["size"] for c in cells if c["pair"] == p}):
            td, _ = damage_step(cells, p, s)
            tn = peak_step(cells, p, s, "linear_10shot", "naive")
            for v in [x for x in REMEDIES if any(c["variant"] == x for c in cells)]:
                def at(t: int, m: str, var: str) -> dict[int, float]:
                    return values(cells, p, s, var, t, "test", m)

                if td is None:
                    lines.append(f"| {p} | {s} | {v} | − naive at damage | n/a: naive not damaged | | |")
                else:
                    lines.append(f"| {p} | {s} | {v} | − naive at step {td} (damage) | "
                                 + " | ".join(fmt(diff(at(td, m, v), at(td, m, "naive"))) for m in ms) + " |")
                tv = peak_step(cells, p, s, "linear_10shot", v)
                lines.append(f"| {p} | {s} | {v} | at val pick {tv} − naive at val pick {tn} | "
                             + " | ".join(fmt(diff(at(tv, m, v), at(tn, m, "naive"))) for m in ms) + " |")
                lines.append(f"| {p} | {s} | {v} | at val pick {tv} − base | "
                             + " | ".join(fmt(diff(at(tv, m, v), at(0, m, v))) for m in ms) + " |")
    return "\n".join(lines)


def render(cells: list[dict[str, Any]], cfg: CurveConfig, command: str, wall: float, notes: dict[str, Any]) -> str:
    from bench.common import load_avg

    seeds = sorted({c["seed"] for c in cells})
    arm = ("EfficientNet-Lite0, ImageNet weights, colour pair at "
           f"{notes.get('colour_size', {}).get('chosen', cfg.image_size)} px (sizes tried, base val k-NN: "
           f"{notes.get('colour_size', {}).get('base_val_knn', {})})" if cfg.arm == "realistic" else
           f"tiny convnet width {cfg.encoder_width}, {cfg.image_size} px grey, SimCLR base of "
           f"{cfg.pretrain_steps} steps × batch {cfg.pretrain_batch} per (pair, seed)")
    return "\n".join([
        f"# Damage curve ({cfg.arm} arm)",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {wall:.0f} s; load average at the end (1/5/15 min): {load_avg()}; seeds: {seeds} (n = {len(seeds)})",
        "",
        f"Setup: {arm}. Finetuning: SimCLR continued at lr {cfg.lr} (AdamW, cosine over {max(cfg.checkpoints)} steps), "
        f"batch min({cfg.batch_size}, size), one run per (pair, seed, size, variant) evaluated at steps "
        f"{cfg.checkpoints}; replay: uniform S of {cfg.replay_mult} × size, ρ = {cfg.replay_ratio}; mixing: "
        f"{cfg.mix_op} α = {cfg.mix_alpha}, fraction {cfg.mix_fraction}, target × source. Probes capped at "
        f"{cfg.eval_cap} images: {','.join(map(str, cfg.shots))}-shot linear (mean of {cfg.draws} label draws), "
        f"{cfg.knn_k}-NN; source k-NN: bank of {cfg.source_bank} source train images. Protocol: docs/results.md, "
        "\"Damage curve — protocol (pre-registered)\".",
        "",
        "Every ± is a 95 % Student-t interval over the n independent seeds (differences: paired by seed); "
        "`*` = the interval excludes 0. Choices (peak, damage, val pick) read the val split; numbers are test.",
        "",
        "## Analyses (protocol items 2–4)",
        "",
        analysis_table(cells),
        "",
        "## Claims (protocol item 6, rules fixed in advance)",
        "",
        *claims(cells),
        "",
        "## Replay and mixing (protocol item 5)",
        "",
        remedy_table(cells),
        "",
        "## Curves (test levels)",
        "",
        curve_table(cells),
        "",
    ])


# --- CLI ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> tuple[CurveConfig, argparse.Namespace]:
    d = CurveConfig()
    p = argparse.ArgumentParser(prog="python -m bench.damage_curve", description=__doc__.splitlines()[0])
    p.add_argument("--arm", choices=tuple(ARM_DEFAULTS), default="grey")
    for name in ("pairs", "sizes", "seeds", "variants", "checkpoints", "shots", "colour_sizes"):
        typ = _strs if name in ("pairs", "variants") else _ints
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None)
    for name in ("encoder_width", "image_size", "pretrain_steps", "pretrain_batch", "batch_size", "replay_mult",
                 "draws", "knn_k", "eval_cap", "source_bank", "source_limit", "colour_per_class"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "replay_ratio", "mix_alpha", "mix_fraction", "size_tolerance"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--mix-op", default=d.mix_op)
    p.add_argument("--device", default=d.device, help="cpu (default), cuda or cuda:N: where training and features run")
    p.add_argument("--store", default=".uft/damage_curve_store", help="local store dir for the ingested pairs")
    p.add_argument("--out", default=None, help="output path without extension (.md, .json); default "
                                               "bench/results/damage_curve[_realistic]")
    p.add_argument("--render-only", action="store_true", help="rewrite OUT.md from OUT.json")
    p.add_argument("--merge", type=_strs, default=[], help="comma list of result .json files → OUT.json/.md")
    a = p.parse_args(argv)
    given = {k: getattr(a, k) for k in asdict(d) if hasattr(a, k) and getattr(a, k) is not None}
    cfg = CurveConfig(**{**asdict(d), **ARM_DEFAULTS[a.arm], **given, "arm": a.arm})
    if a.out is None:
        a.out = str(RESULTS / ("damage_curve" if a.arm == "grey" else "damage_curve_realistic"))
    if a.arm == "grey":
        check_names(p, cfg.pairs, cfg.variants, VARIANTS)
    elif cfg.pairs != [COLOUR]:
        p.error(f"--pairs: the realistic arm has one pair, {COLOUR!r}")
    if not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        p.error(f"--device {cfg.device!r}: use cpu, cuda or cuda:N")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {cfg.device}: this machine has no CUDA device (torch.cuda.is_available() is False); "
                "run on a GPU machine or use --device cpu")
    if 0 not in cfg.checkpoints or len(cfg.checkpoints) < 2 or min(cfg.checkpoints) < 0:
        p.error(f"--checkpoints {cfg.checkpoints}: include 0 (the base) and at least one step > 0")
    return cfg, a


def main(argv: list[str] | None = None) -> None:
    cfg, a = parse_args(argv)
    out = Path(a.out)
    if a.merge:
        merged = merge_results(a.merge)
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.json").write_text(json.dumps(merged, indent=1))
        a.render_only = True
    if a.render_only:
        saved = json.loads(Path(f"{out}.json").read_text())
        text = render(saved["cells"], CurveConfig(**saved["config"]), saved["command"], saved["wall_s"], saved["notes"])
        Path(f"{out}.md").write_text(text)
        print(text)
        return
    torch.set_num_threads(1)
    command = "nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python -m bench.damage_curve " + " ".join(
        sys.argv[1:] if argv is None else argv)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    notes: dict[str, Any] = {}

    def save(cells: list[dict[str, Any]]) -> None:
        wall = time.perf_counter() - t0
        Path(f"{out}.json").write_text(json.dumps({"command": command, "config": asdict(cfg), "wall_s": round(wall, 1),
                                                   "notes": notes, "cells": cells}, indent=1))
        Path(f"{out}.md").write_text(render(cells, cfg, command, wall, notes))

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # per-step tracking off: many tiny runs
    os.environ.setdefault("UFT_PROGRESS", "off")
    cells, _ = run(cfg, a.store, log=lambda s: print(s, flush=True), on_cell=save, notes=notes)
    save(cells)
    print(Path(f"{out}.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
