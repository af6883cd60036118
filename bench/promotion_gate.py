"""The promotion gate measured on encoders the pipeline itself produces.

Two phases, run in this order:

- ``--phase noise``: the default finetuning configuration with 5 seeds on two domain pairs; every
  gate signal (on the val splits) and the truth (5-shot probe on the test split) per encoder → the
  spread each margin of :class:`uft.promote.GatePolicy` is set from.
- ``--phase bench``: candidates from the pipeline's own step functions (``uft.steps.finetune`` with
  seeds, replay, mixing, objectives, RadReg, budgets, and deliberately bad settings; plus an
  untrained and a constant-output encoder) on three pairs, one of them a colour pair built from
  scikit-image photographs. Each candidate is decided by :func:`uft.promote.decide` against its base
  encoder (empty registry) and against a finetuned champion (a registry that holds one), and the
  decisions are scored against the test split: "truly better" = 5-shot test-probe gain above the
  probe's own noise (its seed-to-seed spread for one configuration).

The gate reads only val splits; the test split is read here to score decisions, never by the gate.
Candidates are trained once: the step cache (``uft.step_cache.cached``) under ``--store`` keeps encoders,
and measurements are kept in ``<store>/gate_measurements.<pair>.json``, so a rerun only re-decides.

Run: ``nice -n 10 .venv/bin/python -m bench.promotion_gate --phase noise`` then ``--phase bench``.

- ``--phase validate``: the pre-registered validation of the interval rule (docs/results.md,
  "Promotion gate validation — protocol"; the rule is :func:`uft.promote.decide` with its
  documented constants, nothing here tunes it). Four pairs, one never used to design the gate
  (:data:`HELD_OUT_PAIR`); every configuration of :data:`VALIDATE_CONFIGS` with :data:`VALIDATE_SEEDS`
  seeds, seed ``s`` finetuned from its own base (pretrained with seed ``s``), so candidates are
  independent; each decided against its own base and against a finetuned champion (the default
  configuration at seed ``100 + s`` from the same base); plus the same-configuration row (the default
  at seed ``200 + s`` against that champion: another seed, same data — the goal is none promoted).
  Truth: a configuration is truly better than its reference when the 95 % t-interval of its paired
  test-probe gain over the seeds lies above 0. Precision and recall with Clopper–Pearson 95 %
  intervals. Hours of CPU: ``nice -n 10 .venv/bin/python -m bench.promotion_gate --phase validate``
  (``--pairs`` one at a time in parallel, then once more with all pairs for the report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, header, table

os.environ.pop("MLFLOW_TRACKING_URI", None)  # the steps run without tracking here

#: name: (source spec, target spec, channels, source limit, target limit, target test fraction)
PAIRS = {
    "mnist-optdigits": ("mnist", "optdigits", 1, 3000, 2000, 0.3),
    "fashion-mnist": ("fashion_mnist", "mnist", 1, 3000, 2000, 0.3),
    "colour": ("colour:source", "colour:target", 3, 0, 0, 0.3),
}
NOISE_PAIRS = ("mnist-optdigits", "fashion-mnist")
SOURCE_VAL, TARGET_VAL = 0.2, 0.3
IMAGE_SIZE, WIDTH, PRETRAIN_STEPS, MAX_IMAGES = 16, 16, 200, 1000
TRUTH_SHOTS, TRUTH_DRAWS = 5, 10


@dataclass(frozen=True)
class Candidate:
    """One finetuning setting, passed to :func:`uft.steps.finetune` (``bad``: why it should lose)."""

    name: str
    seed: int = 0
    method: str = "simclr"
    steps: int = 100
    batch_size: int = 128
    lr: float = 2e-3
    replay_ratio: float = 0.5
    mix_op: str = "none"
    radreg_weight: float = 0.0
    from_scratch: bool = False
    bad: str = ""
    built: str = ""  # "untrained" / "constant": not a finetune, an encoder built directly


DEFAULT = Candidate("default")
NOISE = [Candidate("default", seed=s) for s in range(5)]
BENCH = [  # cheapest and most different first: a run cut short by the time budget keeps the variety
    Candidate("default", seed=10),
    Candidate("untrained", seed=10, built="untrained", bad="random weights"),
    Candidate("constant output", seed=10, built="constant", bad="collapsed: one output for every image"),
    Candidate("20 steps", seed=10, steps=20),
    Candidate("lr 0.5", seed=10, lr=0.5, bad="learning rate far too high"),
    Candidate("byol", seed=10, method="byol"),
    Candidate("default", seed=11),
    Candidate("no replay", seed=10, replay_ratio=0.0),
    Candidate("mixup target×source", seed=10, mix_op="mixup"),
    Candidate("radreg 0.1", seed=10, radreg_weight=0.1),
    Candidate("batch 4, lr 2e-2", seed=10, batch_size=4, lr=2e-2, bad="tiny batch, high lr"),
    Candidate("from scratch", seed=10, from_scratch=True, bad="target-only SSL from scratch"),
    Candidate("default", seed=12),
    Candidate("200 steps", seed=10, steps=200),
]
CHAMPION = "default"  # the finetuned champion of the second reference: the default config's first bench seed


def _colour_specs(store: Path) -> tuple[str, str]:
    from bench.colour_pair import build_pair

    root = store / "colour_pair"
    if not (root / "target").is_dir():
        build_pair(root, per_class=200, size=64, seed=0)
    return str(root / "source"), str(root / "target")


def prepare(pair: str, store: Path) -> dict[str, str]:
    """Ingest the pair (val splits as configured here) and pretrain its base → URIs."""
    from uft import steps

    src_spec, tgt_spec, ch, s_lim, t_lim, t_test = PAIRS[pair]
    if pair == "colour":
        src_spec, tgt_spec = _colour_specs(store)
    s = steps.ingest(src_spec, str(store), role="source", image_size=IMAGE_SIZE, channels=ch, limit=s_lim,
                     test_fraction=0.1, val_fraction=SOURCE_VAL, seed=0)
    t = steps.ingest(tgt_spec, str(store), role="target", image_size=IMAGE_SIZE, channels=ch, limit=t_lim,
                     test_fraction=t_test, val_fraction=TARGET_VAL, seed=0)
    base = steps.pretrain(s["dataset_uri"], s["dataset_sha"], str(store), encoder="tiny", encoder_width=WIDTH,
                          steps=PRETRAIN_STEPS, batch_size=256, seed=0)
    replay = steps.subsample_source(s["dataset_uri"], s["dataset_sha"], str(store), size=500, seed=0)
    return {"source": s["dataset_uri"], "target": t["dataset_uri"], "base": base["encoder_uri"],
            "replay": replay["replay_uri"]}


def build(c: Candidate, uris: dict[str, str], store: Path) -> str:
    """The candidate's encoder URI (finetuned by the pipeline's step, or built directly)."""
    import torch

    from uft import steps
    from uft.models.artifact import load_encoder, publish_encoder
    from uft.promote import untrained_like
    from uft.store import LocalStore

    if c.built:
        enc = untrained_like(uris["base"], seed=c.seed)
        spec = load_encoder(uris["base"])[1]["spec"]
        if c.built == "constant":
            with torch.no_grad():
                for p in enc.parameters():
                    p.zero_()
                next(reversed(list(enc.parameters()))).fill_(1.0)  # the last bias: every output equal
        return publish_encoder(LocalStore(store), f"bench_gate/{c.built}/{c.seed}/{Path(uris['base']).parent.name}",
                               enc, spec, {"bench": c.built})
    plan = steps.mix_plan(str(store), op=c.mix_op)["plan_uri"] if c.mix_op != "none" else ""
    out = steps.finetune(uris["base"], uris["target"], str(store), source_uri=uris["source"], replay_uri=uris["replay"],
                         plan_uri=plan, method=c.method, steps=c.steps, batch_size=c.batch_size, lr=c.lr,
                         replay_ratio=c.replay_ratio, radreg_weight=c.radreg_weight, seed=c.seed,
                         from_scratch=c.from_scratch, checkpoint_every=10**6)
    return out["encoder_uri"]


def truth(enc, tgt) -> dict[str, Any]:
    """5-shot linear probe on the test split (shots from the labelled train split), per draw."""
    from uft.evaluate.features import extract_features
    from uft.evaluate.linear import few_label_indices, linear_probe_accuracy

    tr, te = tgt.subset("train"), tgt.subset("test")
    ftr, fte = extract_features(enc, tr.images).numpy(), extract_features(enc, te.images).numpy()
    if not (np.isfinite(ftr).all() and np.isfinite(fte).all()):
        return {"test_probe": 0.0, "test_probe_draws": [0.0] * TRUTH_DRAWS}
    ytr, yte = tr.labels.numpy(), te.labels.numpy()
    accs = [linear_probe_accuracy(ftr[i], ytr[i], fte, yte)
            for i in (few_label_indices(ytr, TRUTH_SHOTS, d) for d in range(TRUTH_DRAWS))]
    return {"test_probe": float(np.mean(accs)), "test_probe_draws": accs}


class NotTrained(Exception):
    """Raised instead of training (``--cached-only``): the candidate is left out of the report."""


def _refuse_training(*_args, **_kwargs):
    raise NotTrained


class Measurements:
    """Per encoder (by manifest hash): gate signals on the val splits, signals of the untrained floor,
    and the test-split truth, kept in a JSON file so each is measured once."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str, compute) -> Any:
        if key not in self.rows:
            self.rows[key] = compute()
            self.path.write_text(json.dumps(self.rows, default=float))
        return self.rows[key]


