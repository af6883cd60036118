"""Holistic-transfer benchmark (METHODS.md §3) on the bundled digits, from the base and from the
finetuned encoder.

MNIST 10k (source, labelled, all 10 classes) → UCI optdigits (target, 16 px, 1 channel; training
labels only for the seen classes, default 0-4). The data, the SSL-pretrained base encoder and, per
seed, the encoder finetuned on the unlabelled target train split come from the pipeline's own steps
(:func:`uft.steps.ingest` / :func:`uft.steps.pretrain` / :func:`uft.steps.finetune`) on a local
store, so they are cached between runs. Per encoder and seed, a source classifier (encoder + head,
source labels) is trained, then every variant adapts it.

Splits: methods train on the seen-class target *train* split; the start check (``DegenerateStart``)
and PCV's γ read the target *val* split; the *test* split only reports. Every table entry is a mean
over seeds with a 95 % t-interval; the base-vs-finetuned comparison pairs the two encoders by seed.

Starts (``--init``): ``source`` (the source classifier as trained) and ``adabn`` (its BatchNorm
statistics first re-estimated on the unlabelled seen-class target training images; the ``adabn``
row is then dropped, since it equals ``source``). Usage::

    .venv/bin/python -m bench.holistic_table                      # 5 seeds, base + finetuned encoder
    .venv/bin/python -m bench.holistic_table --encoders base --init both --seeds 0,1,2

Writes ``<out>/holistic.md``, ``holistic.json`` and ``holistic_per_class.png`` (default
``bench/results``) and prints the markdown.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from uft.errors import UftError
from uft.transfer.holistic import (HolisticConfig, adabn, check_start, filter_seen, finetune, make_config,
                                   run_holistic, start_warning, train_source_classifier)

#: Table rows: name → HolisticConfig overrides. "frozen_head+distill" is the composition of the
#: frozen-classifier modifier with distillation; calibrated rows are naive + post-hoc γ.
VARIANTS: dict[str, dict[str, Any]] = {
    "source": {"method": "source"},
    "adabn": {"method": "adabn"},
    "naive": {"method": "naive"},
    "frozen_head": {"method": "frozen_head"},
    "lolsgd": {"method": "lolsgd"},
    "distill": {"method": "distill"},
    "rank_reg": {"method": "rank_reg"},
    "naive+ALG": {"method": "naive", "calibration": "alg"},
    "naive+PCV": {"method": "naive", "calibration": "pcv"},
    "frozen_head+distill": {"method": "distill", "frozen_head": True},
    "oracle": {"method": "oracle"},
}
INITS = ("source", "adabn")
TABLE_METRICS = ("overall", "seen", "unseen", "ausuc", "ncm")
ALL_METRICS = ("overall", "seen", "unseen", "seen_seen", "unseen_unseen", "ausuc", "ncm", "ncm_seen", "ncm_unseen")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class BenchData:
    """Float images (N, C, H, W) in [0, 1] with labels (N,): source train, target train / val / test."""

    source: tuple[torch.Tensor, torch.Tensor]
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ----------------------------------------------------------------------------- data + encoder


def load_bench_data(store: str, *, source: str = "mnist", target: str = "optdigits", image_size: int = 16,
                    source_limit: int = 0, target_limit: int = 0, seed: int = 0,
                    framing: str = "auto") -> tuple[BenchData, dict[str, Any]]:
    """Ingest source / target with the pipeline's defaults (test fraction 0.1 / 0.5, val fraction
    0.1 / 0.2 of the rest, ``framing``) into the local store ``store`` → (data, source ingest outputs
    for :func:`pretrained_encoder`); ``data.info["target_uri"]`` is the target for :func:`finetuned_encoder`."""
    from uft import steps
    from uft.data.dataset import load_dataset

    src_out = steps.ingest(source, store, role="source", image_size=image_size, channels=1, limit=source_limit,
                           test_fraction=0.1, val_fraction=0.1, seed=seed, framing=framing)
    tgt_out = steps.ingest(target, store, role="target", image_size=image_size, channels=1, limit=target_limit,
                           test_fraction=0.5, val_fraction=0.2, seed=seed, framing=framing)
    src = load_dataset(src_out["dataset_uri"]).subset("train")
    tgt = load_dataset(tgt_out["dataset_uri"])
    if list(src.classes) != list(tgt.classes):
        raise UftError(f"source classes {src.classes} differ from target classes {tgt.classes}: use datasets with one label set")
    tr, va, te = tgt.subset("train"), tgt.subset("val"), tgt.subset("test")
    data = BenchData((src.floats(), src.labels), (tr.floats(), tr.labels), (va.floats(), va.labels),
                     (te.floats(), te.labels), list(tgt.classes),
                     info={"source": source, "target": target, "image_size": image_size, "n_source_train": len(src),
                           "n_target_train": len(tr), "n_target_val": len(va), "n_target_test": len(te),
                           "framing": framing, "source_sha": src_out["dataset_sha"], "target_sha": tgt_out["dataset_sha"],
                           "target_uri": tgt_out["dataset_uri"]})
    return data, src_out


def pretrained_encoder(store: str, source_out: dict[str, Any], *, steps: int = 300, width: int = 32,
                       method: str = "simclr", seed: int = 0) -> nn.Module:
    """The pipeline's ``pretrain`` step (SSL on the source train split, cached in ``store``) →
    eval-mode encoder; ``steps=0`` → a randomly initialised TinyConvNet (seeded). The artifact's
    URI is on the module as ``encoder_uri`` ("" for a random init)."""
    from uft.models.encoders import build_encoder

    if steps == 0:
        torch.manual_seed(seed)
        enc = build_encoder("tiny", in_channels=1, width=width).eval()
        enc.encoder_uri = ""
        return enc
    from uft import steps as uft_steps
    from uft.models.artifact import load_encoder

    out = uft_steps.pretrain(source_out["dataset_uri"], source_out["dataset_sha"], store, encoder="tiny",
                             encoder_width=width, method=method, steps=steps, seed=seed, checkpoint_every=max(steps, 1))
    enc, _ = load_encoder(out["encoder_uri"])
    enc.encoder_uri = out["encoder_uri"]
    return enc.eval()


def finetuned_encoder(store: str, base_uri: str, target_uri: str, *, steps: int, batch_size: int, lr: float = 2e-3,
                      method: str = "simclr", seed: int = 0) -> nn.Module:
    """The pipeline's ``ssl_finetune`` step without replay or mixing (SSL continued on the unlabelled
    target train split; cached in ``store``) from the base at ``base_uri`` → eval-mode encoder."""
    from uft import steps as uft_steps
    from uft.models.artifact import load_encoder

    if not base_uri:
        raise UftError("the finetuned encoder needs a pretrained base: pass --pretrain-steps > 0")
    out = uft_steps.finetune(base_uri, target_uri, store, method=method, steps=steps, batch_size=batch_size, lr=lr,
                             seed=seed, checkpoint_every=max(steps, 1))
    enc, _ = load_encoder(out["encoder_uri"])
    return enc.eval()


# ----------------------------------------------------------------------------- the benchmark core


def start_model(encoder: nn.Module, data: BenchData, seen: Sequence[int], cfg: HolisticConfig,
                init: str) -> tuple[nn.Module, nn.Linear]:
    """Source classifier for one seed: a copy of ``encoder`` + new head trained on the source labels
    (``cfg.seed``, ``cfg.source_steps``); with ``init="adabn"`` its BN statistics are then
    re-estimated on the *seen-class* target training images (no labels used beyond the split)."""
    if init not in INITS:
        raise UftError(f"init {init!r} is unknown: choose one of {', '.join(INITS)}")
    enc = copy.deepcopy(encoder)
    head = train_source_classifier(enc, *data.source, data.num_classes, cfg)
    if init == "adabn":
        seen_x, _ = filter_seen(*data.train, seen)
        enc = adabn(enc, seen_x, cfg.eval_batch_size)
    return enc.eval(), head.eval()


def variants_for(init: str, names: Sequence[str]) -> list[str]:
    """Variant rows for a starting point: ``adabn`` is redundant after an AdaBN init."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UftError(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    return [n for n in names if not (init == "adabn" and n == "adabn")]


