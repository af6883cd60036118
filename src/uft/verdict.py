"""Did finetuning change the target metrics? An honest one-line verdict per metric at the end of a run.

A few-label probe's accuracy moves with the labelled examples it draws: its spread over the draws
(``*_std``) is the yardstick. A change smaller than the larger of the base's and the finetuned
encoder's spread is "not distinguishable from the base". k-NN and the full probe are one fit each:
no spread is measured, so they are reported as measured, without a claim.
"""

from __future__ import annotations

from typing import Mapping


def finetune_verdicts(metrics: Mapping[str, float]) -> list[str]:
    """Flat run metrics (``base_X``, ``finetuned_X``, ``base_X_std``, …) → one sentence per metric."""
    names = sorted({k[len("finetuned_"):] for k in metrics if k.startswith("finetuned_") and not k.endswith("_std")},
                   key=_order)
    lines = []
    for n in names:
        base, fine = metrics.get(f"base_{n}"), metrics.get(f"finetuned_{n}")
        if not isinstance(base, (int, float)) or not isinstance(fine, (int, float)):
            continue
        delta = fine - base
        sds = [metrics.get(f"{t}_{n}_std") for t in ("base", "finetuned")]
        sds = [s for s in sds if isinstance(s, (int, float))]
        label = _label(n)
        if sds:
            spread = max(sds)
            call = ("not distinguishable from the base" if abs(delta) <= spread else
                    "better than the base" if delta > 0 else "worse than the base")
            lines.append(f"finetuning changed the {label} by {delta:+.3f} ± {spread:.3f}: {call}")
        else:
            lines.append(f"finetuning changed the {label} by {delta:+.3f} (one fit: no spread measured)")
    return lines


def summary_line(metrics: Mapping[str, float]) -> str:
    """One line over all probes with a spread: did finetuning change anything beyond it?"""
    lines = finetune_verdicts(metrics)
    judged = [s for s in lines if "±" in s]
    if not judged:
        return ""
    moved = [s for s in judged if not s.endswith("not distinguishable from the base")]
    if not moved:
        return "Verdict: finetuning changed no few-label probe beyond its spread over label draws."
    return f"Verdict: {len(moved)} of {len(judged)} few-label probes moved beyond their spread over label draws."


def _order(name: str) -> tuple[int, int, str]:
    if name.startswith("linear_") and name.endswith("shot"):
        return (1, int(name[len("linear_"):-len("shot")] or 0), name)
    return (0 if name == "knn" else 2, 0, name)


def _label(name: str) -> str:
    if name.startswith("linear_") and name.endswith("shot"):
        return f"{name[len('linear_'):-len('shot')]}-label probe"
    return {"knn": "k-NN accuracy", "linear_full": "full linear probe", "source_knn": "source k-NN (retention)"}.get(name, name)
