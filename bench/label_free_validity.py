"""Issue 15: do the label-free signals rank finetuned encoders the way few-label probes would?

For each domain pair, one base encoder is pretrained on the source (SimCLR); then many finetuning
configurations — sensible ones and deliberately bad ones (learning rate too high, many steps on a
tiny target, a tiny batch, an objective without negatives that collapses, an untrained encoder) —
are run on the unlabelled target train split with the library's own trainer
(:func:`uft.ssl.train.train_ssl`). Every resulting encoder gets

- its label-free signals (:func:`uft.evaluate.label_free.encoder_signals`, on target *train* images
  without labels, plus source retention on held-out labelled source images), and
- the accuracy that labels would have given: the 5-shot linear probe on the target (mean over 5
  label draws, test split), and the 10-shot one.

and the script prints the Spearman ρ between each signal (sign-corrected so that "higher = better")
and the probe accuracies, per pair, and where the collapsed encoders land in each signal's ranking.

Run: ``nice -n 5 .venv/bin/python -m bench.label_free_validity`` (``--help``). Writes
``bench/results/label_free_validity.md`` and ``.json`` (every encoder's signals and accuracies).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS, header, table
from uft.ssl.base import ProjectedPairMethod, register


class AlignOnly(ProjectedPairMethod):
    """A deliberately broken objective: pull the two views together with no negatives, no predictor,
    no stop-gradient — the textbook way to collapse (bench only: registered when the bench runs,
    not on import, so importing this module does not add a method to `uft methods`)."""

    name = "align_only"

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return (torch.nn.functional.normalize(z1, dim=1) - torch.nn.functional.normalize(z2, dim=1)).pow(2).sum(1).mean()


@dataclass(frozen=True)
class Config:
    """One finetuning configuration (``steps=0``: the encoder as it starts)."""

    name: str
    method: str = "simclr"
    lr: float = 2e-3
    steps: int = 100
    batch: int = 128
    target_size: int = 0  # 0 = the whole target train split; else the first n of a fixed permutation
    init: str = "base"  # "base" = the pretrained encoder, "random" = fresh weights
    bad: str = ""  # why it is expected to be bad ("" = a sensible setting)


CONFIGS = [
    Config("base (no finetuning)", steps=0),
    Config("simclr lr5e-4", lr=5e-4),
    Config("simclr lr1e-3", lr=1e-3),
    Config("simclr lr2e-3", lr=2e-3),
    Config("simclr lr5e-3", lr=5e-3),
    Config("simclr lr2e-3 20 steps", steps=20),
    Config("simclr lr2e-3 50 steps", steps=50),
    Config("simclr lr2e-3 300 steps", steps=300),
    Config("simclr lr2e-3 batch 32", batch=32),
    Config("byol lr2e-3", method="byol"),
    Config("barlow lr2e-3", method="barlow"),
    Config("moco lr2e-3", method="moco"),
    Config("act lr2e-3", method="act"),
    Config("simclr lr2e-2", lr=2e-2, bad="lr high"),
    Config("simclr lr1e-1", lr=1e-1, bad="lr too high"),
    Config("simclr lr5e-1", lr=5e-1, bad="lr far too high"),
    Config("simclr 400 steps on 30 images", steps=400, target_size=30, lr=5e-3, bad="many steps, tiny target"),
    Config("simclr 150 steps on 100 images", steps=150, target_size=100, bad="small target"),
    Config("simclr batch 2", batch=2, steps=150, lr=5e-3, bad="tiny batch: one negative"),
    Config("simclr batch 4 lr2e-2", batch=4, steps=150, lr=2e-2, bad="tiny batch, high lr"),
    Config("align-only lr2e-3", method="align_only", bad="no negatives: collapses"),
    Config("align-only lr2e-2", method="align_only", lr=2e-2, bad="no negatives: collapses"),
    Config("byol lr1e-1", method="byol", lr=1e-1, bad="lr too high"),
    Config("barlow lr1e-1", method="barlow", lr=1e-1, bad="lr too high"),
    Config("scratch simclr 100 steps", init="random", bad="target-only SSL from scratch"),
    Config("random init, untrained", init="random", steps=0, bad="untrained"),
]

PAIRS = {
    # name: (source, target, source_limit, target_limit, target_test_fraction)
    "mnist-optdigits": ("mnist", "optdigits", 5000, 0, 0.4),
    "fashion-mnist": ("fashion_mnist", "mnist", 5000, 3000, 0.5),
}
SIGNALS = ("gate_score", "effective_rank", "view_retrieval", "alignment", "uniformity", "snd",
           "neighbourhood_agreement", "source_retention", "rank_mean")
#: The signals averaged (as ranks within a pair) by the bench-only composite ``rank_mean``.
RANK_MEAN_OF = ("effective_rank", "view_retrieval", "alignment", "uniformity", "source_retention")


@dataclass
class BenchConfig:
    pairs: list[str] = field(default_factory=lambda: list(PAIRS))
    width: int = 16
    image_size: int = 16
    pretrain_steps: int = 300
    pretrain_batch: int = 256
    draws: int = 5
    threads: int = 1
    limit_configs: int = 0  # 0 = all


def _ingest(spec: str, store: str, *, limit: int, test_fraction: float, size: int, role: str) -> str:
    from uft import steps

    return steps.ingest(spec, store, role=role, image_size=size, channels=1, limit=limit, test_fraction=test_fraction,
                        seed=0)["dataset_uri"]


def _train(enc: torch.nn.Module, images: torch.Tensor, c: Config, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """Finetune a copy of ``enc`` → (encoder, "" or the reason training stopped)."""
    from uft.errors import UftError
    from uft.ssl.base import build_method
    from uft.ssl.train import TrainConfig, train_ssl

    torch.manual_seed(seed)
    method = build_method(c.method, enc)
    try:
        train_ssl(method, images, TrainConfig(steps=c.steps, batch_size=c.batch, lr=c.lr, seed=seed,
                                              checkpoint_every=10**6, warmup_steps=min(10, c.steps)))
    except UftError as e:  # the loss became nan: keep the (diverged) weights, they are what would be published
        return method.encoder.eval(), str(e)
    return method.encoder.eval(), ""


def _probe(enc: torch.nn.Module, tgt, draws: int) -> dict[str, float]:
    from uft.evaluate.features import extract_features
    from uft.evaluate.linear import few_label_probe

    tr, te = tgt.subset("train"), tgt.subset("test")
    ftr, fte = extract_features(enc, tr.images), extract_features(enc, te.images)
    out = {}
    if not (torch.isfinite(ftr).all() and torch.isfinite(fte).all()):
        return {"probe_5shot": 0.0, "probe_10shot": 0.0}
    for k in (5, 10):
        out[f"probe_{k}shot"] = few_label_probe(ftr, tr.labels, fte, te.labels, k, draws=draws, seed=0)[0]
    return out


def run_pair(pair: str, cfg: BenchConfig, store: str, log=print) -> list[dict[str, Any]]:
    from uft.data.dataset import load_dataset
    from uft.evaluate.label_free import collapsed, encoder_signals
    from uft.models.encoders import TinyConvNet
    from uft.ssl.base import build_method
    from uft.ssl.train import TrainConfig, train_ssl

    register(AlignOnly)
    source, target, s_limit, t_limit, t_frac = PAIRS[pair]
    src = load_dataset(_ingest(source, store, limit=s_limit, test_fraction=0.1, size=cfg.image_size, role="source"))
    tgt = load_dataset(_ingest(target, store, limit=t_limit, test_fraction=t_frac, size=cfg.image_size, role="target"))
    s_tr, s_te = src.subset("train"), src.subset("test")
    rng = np.random.default_rng(0)
    s_tr_idx = torch.from_numpy(np.sort(rng.permutation(len(s_tr))[:2000]))
    source_eval = (s_tr.images[s_tr_idx], s_tr.labels[s_tr_idx], s_te.images[:500], s_te.labels[:500], len(src.classes))
    t_train = tgt.subset("train").images  # unlabelled for the signals and the finetuning
    perm = torch.from_numpy(np.random.default_rng(1).permutation(len(t_train)))

    t0 = time.perf_counter()
    torch.manual_seed(0)
    base = TinyConvNet(1, width=cfg.width)
    pre = build_method("simclr", base)
    train_ssl(pre, s_tr.images, TrainConfig(steps=cfg.pretrain_steps, batch_size=cfg.pretrain_batch, lr=2e-3, seed=0,
                                            checkpoint_every=10**6))
    base = pre.encoder.eval()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    log(f"[{pair}] pretrained base in {time.perf_counter() - t0:.0f}s")

    rows = []
    configs = CONFIGS[: cfg.limit_configs] if cfg.limit_configs else CONFIGS
    for c in configs:
        t1 = time.perf_counter()
        torch.manual_seed(1)
        enc = TinyConvNet(1, width=cfg.width)
        if c.init == "base":
            enc.load_state_dict(base_state)
        images = t_train[perm[: c.target_size]] if c.target_size else t_train
        stopped = ""
        if c.steps > 0:
            enc, stopped = _train(enc, images, c)
        sig = encoder_signals(enc, t_train, base=base, source=source_eval, max_images=1000)
        acc = _probe(enc, tgt, cfg.draws)
        row = {"pair": pair, "config": c.name, "bad": c.bad, "stopped": stopped, "collapse": collapsed(sig),
               **{k: v for k, v in sig.items()}, **acc, "seconds": time.perf_counter() - t1}
        rows.append(row)
        log(f"[{pair}] {c.name:34s} 5-shot {acc['probe_5shot']:.3f} gate {sig['gate_score']:.3f} "
            f"rank {sig['effective_rank']:.1f} retr {sig['view_retrieval']:.3f} "
            f"{'COLLAPSED: ' + row['collapse'] if row['collapse'] else ''}{' stopped: ' + stopped if stopped else ''} "
            f"({row['seconds']:.0f}s)")
    return rows


def _signed(rows: list[dict[str, Any]], name: str) -> np.ndarray:
    from uft.evaluate.label_free import HIGHER_IS_BETTER

    vals = np.array([r.get(name, np.nan) for r in rows], dtype=float)
    return vals if HIGHER_IS_BETTER.get(name, True) else -vals


def _add_rank_mean(pr: list[dict[str, Any]]) -> None:
    """A second composite, relative to the encoders of one pair (so usable for ranking a sweep, not
    for a single encoder): the mean of the sign-corrected ranks of :data:`RANK_MEAN_OF`."""
    from scipy.stats import rankdata

    ranks = [rankdata(np.nan_to_num(_signed(pr, n), nan=-np.inf)) for n in RANK_MEAN_OF]
    for r, v in zip(pr, np.mean(ranks, axis=0)):
        r["rank_mean"] = float(v)


def analyse(rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], list[list[Any]]]:
    """Per pair and signal: Spearman ρ with 5-/10-shot accuracy, where the collapsed encoders rank,
    and where the encoder with the worst probe accuracy ranks."""
    from scipy.stats import spearmanr

    out: dict[str, dict[str, float]] = {}
    table_rows = []
    for pair in sorted({r["pair"] for r in rows}):
        pr = [r for r in rows if r["pair"] == pair]
        _add_rank_mean(pr)
        acc5, acc10 = np.array([r["probe_5shot"] for r in pr]), np.array([r["probe_10shot"] for r in pr])
        worst = int(np.argmin(acc5))
        coll = [i for i, r in enumerate(pr) if r["collapse"]]
        for name in SIGNALS:
            s = _signed(pr, name)
            ok = np.isfinite(s)
            s_filled = np.where(ok, s, -np.inf)  # a missing value (diverged) ranks last
            rho5 = float(spearmanr(s_filled, acc5).statistic)
            rho10 = float(spearmanr(s_filled, acc10).statistic)
            order = np.argsort(-s_filled, kind="stable")  # best first
            rank_of = {int(i): p + 1 for p, i in enumerate(order)}
            coll_ranks = sorted(rank_of[i] for i in coll)
            last = all(rank_of[i] > len(pr) - len(coll) for i in coll) if coll else None
            out.setdefault(pair, {})[name] = rho5
            table_rows.append([pair, name, rho5, rho10, len(pr), ", ".join(map(str, coll_ranks)) or "—",
                               "—" if last is None else ("yes" if last else "no"), f"{rank_of[worst]} / {len(pr)}"])
    return out, table_rows


def markdown(rows: list[dict[str, Any]], cfg: BenchConfig, seconds: float) -> str:
    _, trows = analyse(rows)
    md = header("Label-free signals vs few-label probe accuracy (issue 15)")
    md += (f"- {len(rows)} encoders; tiny encoder width {cfg.width}, {cfg.image_size} px, base: SimCLR "
           f"{cfg.pretrain_steps} steps on the source; probes: 5-/10-shot linear, mean of {cfg.draws} label draws; "
           f"signals on ≤ 1000 unlabelled target train images; wall time {seconds / 60:.1f} min\n"
           "- ρ: Spearman between the signal (sign-corrected: higher = better; alignment and uniformity are negated) "
           "and the probe accuracy over all encoders of the pair. 'collapsed ranks': the positions (1 = best) the "
           "signal gives the encoders flagged collapsed by `uft.evaluate.label_free.collapsed`; 'last?': are they "
           "all ranked below every other encoder.\n\n")
    md += ("- `gate_score` (view retrieval × rank fraction) is what the promotion gate uses; it is defined per "
           "encoder. `rank_mean` is a bench-only composite: the mean rank of " + ", ".join(RANK_MEAN_OF) +
           " among the encoders of the pair. 'worst-probe rank': where the signal puts the encoder with the lowest "
           "5-shot accuracy (n / n = last).\n\n")
    md += table(["pair", "signal", "ρ vs 5-shot", "ρ vs 10-shot", "n", "collapsed ranks", "last?", "worst-probe rank"],
                trows)
    md += "\n## Every encoder\n\n"
    md += table(["pair", "config", "expected bad", "5-shot", "10-shot", "gate", "eff. rank", "view retr.", "align",
                 "unif", "SND", "kNN agree", "source kNN", "collapse"],
                [[r["pair"], r["config"], r["bad"] or "—", r["probe_5shot"], r["probe_10shot"], r["gate_score"],
                  r.get("effective_rank", float("nan")), r.get("view_retrieval", float("nan")),
                  r.get("alignment", float("nan")), r.get("uniformity", float("nan")), r.get("snd", float("nan")),
                  r.get("neighbourhood_agreement", float("nan")), r.get("source_retention", float("nan")),
                  r["collapse"] or ("stopped: nan loss" if r["stopped"] else "—")] for r in rows])
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", default=",".join(PAIRS))
    p.add_argument("--width", type=int, default=BenchConfig.width)
    p.add_argument("--pretrain-steps", type=int, default=BenchConfig.pretrain_steps)
    p.add_argument("--draws", type=int, default=BenchConfig.draws)
    p.add_argument("--threads", type=int, default=BenchConfig.threads)
    p.add_argument("--limit-configs", type=int, default=0, help="only the first N configurations (smoke runs)")
    p.add_argument("--out", default=str(RESULTS / "label_free_validity"), help="output path without extension")
    p.add_argument("--from-json", default="", help="only re-analyse the rows of an earlier run's .json")
    a = p.parse_args(argv)
    if a.from_json:
        rows = json.loads(Path(a.from_json).read_text())
        md = markdown(rows, BenchConfig(width=a.width, pretrain_steps=a.pretrain_steps, draws=a.draws), float("nan"))
        Path(a.out).with_suffix(".md").write_text(md)
        print(md)
        return 0
    cfg = BenchConfig(pairs=[s for s in a.pairs.split(",") if s], width=a.width, pretrain_steps=a.pretrain_steps,
                      draws=a.draws, threads=a.threads, limit_configs=a.limit_configs)
    torch.set_num_threads(cfg.threads)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as store:
        for pair in cfg.pairs:
            try:
                rows += run_pair(pair, cfg, store, log=lambda m: print(m, flush=True))
            except Exception as e:  # e.g. Fashion-MNIST not installed: report it, keep the other pair
                from uft.errors import UftError

                if not isinstance(e, UftError):
                    raise
                print(f"[{pair}] skipped: {e}", flush=True)
            out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=float))
    md = markdown(rows, cfg, time.perf_counter() - t0)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