def measure_pair(pair: str, candidates: list[Candidate], store: Path, log=print) -> dict[str, Any]:
    """Train (or read back) every candidate of ``pair`` and measure it → {"base", "floor", "rows"}."""
    from uft.data.dataset import load_dataset
    from uft.models.artifact import load_encoder
    from uft.promote.signals import _signals, gate_data, untrained_like
    from uft.store import manifest_sha

    t0 = time.perf_counter()
    meas = Measurements(store / f"gate_measurements.{pair}.json")  # one file per pair: pairs may run in parallel
    uris = prepare(pair, store)
    log(f"[{pair}] data + base ready ({time.perf_counter() - t0:.0f} s)")
    base = load_encoder(uris["base"])[0]
    data = gate_data(uris["target"], uris["source"], MAX_IMAGES, 0)
    tgt = load_dataset(uris["target"])
    scope = f"{pair}|{manifest_sha(uris['base'])}|{manifest_sha(uris['target'])}|{manifest_sha(uris['source'])}"

    def one(enc_uri: str, enc=None) -> dict[str, Any]:
        enc = enc if enc is not None else load_encoder(enc_uri)[0]
        return {"signals": _signals(enc, base, data, 0, MAX_IMAGES), **truth(enc, tgt)}

    out = {"pair": pair, "split_sizes": {k: int((tgt.split == k).sum()) for k in ("train", "val", "test")},
           "source_val": 0 if data.source is None else len(data.source[3])}
    out["base"] = meas.get(f"{scope}|base", lambda: one(uris["base"], base))
    from uft.evaluate.label_free import floor_of
    from uft.promote import FLOOR_SEEDS

    floors = [meas.get(f"{scope}|floor" + (f"{i}" if i else ""), lambda i=i: one("", untrained_like(uris["base"], seed=i)))
              for i in range(FLOOR_SEEDS)]
    out["floor"] = {"signals": floor_of([f["signals"] for f in floors]), "floors": floors}
    rows = []
    for c in candidates:
        t1 = time.perf_counter()
        try:
            uri = build(c, uris, store)
        except NotTrained:
            log(f"[{pair}] {c.name:22s} seed {c.seed:2d}  not trained within the time budget: left out")
            continue
        m = meas.get(f"{scope}|{manifest_sha(uri)}", lambda: one(uri))
        rows.append({"candidate": asdict(c), **m})
        log(f"[{pair}] {c.name:22s} seed {c.seed:2d}  gate {m['signals']['gate_score']:.4f}  "
            f"val_probe {m['signals'].get('val_probe', float('nan')):.3f}  "
            f"retention {m['signals'].get('source_retention', float('nan')):.3f}  test {m['test_probe']:.3f}  "
            f"({time.perf_counter() - t1:.0f} s)")
    out["rows"] = rows
    return out