def start_name(encoder: str, init: str) -> str:
    """Table key of a start: the encoder's name, with ``+adabn`` for the AdaBN init."""
    return encoder if init == "source" else f"{encoder}+adabn"


class DegenerateStart(UftError):
    """The source classifier is near chance on the target, or predicts one class for most images:
    no holistic conclusion can be drawn from such a run (see ``start_check``)."""


def run_bench(data: BenchData, encoders: nn.Module | dict[str, Any], *, seen: Sequence[int], seeds: Sequence[int],
              variants: Sequence[str] = tuple(VARIANTS), inits: Sequence[str] = ("source",),
              base: dict[str, Any] | None = None, allow_degenerate: bool = False,
              on_result: Callable[[str, str, int, dict[str, Any]], None] | None = None,
              checks: dict[str, dict[int, dict]] | None = None) -> dict[str, dict[str, list[dict]]]:
    """→ {start: {variant: [result per seed]}}, start = :func:`start_name` (encoder, init); a result
    is :func:`run_holistic`'s dict plus ``seed``, ``start``, ``encoder``, ``init`` and ``seconds``.

    ``encoders``: {name: module or seed → module} (a bare module means {"base": module}). ``base``
    holds HolisticConfig overrides shared by every variant (steps, lrs, LOLSGD knobs, ...). Per
    encoder and seed one source classifier is trained and shared by both inits, and every start is
    checked on the target *val* split (:func:`check_start`; recorded in ``checks[start][seed]``
    with the test accuracy beside it, for reporting only); a degenerate source start raises
    :class:`DegenerateStart` before any of its variants runs, unless ``allow_degenerate``. Variants
    that differ only in calibration share one finetune (deterministic in the seed, so their rows
    are those of separate runs). ``on_result(start, variant, seed, result)`` follows each run."""
    base = dict(base or {})
    checks = {} if checks is None else checks
    encs = {"base": encoders} if isinstance(encoders, nn.Module) else dict(encoders)
    out: dict[str, dict[str, list[dict]]] = {start_name(e, i): {v: [] for v in variants_for(i, variants)}
                                             for e in encs for i in inits}
    seen_train = filter_seen(*data.train, seen)
    for seed in seeds:
        cfg0 = make_config(**{**base, "seed": seed})
        for ename, source in encs.items():
            encoder = source if isinstance(source, nn.Module) else source(seed)
            t0 = time.perf_counter()
            enc_src, head = start_model(encoder, data, seen, cfg0, "source")
            src_seconds = time.perf_counter() - t0
            # both starts are checked (and reported) whichever inits run
            models = {"source": enc_src, "adabn": adabn(enc_src, seen_train[0], cfg0.eval_batch_size)}
            for init, enc in models.items():
                c = check_start(enc, head, *data.val, data.num_classes, cfg0.eval_batch_size)
                test_acc = check_start(enc, head, *data.test, data.num_classes, cfg0.eval_batch_size)["accuracy"]
                checks.setdefault(start_name(ename, init), {})[seed] = {**c, "split": "val", "test_accuracy": test_acc,
                                                                        "source_seconds": round(src_seconds, 3)}
            src_check = checks[start_name(ename, "source")][seed]
            if src_check["degenerate"] and not allow_degenerate:
                raise DegenerateStart(f"seed {seed} ({ename} encoder): {start_warning(src_check)} No table is written: "
                                      "fix the source recipe or the framing (or pass --allow-degenerate to inspect the run)")
            for init in inits:
                start, enc = start_name(ename, init), models[init]
                adapted: dict[str, tuple[nn.Module, nn.Linear]] = {}
                for name in out[start]:
                    cfg = make_config(**{**base, **VARIANTS[name], "seed": seed})
                    t0 = time.perf_counter()
                    key = cfg.model_copy(update={"calibration": "none"}).model_dump_json()
                    if key not in adapted:
                        adapted[key] = finetune(enc, head, *(data.train if cfg.method == "oracle" else seen_train),
                                                seen, cfg)
                    res = run_holistic(cfg, enc, head, data.train, data.test, seen, data.num_classes,
                                       target_val=data.val, adapted=adapted[key])
                    res.update(seed=seed, start=start, encoder=ename, init=init,
                               seconds=round(time.perf_counter() - t0, 3), source_seconds=round(src_seconds, 3))
                    out[start][name].append(res)
                    if on_result is not None:
                        on_result(start, name, seed, res)
    return out


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std (ddof=1; 0 for one value) and the half-width ``hw`` of the 95 % t-interval
    of the mean (nan for one value) over the finite values."""
    v = np.asarray([x for x in values if isinstance(x, (int, float)) and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "hw": float("nan"), "n": 0}
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "hw": t_halfwidth(std, int(v.size)), "n": int(v.size)}


def t_halfwidth(std: float, n: int, level: float = 0.95) -> float:
    """Half-width of the ``level`` t-interval of a mean of n values with sample std ``std``."""
    if n < 2:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n))


def binomial_halfwidth(p: float, n: int, z: float = 1.96) -> float:
    """95 % normal-approximation half-width of one accuracy p measured on n images: z·√(p(1−p)/n)."""
    return float(z * math.sqrt(max(p * (1 - p), 0.0) / n)) if n else float("nan")


def _init_of(start: str) -> str:
    return "adabn" if start.endswith("+adabn") else "source"


def _encoder_of(start: str) -> str:
    return start.removesuffix("+adabn")


#: The label-free reference row of each init's table: the AdaBN model (the ``adabn`` row from the
#: source start; the start itself, row ``source``, from the AdaBN start).
ADABN_ROW = {"source": "adabn", "adabn": "source"}


def _paired(results: list[dict], ref: dict[int, dict], metric: str) -> dict[str, float]:
    return _mean_std([r[metric] - ref[r["seed"]][metric] for r in results if r["seed"] in ref])


def summarise(runs: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{start: {variant: {metric: {mean, std, hw, n}, "per_class": (C,) mean over seeds,
    "d_unseen_vs_naive" / "d_overall_vs_naive" / "d_overall_vs_adabn": paired per-seed
    differences (AdaBN: :data:`ADABN_ROW`), "gamma", "pcv_fallback", "seconds"}}}."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for start, rows in runs.items():
        naive = {r["seed"]: r for r in rows.get("naive", [])}
        ada_name = ADABN_ROW[_init_of(start)]
        ada = {r["seed"]: r for r in rows.get(ada_name, [])}
        summary[start] = {}
        for name, results in rows.items():
            s: dict[str, Any] = {m: _mean_std([r[m] for r in results]) for m in ALL_METRICS}
            pcs = np.array([[np.nan if v is None else v for v in r["per_class"]] for r in results], dtype=float)
            with np.errstate(all="ignore"), _quiet_nanmean():
                s["per_class"] = [None if math.isnan(v) else float(v) for v in np.nanmean(pcs, axis=0)]
            if naive and name != "naive":
                s["d_unseen_vs_naive"] = _paired(results, naive, "unseen")
                s["d_overall_vs_naive"] = _paired(results, naive, "overall")
            if ada and name != ada_name:
                s["d_overall_vs_adabn"] = _paired(results, ada, "overall")
            for k in ("gamma", "gamma_alg", "pcv_fallback", "pcv_feasible_splits"):
                if any(r.get(k) is not None for r in results):
                    s[k] = _mean_std([r[k] for r in results if r.get(k) is not None])
            s["n_test"] = int(results[0].get("n_test", 0)) if results else 0
            s["seconds"] = _mean_std([r["seconds"] for r in results])
            summary[start][name] = s
    return summary


ENCODER_METRICS = ("overall", "seen", "unseen", "ausuc", "ncm")


def compare_encoders(runs: dict[str, dict[str, list[dict]]], a: str = "finetuned", b: str = "base") -> dict[str, dict]:
    """Per init and variant, encoder ``a`` minus encoder ``b`` paired by seed (each seed's two rows
    share the seed of the source classifier and of the holistic finetune; only the encoder under
    them differs) → {init: {variant: {metric: {mean, std, hw, n}}}}; inits with both encoders only."""
    out: dict[str, dict] = {}
    for init in ("source", "adabn"):
        ra, rb = runs.get(start_name(a, init)), runs.get(start_name(b, init))
        if not ra or not rb:
            continue
        out[init] = {}
        for name in ra:
            if name not in rb:
                continue
            ref = {r["seed"]: r for r in rb[name]}
            out[init][name] = {m: _paired(ra[name], ref, m) for m in ENCODER_METRICS}
    return out


class _quiet_nanmean:
    """Silence numpy's "mean of empty slice" for classes without test samples (→ nan on purpose)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _fmt(s: dict[str, float] | None, signed: bool = False) -> str:
    """"mean ± 95 % t half-width" (the mean alone for one value)."""
    if not s or s["n"] == 0:
        return "–"
    m = f"{s['mean']:+.3f}" if signed else f"{s['mean']:.3f}"
    hw = s.get("hw", float("nan"))
    return m if s["n"] < 2 or not math.isfinite(hw) else f"{m} ± {hw:.3f}"


