"""The gate's rule: the policy (margins from measured noise), the decision and :func:`decide`, a
pure function of the candidate's and reference's signals."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


from uft.errors import UftError


DEFAULT_MODEL = "uft-encoder"
CHAMPION, CHALLENGER = "champion", "challenger"
TAG_KEY = "uft.encoder_sha"
SIGNAL_TAG = "uft.signal."
FLOOR_SEEDS = 3  # untrained encoders whose best signals make the degenerate floor (label_free.floor_of)
VAL_SHOTS = 5  # labels per class of the val-split probe (uft.evaluate.label_free.split_probe's default)
SIGNALS_VERSION = "3"  # in the signals' cache key: 3 = with paired per-row outcomes and lineage exclusions (2: val splits)

#: Accuracy of a two-sample classifier (old vs new target, base-encoder features) above which the
#: target counts as another domain: same-domain samples sit at 0.5 ± a few points; a new domain
#: near 1. Fixed before validation, not tuned.
DOMAIN_SHIFT_ACCURACY = 0.75


#: Where the default margins come from (recorded with every decision).
NOISE = ("seed-to-seed sd over 5 seeds of the default finetune on mnist→optdigits and fashion-mnist→mnist "
         "(tiny encoder, 16 px; bench/results/promotion_gate_noise.md): gate score sd/mean 0.040 / 0.022, "
         "val probe sd 0.0033 / 0.0063, source retention sd 0.0057 / 0.0088; margin = 2 × the larger "
         "(relative for the gate score), retention tolerance = 3 × the larger")


#: The smallest gains worth a new version. A promotion makes every consumer of ``@champion`` re-embed
#: its data (feature stores, search indexes) and re-validate downstream models; below these gains
#: they would pay that for a change they cannot see. Both sit above the finetune's own seed-to-seed
#: spread measured at the calibration sizes (val probe sd 0.0033–0.0063, gate score sd/mean
#: 0.022–0.040, :data:`NOISE`), so a promoted gain is larger than what rerunning the same recipe moves.
#: - ``MIN_PROBE_GAIN``: one point of 5-shot val-probe accuracy (absolute);
#: - ``MIN_GATE_GAIN``: 5 % of the label-free gate score (relative: its scale differs by domain).
#: Fixed before validation (docs/results.md, "Promotion gate validation — protocol"), not tuned.
MIN_PROBE_GAIN = 0.01
MIN_GATE_GAIN = 0.05
#: The gain's interval: two-sided 90 % percentile bootstrap, so its lower bound is a one-sided 95 %
#: bound — promote only when the gain clears the minimum with 95 % confidence.
INTERVAL_LEVEL = 0.90
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class GatePolicy:
    """The gate's margins, each set from the measured seed-to-seed spread (σ) of its signal for one
    finetuning configuration (``bench/promotion_gate.py --phase noise``; ``noise`` says which).

    - ``margin``: *relative* gate-score gain over the reference needed to promote (``cand / ref − 1``);
      relative because the score's scale differs by an order of magnitude between domains while its
      spread is a similar fraction of it. Set to 2 σ of ``sd / mean``.
    - ``probe_margin``: absolute gain of the val-split probe (``val_probe``) needed to promote when the
      target's val split has labels. 2 σ.
    - ``retention_tolerance``: the largest drop of source k-NN accuracy (source val split) allowed. 3 σ.
    """

    margin: float = 0.08  # 2 × 0.0403, the larger sd/mean of the gate score (mnist→optdigits)
    retention_tolerance: float = 0.026  # 3 × 0.00878, the larger sd of source retention (fashion-mnist→mnist)
    probe_margin: float = 0.0125  # 2 × 0.00627, the larger sd of the val probe (fashion-mnist→mnist)
    noise: str = NOISE
    #: The decision's own rule (:func:`paired_gain`): promote only when the lower bound of the gain's
    #: paired-bootstrap interval clears these (see :data:`MIN_PROBE_GAIN`). ``margin`` and
    #: ``probe_margin`` remain the floor check's and the "changed nothing" reading's noise bands.
    min_probe_gain: float = MIN_PROBE_GAIN
    min_gate_gain: float = MIN_GATE_GAIN
    level: float = INTERVAL_LEVEL
    resamples: int = BOOTSTRAP_RESAMPLES

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if name != "noise" and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise UftError(f"promotion {name}={v!r}: pass a finite number >= 0")
        if not 0 < self.level < 1 or self.resamples < 100:
            raise UftError(f"promotion interval level={self.level}, resamples={self.resamples}: pass a level in "
                           "(0, 1) and at least 100 resamples")


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    candidate: dict[str, Any] = field(default_factory=dict)
    champion: dict[str, Any] | None = None  # the reference's signals (the champion's, or the base's)
    version: str | None = None
    previous_champion: str | None = None
    forced: bool = False
    reference: str = "champion"  # what the candidate was compared with
    floor: dict[str, Any] | None = None  # an untrained encoder's signals (the degenerate floor)
    policy: dict[str, Any] | None = None
    shift: float | None = None  # domain_shift between the champion's target and this one (None: not measured)
    interval: dict[str, Any] | None = None  # the deciding gain and its paired interval (:func:`paired_gain`)
    lineage: dict[str, Any] | None = None  # what was checked about the scored rows (:mod:`uft.lineage`)

    @property
    def alias(self) -> str:
        return CHAMPION if self.promote else CHALLENGER

    def summary(self) -> str:
        """One line for `uft run` and the report."""
        where = f" version {self.version}" if self.version else ""
        return f"{self.alias}{where}: " + "; ".join(self.reasons)


def _has(d: dict[str, Any] | None, k: str) -> bool:
    return d is not None and isinstance(d.get(k), (int, float)) and math.isfinite(float(d[k]))


def decide(candidate: dict[str, Any], champion: dict[str, Any] | None, policy: GatePolicy = GatePolicy(),
           *, force: bool = False, floor: dict[str, Any] | None = None, reference: str = "champion",
           shift: float | None = None, lineage: dict[str, Any] | None = None) -> Decision:
    """Signals of the candidate and of its reference → :class:`Decision`.

    ``champion``: the reference's signals, measured on the same held-out images — the current
    champion's, or on an empty registry the candidate's own base encoder's (``reference`` names it);
    None only when neither is known. ``floor``: the signals of an untrained encoder of the same
    architecture (:func:`uft.evaluate.label_free.collapsed`). ``shift``: :func:`domain_shift` between
    the champion's target and this run's (None: same target, or no champion). ``lineage``: what
    the scored rows were checked against (``cannot_tell``: a reason it could not be proven). Rules,
    in order; the first four hold the candidate back, the last decides:

    1. collapsed or degenerate (never promoted);
    2. the target moved to another domain (``shift`` ≥ :data:`DOMAIN_SHIFT_ACCURACY`): no automatic
       promotion over a champion of another domain;
    3. source retention dropped by more than ``retention_tolerance``;
    4. the scored rows must be provably unseen by both encoders (``lineage``: :func:`uft.lineage.
       scored_rows_check`; ``cannot_tell`` holds the candidate back);
    5. the gain must clear the smallest gain worth a new version with 95 % confidence: with val
       labels on both sides on ``val_probe`` (and the gate score's interval may not lie wholly below
       −``min_gate_gain``), without on the gate score — each from the paired bootstrap over the
       same val rows (:func:`paired_gain`); no paired outcomes → cannot tell, held.
    """
    from uft.evaluate.label_free import collapsed

    # The deciding gain and its interval, recorded with every decision (also one held for another rule).
    labels = _has(candidate, "val_probe") and _has(champion, "val_probe")
    what = "val_probe" if labels else "gate_score"
    interval = (paired_gain(candidate, champion, what, resamples=policy.resamples, level=policy.level)
                if champion is not None else None)
    need = policy.min_probe_gain if labels else policy.min_gate_gain
    if interval is not None:
        interval["min_gain"] = need
    kw = dict(reference=reference, floor=floor, policy=asdict(policy), lineage=lineage, interval=interval)
    if force:
        return Decision(True, ["promoted by hand (uft promote --force): the gate was not applied"], candidate,
                        champion, forced=True, **kw)
    why = collapsed(candidate, floor=floor, reference=champion, margin=policy.margin, probe_margin=policy.probe_margin,
                    retention_tolerance=policy.retention_tolerance)
    if why:
        return Decision(False, [f"collapsed: {why}"], candidate, champion, **kw)
    if shift is not None and shift >= DOMAIN_SHIFT_ACCURACY:
        return Decision(False, [f"the target is another domain than the {reference}'s: a classifier tells the two "
                                f"targets apart with accuracy {shift:.2f} (≥ {DOMAIN_SHIFT_ACCURACY}; same domain ≈ 0.5); "
                                "not promoted automatically — check the target, promote by hand (uft promote --force "
                                "RUN_ID) or register it under another --param registered_model"],
                        candidate, champion, **kw)
    if champion is None:
        return Decision(True, ["no reference to compare with (no champion, no base encoder): promoted on the "
                               f"sanity check alone (gate score {candidate['gate_score']:.4f})"], candidate, None, **kw)
    reasons, ok = [], True
    if lineage and lineage.get("cannot_tell"):
        ok = False
        reasons.append(f"cannot tell: {lineage['cannot_tell']}; not promoted automatically (promote by hand with "
                       "uft promote --force RUN_ID after checking)")
    if interval is None:
        ok = False
        reasons.append(f"cannot tell: the candidate and the {reference} were not scored on the same rows (no paired "
                       f"outcomes recorded for {what}), so the gain has no interval; not promoted automatically")
    else:
        line = interval_line(interval, reference)
        if interval["low"] > need:
            reasons.append(f"better: {line}")
        else:
            ok = False
            reasons.append(f"not better: {line}")
        if interval["low"] <= 0.0 <= interval["high"]:
            reasons.insert(0, f"finetuning changed nothing measurable: the {what} gain's interval over the "
                              f"{reference} includes 0")
    if labels:
        # the label-free score still may not fall clearly (its own interval entirely below −min_gate_gain)
        free = paired_gain(candidate, champion, "gate_score", resamples=policy.resamples, level=policy.level)
        if free is not None and free["high"] < -policy.min_gate_gain:
            ok = False
            reasons.append(f"label-free quality fell: {interval_line({**free, 'min_gain': policy.min_gate_gain}, reference)}")
    if _has(candidate, "source_retention") and _has(champion, "source_retention"):
        cr, hr = candidate["source_retention"], champion["source_retention"]
        if hr - cr > policy.retention_tolerance:
            ok = False
            reasons.insert(0, f"forgets the source: retention {cr:.3f} vs {reference} {hr:.3f} "
                              f"(drop {hr - cr:.3f} > tolerance {policy.retention_tolerance:.3f}, 3σ)")
        else:
            reasons.append(f"source retention {cr:.3f} vs {reference} {hr:.3f} "
                           f"(tolerance {policy.retention_tolerance:.3f}, 3σ)")
    return Decision(ok, reasons, candidate, champion, **kw)


def interval_line(iv: dict[str, Any], reference: str) -> str:
    """One line: the gain, its interval, what it rests on and the bar it had to clear."""
    rel = iv["signal"] == "gate_score"
    f = (lambda v: f"{v:+.1%}") if rel else (lambda v: f"{v:+.4f}")
    draws = f" × {iv['n_draws']} label draws" if iv.get("n_draws") else ""
    return (f"{iv['signal']} gain over the {reference} {f(iv['gain'])}"
            f"{' (relative)' if rel else ''}, {iv['level']:.0%} paired-bootstrap interval [{f(iv['low'])}, "
            f"{f(iv['high'])}] over {iv['n_rows']} val rows{draws}; promote needs the lower bound above "
            f"{f(iv.get('min_gain', 0.0))} (the smallest gain worth a new version)")


def paired_gain(candidate: dict[str, Any], reference: dict[str, Any] | None, what: str, *,
                resamples: int = BOOTSTRAP_RESAMPLES, level: float = INTERVAL_LEVEL, seed: int = 0) -> dict[str, Any] | None:
    """The gain of ``candidate`` over ``reference`` on ``what`` and its paired percentile-bootstrap
    interval → ``{"signal", "gain", "low", "high", "level", "n_rows", "n_draws", "resamples"}``, or
    None when the two were not scored on the same rows (no ``paired`` outcomes, or other rows).

    Both encoders' per-row outcomes on the same val rows (``signals["paired"]``, made by
    :func:`uft.promote.signals.paired_outcomes`) are resampled together:

    - ``val_probe``: outcomes ``(D, n)`` (1 right, 0 wrong, -1 a support row of that label draw);
      rows and label draws are resampled with replacement (the probe is few-shot: which labels are
      drawn is part of the noise); gain = the resampled share right, candidate minus reference.
    - ``gate_score``: per-image view retrieval ``(n,)`` (0, ½, 1 over both directions); rows are
      resampled; gain = relative change of ``mean retrieval × rank fraction``, the rank fractions
      held at their measured values (an approximation: the rank's own sampling noise is left out).

    The support draws are not refitted per resample (that would cost ``resamples`` probe fits):
    the interval is that of the outcomes given the draws, widened by resampling the draws.
    """
    import numpy as np

    a, b = (d.get("paired") if isinstance(d, dict) else None for d in (candidate, reference))
    if not (isinstance(a, dict) and isinstance(b, dict)) or not a.get("rows") or a.get("rows") != b.get("rows"):
        return None
    rng = np.random.default_rng(seed)
    if what == "val_probe":
        if not a.get("probe") or not b.get("probe"):
            return None
        c, r = np.asarray(a["probe"], np.float64), np.asarray(b["probe"], np.float64)
        if c.shape != r.shape or ((c < 0) != (r < 0)).any():
            return None
        mask = (c >= 0).astype(np.float64)
        diff = np.where(mask > 0, c - r, 0.0)
        d, n = c.shape
        gain = float(diff.sum() / mask.sum())
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)  # (B, n) row counts
        u = rng.multinomial(d, np.full(d, 1.0 / d), size=resamples).astype(np.float64)  # (B, D) draw counts
        boot = ((w @ diff.T) * u).sum(1) / np.maximum(((w @ mask.T) * u).sum(1), 1e-12)
        draws = d
    elif what == "gate_score":
        if not a.get("retrieval") or not b.get("retrieval") or not all(_has(x, "rank_fraction") for x in (candidate, reference)):
            return None
        c, r = np.asarray(a["retrieval"], np.float64), np.asarray(b["retrieval"], np.float64)
        if c.shape != r.shape or r.mean() * reference["rank_fraction"] <= 0:
            return None
        n, draws = len(c), 0
        ratio = candidate["rank_fraction"] / reference["rank_fraction"]
        gain = float(c.mean() / r.mean() * ratio - 1)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
        boot = (w @ c) / np.maximum(w @ r, 1e-12) * ratio - 1
    else:
        raise UftError(f"paired_gain: unknown signal {what!r}: use val_probe or gate_score")
    tail = (1 - level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return {"signal": what, "gain": gain, "low": float(low), "high": float(high), "level": level, "n_rows": int(n),
            "n_draws": int(draws), "resamples": int(resamples)}


def decision_tags(decision: Decision) -> dict[str, str]:
    """The interval and the lineage check as MLflow tags (on the version and on the promote run)."""
    tags: dict[str, str] = {}
    iv = decision.interval
    if iv:
        tags.update({"uft.gain.signal": iv["signal"], "uft.gain": f"{iv['gain']:.6f}", "uft.gain.low": f"{iv['low']:.6f}",
                     "uft.gain.high": f"{iv['high']:.6f}", "uft.gain.level": f"{iv['level']:g}",
                     "uft.gain.min": f"{iv.get('min_gain', 0.0):g}", "uft.gain.rows": str(iv["n_rows"]),
                     "uft.gain.draws": str(iv["n_draws"])})
    else:
        tags["uft.gain"] = "none (no paired interval)"
    lin = decision.lineage or {}
    if lin:
        tags["uft.lineage.check"] = (f"cannot tell: {lin['cannot_tell']}" if lin.get("cannot_tell") else
                                     f"no scored row was trained on by either encoder ({lin.get('excluded_target', 0)} "
                                     "target val rows left out)")[:4900]
    return tags