# --- the noise phase ----------------------------------------------------------------------------

NOISE_SIGNALS = ("gate_score", "view_retrieval", "rank_fraction", "val_probe", "source_retention", "test_probe")


def _value(row: dict[str, Any], name: str) -> float:
    return float(row["test_probe"] if name == "test_probe" else row["signals"].get(name, float("nan")))


def noise_table(pairs: list[dict[str, Any]]) -> list[list[Any]]:
    """Per pair and signal: mean, sd over seeds (ddof 1), sd / mean, and the base's value."""
    out = []
    for p in pairs:
        for name in NOISE_SIGNALS:
            v = np.array([_value(r, name) for r in p["rows"]])
            out.append([p["pair"], name, len(v), float(v.mean()), float(v.std(ddof=1)),
                        float(v.std(ddof=1) / abs(v.mean())), _value(p["base"], name)])
    return out


# --- the bench phase ----------------------------------------------------------------------------

def decisions(p: dict[str, Any], sigma_probe: float, policy) -> list[dict[str, Any]]:
    """Every candidate of pair ``p`` decided against the base and against the finetuned champion,
    with the truth: test-probe gain Δ over that reference, in units of ``sigma_probe``."""
    from uft.promote import decide

    champ = next(r for r in p["rows"] if r["candidate"]["name"] == CHAMPION)
    out = []
    for ref_name, ref in (("base", p["base"]), ("champion", champ)):
        for r in p["rows"]:
            if r is ref:
                continue
            for labels in (True, False):
                strip = (lambda s: s) if labels else (lambda s: {k: v for k, v in s.items() if k != "val_probe"})
                d = decide(strip(r["signals"]), strip(ref["signals"]), policy, floor=strip(p["floor"]["signals"]),
                           reference=ref_name)
                delta = r["test_probe"] - ref["test_probe"]
                out.append({"pair": p["pair"], "reference": ref_name, "candidate": r["candidate"]["name"],
                            "seed": r["candidate"]["seed"], "bad": r["candidate"]["bad"], "val_labels": labels,
                            "promoted": d.promote, "reasons": d.reasons, "delta": delta,
                            "delta_sigma": delta / sigma_probe, "collapsed": d.reasons[0].startswith("collapsed"),
                            "built": r["candidate"]["built"]})
    return out