def start_title(start: str) -> str:
    enc = _encoder_of(start)
    what = "AdaBN-adapted source classifier" if _init_of(start) == "adabn" else "source classifier"
    return f"Start: {what} on the {enc} encoder"


def _row_label(start: str, name: str) -> str:
    return "source (AdaBN)" if _init_of(start) == "adabn" and name == "source" else name


def markdown_tables(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One markdown table per start (never mixed): mean ± 95 % t-interval over seeds of the table
    metrics (test split), the paired differences to naive and to the label-free AdaBN model, γ of
    calibrated rows and seconds per run."""
    blocks = []
    for start, rows in summary.items():
        head = ["method", *TABLE_METRICS, "Δunseen vs naive", "Δoverall vs naive", "Δoverall vs AdaBN", "γ", "s/run"]
        lines = [f"### {start_title(start)}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for name, s in rows.items():
            cells = [_row_label(start, name), *(_fmt(s[m]) for m in TABLE_METRICS),
                     *(_fmt(s.get(k), signed=True) for k in ("d_unseen_vs_naive", "d_overall_vs_naive", "d_overall_vs_adabn")),
                     _fmt(s.get("gamma")), f"{s['seconds']['mean']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def encoder_table(comparison: dict[str, dict], summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: per variant, overall accuracy from each encoder and the paired differences
    finetuned − base (mean ± 95 % t-interval over seeds) of the encoder metrics."""
    blocks = []
    for init, rows in comparison.items():
        b, f = summary[start_name("base", init)], summary[start_name("finetuned", init)]
        head = ["method", "overall (base)", "overall (finetuned)", *(f"Δ{m}" for m in ENCODER_METRICS)]
        title = "AdaBN-adapted source classifier" if init == "adabn" else "source classifier"
        lines = [f"### Finetuned − base encoder (start: {title}), paired by seed", "",
                 "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for name, d in rows.items():
            lines.append("| " + " | ".join([_row_label(start_name("base", init), name),
                                            _fmt(b[name]["overall"]), _fmt(f[name]["overall"]),
                                            *(_fmt(d[m], signed=True) for m in ENCODER_METRICS)]) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def pcv_table(runs: dict[str, dict[str, list[dict]]]) -> str:
    """Markdown: PCV's choice per start and seed — γ (mean over feasible splits), ALG's γ, the
    floors (source accuracy on the held-out half's val images), feasible splits, fallback."""
    lines = ["| start | seed | γ PCV | γ ALG | floors | feasible splits | fallback to ALG |", "|---" * 7 + "|"]
    for start, rows in runs.items():
        for r in rows.get("naive+PCV", []):
            p = r.get("pcv") or {}
            floors = ", ".join(f"{sp['floor']:.2f}" for sp in p.get("splits", []))
            lines.append(f"| {start} | {r['seed']} | {r['gamma']:.2f} | {r.get('gamma_alg', float('nan')):.2f} | "
                         f"{floors} | {p.get('feasible_splits', '–')}/{len(p.get('splits', []))} | "
                         f"{'**yes**' if p.get('fallback') else 'no'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def per_class_png(summary: dict[str, dict[str, dict[str, Any]]], seen: Sequence[int], classes: Sequence[str],
                  n_seeds: int) -> bytes:
    """Heatmap panel per start: variants × classes, mean per-class accuracy over seeds."""
    from uft.report import per_class_heatmap

    panels = {start_title(st): {_row_label(st, n): s["per_class"] for n, s in rows.items()}
              for st, rows in summary.items()}
    return per_class_heatmap(panels, seen, classes,
                             title=f"Per-class accuracy on the optdigits test split (mean of {n_seeds} seed(s))")


# ----------------------------------------------------------------------------- CLI


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UftError(f"{name} {text!r} is not a comma-separated list of integers: pass e.g. 0,1,2") from None


ENCODERS = ("base", "finetuned")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.holistic_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (finetuned encoder, source classifier, "
                   "holistic finetuning)")
    p.add_argument("--seen", default="0,1,2,3,4", help="target classes with training labels")
    p.add_argument("--encoders", default=",".join(ENCODERS),
                   help="encoders under the source classifier: base (SSL on the source) and/or finetuned (base + SSL "
                        "on the unlabelled target train split, per seed)")
    p.add_argument("--init", choices=("source", "adabn", "both"), default="source",
                   help="starting model for every variant (both: two tables per encoder)")
    p.add_argument("--adabn-init", action="store_true", help="shorthand for --init adabn")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated rows to run")
    p.add_argument("--steps", type=int, default=150, help="finetuning SGD steps (pipeline's holistic_steps)")
    p.add_argument("--source-steps", type=int, default=600, help="source-classifier training steps (HolisticConfig default)")
    p.add_argument("--pretrain-steps", type=int, default=300, help="SSL pretraining steps (0 = random init)")
    p.add_argument("--finetune-steps", type=int, default=200, help="SSL finetuning steps on the target (pipeline default)")
    p.add_argument("--finetune-batch", type=int, default=256, help="SSL finetuning batch size (pipeline default)")
    p.add_argument("--width", type=int, default=32, help="TinyConvNet width")
    p.add_argument("--source-limit", type=int, default=0, help="0 = all 10k MNIST images")
    p.add_argument("--target-limit", type=int, default=0, help="0 = all 1,797 optdigits images")
    p.add_argument("--store", default=str(Path(__file__).resolve().parents[1] / ".uft" / "bench_store"),
                   help="local store for ingest/pretrain/finetune outputs (cached between runs)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="where holistic.md/.json/_per_class.png go")
    p.add_argument("--framing", default="auto", choices=("auto", "content_box", "keep"),
                   help="ingest framing (auto: MNIST cropped to its 20x20 content box, like the UCI digits)")
    p.add_argument("--allow-degenerate", action="store_true",
                   help="write the tables even when a source classifier is degenerate on the target (marked as such; "
                        "never for the results page)")
    p.add_argument("--from-json", default="", metavar="PATH[,PATH...]",
                   help="re-render holistic.md/.png/.json into --out from saved holistic.json files (no training); "
                        "several files of one configuration on disjoint seeds are merged")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is ~10x faster than 2 when the 2 cores are shared (measured)")
    args = p.parse_args(argv)
    if args.adabn_init:
        args.init = "adabn"
    args.encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    if not args.encoders or set(args.encoders) - set(ENCODERS):
        p.error(f"--encoders {','.join(args.encoders)!r}: choose from {', '.join(ENCODERS)}")
    return args


def _write(out: Path, summary: dict, meta: dict, runs: dict, classes: Sequence[str]) -> str:
    md = render_markdown(summary, meta, runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "holistic.md").write_text(md)
    (out / "holistic.json").write_text(json.dumps(_json_safe({"meta": meta, "summary": summary, "runs": runs}),
                                                  indent=1, allow_nan=False))
    (out / "holistic_per_class.png").write_bytes(per_class_png(summary, meta["seen"], classes, len(meta["seeds"])))
    return md


def merge_saved(saved: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, dict[str, list[dict]]]]:
    """(meta, runs) of several holistic.json files of the same configuration, each (start, seed) in one
    file only (e.g. seeds or encoders run in parallel) → one (meta, runs): runs concatenated per start
    and variant in seed order, start checks, seeds and encoders united; wall = the longest run, CPU =
    the sum, commands listed."""
    if not saved:
        raise UftError("no holistic.json given: pass one or more paths to --from-json")
    fixed = ("seen", "inits", "config", "pretrain_steps", "finetune_steps", "finetune_batch", "width")
    first = saved[0]["meta"]
    for other in saved[1:]:
        diff = [k for k in fixed if other["meta"].get(k) != first.get(k)]
        if diff:
            raise UftError(f"holistic.json files differ in {diff}: merge only runs of one configuration")
    pairs = [(st, sd) for x in saved for st, c in x["meta"]["start_checks"].items() for sd in c]
    if len(set(pairs)) != len(pairs):
        raise UftError(f"holistic.json files share (start, seed) pairs {sorted(pairs)}: merge only disjoint runs")
    seeds = sorted({sd for x in saved for sd in x["meta"]["seeds"]})
    runs: dict[str, dict[str, list[dict]]] = {}
    for x in saved:
        for start, rows in x["runs"].items():
            for name, results in rows.items():
                runs.setdefault(start, {}).setdefault(name, []).extend(results)
    for rows in runs.values():
        for results in rows.values():
            results.sort(key=lambda r: r["seed"])
    meta = dict(first)
    metas = [x["meta"] for x in saved]
    encoders = [e for e in ENCODERS if any(e in m.get("encoders", ["base"]) for m in (x["meta"] for x in saved))]
    meta.update(seeds=seeds, encoders=encoders, commands=[m["command"] for m in metas],
                command=" & ".join(m["command"] for m in metas),
                wall_seconds=max(m["wall_seconds"] for m in metas),
                cpu_seconds=round(sum(m.get("cpu_seconds") or 0.0 for m in metas), 1),
                pretrain_seconds=max(m["pretrain_seconds"] for m in metas),
                finetune_seconds={k: v for m in metas for k, v in (m.get("finetune_seconds") or {}).items()},
                start_checks={st: {sd: c for m in metas for sd, c in m["start_checks"].get(st, {}).items()}
                              for st in {st for m in metas for st in m["start_checks"]}},
                degenerate=any(m.get("degenerate") for m in metas),
                date_utc=max(m["date_utc"] for m in metas))
    meta["start_checks"] = {st: dict(sorted(c.items(), key=lambda kv: int(kv[0])))
                            for st, c in sorted(meta["start_checks"].items())}
    return meta, runs


def rerender(path: str, out: Path) -> str:
    """Summary, tables and plot recomputed from the runs saved in one or more (comma-separated)
    holistic.json files (same measurements, current rendering; several files are merged by
    :func:`merge_saved`) → the markdown. Refuses a degenerate run like the benchmark itself."""
    paths = [p for p in path.split(",") if p.strip()]
    meta, runs = merge_saved([json.loads(Path(p).read_text()) for p in paths])
    if meta.get("degenerate"):
        raise DegenerateStart(f"{path} was measured around a degenerate source classifier: it cannot be re-rendered "
                              "as a table (rerun the benchmark)")
    n_classes = len(next(iter(next(iter(runs.values())).values()))[0]["per_class"])
    return _write(out, summarise(runs), meta, runs, [str(c) for c in range(n_classes)])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        try:
            print(rerender(args.from_json, Path(args.out)))
        except DegenerateStart as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    torch.set_num_threads(args.threads)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # a benchmark, not a tracked pipeline run
    t_start = time.perf_counter()
    seeds, seen = _ints(args.seeds, "--seeds"), _ints(args.seen, "--seen")
    inits = list(INITS) if args.init == "both" else [args.init]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    base = {"steps": args.steps, "source_steps": args.source_steps}
    make_config(**base)  # fail fast on bad knobs

    data, src_out = load_bench_data(args.store, source_limit=args.source_limit, target_limit=args.target_limit,
                                    framing=args.framing)
    t0 = time.perf_counter()
    encoder = pretrained_encoder(args.store, src_out, steps=args.pretrain_steps, width=args.width)
    pretrain_s = time.perf_counter() - t0
    print(f"data {data.info} | pretrain {pretrain_s:.1f}s", file=sys.stderr, flush=True)
    finetune_s: dict[int, float] = {}

    def finetuned(seed: int) -> nn.Module:
        t = time.perf_counter()
        enc = finetuned_encoder(args.store, encoder.encoder_uri, data.info["target_uri"], steps=args.finetune_steps,
                                batch_size=args.finetune_batch, seed=seed)
        finetune_s[seed] = round(time.perf_counter() - t, 1)
        return enc

    sources = {"base": encoder, "finetuned": finetuned}
    encoders = {e: sources[e] for e in args.encoders}

    def progress(start: str, name: str, seed: int, r: dict[str, Any]) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] seed {seed} {start:16s} {name:20s} overall {r['overall']:.3f} "
              f"seen {r['seen']:.3f} unseen {r['unseen']:.3f} ausuc {r['ausuc']:.3f} ({r['seconds']:.1f}s)",
              file=sys.stderr, flush=True)

    checks: dict[str, dict[int, dict]] = {}
    try:
        runs = run_bench(data, encoders, seen=seen, seeds=seeds, variants=variants, inits=inits, base=base,
                         allow_degenerate=args.allow_degenerate, on_result=progress, checks=checks)
    except DegenerateStart as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarise(runs)
    wall = time.perf_counter() - t_start
    command = ".venv/bin/python -m bench.holistic_table" + ("" if argv is None and len(sys.argv) <= 1 else
                                                            " " + shlex.join(list(argv) if argv is not None else sys.argv[1:]))
    cfg = make_config(**base).model_dump()
    info = {k: v for k, v in data.info.items() if k != "target_uri"}  # a store path, not a result
    meta = {"command": command, "wall_seconds": round(wall, 1), "pretrain_seconds": round(pretrain_s, 1),
            "cpu_seconds": round(time.process_time(), 1), "finetune_seconds": finetune_s,
            "seeds": seeds, "seen": seen, "inits": inits, "encoders": args.encoders, "data": info,
            "threads": args.threads, "pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps,
            "finetune_batch": args.finetune_batch, "width": args.width, "config": cfg,
            "start_checks": {st: {str(k): v for k, v in c.items()} for st, c in checks.items()},
            "degenerate": any(c["degenerate"] for st, cs in checks.items() if _init_of(st) == "source"
                              for c in cs.values()),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "host": platform.machine()}
    print(_write(Path(args.out), summary, meta, runs, data.classes))
    return 0


def _json_safe(obj: Any) -> Any:
    """nan/inf → None so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _beats(rows: dict[str, dict[str, Any]], key: str, skip: Sequence[str], min_effect: float = 0.01) -> list[str]:
    """Rows whose paired difference ``key`` has its whole 95 % interval above 0 and a mean above ``min_effect``."""
    return [f"{n} ({_fmt(s[key], signed=True)})" for n, s in rows.items()
            if n not in skip and key in s and s[key]["n"] > 1 and s[key]["mean"] - s[key]["hw"] > 0
            and s[key]["mean"] > min_effect]


def reading(summary: dict[str, dict[str, dict[str, Any]]], comparison: dict[str, dict] | None = None) -> list[str]:
    """Markdown bullets computed from the numbers (so a rerun can never contradict them)."""
    out = []
    for start, rows in summary.items():
        naive = rows.get("naive")
        if naive is None:
            continue
        skip = ("source", "adabn", "naive", "oracle")
        title = start_title(start)
        unseen = _beats(rows, "d_unseen_vs_naive", skip)
        overall = _beats(rows, "d_overall_vs_naive", skip)
        out.append(f"- {title}: rows above naive (unseen {naive['unseen']['mean']:.3f}, overall "
                   f"{naive['overall']['mean']:.3f}) with the paired 95 % interval above 0 and a mean above 0.01 — "
                   "unseen: " + (", ".join(unseen) or "none") + "; overall: " + (", ".join(overall) or "none") + ".")
        ada = ADABN_ROW[_init_of(start)]
        if ada in rows:
            above = _beats(rows, "d_overall_vs_adabn", ("oracle",))
            out.append(f"- {title}: rows above the label-free AdaBN model (overall {rows[ada]['overall']['mean']:.3f}) "
                       "with the paired 95 % interval above 0: " + (", ".join(above) or "none") + ".")
    for init, rows in (comparison or {}).items():
        up, down, tied = [], [], []
        for name, d in rows.items():
            o = d["overall"]
            if o["n"] < 2 or not math.isfinite(o["hw"]):
                continue
            (up if o["mean"] - o["hw"] > 0 else down if o["mean"] + o["hw"] < 0 else tied).append(
                f"{_row_label(start_name('base', init), name)} ({_fmt(o, signed=True)})")
        out.append(f"- Finetuned − base encoder, overall, paired by seed ({'AdaBN' if init == 'adabn' else 'source'} "
                   "start): interval above 0: " + (", ".join(up) or "none") + "; below 0: " + (", ".join(down) or "none")
                   + "; containing 0: " + (", ".join(tied) or "none") + ".")
    return out + [""] if out else []


def start_table(start_checks: dict[str, dict[str, dict]]) -> str:
    """Markdown: each seed's start models before any label is used — accuracy on the val split (what
    the degenerate-start check reads) and on the test split (reported only), the most predicted
    class's share on val, then mean ± 95 % t-interval over seeds."""
    starts = list(start_checks)
    seeds = sorted({s for st in starts for s in start_checks[st]}, key=int)
    head = ["seed", *(f"{st} val / test" for st in starts), "top-class share (val)", "degenerate"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for sd in seeds:
        row = [sd]
        for st in starts:
            c = start_checks[st].get(sd)
            row.append(f"{c['accuracy']:.3f} / {c.get('test_accuracy', float('nan')):.3f}" if c else "–")
        srcs = [start_checks[st][sd] for st in starts if _init_of(st) == "source" and sd in start_checks[st]]
        row += [", ".join(f"{c['top_class_share']:.2f}" for c in srcs),
                "**yes**" if any(c.get("degenerate") for c in srcs) else "no"]
        lines.append("| " + " | ".join(row) + " |")
    cells = [f"{_fmt(_mean_std([start_checks[st][sd]['accuracy'] for sd in seeds if sd in start_checks[st]]))} / "
             f"{_fmt(_mean_std([start_checks[st][sd].get('test_accuracy', float('nan')) for sd in seeds if sd in start_checks[st]]))}"
             for st in starts]
    lines.append("| mean ± 95 % CI | " + " | ".join(cells) + " | | |")
    return "\n".join(lines)


def render_markdown(summary: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any],
                    runs: dict[str, dict[str, list[dict]]] | None = None) -> str:
    d, c = meta["data"], meta["config"]
    runs = runs or {}
    warn = ([f"> **WARNING: degenerate start** — a source classifier is near chance or collapsed onto one class on "
             "the target (see below). Written with --allow-degenerate for inspection: these rows say nothing about "
             "the methods and must not go into the results page.", ""] if meta.get("degenerate") else [])
    starts = (["## Start models before adaptation (val split: the check; test split: reported only)", "",
               start_table(meta["start_checks"]), ""] if meta.get("start_checks") else [])
    comparison = compare_encoders(runs) if runs else {}
    n_test = d.get("n_target_test") or 0
    binom = (f"One accuracy on the {n_test} test images carries a binomial 95 % half-width of "
             f"{binomial_halfwidth(0.5, n_test):.3f} at p = 0.5 and {binomial_halfwidth(0.9, n_test):.3f} at p = 0.9 "
             f"(seen or unseen accuracy, on about half of them: {binomial_halfwidth(0.5, n_test // 2):.3f} / "
             f"{binomial_halfwidth(0.9, n_test // 2):.3f}); the intervals over seeds below include this test-sampling "
             "error only as far as it varies between seeds (the test images are the same for every seed)."
             if n_test else "")
    encs = meta.get("encoders", ["base"])
    ft = (f" The finetuned encoder continues SimCLR on the unlabelled target train split from the base for "
          f"{meta.get('finetune_steps')} steps of batch {meta.get('finetune_batch')} (no replay or mixing), once per seed."
          if "finetuned" in encs else "")
    pcv = pcv_table(runs) if runs else ""
    return "\n".join([
        "# Holistic transfer on the bundled digits",
        "",
        *warn,
        f"{d.get('source')} ({d.get('n_source_train')} source-train images, all classes labelled) → "
        f"{d.get('target')} ({d.get('n_target_train')} target-train images, labels used only for seen classes "
        f"{meta['seen']}; {d.get('n_target_val')} val images; {d.get('n_target_test')} test images), "
        f"{d.get('image_size')} px, 1 channel. Encoders: {', '.join(encs)}. TinyConvNet width {meta['width']}, "
        f"SSL-pretrained (SimCLR, {meta['pretrain_steps']} steps) on the source.{ft} On each encoder, per seed, a source "
        f"classifier trained with source labels: {c['source_steps']} SGD steps of batch {c['source_batch_size']}, lr "
        f"{c['source_lr']} with {c['source_warmup']:.0%} warm-up then cosine, weight decay {c['source_weight_decay']}, "
        f"label smoothing {c['source_label_smoothing']}, "
        f"{'augmentation (random resized crop, rotation, photometric jitter)' if c['source_augment'] else 'no augmentation'}; "
        f"framing {d.get('framing', 'keep')}. "
        f"Holistic finetuning: {c['steps']} SGD steps, lr {c['lr']} (backbone ×{c['backbone_lr_mult']}), batch "
        f"{c['batch_size']}, cosine; LOLSGD {c['lolsgd_rounds']} rounds × {c['lolsgd_local_models']} local models, leave-out "
        f"{c['lolsgd_leave_out']}; distill T={c['distill_temperature']}, weight 1; rank_reg weight 0.1; "
        f"PCV {c['pcv_splits']} splits. No hyperparameter, γ or stopping point is chosen on the test split.",
        "",
        f"Splits: every method trains on the seen-class target train split; the degenerate-start check and PCV's γ "
        "read the val split; ALG's γ reads the finetuning (train) logits, as defined; every accuracy in the tables is "
        "on the test split. Mean ± 95 % t-interval over seeds "
        f"{meta['seeds']} (the target split and the base encoder are fixed; the seed drives the finetuned encoder, the "
        "source classifier and the holistic finetuning). Accuracies use the argmax over all 10 logits (calibrated "
        "logits for the +ALG/+PCV rows); AUSUC is calibration-invariant; NCM is the all-label feature probe. Δ columns "
        "are per-seed paired differences: unseen / overall accuracy minus naive's, and overall accuracy minus the "
        "label-free AdaBN model's (the adabn row, or the AdaBN start itself). Starts are never mixed in one table.",
        "",
        binom,
        "",
        *starts,
        markdown_tables(summary),
        "",
        *([encoder_table(comparison, summary), ""] if comparison else []),
        *(["### PCV's choice of γ (split models scored on the seen-class val images)", "", pcv, ""] if pcv else []),
        *reading(summary, comparison),
        "![per-class accuracy](holistic_per_class.png)",
        "",
        (f"Command: `{meta['command']}` — wall {meta['wall_seconds']:.0f} s" if len(meta.get("commands", [])) < 2 else
         "Commands (run in parallel on disjoint seeds or encoders, then merged with `.venv/bin/python -m bench.holistic_table "
         "--from-json <their holistic.json, comma-separated>`): " + "; ".join(f"`{c}`" for c in meta["commands"])
         + f" — wall {meta['wall_seconds']:.0f} s (the longest)")
        + f", CPU {meta.get('cpu_seconds', float('nan')):.0f} s in all (SSL pretraining "
        f"{meta['pretrain_seconds']:.0f} s wall, cached in the store after the first run), torch threads "
        f"{meta['threads']}, {meta['date_utc']}.",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
