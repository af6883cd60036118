"""The promotion gate: decisions on constructed cases (pure), and the registry against a real local
MLflow (sqlite tracking + registry in a temp dir): idempotent registration, aliases, reasons as
tags, and consumers loading ``models:/<name>@champion``."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from uft.errors import UftError
from uft.promote import CHALLENGER, CHAMPION, Decision, GatePolicy, decide

SANE = {"finite": True, "effective_rank": 20.0, "rank_fraction": 0.3, "view_retrieval": 0.6, "n_views": 200,
        "gate_score": 0.18, "source_retention": 0.90}
POLICY = GatePolicy(margin=0.10, retention_tolerance=0.02, probe_margin=0.02, noise="constructed")


def test_decide_constructed_cases():
    p = POLICY
    none = decide(SANE, None, p)
    assert none.promote and "no reference" in none.reasons[0]
    better = decide({**SANE, "gate_score": 0.21}, SANE, p, reference="base encoder")  # +16.7 % > 10 %
    assert better.promote and better.alias == CHAMPION and "base encoder" in better.reasons[0]
    slightly = decide({**SANE, "gate_score": 0.19}, SANE, p)  # +5.6 %: within the noise margin
    assert not slightly.promote and slightly.reasons[0].startswith("finetuning changed nothing measurable")
    tie = decide(SANE, SANE, p)
    assert not tie.promote and tie.alias == CHALLENGER and "changed nothing measurable" in tie.reasons[0]
    forgets = decide({**SANE, "gate_score": 0.25, "source_retention": 0.85}, SANE, p)
    assert not forgets.promote and forgets.reasons[0].startswith("forgets the source")
    within = decide({**SANE, "gate_score": 0.25, "source_retention": 0.89}, SANE, p)
    assert within.promote
    # with val labels the val-split probe decides; the gate score may not fall beyond its margin
    lab = {**SANE, "val_probe": 0.70}
    assert decide({**lab, "val_probe": 0.73}, lab, p).promote
    held = decide({**lab, "val_probe": 0.71, "gate_score": 0.30}, lab, p)
    assert not held.promote and "not better on the val-split probe" in held.reasons[0]
    fell = decide({**lab, "val_probe": 0.75, "gate_score": 0.15}, lab, p)
    assert not fell.promote and any("label-free quality fell" in r for r in fell.reasons)
    for bad in ({"effective_rank": 1.0}, {"finite": False}, {"view_retrieval": 0.001}):
        d = decide({**SANE, "gate_score": 0.9, **bad}, SANE, p)
        assert not d.promote and d.reasons[0].startswith("collapsed"), bad
    # degenerate: no better than an untrained encoder of the same architecture, the reference being well above it
    floor = {**SANE, "gate_score": 0.05, "val_probe": 0.40}
    d = decide({**SANE, "gate_score": 0.052}, SANE, p, floor=floor)
    assert not d.promote and "untrained" in d.reasons[0]
    d = decide({**lab, "val_probe": 0.41, "gate_score": 0.3}, lab, p, floor=floor)
    assert not d.promote and "val_probe" in d.reasons[0] and "untrained" in d.reasons[0]
    assert decide({**SANE, "gate_score": 0.052}, {**SANE, "gate_score": 0.051}, p, floor=floor).reasons[0].startswith(
        "finetuning changed nothing")  # reference at the floor itself: the floor rule cannot tell, it does not fire
    moved = decide({**SANE, "gate_score": 0.5}, SANE, p, shift=0.97, reference="champion version 1")
    assert not moved.promote and "another domain" in moved.reasons[0]
    assert decide({**SANE, "gate_score": 0.5}, SANE, p, shift=0.55).promote
    forced = decide({**SANE, "effective_rank": 1.0}, SANE, p, force=True)
    assert forced.promote and forced.forced
    with pytest.raises(UftError, match="margin"):
        GatePolicy(margin=-1)
    assert GatePolicy().margin > 0 and GatePolicy().noise  # the default margins come from a measurement


def _experiment(name: str) -> None:
    """An experiment whose artifacts go to the test's temp dir (``UFT_MLFLOW_ARTIFACTS``), never ./mlruns."""
    import mlflow

    from uft import tracking

    mlflow.set_experiment(experiment_id=tracking.experiment_id(name))


def _enc(seed: int, width: int = 4):
    from uft.models.encoders import TinyConvNet

    torch.manual_seed(seed)
    return TinyConvNet(1, width=width).eval()