def confusion(ds: list[dict[str, Any]]) -> dict[str, Any]:
    """Promoted vs truly better (Δ > 1σ) → counts, precision, recall on Δ ≥ 2σ, collapsed promoted."""
    tp = sum(d["promoted"] and d["delta_sigma"] > 1 for d in ds)
    fp = sum(d["promoted"] and d["delta_sigma"] <= 1 for d in ds)
    fn = sum(not d["promoted"] and d["delta_sigma"] > 1 for d in ds)
    tn = sum(not d["promoted"] and d["delta_sigma"] <= 1 for d in ds)
    big = [d for d in ds if d["delta_sigma"] >= 2]
    return {"n": len(ds), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall_2sigma": sum(d["promoted"] for d in big) / len(big) if big else float("nan"), "n_2sigma": len(big),
            "recall_1sigma": tp / (tp + fn) if tp + fn else float("nan"),
            "collapsed_promoted": sum(d["promoted"] and d["built"] == "constant" for d in ds)}


# --- the validate phase (pre-registered protocol; see the module doc) -------------------------------

#: The pair never used to design the gate (its rule, constants, signals): Fashion-MNIST as source,
#: UCI optdigits as target.
HELD_OUT_PAIR = "fashion-optdigits"
VALIDATE_PAIRS = ("mnist-optdigits", "fashion-mnist", "colour", HELD_OUT_PAIR)
PAIRS[HELD_OUT_PAIR] = ("fashion_mnist", "optdigits", 1, 3000, 0, 0.3)
#: The pipeline's own split fractions (target val 0.2 of the non-test rows, test 0.5), so each
#: decision meets the val size it meets in production.
VALIDATE_FRACTIONS = {"target_test": 0.5, "target_val": 0.2}
VALIDATE_SEEDS = 5
VALIDATE_CONFIGS = [
    Candidate("default"),
    Candidate("20 steps", steps=20),
    Candidate("200 steps", steps=200),
    Candidate("byol", method="byol"),
    Candidate("no replay", replay_ratio=0.0),
    Candidate("mixup target×source", mix_op="mixup"),
    Candidate("lr 0.5", lr=0.5, bad="learning rate far too high"),
    Candidate("from scratch", from_scratch=True, bad="target-only SSL from scratch"),
]
CHAMPION_SEED, SAME_CONFIG_SEED = 100, 200


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for ``k`` successes in ``n`` trials → (low, high); (nan, nan) for n = 0."""
    from scipy.stats import beta

    if n == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return low, high


def paired_truth(deltas: list[float], level: float = 0.95) -> dict[str, Any]:
    """Test-probe gains of one configuration over its reference, paired by seed → the mean, its
    t-interval and the truth: "better" when the interval lies above 0, "worse" below, else "tie"."""
    from scipy.stats import t

    d = np.asarray(deltas, np.float64)
    half = float(t.ppf(1 - (1 - level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    mean = float(d.mean())
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(d),
            "truth": "better" if mean - half > 0 else "worse" if mean + half < 0 else "tie"}


def validate_pair(pair: str, store: Path, log=print) -> dict[str, Any]:
    """Every encoder of the protocol on ``pair`` (trained once, cached): gate signals with paired
    per-row outcomes on val, and the test-probe truth → {"pair", "rows": [...]}."""
    from uft import steps
    from uft.data.dataset import load_dataset
    from uft.models.artifact import load_encoder
    from uft.promote.signals import _signals, gate_data
    from uft.store import manifest_sha

    src_spec, tgt_spec, ch, s_lim, t_lim, _ = PAIRS[pair]
    if pair == "colour":
        src_spec, tgt_spec = _colour_specs(store)
    meas = Measurements(store / f"gate_validate.{pair}.json")
    s = steps.ingest(src_spec, str(store), role="source", image_size=IMAGE_SIZE, channels=ch, limit=s_lim,
                     test_fraction=0.1, val_fraction=0.1, seed=0)
    t = steps.ingest(tgt_spec, str(store), role="target", image_size=IMAGE_SIZE, channels=ch, limit=t_lim,
                     test_fraction=VALIDATE_FRACTIONS["target_test"], val_fraction=VALIDATE_FRACTIONS["target_val"], seed=0)
    tgt = load_dataset(t["dataset_uri"])
    data = gate_data(t["dataset_uri"], s["dataset_uri"], MAX_IMAGES, 0)
    rows = []
    for seed in range(VALIDATE_SEEDS):
        base_uri = steps.pretrain(s["dataset_uri"], s["dataset_sha"], str(store), encoder="tiny", encoder_width=WIDTH,
                                  steps=PRETRAIN_STEPS, batch_size=256, seed=seed)["encoder_uri"]
        replay = steps.subsample_source(s["dataset_uri"], s["dataset_sha"], str(store), size=500, seed=seed)["replay_uri"]
        uris = {"source": s["dataset_uri"], "target": t["dataset_uri"], "base": base_uri, "replay": replay}
        base = load_encoder(base_uri)[0]
        scope = f"{pair}|{manifest_sha(base_uri)}|{manifest_sha(t['dataset_uri'])}"

        def one(uri: str, enc=None) -> dict[str, Any]:
            enc = enc if enc is not None else load_encoder(uri)[0]
            return {"signals": _signals(enc, base, data, 0, MAX_IMAGES), **truth(enc, tgt)}

        rows.append({"seed": seed, "role": "base", "config": "base", **meas.get(f"{scope}|base", lambda: one("", base))})
        todo = [("candidate", c, seed) for c in VALIDATE_CONFIGS] + [("champion", DEFAULT, CHAMPION_SEED + seed),
                                                                     ("same-config", DEFAULT, SAME_CONFIG_SEED + seed)]
        for role, c, cseed in todo:
            cand = Candidate(**{**asdict(c), "seed": cseed})
            uri = build(cand, uris, store)
            m = meas.get(f"{scope}|{manifest_sha(uri)}", lambda: one(uri))
            rows.append({"seed": seed, "role": role, "config": c.name, "bad": c.bad, **m})
            log(f"[{pair}] seed {seed} {role:11s} {c.name:22s} test {m['test_probe']:.3f}")
    return {"pair": pair, "held_out": pair == HELD_OUT_PAIR, "rows": rows,
            "split_sizes": {k: int((tgt.split == k).sum()) for k in ("train", "val", "test")}}


def validate_decisions(p: dict[str, Any]) -> list[dict[str, Any]]:
    """Each candidate (and same-config rerun) of pair ``p`` decided by the rule against its base and
    against the champion of its seed, with the truth of its configuration over the seeds."""
    from uft.promote import GatePolicy, decide

    policy = GatePolicy()
    by = {(r["seed"], r["role"], r["config"]): r for r in p["rows"]}
    out = []
    for (seed, role, config), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        if role not in ("candidate", "same-config"):
            continue
        for ref_kind in ("base", "champion") if role == "candidate" else ("champion",):
            refs = {s: by.get((s, "base", "base") if ref_kind == "base" else (s, "champion", "default"))
                    for s in range(VALIDATE_SEEDS)}
            mine = {s: by.get((s, role, config)) for s in range(VALIDATE_SEEDS)}
            pairs = [(mine[s], refs[s]) for s in range(VALIDATE_SEEDS) if mine[s] and refs[s]]
            truth_ = paired_truth([a["test_probe"] - b["test_probe"] for a, b in pairs]) if len(pairs) >= 2 else None
            ref = refs[seed]
            for labels in (True, False):
                strip = (lambda x: x) if labels else (lambda x: {k: v for k, v in x.items() if k != "val_probe"})
                d = decide(strip(r["signals"]), strip(ref["signals"]), policy, reference=ref_kind)
                out.append({"pair": p["pair"], "held_out": p["held_out"], "role": role, "config": config, "seed": seed,
                            "reference": ref_kind, "val_labels": labels, "promoted": d.promote,
                            "interval": d.interval, "truth": truth_, "reason": d.reasons[0] if d.reasons else ""})
    return out


#: The signals whose ranking of encoders is checked against the test probe (label-free ones and
#: the val probe, which the gate uses when the target has labels).
VALIDITY_SIGNALS = ("gate_score", "view_retrieval", "rank_fraction", "effective_rank", "alignment", "uniformity",
                    "snd", "neighbourhood_agreement", "source_retention", "val_probe")


def validity_rows(res: list[dict[str, Any]]) -> list[list[Any]]:
    """Per pair and signal: Spearman ρ between the signal *on the val split* (sign-corrected, higher
    = better) and the 5-shot test probe over every encoder of the pair (bases, candidates,
    champions, reruns) → rows [pair, signal, ρ, n]. What `bench.label_free_validity` measured on
    the candidates' training images, measured where the gate now reads."""
    from scipy.stats import spearmanr

    from uft.evaluate.label_free import HIGHER_IS_BETTER, gate_score

    rows = []
    for p in res:
        encs = [r for r in p["rows"] if r["signals"].get("finite", True)]
        probe = np.array([r["test_probe"] for r in encs], np.float64)
        for name in VALIDITY_SIGNALS:
            vals = np.array([gate_score(r["signals"]) if name == "gate_score" and "gate_score" not in r["signals"]
                             else r["signals"].get(name, np.nan) for r in encs], np.float64)
            if not HIGHER_IS_BETTER.get(name, True):
                vals = -vals
            ok = np.isfinite(vals)
            with warnings.catch_warnings():  # a constant signal has no ρ: nan, said as "nan" in the table
                warnings.simplefilter("ignore")
                rho = float(spearmanr(vals[ok], probe[ok]).statistic) if ok.sum() >= 3 else float("nan")
            rows.append([p["pair"] + (" (held out)" if p.get("held_out") else ""), name, rho, int(ok.sum())])
    return rows


