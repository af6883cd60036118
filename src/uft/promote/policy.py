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
SIGNALS_VERSION = "2"  # in the signals' cache key: 2 = measured on the val splits (1: target train images)

#: Accuracy of a two-sample classifier (old vs new target, base-encoder features) above which the
#: target counts as another domain: same-domain samples sit at 0.5 ± a few points; a new domain
#: near 1. Fixed before validation, not tuned.
DOMAIN_SHIFT_ACCURACY = 0.75


#: Where the default margins come from (recorded with every decision).
NOISE = ("seed-to-seed sd over 5 seeds of the default finetune on mnist→optdigits and fashion-mnist→mnist "
         "(tiny encoder, 16 px; bench/results/promotion_gate_noise.md): gate score sd/mean 0.040 / 0.022, "
         "val probe sd 0.0033 / 0.0063, source retention sd 0.0057 / 0.0088; margin = 2 × the larger "
         "(relative for the gate score), retention tolerance = 3 × the larger")


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

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if name != "noise" and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise UftError(f"promotion {name}={v!r}: pass a finite number >= 0")


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
           shift: float | None = None) -> Decision:
    """Signals of the candidate and of its reference → :class:`Decision`.

    ``champion``: the reference's signals, measured on the same held-out images — the current
    champion's, or on an empty registry the candidate's own base encoder's (``reference`` names it);
    None only when neither is known. ``floor``: the signals of an untrained encoder of the same
    architecture (:func:`uft.evaluate.label_free.collapsed`). ``shift``: :func:`domain_shift` between
    the champion's target and this run's (None: same target, or no champion). Rules, in order; the
    first three hold the candidate back, the last decides:

    1. collapsed or degenerate (never promoted);
    2. the target moved to another domain (``shift`` ≥ :data:`DOMAIN_SHIFT_ACCURACY`): no automatic
       promotion over a champion of another domain;
    3. source retention dropped by more than ``retention_tolerance``;
    4. with val labels on both sides: ``val_probe`` must gain ``probe_margin`` and the gate score may
       not fall by more than ``margin`` (relative); without: the gate score must gain ``margin``.
    """
    from uft.evaluate.label_free import collapsed

    kw = dict(reference=reference, floor=floor, policy=asdict(policy))
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
    reasons, ok, changed = [], True, False
    cg, rg = float(candidate["gate_score"]), float(champion["gate_score"])
    rel = cg / rg - 1 if rg > 0 else (math.inf if cg > 0 else 0.0)
    gate_line = (f"gate score {cg:.4f} vs {reference} {rg:.4f}: {rel:+.1%} (margin ±{policy.margin:.1%} relative, "
                 "2σ of its seed-to-seed spread)")
    changed |= abs(rel) >= policy.margin
    labels = _has(candidate, "val_probe") and _has(champion, "val_probe")
    if labels:
        gain = candidate["val_probe"] - champion["val_probe"]
        changed |= abs(gain) >= policy.probe_margin
        probe_line = (f"val-split probe {candidate['val_probe']:.3f} vs {reference} {champion['val_probe']:.3f}: "
                      f"{gain:+.3f} (margin {policy.probe_margin:.3f}, 2σ)")
        if gain < policy.probe_margin:
            ok = False
            reasons.append(f"not better on the val-split probe: {probe_line}")
        else:
            reasons.append(f"better on the val-split probe: {probe_line}")
        if rel <= -policy.margin:
            ok = False
            reasons.append(f"label-free quality fell: {gate_line}")
        else:
            reasons.append(gate_line)
    elif rel < policy.margin:
        ok = False
        reasons.append(f"not better: {gate_line}")
    else:
        reasons.append(f"better: {gate_line}")
    if _has(candidate, "source_retention") and _has(champion, "source_retention"):
        cr, hr = candidate["source_retention"], champion["source_retention"]
        changed |= abs(hr - cr) > policy.retention_tolerance
        if hr - cr > policy.retention_tolerance:
            ok = False
            reasons.insert(0, f"forgets the source: retention {cr:.3f} vs {reference} {hr:.3f} "
                              f"(drop {hr - cr:.3f} > tolerance {policy.retention_tolerance:.3f}, 3σ)")
        else:
            reasons.append(f"source retention {cr:.3f} vs {reference} {hr:.3f} "
                           f"(tolerance {policy.retention_tolerance:.3f}, 3σ)")
    if not changed:
        reasons.insert(0, f"finetuning changed nothing measurable: every signal is within its noise margin of the "
                          f"{reference}")
    return Decision(ok, reasons, candidate, champion, **kw)
