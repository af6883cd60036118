"""The run report says how its finetune relates to plain target-only finetuning, and which SSL head
the finetune started from."""

from __future__ import annotations

import pytest

from uft.config import RunConfig
from uft.report import baseline_hint, build_report

ACC = [{"step": "linear_base", "metrics": {"linear_1shot": 0.5}},
       {"step": "linear_finetuned", "metrics": {"linear_1shot": 0.6}}]


@pytest.mark.parametrize("overrides, expected", [
    ({}, "uses source replay. For plain target-only finetuning"),  # the default run
    ({"mix_op": "mixup"}, "uses source replay and data mixing."),
    ({"replay_size": 0, "mix_op": "mixup", "mix_pairing": "target_target"}, "uses data mixing."),
    ({"replay_ratio": 0.0}, "plain target-only SSL (no replay, no mixing)"),
    ({"replay_size": 0}, "plain target-only SSL (no replay, no mixing)"),
])
def test_baseline_hint_follows_the_config(overrides, expected):
    hint = baseline_hint(RunConfig(**overrides).model_dump())
    assert expected in hint
    if "uses" in expected:
        assert "`uft run -p replay_ratio=0 -p mix_op=none`" in hint


def test_report_shows_the_hint_and_head_note_beside_the_accuracy_table():
    config = {"replay_ratio": 0.5, "replay_size": 2000, "mix_op": "none",
              "ssl_head_note": "SSL head of the finetune: continued the base's simclr head."}
    md = build_report(ACC, config)[0]["report.md"].decode()
    table_end = md.index("| linear_1shot |")
    assert table_end < md.index("For plain target-only finetuning") < md.index("![accuracy]")
    assert "continued the base's simclr head" in md
    assert "| ssl_head_note |" not in md  # a note, not a run parameter
    assert baseline_hint({}) == ""  # no finetune config known (e.g. a bare report): no claim