def slim(res: list[dict[str, Any]]) -> dict[str, Any]:
    """What the results file keeps of a validation: every encoder's signals and truth without its
    per-row outcomes (megabytes; kept under ``--store``), and every decision with its interval."""
    pairs = [{**p, "rows": [{**r, "signals": {k: v for k, v in r["signals"].items() if k != "paired"}}
                            for r in p["rows"]]} for p in res]
    return {"pairs": pairs, "decisions": [d for p in res for d in validate_decisions(p)]}


def validate_report(res: list[dict[str, Any]]) -> str:
    """The protocol's tables: precision and recall (Clopper–Pearson 95 %) per rule × reference, the
    held-out pair on its own, and the same-configuration row."""
    from uft.promote import GatePolicy

    policy = GatePolicy()
    ds = [d for p in res for d in validate_decisions(p)]
    md = header("Promotion gate validation (pre-registered protocol)", "bench.promotion_gate")
    md += (f"- rule: promote when the lower bound of the {policy.level:.0%} paired-bootstrap interval of the gain "
           f"exceeds {policy.min_probe_gain} (val probe, with val labels) / {policy.min_gate_gain:.0%} (gate score, "
           "label-free); truth: 95 % t-interval of the paired test-probe gain over "
           f"{VALIDATE_SEEDS} seeds above 0\n- pairs: {', '.join(r['pair'] for r in res)} (held out: {HELD_OUT_PAIR})\n\n")
    rows = []
    cand = [d for d in ds if d["role"] == "candidate" and d["truth"]]
    for labels in (True, False):
        for ref in ("base", "champion"):
            for scope in ("all pairs", HELD_OUT_PAIR):
                sel = [d for d in cand if d["val_labels"] == labels and d["reference"] == ref
                       and (scope == "all pairs" or d["pair"] == scope)]
                prom = [d for d in sel if d["promoted"]]
                tp = sum(d["truth"]["truth"] == "better" for d in prom)
                real = [d for d in sel if d["truth"]["truth"] == "better" and d["truth"]["mean"] >= policy.min_probe_gain]
                hit = sum(d["promoted"] for d in real)
                pl, ph = clopper_pearson(tp, len(prom))
                rl, rh = clopper_pearson(hit, len(real))
                rows.append(["with val labels" if labels else "label-free", ref, scope, len(sel), len(prom), tp,
                             f"{tp / len(prom):.2f} [{pl:.2f}, {ph:.2f}]" if prom else "–", len(real),
                             f"{hit / len(real):.2f} [{rl:.2f}, {rh:.2f}]" if real else "–"])
    md += table(["rule", "reference", "pairs", "decisions", "promoted", "promoted & truly better",
                 "precision [CP 95 %]", "real gains ≥ min", "recall [CP 95 %]"], rows)
    same = [d for d in ds if d["role"] == "same-config"]
    md += "\n## Same configuration, another seed (goal: none promoted)\n\n"
    srows = []
    for labels in (True, False):
        sel = [d for d in same if d["val_labels"] == labels]
        k = sum(d["promoted"] for d in sel)
        lo, hi = clopper_pearson(k, len(sel))
        srows.append(["with val labels" if labels else "label-free", len(sel), k, f"[{lo:.2f}, {hi:.2f}]"])
    md += table(["rule", "reruns", "promoted", "share promoted, CP 95 %"], srows)
    md += ("\n## Label-free validity on val\n\nSpearman ρ between each signal measured on the target val split "
           "(sign-corrected: higher = better) and the 5-shot test probe, over every encoder of the pair (bases, "
           "candidates, champions, reruns; encoders with non-finite features left out).\n\n")
    md += table(["pair", "signal (on val)", "ρ vs 5-shot test probe", "encoders"], validity_rows(res))
    return md


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=("noise", "bench", "validate"), required=True)
    p.add_argument("--pairs", default="", help="comma-separated (default: the phase's pairs)")
    p.add_argument("--store", default=".uft/bench_gate", help="step cache and measurements (reused by reruns)")
    p.add_argument("--out", default="", help="output path without extension")
    p.add_argument("--limit", type=int, default=0, help="only the first N candidates (what a time budget allowed)")
    p.add_argument("--cached-only", action="store_true",
                   help="train nothing: report the candidates whose finetunes the step cache already holds")
    p.add_argument("--report-only", action="store_true",
                   help="with --phase validate: render the report from the full measurements under --store")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    store = Path(a.store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    pairs = [s for s in a.pairs.split(",") if s] or (list(NOISE_PAIRS) if a.phase == "noise" else
                                                     list(VALIDATE_PAIRS) if a.phase == "validate" else
                                                     [q for q in PAIRS if q != HELD_OUT_PAIR])
    t0 = time.perf_counter()
    if a.phase == "validate":  # the pre-registered protocol: every pair, then the report once all are measured
        full = store / "promotion_gate_validate.full.json"  # with every encoder's per-row outcomes (MBs)
        if a.report_only:
            res = [p for p in json.loads(full.read_text()) if p["pair"] in pairs]
        else:
            res = [validate_pair(pr, store, log=lambda m: print(m, flush=True)) for pr in pairs]
            full.write_text(json.dumps(res, default=float))
        out = Path(a.out or RESULTS / "promotion_gate_validate")
        out.with_suffix(".json").write_text(json.dumps(slim(res), default=float))
        if set(pairs) == set(VALIDATE_PAIRS):
            md = validate_report(res)
            out.with_suffix(".md").write_text(md)
            print(md)
        return 0
    cands = NOISE if a.phase == "noise" else BENCH
    if a.limit:
        cands = cands[: a.limit]
    if a.cached_only:  # a cache hit never reaches the trainer; anything else would train
        import uft.steps.train

        uft.steps.train._train = _refuse_training
    res = []
    for pr in pairs:
        try:
            res.append(measure_pair(pr, cands, store, log=lambda m: print(m, flush=True)))
        except NotTrained:  # its base encoder was not pretrained within the time budget
            print(f"[{pr}] base encoder not trained within the time budget: pair left out", flush=True)
    pairs = [r["pair"] for r in res] if a.cached_only else pairs
    out = Path(a.out or RESULTS / f"promotion_gate_{a.phase}")
    if a.phase == "noise":
        out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
        md = header("Promotion gate: spread of its signals over seeds of one configuration", "bench.promotion_gate")
        md += (f"- {len(NOISE)} seeds of the default finetune (SimCLR, 100 steps, batch 128, uniform replay 0.5) per "
               f"pair from one base (tiny width {WIDTH}, {IMAGE_SIZE} px, SimCLR {PRETRAIN_STEPS} steps); signals on "
               f"the val splits (target val {TARGET_VAL} / source val {SOURCE_VAL} of the non-test rows); test_probe: "
               f"{TRUTH_SHOTS}-shot linear probe on the test split, mean of {TRUTH_DRAWS} draws; "
               f"wall time {(time.perf_counter() - t0) / 60:.1f} min\n\n")
        md += table(["pair", "signal", "seeds", "mean", "sd", "sd/mean", "base"], noise_table(res))
        out.with_suffix(".md").write_text(md)
        print(md)
        return 0
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
    if set(pairs) != set(PAIRS) - {HELD_OUT_PAIR} and not a.cached_only:  # one pair of a parallel run: the report comes later
        return 0
    md = bench_report(res, json.loads((RESULTS / "promotion_gate_noise.json").read_text()), time.perf_counter() - t0)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


def probe_sigma(p: dict[str, Any], noise: list[dict[str, Any]]) -> tuple[float, str]:
    """The test probe's seed-to-seed sd for pair ``p``: from the noise phase, or (a pair without
    one) from the bench's own seeds of the default configuration → (σ, where it came from)."""
    for q in noise:
        if q["pair"] == p["pair"]:
            v = [r["test_probe"] for r in q["rows"]]
            return float(np.std(v, ddof=1)), f"noise phase, {len(v)} seeds"
    v = [r["test_probe"] for r in p["rows"] if r["candidate"]["name"] == CHAMPION]
    if len(v) < 2:  # no spread measured on this pair: the larger of the measured pairs' (stated as such)
        return max(probe_sigma({"pair": q["pair"]}, noise)[0] for q in noise), "larger of the noise pairs'"
    return float(np.std(v, ddof=1)), f"bench, {len(v)} seeds of the default"


def bench_report(res: list[dict[str, Any]], noise: list[dict[str, Any]], seconds: float) -> str:
    from uft.promote import GatePolicy

    policy = GatePolicy()
    md = header("Promotion gate: decisions on pipeline-made candidates vs the truth on the test split",
                "bench.promotion_gate")
    md += (f"- policy (pre-registered): gate-score margin {policy.margin:.1%} relative, val-probe margin "
           f"{policy.probe_margin:.3f}, retention tolerance {policy.retention_tolerance:.3f}; noise: {policy.noise}\n"
           f"- truth: {TRUTH_SHOTS}-shot linear probe on the test split (shots from the train split's labels, mean of "
           f"{TRUTH_DRAWS} draws); Δ = candidate − reference; σ = that probe's seed-to-seed sd for one configuration; "
           "'truly better' = Δ > 1σ; recall is also given on Δ ≥ 2σ\n"
           "- each candidate is decided twice per pair: against its base encoder (empty registry) and against the "
           f"finetuned champion ('{CHAMPION}', seed 10); 'with val labels' = the rule as run on a labelled target, "
           "'label-free' = the same rule with the val labels withheld (gate score decides)\n"
           f"- wall time of this report run {seconds / 60:.1f} min (candidates and measurements cached from the per-pair "
           "runs)\n\n")
    all_d: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    sig_rows, dec_rows = [], []
    for p in res:
        sigma, where = probe_sigma(p, noise)
        sig_rows.append([p["pair"], sigma, where, p["split_sizes"]["val"], p["split_sizes"]["test"], p["source_val"]])
        for d in decisions(p, sigma, policy):
            all_d[d["val_labels"]].append(d)
            dec_rows.append([d["pair"], d["reference"], d["candidate"], d["seed"], "yes" if d["val_labels"] else "no",
                             "promote" if d["promoted"] else "hold", f"{d['delta']:+.3f}", f"{d['delta_sigma']:+.1f}",
                             d["reasons"][0][:110]])
    md += table(["pair", "σ of test probe", "from", "target val rows", "target test rows", "source val rows"], sig_rows)
    md += "\n## Confusion tables\n\n"
    rows = []
    for labels in (True, False):
        ds = all_d[labels]
        for scope in ["all", *sorted({d["pair"] for d in ds})]:
            sub = [d for d in ds if scope == "all" or d["pair"] == scope]
            for ref in ("both", "base", "champion"):
                sel = [d for d in sub if ref == "both" or d["reference"] == ref]
                c = confusion(sel)
                rows.append(["with val labels" if labels else "label-free", scope, ref, c["n"], c["tp"], c["fp"], c["fn"],
                             c["tn"], c["precision"], c["recall_2sigma"], c["n_2sigma"], c["recall_1sigma"],
                             c["collapsed_promoted"]])
    md += table(["rule", "pair", "reference", "n", "promoted & truly better", "promoted, not truly better",
                 "held, truly better", "held, not truly better", "precision", "recall (Δ ≥ 2σ)", "n (Δ ≥ 2σ)",
                 "recall (Δ > 1σ)", "collapsed promoted"], rows)
    md += "\n## Every decision\n\n"
    md += table(["pair", "reference", "candidate", "seed", "val labels", "decision", "Δ test probe", "Δ / σ",
                 "first reason"], dec_rows)
    return md


if __name__ == "__main__":
    sys.exit(main())
