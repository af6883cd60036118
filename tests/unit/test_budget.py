"""A budget that follows the data (uft.budget): the rule, its place in the inferred defaults, the
time estimate printed before a run; and the end-of-run verdict on finetuning (uft.verdict)."""

from __future__ import annotations

import time

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


def test_estimate_is_measured_and_scales_with_steps(monkeypatch):
    """The step time is timed from real training steps: each training call made slower by a known
    delay per step (a slower machine) moves the estimate by that delay; 100× the steps, ~100× it."""
    import re

    from uft.budget import estimate_seconds
    from uft.config import RunConfig
    from uft.ssl import train

    real, delay = train.train_ssl, {"s": 0.0}

    def slowed(model, images, cfg, on_log=None, **kw):
        def log(step: int, loss: float) -> None:  # the real step ran; the machine is made slower by delay/step
            time.sleep(delay["s"])
            if on_log is not None:
                on_log(step, loss)

        return real(model, images, cfg, on_log=log, **kw)

    monkeypatch.setattr(train, "train_ssl", slowed)
    cfg = dict(finetune_steps=2, batch_size=32, replay_size=0)

    def estimate(steps: int, per_step_delay: float) -> tuple[float, float]:
        """→ (the estimate less its two warm-ups, the step it implies)"""
        delay["s"] = per_step_delay
        total, line = estimate_seconds(RunConfig(**{**cfg, "pretrain_steps": steps, "finetune_steps": steps}))
        assert line.startswith("estimated training time: ~") and "s of warm-up per training task, measured here" in line, line
        step, warmup = (float(v) for v in re.search(r"at ([\d.]+) s/step \+ ([\d.]+) s of warm-up", line).groups())
        # two training tasks (pretrain, finetune), each its warm-up and its steps (rounded in the line)
        assert total == pytest.approx(2 * (warmup + steps * step), abs=0.1 + 2 * steps * 0.006)
        return total - 2 * warmup, (total / 2 - warmup) / steps

    few, fast_step = estimate(2, 0.05)
    many, slow_step = estimate(200, 0.30)
    assert slow_step - fast_step == pytest.approx(0.25, abs=0.12)  # the measured delay, not a constant
    assert fast_step >= 0.05
    assert many > 100 * few  # the steps' part: 100× the steps at a slower measured step


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


def test_estimate_is_compared_with_the_training_the_run_did():
    from uft.budget import estimate_vs_actual

    both = {"pretrain": 90.0, "ssl_finetune": 60.0}
    assert estimate_vs_actual(180.0, both) == ("training took 150 s (pretrain 90 s + ssl_finetune 60 s); estimated "
                                               "before the run: 180 s (+20%, within ±30%)")
    assert estimate_vs_actual(240.0, both).endswith("(+60%, outside ±30%)")
    assert estimate_vs_actual(90.0, both).endswith("(-40%, outside ±30%)")
    # a cached rerun trained nothing; a half-cached run has no fair ratio; no estimate, no ratio
    assert estimate_vs_actual(180.0, {}) == "training: none this run (cached); the estimate before it was 180 s"
    assert "%" not in estimate_vs_actual(180.0, {"ssl_finetune": 60.0})
    assert estimate_vs_actual(None, both).endswith("estimated before the run: unknown")
    assert estimate_vs_actual(None, {}) == ""


def test_run_output_ends_with_the_estimate_against_the_training_time(capsys):
    from types import SimpleNamespace

    from uft.cli import local as cli

    res = SimpleNamespace(run_id="r", seconds=1.0, metrics={}, parent_run_id="p", experiment="e", artifacts={},
                          estimate_s=100.0, train_seconds={"pretrain": 50.0, "ssl_finetune": 30.0},
                          fallbacks=["start-up environment differs from the server's: X"] * 2)
    cli.print_result(res, state=__import__("pathlib").Path("."))
    captured = capsys.readouterr()
    assert "training took 80 s (pretrain 50 s + ssl_finetune 30 s); estimated before the run: 100 s (+25%, within ±30%)" \
        in captured.out.replace("\n", " ")
    # each distinct fork-server fallback once, with its count
    assert captured.err.count("fork server: 2 tasks ran in a fresh interpreter") == 1


