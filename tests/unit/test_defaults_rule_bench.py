"""bench.defaults_rule's leave-one-dataset-out choice, on made-up cell results (no training)."""

from __future__ import annotations

from types import SimpleNamespace

from bench.defaults_rule import report


def _run(score: float) -> dict:
    m = {"knn": score, "probe5": score, "probe5_std": 0.01, "full": score}
    return {"base": m, "finetuned": m, "pretrain_s": 1.0, "finetune_s": 1.0}


def _results(colour_gain: float, held_gain: float) -> dict:
    """Three pairs where colour at the inferred size (Sc) gains ``colour_gain``; on "held" it gains ``held_gain``."""
    out = {}
    for p, g in (("a", colour_gain), ("b", colour_gain), ("c", colour_gain), ("held", held_gain)):
        out[p] = {name: {s: _run(0.5 + (g if name == "Sc" else 0.0) + 0.001 * s) for s in range(3)}
                  for name in ("16g", "Sg", "16c", "Sc", "Sc ×2", "Sc +cv")}
    return out


def test_rule_chosen_without_a_pair_is_scored_on_it():
    pairs = ["a", "b", "c", "held"]
    inferred = {p: (32, True) for p in pairs}
    args = SimpleNamespace(pretrain_steps=1, finetune_steps=1, batch=2)
    lic = {p: "x" for p in pairs}
    text = report(_results(0.1, -0.2), pairs, inferred, [0, 1, 2], args, lic)
    row = next(line for line in text.splitlines() if line.startswith("| held | ") and "(Sc)" in line)
    assert "inferred size + colour (so far) (Sc)" in row and row.rstrip(" |").endswith("worse")
    # without "a", Sc's gains (+0.1, +0.1, -0.2) average 0: a tie with the old defaults goes to the cheaper rule
    assert "| a | old: 16 px grey (16g) | +0.000 |" in text
    text = report(_results(0.1, 0.0), pairs, inferred, [0, 1, 2], args, lic)
    row = next(line for line in text.splitlines() if line.startswith("| held | ") and "(Sc)" in line)
    assert "+0.000 ± 0.000" in row