def test_registry_idempotent_aliases_tags(mlflow_env, one_torch_thread):
    import mlflow
    from mlflow.tracking import MlflowClient

    from uft.promote import apply, register, stored_signals, version_by_alias

    name = "uft-encoder-test"
    client = MlflowClient()
    a, b = _enc(0), _enc(1)
    _experiment("promote-test")
    assert version_by_alias(name, CHAMPION, client) is None  # no registered model yet: not an error
    with mlflow.start_run():
        v1 = register(name, a, "sha-a", image_size=8, channels=1, serialization_format="pickle")
        again = register(name, a, "sha-a", image_size=8, channels=1, serialization_format="pickle")  # a retried step
    assert again.version == v1.version
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    apply(name, v1.version, decide(SANE, None, POLICY), client)
    apply(name, v1.version, decide(SANE, None, POLICY), client)  # retried: same state
    assert version_by_alias(name, CHAMPION, client).version == v1.version

    with mlflow.start_run():
        v2 = register(name, b, "sha-b", image_size=8, channels=1, serialization_format="pickle")
    held = apply(name, v2.version, decide(SANE, SANE, POLICY), client)
    assert held.previous_champion == str(v1.version)
    assert version_by_alias(name, CHAMPION, client).version == v1.version
    assert version_by_alias(name, CHALLENGER, client).version == v2.version
    tags = client.get_model_version(name, v2.version).tags
    assert tags["uft.decision"] == CHALLENGER and "changed nothing measurable" in tags["uft.reasons"]
    assert stored_signals(client.get_model_version(name, v2.version))["gate_score"] == pytest.approx(0.18)

    # promoting the challenger moves champion and clears its challenger alias
    apply(name, v2.version, Decision(True, ["better"], SANE), client)
    assert version_by_alias(name, CHAMPION, client).version == v2.version
    assert version_by_alias(name, CHALLENGER, client) is None



@pytest.mark.slow  # torch.export of the model: ~30 s on a busy 2-core machine
def test_consumer_loads_champion_by_alias(mlflow_env, one_torch_thread):
    """Exactly what a consumer does: load ``models:/<name>@champion`` (the default pt2 format needs no
    uft import), read the preprocessing recorded with it, and embed a batch of any size."""
    import mlflow

    from uft.promote import apply, register

    name, enc = "uft-encoder-load", _enc(2)
    _experiment("promote-load")
    with mlflow.start_run():
        v = register(name, enc, "sha-c", image_size=8, channels=1)
    apply(name, v.version, decide(SANE, None, POLICY))
    loaded = mlflow.pytorch.load_model(f"models:/{name}@{CHAMPION}")
    info = mlflow.models.get_model_info(f"models:/{name}@{CHAMPION}")
    pre = info.metadata["preprocessing"]
    assert (pre["image_size"], pre["channels"], pre["value_range"]) == (8, 1, [0.0, 1.0])
    assert info.saved_input_example_info is not None and info.signature is not None
    x = torch.rand(5, pre["channels"], pre["image_size"], pre["image_size"])
    with torch.no_grad():
        assert torch.allclose(loaded(x), enc(x), atol=1e-5)


def test_report_shows_the_decision_signals_margins_and_noise():
    from uft.report import build_report

    m = {"decision": CHALLENGER, "promoted": False, "version": "3", "registered_model": "uft-encoder",
         "reasons": ["not better: gate score 0.1800 vs champion version 2 0.2000: -10.0 %"],
         "signals": {**SANE, "snd": 5.0, "val_probe": 0.7}, "base_signals": SANE, "reference": "champion version 2",
         "champion_signals": {**SANE, "gate_score": 0.2, "val_probe": 0.68}, "floor_signals": {**SANE, "gate_score": 0.05},
         "policy": {**asdict(POLICY), "noise": "σ over 5 seeds × 2 pairs"}, "domain_shift": 0.52}
    files, summary = build_report([{"step": "promote", "metrics": m}], {})
    md = files["report.md"].decode()
    assert "Decision: challenger" in md and "version 3" in md and "Compared with: **champion version 2**" in md
    assert "| gate_score | 0.1800 | 0.2000 | 0.0500 | -10.0% | ±10.0% |" in md
    assert "| val_probe | 0.7000 | 0.6800 | – | +0.0200 | 0.0200 |" in md
    assert "σ over 5 seeds × 2 pairs" in md and "accuracy 0.52" in md and "collapsed encoder" in md  # SND's caveat
    assert summary["promoted"] == 0.0


def test_validity_analysis_on_constructed_rows():
    from bench.label_free_validity import analyse

    rows = [{"pair": "p", "config": str(i), "probe_5shot": a, "probe_10shot": a, "collapse": "x" if i == 0 else "",
             "gate_score": g, "effective_rank": g, "view_retrieval": g, "alignment": -g, "uniformity": -g, "snd": -g,
             "neighbourhood_agreement": g, "source_retention": g}
            for i, (a, g) in enumerate([(0.1, 0.0), (0.5, 0.2), (0.7, 0.3), (0.9, 0.5)])]
    rho, table = analyse(rows)
    assert rho["p"]["gate_score"] == pytest.approx(1.0) and rho["p"]["snd"] == pytest.approx(-1.0)
    gate_row = next(r for r in table if r[1] == "gate_score")
    assert gate_row[5:] == ["4", "yes", "4 / 4"]  # the collapsed (and worst) encoder is ranked last
