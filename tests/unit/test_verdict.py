"""The end-of-run verdict (uft.verdict): it names its spread as label draws only, makes no call and
prints no "± 0.000" on a single draw, and uses the gate's seed-noise table where it applies."""

from __future__ import annotations

import pytest

from uft.verdict import SEED_NOISE, finetune_verdicts, summary_line

TINY = {"encoder": "tiny", "image_size": 16, "ssl_method": "simclr", "probe_draws": 5}


def _m(delta: float, std: float, shot: int = 5) -> dict[str, float]:
    return {f"base_linear_{shot}shot": 0.5, f"finetuned_linear_{shot}shot": 0.5 + delta,
            f"base_linear_{shot}shot_std": std, f"finetuned_linear_{shot}shot_std": std / 2}


def test_spread_is_named_label_draws_and_never_printed_as_an_interval():
    line = finetune_verdicts(_m(0.08, 0.03, shot=10), {"probe_draws": 5})[0]
    assert line == ("finetuning changed the 10-label probe by +0.080 (sd over 5 label draws: base 0.030, finetuned "
                    "0.015 (label noise only, not an interval over seeds)): better than the base")
    assert "±" not in line


@pytest.mark.parametrize("config, draws", [({"probe_draws": 1}, None), (None, 1), (None, None)])
def test_a_single_draw_has_no_spread_and_no_call(config, draws):
    m = _m(0.013, 0.0, shot=10)  # one draw: the probe's sd is 0
    line = finetune_verdicts(m, config, draws)[0]
    assert "±" not in line and "0.000" not in line and line.endswith(": no call")
    assert "no spread" in line and "better" not in line
    assert summary_line(m, config, draws) == ""  # nothing was judged, so no verdict line


def test_seed_noise_applies_only_to_its_configuration():
    noise = SEED_NOISE["linear_5shot"]
    small = 1.5 * noise.sd  # beyond a small label-draw spread, within 2 seed sd
    m = _m(small, noise.sd / 2)
    with_seed = finetune_verdicts(m, TINY)[0]
    assert "seed-to-seed sd" in with_seed and with_seed.endswith("not distinguishable from the base")
    other = finetune_verdicts(m, {**TINY, "encoder": "efficientnet_lite0"})[0]
    assert "seed-to-seed" not in other and other.endswith("better than the base")
    assert finetune_verdicts(m, {**TINY, "image_size": 32})[0] == other
    assert "seed noise" in summary_line(m, TINY) and "seed noise" not in summary_line(m, {**TINY, "image_size": 32})
    # a single draw in that configuration: seed noise alone decides
    one = finetune_verdicts(_m(3 * noise.sd, 0.0), {**TINY, "probe_draws": 1})[0]
    assert one.startswith("finetuning changed the 5-label probe by +0.014 (one label draw: no spread; seed-to-seed sd")
    assert one.endswith("better than the base")


def test_one_fit_metrics_get_no_call():
    lines = finetune_verdicts({"base_knn": 0.6, "finetuned_knn": 0.61, **_m(-0.08, 0.03)}, TINY)
    assert lines[0] == "finetuning changed the k-NN accuracy by +0.010 (one fit: no spread measured)"
    assert lines[1].endswith("worse than the base")
    assert summary_line({"base_knn": 0.6, "finetuned_knn": 0.61}) == ""


def test_report_reads_the_configuration_for_the_seed_noise_check():
    from uft.report import build_report

    noise = SEED_NOISE["linear_5shot"]
    collected = [{"step": "linear_base", "metrics": {"linear_5shot": 0.40, "linear_5shot_std": 0.001}},
                 {"step": "linear_finetuned", "metrics": {"linear_5shot": 0.40 + 1.5 * noise.sd, "linear_5shot_std": 0.001}}]
    cfg = {"ssl_method": "simclr", "probe_draws": 5, "encoder": "tiny"}
    md16 = build_report(collected, cfg, datasets={"target": {"image_shape": [16, 16, 1]}})[0]["report.md"].decode()
    md32 = build_report(collected, cfg, datasets={"target": {"image_shape": [32, 32, 3]}})[0]["report.md"].decode()
    assert "seed-to-seed sd" in md16 and "not distinguishable from the base" in md16
    assert "seed-to-seed" not in md32 and "better than the base" in md32
    assert "± = sd over the few-label probe's label draws" in md16
