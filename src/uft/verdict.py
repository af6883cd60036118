"""Did finetuning change the target metrics? An honest one-line verdict per metric at the end of a run.

One run is one seed, so no verdict here is an interval over seeds. Two yardsticks exist:

- **label draws**: a few-label probe is fitted on several random draws of its labelled examples
  (``*_std`` is the sd over them, ``probe_draws`` how many). That spread is label noise only — it
  says nothing about how much another seed of the same finetune would differ — so it is named as
  such and never printed as ``±``. With one draw there is no spread at all, and no call is made on it.
- **seed noise**, where measured: :data:`SEED_NOISE` holds the seed-to-seed sd of a probe for the
  configuration the promotion gate's noise table was measured on (``bench/results/promotion_gate_noise.md``).
  When the run's configuration is that one, a change must also exceed 2 × that sd (the gate's own
  margin rule) before it is called better or worse.

k-NN and the full probe are one fit each: no spread is measured, so they are reported as measured,
without a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class SeedNoise:
    """Seed-to-seed sd of one probe, and the configuration it was measured on."""

    sd: float
    encoder: str
    image_size: int
    ssl_method: str
    source: str

    def applies(self, config: Mapping[str, Any] | None) -> bool:
        """The run's configuration is the measured one (encoder, input size, objective)."""
        if not config:
            return False
        return (str(config.get("encoder", "")) == self.encoder and _int(config.get("image_size")) == self.image_size
                and str(config.get("ssl_method", "")).split(":")[0] == self.ssl_method)


#: The gate's noise table: test-split 5-shot probe (mean of 10 draws) over 5 seeds of the default
#: finetune (SimCLR, tiny encoder, 16 px); sd 0.00122 on mnist→optdigits, 0.00456 on fashion-mnist→mnist —
#: the larger is used, since a run does not say which kind of pair it is.
SEED_NOISE: dict[str, SeedNoise] = {
    "linear_5shot": SeedNoise(0.00456, "tiny", 16, "simclr",
                              "5 seeds of the default finetune, bench/results/promotion_gate_noise.md"),
}


def finetune_verdicts(metrics: Mapping[str, float], config: Mapping[str, Any] | None = None,
                      draws: int | None = None) -> list[str]:
    """Flat run metrics (``base_X``, ``finetuned_X``, ``base_X_std``, …) → one sentence per metric.

    ``config``: the run's parameters (``probe_draws``, ``encoder``, ``image_size``, ``ssl_method``),
    used to name the number of label draws and to decide whether :data:`SEED_NOISE` applies;
    ``draws`` overrides ``config["probe_draws"]``.
    """
    draws = draws if draws is not None else _int((config or {}).get("probe_draws"))
    names = sorted({k[len("finetuned_"):] for k in metrics if k.startswith("finetuned_") and not k.endswith("_std")},
                   key=_order)
    lines = []
    for n in names:
        base, fine = metrics.get(f"base_{n}"), metrics.get(f"finetuned_{n}")
        if not isinstance(base, (int, float)) or not isinstance(fine, (int, float)):
            continue
        delta = fine - base
        sds = {t: metrics.get(f"{t}_{n}_std") for t in ("base", "finetuned")}
        sds = {t: s for t, s in sds.items() if isinstance(s, (int, float))}
        label = _label(n)
        head = f"finetuning changed the {label} by {delta:+.3f}"
        if not sds:
            lines.append(f"{head} (one fit: no spread measured)")
            continue
        noise = SEED_NOISE.get(n)
        seed_sd = noise.sd if noise is not None and noise.applies(config) else None
        one_draw = draws == 1 or (draws is None and all(s == 0 for s in sds.values()))
        parts, yardsticks = [], []
        if one_draw:
            parts.append("one label draw: no spread" if draws == 1 else
                         "sd 0 over the label draws (one draw, or identical draws): no spread")
        else:
            spread = max(sds.values())
            of = f"{draws} label draws" if draws else "label draws"
            parts.append("sd over " + of + ": " + ", ".join(f"{t} {s:.3f}" for t, s in sds.items())
                         + " (label noise only, not an interval over seeds)")
            yardsticks.append(spread)
        if seed_sd is not None:
            parts.append(f"seed-to-seed sd {seed_sd:.4f} for this configuration ({noise.source}), 2 sd = {2 * seed_sd:.3f}")
            yardsticks.append(2 * seed_sd)
        if not yardsticks:
            lines.append(f"{head} ({'; '.join(parts)}): no call")
            continue
        call = ("not distinguishable from the base" if abs(delta) <= max(yardsticks) else
                "better than the base" if delta > 0 else "worse than the base")
        lines.append(f"{head} ({'; '.join(parts)}): {call}")
    return lines


def summary_line(metrics: Mapping[str, float], config: Mapping[str, Any] | None = None,
                 draws: int | None = None) -> str:
    """One line over all few-label probes that got a call: did finetuning change any beyond its yardstick?"""
    lines = finetune_verdicts(metrics, config, draws)
    judged = [s for s in lines if s.endswith(("the base", "from the base"))]
    if not judged:
        return ""
    seed = any("seed-to-seed" in s for s in judged)
    what = "label-draw spread" + (" and seed noise" if seed else "") + " (one run: no interval over seeds)"
    moved = [s for s in judged if not s.endswith("not distinguishable from the base")]
    if not moved:
        return f"Verdict: finetuning changed no few-label probe beyond its {what}."
    return f"Verdict: {len(moved)} of {len(judged)} few-label probes moved beyond their {what}."


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None and str(v).strip() != "" else None
    except (TypeError, ValueError):
        return None


def _order(name: str) -> tuple[int, int, str]:
    if name.startswith("linear_") and name.endswith("shot"):
        return (1, int(name[len("linear_"):-len("shot")] or 0), name)
    return (0 if name == "knn" else 2, 0, name)


def _label(name: str) -> str:
    if name.startswith("linear_") and name.endswith("shot"):
        return f"{name[len('linear_'):-len('shot')]}-label probe"
    return {"knn": "k-NN accuracy", "linear_full": "full linear probe", "source_knn": "source k-NN (retention)"}.get(name, name)
