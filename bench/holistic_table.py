"""Holistic-transfer benchmark table (METHODS.md §3) on the bundled digits.

MNIST 10k (source, labelled, all 10 classes) → UCI optdigits (target, 16 px, 1 channel; training
labels only for the seen classes, default 0-4). The data and the SSL-pretrained encoder come from
the pipeline's own steps (:func:`uft.steps.ingest` / :func:`uft.steps.pretrain`) on a local
store, so they are cached between runs. Per seed, a source classifier (pretrained encoder + head,
source labels) is trained, then every variant adapts it and is evaluated on the target test split.

Two starting points (``--init``): ``source`` (the source classifier as trained) and ``adabn``
(its BatchNorm statistics first re-estimated on the unlabelled seen-class target training images;
the ``adabn`` row is then dropped, since it equals ``source``). Usage::

    .venv/bin/python -m bench.holistic_table                      # 3 seeds, both inits
    .venv/bin/python -m bench.holistic_table --adabn-init --seeds 0

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
from uft.transfer.holistic import (HolisticConfig, adabn, check_start, filter_seen, make_config, run_holistic,
                                   start_warning, train_source_classifier)

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
    """Float images (N, C, H, W) in [0, 1] with labels (N,): source train, target train / test."""

    source: tuple[torch.Tensor, torch.Tensor]
    train: tuple[torch.Tensor, torch.Tensor]
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
    """Ingest source / target with the pipeline's defaults (source test fraction 0.1, target 0.5,
    ``framing``) into the local store ``store`` → (data, source ingest outputs for
    :func:`pretrained_encoder`)."""
    from uft import steps
    from uft.data.dataset import load_dataset

    src_out = steps.ingest(source, store, role="source", image_size=image_size, channels=1, limit=source_limit,
                           test_fraction=0.1, seed=seed, framing=framing)
    tgt_out = steps.ingest(target, store, role="target", image_size=image_size, channels=1, limit=target_limit,
                           test_fraction=0.5, seed=seed, framing=framing)
    src = load_dataset(src_out["dataset_uri"]).subset("train")
    tgt = load_dataset(tgt_out["dataset_uri"])
    if list(src.classes) != list(tgt.classes):
        raise UftError(f"source classes {src.classes} differ from target classes {tgt.classes}: use datasets with one label set")
    tr, te = tgt.subset("train"), tgt.subset("test")
    data = BenchData((src.floats(), src.labels), (tr.floats(), tr.labels), (te.floats(), te.labels), list(tgt.classes),
                     info={"source": source, "target": target, "image_size": image_size, "n_source_train": len(src),
                           "n_target_train": len(tr), "n_target_test": len(te), "framing": framing,
                           "source_sha": src_out["dataset_sha"], "target_sha": tgt_out["dataset_sha"]})
    return data, src_out


def pretrained_encoder(store: str, source_out: dict[str, Any], *, steps: int = 300, width: int = 32,
                       method: str = "simclr", seed: int = 0) -> nn.Module:
    """The pipeline's ``pretrain`` step (SSL on the source train split, cached in ``store``) →
    eval-mode encoder; ``steps=0`` → a randomly initialised TinyConvNet (seeded)."""
    from uft.models.encoders import build_encoder

    if steps == 0:
        torch.manual_seed(seed)
        return build_encoder("tiny", in_channels=1, width=width).eval()
    from uft import steps as uft_steps
    from uft.models.artifact import load_encoder

    out = uft_steps.pretrain(source_out["dataset_uri"], source_out["dataset_sha"], store, encoder="tiny",
                             encoder_width=width, method=method, steps=steps, seed=seed, checkpoint_every=max(steps, 1))
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


class DegenerateStart(UftError):
    """The source classifier is near chance on the target, or predicts one class for most images:
    no holistic conclusion can be drawn from such a run (see ``start_check``)."""


def run_bench(data: BenchData, encoder: nn.Module, *, seen: Sequence[int], seeds: Sequence[int],
              variants: Sequence[str] = tuple(VARIANTS), inits: Sequence[str] = ("source",),
              base: dict[str, Any] | None = None, allow_degenerate: bool = False,
              on_result: Callable[[str, str, int, dict[str, Any]], None] | None = None,
              checks: dict[str, dict[int, dict]] | None = None) -> dict[str, dict[str, list[dict]]]:
    """→ {init: {variant: [result per seed]}}; a result is :func:`run_holistic`'s dict plus
    ``seed``, ``start`` and ``seconds``. ``base`` holds HolisticConfig overrides shared by every
    variant (steps, lrs, LOLSGD knobs, ...). The source classifier is trained once per seed and
    shared by both inits. Each start model is first checked on the target test split
    (:func:`uft.transfer.holistic.check_start`, recorded in ``checks[init][seed]`` when given); a
    degenerate *source* start raises :class:`DegenerateStart` before any variant runs, unless
    ``allow_degenerate``. ``on_result(init, variant, seed, result)`` is called after each run."""
    base = dict(base or {})
    checks = {} if checks is None else checks
    out: dict[str, dict[str, list[dict]]] = {i: {v: [] for v in variants_for(i, variants)} for i in inits}
    for seed in seeds:
        cfg0 = make_config(**{**base, "seed": seed})
        t0 = time.perf_counter()
        enc_src, head = start_model(encoder, data, seen, cfg0, "source")
        src_seconds = time.perf_counter() - t0
        # both starts are checked (and reported) whichever inits run
        starts = {"source": enc_src, "adabn": adabn(enc_src, filter_seen(*data.train, seen)[0], cfg0.eval_batch_size)}
        for init, enc in starts.items():
            c = check_start(enc, head, *data.test, data.num_classes, cfg0.eval_batch_size)
            checks.setdefault(init, {})[seed] = {**c, "source_seconds": round(src_seconds, 3)}
        if checks["source"][seed]["degenerate"] and not allow_degenerate:
            raise DegenerateStart(f"seed {seed}: {start_warning(checks['source'][seed])} No table is written: fix "
                                  "the source recipe or the framing (or pass --allow-degenerate to inspect the run)")
        for init in inits:
            enc = starts[init]
            for name in out[init]:
                cfg = make_config(**{**base, **VARIANTS[name], "seed": seed})
                t0 = time.perf_counter()
                res = run_holistic(cfg, enc, head, data.train, data.test, seen, data.num_classes)
                res.update(seed=seed, start=init, seconds=round(time.perf_counter() - t0, 3),
                           source_seconds=round(src_seconds, 3))
                out[init][name].append(res)
                if on_result is not None:
                    on_result(init, name, seed, res)
    return out


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample std (ddof=1; 0 for a single value) over the finite values."""
    v = np.asarray([x for x in values if isinstance(x, (int, float)) and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


#: The label-free reference row of each start's table: the AdaBN model (the ``adabn`` row from the
#: source start; the start itself, row ``source``, from the AdaBN start).
ADABN_ROW = {"source": "adabn", "adabn": "source"}


def _paired(results: list[dict], ref: dict[int, dict], metric: str) -> dict[str, float]:
    return _mean_std([r[metric] - ref[r["seed"]][metric] for r in results if r["seed"] in ref])


def summarise(runs: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{init: {variant: {metric: {mean, std, n}, "per_class": (C,) mean over seeds,
    "d_unseen_vs_naive" / "d_overall_vs_naive" / "d_overall_vs_adabn": paired per-seed
    differences (AdaBN: :data:`ADABN_ROW`), "gamma", "seconds"}}}."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for init, rows in runs.items():
        naive = {r["seed"]: r for r in rows.get("naive", [])}
        ada_name = ADABN_ROW.get(init)
        ada = {r["seed"]: r for r in rows.get(ada_name, [])} if ada_name else {}
        summary[init] = {}
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
            if any("gamma" in r for r in results):
                s["gamma"] = _mean_std([r["gamma"] for r in results if "gamma" in r])
            s["seconds"] = _mean_std([r["seconds"] for r in results])
            summary[init][name] = s
    return summary


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
    if not s or s["n"] == 0:
        return "–"
    m = f"{s['mean']:+.3f}" if signed else f"{s['mean']:.3f}"
    return m if s["n"] < 2 else f"{m} ± {s['std']:.3f}"


INIT_TITLES = {"source": "Start: source classifier", "adabn": "Start: AdaBN-adapted source classifier"}


def markdown_tables(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One markdown table per init (never mixed): mean ± std over seeds of the table metrics, the
    paired differences to naive and to the label-free AdaBN model, γ of calibrated rows and seconds
    per run."""
    blocks = []
    for init, rows in summary.items():
        head = ["method", *TABLE_METRICS, "Δunseen vs naive", "Δoverall vs naive", "Δoverall vs AdaBN", "γ", "s/run"]
        lines = [f"### {INIT_TITLES.get(init, init)}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for name, s in rows.items():
            label = "source (AdaBN)" if init == "adabn" and name == "source" else name
            cells = [label, *(_fmt(s[m]) for m in TABLE_METRICS),
                     *(_fmt(s.get(k), signed=True) for k in ("d_unseen_vs_naive", "d_overall_vs_naive", "d_overall_vs_adabn")),
                     _fmt(s.get("gamma")), f"{s['seconds']['mean']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def per_class_png(summary: dict[str, dict[str, dict[str, Any]]], seen: Sequence[int], classes: Sequence[str],
                  n_seeds: int) -> bytes:
    """Heatmap panel per init: variants × classes, mean per-class accuracy over seeds."""
    from uft.report import per_class_heatmap

    panels = {INIT_TITLES.get(i, i): {("source (AdaBN)" if i == "adabn" and n == "source" else n): s["per_class"]
                                      for n, s in rows.items()} for i, rows in summary.items()}
    return per_class_heatmap(panels, seen, classes,
                             title=f"Per-class accuracy on the optdigits test split (mean of {n_seeds} seed(s))")


# ----------------------------------------------------------------------------- CLI


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UftError(f"{name} {text!r} is not a comma-separated list of integers: pass e.g. 0,1,2") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.holistic_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (source classifier + finetuning)")
    p.add_argument("--seen", default="0,1,2,3,4", help="target classes with training labels")
    p.add_argument("--init", choices=("source", "adabn", "both"), default="both",
                   help="starting model for every variant (default: both, two tables)")
    p.add_argument("--adabn-init", action="store_true", help="shorthand for --init adabn")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated rows to run")
    p.add_argument("--steps", type=int, default=150, help="finetuning SGD steps (pipeline's holistic_steps)")
    p.add_argument("--source-steps", type=int, default=600, help="source-classifier training steps (HolisticConfig default)")
    p.add_argument("--pretrain-steps", type=int, default=300, help="SSL pretraining steps (0 = random init)")
    p.add_argument("--width", type=int, default=32, help="TinyConvNet width")
    p.add_argument("--source-limit", type=int, default=0, help="0 = all 10k MNIST images")
    p.add_argument("--target-limit", type=int, default=0, help="0 = all 1,797 optdigits images")
    p.add_argument("--store", default=str(Path(__file__).resolve().parents[1] / ".uft" / "bench_store"),
                   help="local store for ingest/pretrain outputs (cached between runs)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="where holistic.md/.json/_per_class.png go")
    p.add_argument("--framing", default="auto", choices=("auto", "content_box", "keep"),
                   help="ingest framing (auto: MNIST cropped to its 20x20 content box, like the UCI digits)")
    p.add_argument("--allow-degenerate", action="store_true",
                   help="write the tables even when a source classifier is degenerate on the target (marked as such; "
                        "never for the README)")
    p.add_argument("--from-json", default="", metavar="PATH",
                   help="re-render holistic.md/.png/.json into --out from a saved holistic.json (no training)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is ~10x faster than 2 when the 2 cores are shared (measured)")
    args = p.parse_args(argv)
    if args.adabn_init:
        args.init = "adabn"
    return args


def _write(out: Path, summary: dict, meta: dict, runs: dict, classes: Sequence[str]) -> str:
    md = render_markdown(summary, meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "holistic.md").write_text(md)
    (out / "holistic.json").write_text(json.dumps(_json_safe({"meta": meta, "summary": summary, "runs": runs}),
                                                  indent=1, allow_nan=False))
    (out / "holistic_per_class.png").write_bytes(per_class_png(summary, meta["seen"], classes, len(meta["seeds"])))
    return md


def rerender(path: str, out: Path) -> str:
    """Summary, tables and plot recomputed from the runs saved in a holistic.json (same measurements,
    current rendering) → the markdown. Refuses a degenerate run like the benchmark itself."""
    saved = json.loads(Path(path).read_text())
    meta, runs = saved["meta"], saved["runs"]
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

    def progress(init: str, name: str, seed: int, r: dict[str, Any]) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] seed {seed} init {init:6s} {name:20s} overall {r['overall']:.3f} "
              f"seen {r['seen']:.3f} unseen {r['unseen']:.3f} ausuc {r['ausuc']:.3f} ({r['seconds']:.1f}s)",
              file=sys.stderr, flush=True)

    checks: dict[str, dict[int, dict]] = {}
    try:
        runs = run_bench(data, encoder, seen=seen, seeds=seeds, variants=variants, inits=inits, base=base,
                         allow_degenerate=args.allow_degenerate, on_result=progress, checks=checks)
    except DegenerateStart as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarise(runs)
    wall = time.perf_counter() - t_start
    command = ".venv/bin/python -m bench.holistic_table" + ("" if argv is None and len(sys.argv) <= 1 else
                                                            " " + shlex.join(list(argv) if argv is not None else sys.argv[1:]))
    cfg = make_config(**base).model_dump()
    meta = {"command": command, "wall_seconds": round(wall, 1), "pretrain_seconds": round(pretrain_s, 1),
            "seeds": seeds, "seen": seen, "inits": inits, "data": data.info, "threads": args.threads,
            "pretrain_steps": args.pretrain_steps, "width": args.width, "config": cfg,
            "start_checks": {i: {str(k): v for k, v in c.items()} for i, c in checks.items()},
            "degenerate": any(c["degenerate"] for c in checks.get("source", {}).values()),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "host": platform.machine()}
    print(_write(Path(args.out), summary, meta, runs, data.classes))
    return 0


def _json_safe(obj: Any) -> Any:
    """nan/inf → None so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _beats(rows: dict[str, dict[str, Any]], key: str, skip: Sequence[str], min_effect: float = 0.01) -> list[str]:
    """Rows whose paired difference ``key`` is positive by more than one std and ``min_effect``."""
    return [f"{n} ({_fmt(s[key], signed=True)})" for n, s in rows.items()
            if n not in skip and key in s and s[key]["n"] and s[key]["mean"] - s[key]["std"] > 0
            and s[key]["mean"] > min_effect]


def reading(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Markdown bullets computed from the numbers (so a rerun can never contradict them)."""
    out = []
    for init, rows in summary.items():
        naive = rows.get("naive")
        if naive is None:
            continue
        skip = ("source", "adabn", "naive", "oracle")
        title = INIT_TITLES.get(init, init)
        unseen = _beats(rows, "d_unseen_vs_naive", skip)
        overall = _beats(rows, "d_overall_vs_naive", skip)
        out.append(f"- {title}: rows above naive (unseen {naive['unseen']['mean']:.3f}, overall "
                   f"{naive['overall']['mean']:.3f}) by more than one std and 0.01, paired by seed — unseen: "
                   + (", ".join(unseen) or "none") + "; overall: " + (", ".join(overall) or "none") + ".")
        ada = ADABN_ROW.get(init)
        if ada in rows:
            above = _beats(rows, "d_overall_vs_adabn", ("oracle",))
            out.append(f"- {title}: rows above the label-free AdaBN model (overall {rows[ada]['overall']['mean']:.3f}) "
                       "by more than one std and 0.01: " + (", ".join(above) or "none") + ".")
    if {"source", "adabn"} <= set(summary):
        same = [n for n in summary["adabn"] if n in summary["source"] and n != "source"
                and abs(summary["adabn"][n]["overall"]["mean"] - summary["source"][n]["overall"]["mean"]) < 5e-3]
        if same:
            out.append(f"- Rows within 0.005 overall of each other under both starts: {', '.join(same)}. Train-mode "
                       "BatchNorm normalises with batch statistics, so the SGD trajectory does not depend on the "
                       "starting running statistics, and many steps at momentum 0.1 overwrite them; the AdaBN start "
                       "matters through the distillation teacher (eval mode), PCV's floor (the start model's "
                       "held-out accuracy) and the source row.")
    return out + [""] if out else []


def start_table(start_checks: dict[str, dict[str, dict]]) -> str:
    """Markdown: each seed's start models on the target test split (before any label is used):
    accuracy and the most predicted class's share, then mean ± std over seeds."""
    inits = [i for i in INITS if i in start_checks]
    seeds = sorted({s for i in inits for s in start_checks[i]}, key=int)
    head = ["seed", *(f"{INIT_TITLES[i].removeprefix('Start: ')} accuracy" for i in inits), "top-class share (source)",
            "degenerate"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for sd in seeds:
        src = start_checks.get("source", {}).get(sd, {})
        lines.append("| " + " | ".join([sd, *(f"{start_checks[i][sd]['accuracy']:.3f}" for i in inits),
                                        f"{src.get('top_class_share', float('nan')):.2f}",
                                        "**yes**" if src.get("degenerate") else "no"]) + " |")
    lines.append("| mean ± std | " + " | ".join(_fmt(_mean_std([start_checks[i][sd]["accuracy"] for sd in seeds]))
                                               for i in inits) + " | | |")
    return "\n".join(lines)


def render_markdown(summary: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any]) -> str:
    d, c = meta["data"], meta["config"]
    warn = ([f"> **WARNING: degenerate start** — a source classifier is near chance or collapsed onto one class on "
             "the target (see below). Written with --allow-degenerate for inspection: these rows say nothing about "
             "the methods and must not go into the README.", ""] if meta.get("degenerate") else [])
    starts = (["## Start models on the target test split (before adaptation)", "",
               start_table(meta["start_checks"]), ""] if meta.get("start_checks") else [])
    return "\n".join([
        "# Holistic transfer on the bundled digits",
        "",
        *warn,
        f"{d.get('source')} ({d.get('n_source_train')} source-train images, all classes labelled) → "
        f"{d.get('target')} ({d.get('n_target_train')} target-train images, labels used only for seen classes "
        f"{meta['seen']}; {d.get('n_target_test')} test images), {d.get('image_size')} px, 1 channel. "
        f"TinyConvNet width {meta['width']}, SSL-pretrained (SimCLR, {meta['pretrain_steps']} steps) on the source, "
        f"then a source classifier trained with source labels (per seed): {c['source_steps']} SGD steps of batch "
        f"{c['source_batch_size']}, lr {c['source_lr']} with {c['source_warmup']:.0%} warm-up then cosine, weight decay "
        f"{c['source_weight_decay']}, label smoothing {c['source_label_smoothing']}, "
        f"{'augmentation (random resized crop, rotation, photometric jitter)' if c['source_augment'] else 'no augmentation'}; "
        f"framing {d.get('framing', 'keep')}. "
        f"Finetuning: {c['steps']} SGD steps, lr {c['lr']} (backbone ×{c['backbone_lr_mult']}), batch {c['batch_size']}, "
        f"cosine; LOLSGD {c['lolsgd_rounds']} rounds × {c['lolsgd_local_models']} local models, leave-out "
        f"{c['lolsgd_leave_out']}; distill T={c['distill_temperature']}, weight 1; rank_reg weight 0.1; "
        f"PCV {c['pcv_splits']} splits.",
        "",
        f"Mean ± sample std over seeds {meta['seeds']} (the target split and the SSL encoder are fixed; the seed "
        "drives the source classifier and finetuning). Accuracies use the argmax over all 10 logits (calibrated "
        "logits for the +ALG/+PCV rows); AUSUC is calibration-invariant; NCM is the all-label feature probe. "
        "Δ columns are per-seed paired differences: unseen / overall accuracy minus naive's, and overall accuracy "
        "minus the label-free AdaBN model's (the adabn row, or the AdaBN start itself). The two starts are never "
        "mixed in one table.",
        "",
        *starts,
        markdown_tables(summary),
        "",
        *reading(summary),
        "![per-class accuracy](holistic_per_class.png)",
        "",
        f"Command: `{meta['command']}` — wall {meta['wall_seconds']:.0f} s (SSL pretraining "
        f"{meta['pretrain_seconds']:.0f} s of it; cached in the store after the first run), torch threads "
        f"{meta['threads']}, {meta['date_utc']}.",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