def test_a_measured_step_time_is_kept_per_shape_and_machine(tmp_path, monkeypatch):
    """A rerun of the same shape reads the step time back instead of importing torch and training
    again; another shape, or an old measurement, is measured anew."""
    import json

    from uft import budget

    calls = []

    def fake_measure(**shape):
        calls.append(shape)
        return budget.StepTime(0.5 * len(calls), 1.0)

    monkeypatch.setattr(budget, "measure_step_seconds", fake_measure)
    memo = tmp_path / "state" / "step-seconds.json"
    shape = dict(encoder="tiny", encoder_width=8, image_size=16, channels=1, batch_size=32, method="simclr")
    assert budget.step_seconds(memo, **shape) == (budget.StepTime(0.5, 1.0), None)
    step, at = budget.step_seconds(memo, **shape)
    assert step == budget.StepTime(0.5, 1.0) and at is not None and len(calls) == 1  # kept (warm-up too), not measured again
    assert budget.step_seconds(memo, **{**shape, "batch_size": 64})[0].step_s == 1.0 and len(calls) == 2
    kept = json.loads(memo.read_text())
    for v in kept.values():
        v["at"] -= (budget.MEMO_DAYS + 1) * 86400  # a week-old measurement is measured again
    memo.write_text(json.dumps(kept))
    assert budget.step_seconds(memo, **shape)[0].step_s == 1.5 and len(calls) == 3
    assert budget.step_seconds(None, **shape)[0].step_s == 2.0  # no memo: always measured


def test_the_step_time_is_the_steady_state_not_the_first_steps(monkeypatch):
    """A process's first training steps are many times slower than the rest: the estimate times
    the last steps (timing the first ones had put the demo's 45 s of training at 355 s)."""
    from uft import budget
    from uft.ssl import train

    first_steps = [0.4, 0.3, 0.3, 0.3]

    def fake_train(model, images, cfg, on_log=None, **kw):
        for step in range(1, cfg.steps + 1):
            time.sleep(first_steps[step - 1] if step <= len(first_steps) else 0.05)
            on_log(step, 1.0)

    monkeypatch.setattr(train, "train_ssl", fake_train)
    step = budget.measure_step_seconds(encoder="tiny", encoder_width=4, image_size=8, channels=1, batch_size=2)
    assert budget.MEASURED_STEPS - budget.TIMED_STEPS > len(first_steps)  # the slow steps are never timed
    assert 0.05 <= step.step_s < 0.2
    # the first step's excess over a steady one is the warm-up each training task pays once
    assert step.warmup_s == pytest.approx(first_steps[0] - step.step_s, abs=0.1)


def test_the_step_is_timed_only_after_the_caller_says_the_cpus_are_free(tmp_path, monkeypatch):
    """`uft run` pauses its fork server's preload (which had made the step 2.3× as slow as the
    run's own) for the timed steps only: torch's import and the warm-up steps still overlap it.
    A kept time needs no pause."""
    from uft import budget

    events = []
    import uft.ssl.train as train

    real = train.train_ssl

    def counting(*a, on_log=None, **kw):
        return real(*a, on_log=lambda s, l: (events.append("step"), on_log(s, l)), **kw)

    monkeypatch.setattr(train, "train_ssl", counting)
    step = budget.measure_step_seconds(encoder="tiny", encoder_width=4, image_size=8, channels=1, batch_size=2,
                                       before_timing=lambda: events.append("pause"))
    untimed = budget.MEASURED_STEPS - budget.TIMED_STEPS
    assert step.step_s > 0 and events.count("pause") == 1
    assert events.index("pause") == untimed  # after the untimed steps, before the first timed gap's start
    assert events.count("step") == budget.MEASURED_STEPS

    calls = []
    monkeypatch.setattr(budget, "measure_step_seconds",
                        lambda before_timing=None, **shape: calls.append(before_timing) or budget.StepTime(0.1))
    memo = tmp_path / "step-seconds.json"
    shape = dict(encoder="tiny", encoder_width=8, image_size=16, channels=1, batch_size=32, method="simclr")
    hook = object()
    budget.step_seconds(memo, hook, **shape)
    budget.step_seconds(memo, hook, **shape)
    assert calls == [hook]  # passed through when measuring; kept: not measured at all
