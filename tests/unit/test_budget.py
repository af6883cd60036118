"""A budget that follows the data (uft.budget): the rule, its place in the inferred defaults, the
time estimate printed before a run; and the end-of-run verdict on finetuning (uft.verdict)."""

from __future__ import annotations

import pytest

from uft.budget import BATCH_RANGE, FINETUNE_EPOCHS, PRETRAIN_EPOCHS, infer_budget, input_factor
from uft.data.profile import DataProfile
from uft.defaults import infer_defaults
from uft.verdict import finetune_verdicts, summary_line

CURRENT = {"image_size": 16, "channels": 1, "encoder": "tiny"}


def _profile(total: int, side: int = 32, colour: int = 0) -> DataProfile:
    return DataProfile("x", 10, total, colour, tuple((side, side) for _ in range(10)))


def test_batch_follows_the_target_and_stays_in_range():
    assert infer_budget(2000, 100, image_size=16, channels=1).batch_size == BATCH_RANGE[0]  # 50 train rows
    assert infer_budget(2000, 2000, image_size=16, channels=1).batch_size == 128  # 1000 train rows / 4 → 128
    assert infer_budget(2000, 100_000, image_size=16, channels=1).batch_size == BATCH_RANGE[1]


def test_steps_are_passes_over_each_domain():
    small, large = (infer_budget(n, 2000, image_size=16, channels=1) for n in (2000, 20_000))
    assert large.pretrain_steps > small.pretrain_steps
    # 20k source rows → 18k train rows; 8 passes at batch 128 = 1125 steps
    assert large.pretrain_steps == -(-PRETRAIN_EPOCHS * 18_000 // 128)
    b = infer_budget(2000, 4000, image_size=16, channels=1)
    assert b.finetune_steps == -(-FINETUNE_EPOCHS * 2000 // 256)
    assert "passes over" in b.reason and "batch 256" in b.reason


def test_input_factor_is_one_for_the_demo_shape_and_bounded():
    assert input_factor(16, 1) == 1.0
    assert 1.0 <= input_factor(32, 3) <= max(1.0, input_factor(224, 3))
    assert input_factor(8, 1) == 1.0  # smaller inputs never get fewer steps than the rule's passes


def test_a_batch_set_by_hand_drives_the_steps():
    b = infer_budget(2000, 2000, image_size=16, channels=1, batch_size=32)
    assert b.batch_size == 32 and "set by hand" in b.reason
    assert b.pretrain_steps > infer_budget(2000, 2000, image_size=16, channels=1).pretrain_steps


def test_defaults_carry_the_budget_only_for_two_folders_and_unset_fields():
    both = infer_defaults(_profile(3000), _profile(1500), explicit={}, current=CURRENT, accelerator=False)
    assert {"pretrain_steps", "finetune_steps", "batch_size"} <= set(both.values)
    assert "pretrain_steps=" in both.line() and "-p pretrain_steps=" in both.line()
    one = infer_defaults(None, _profile(1500), explicit={}, current=CURRENT, accelerator=False)
    assert "pretrain_steps" not in one.values  # a bundled source: its size is not profiled
    pinned = infer_defaults(_profile(3000), _profile(1500), explicit={"pretrain_steps": "7"}, current=CURRENT,
                            accelerator=False)
    assert "pretrain_steps" not in pinned.values and "finetune_steps" in pinned.values


def test_estimate_is_measured_and_scales_with_steps():
    from uft.budget import estimate_seconds
    from uft.config import RunConfig

    few, line = estimate_seconds(RunConfig(pretrain_steps=2, finetune_steps=2, batch_size=32, replay_size=0))
    many, _ = estimate_seconds(RunConfig(pretrain_steps=200, finetune_steps=200, batch_size=32, replay_size=0))
    assert line.startswith("estimated training time: ~") and "s/step, measured here" in line
    assert many > 20 * few  # 100× the steps; the per-step timing itself is noisy on a shared machine


@pytest.mark.parametrize("delta, std, word", [(0.005, 0.03, "not distinguishable"), (0.08, 0.03, "better"),
                                              (-0.08, 0.03, "worse")])
def test_verdict_against_the_probe_spread(delta, std, word):
    m = {"base_linear_5shot": 0.5, "finetuned_linear_5shot": 0.5 + delta, "base_linear_5shot_std": std,
         "finetuned_linear_5shot_std": std / 2, "base_knn": 0.6, "finetuned_knn": 0.61}
    lines = finetune_verdicts(m)
    assert lines[0].startswith("finetuning changed the k-NN accuracy by +0.010 (one fit: no spread measured)")
    assert lines[1] == (f"finetuning changed the 5-label probe by {delta:+.3f} (sd over label draws: base {std:.3f}, "
                        f"finetuned {std / 2:.3f} (label noise only, not an interval over seeds)): {word}") + (
        " from the base" if word == "not distinguishable" else " than the base")
    assert ("no few-label probe" in summary_line(m)) == (word == "not distinguishable")


def test_report_and_run_output_carry_the_verdict(capsys):
    from types import SimpleNamespace

    from uft.cli import local as cli
    from uft.report import build_report

    metrics = {"linear_5shot": 0.40, "linear_5shot_std": 0.03}
    collected = [{"step": "linear_base", "metrics": metrics},
                 {"step": "linear_finetuned", "metrics": {"linear_5shot": 0.405, "linear_5shot_std": 0.02}}]
    files, _ = build_report(collected, {})
    md = files["report.md"].decode()
    assert ("finetuning changed the 5-label probe by +0.005 (sd over label draws: base 0.030, finetuned 0.020 "
            "(label noise only, not an interval over seeds)): not distinguishable from the base") in md
    res = SimpleNamespace(run_id="r", seconds=1.0, metrics={"base_linear_5shot": 0.40, "base_linear_5shot_std": 0.03,
                                                              "finetuned_linear_5shot": 0.405, "finetuned_linear_5shot_std": 0.02},
                          parent_run_id="p", experiment="e", artifacts={})
    cli.print_result(res, state=__import__("pathlib").Path("."))
    out = capsys.readouterr().out
    assert "not distinguishable from the base" in out and "Verdict: finetuning changed no few-label probe" in out
