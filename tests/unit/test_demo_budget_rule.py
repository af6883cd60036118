"""bench.demo_budget --choose: the pre-registered rule (docs/results.md, "Choosing the demo budget")
as code: selection on val-split quantities only, validation on the gate and the verdict."""

from bench.demo_budget import _GATE, _VERDICT, CANDIDATES, qualifies, validates


def test_selection_needs_the_gate_to_promote_and_no_degenerate_holistic_start():
    assert qualifies({"promoted": 1.0, "holistic_start_degenerate": 0.0})
    assert not qualifies({"promoted": 0.0, "holistic_start_degenerate": 0.0})
    assert not qualifies({"promoted": 1.0, "holistic_start_degenerate": 1.0})
    assert not qualifies({"promoted": 1.0})  # no start check recorded: not judged, not passed


def test_validation_needs_the_gate_and_two_of_three_probes_moved():
    assert validates({"promoted": 1.0, "moved": 2.0})
    assert not validates({"promoted": 1.0, "moved": 1.0})
    assert not validates({"promoted": 0.0, "moved": 3.0})


def test_the_run_output_is_read_as_uft_run_prints_it():
    line = ("Promotion: champion — uft-encoder version 1: better: val_probe gain over the base encoder +0.0452, "
            "90% paired-bootstrap interval [+0.0254, +0.0651] over 185 val rows × 10 label draws")
    assert _GATE.search(line).groups() == ("+0.0452", "+0.0254", "+0.0651")
    assert _VERDICT.search("Verdict: 3 of 3 few-label probes moved beyond their label-draw spread").groups() == ("3", "3")


def test_candidates_are_smallest_first():
    totals = [sum(int(x) for x in c.split(",")) for c in CANDIDATES]
    assert totals == sorted(totals)
