"""The promotion gate: decisions on constructed cases (pure), and the registry against a real local
MLflow (sqlite tracking + registry in a temp dir): idempotent registration, aliases, reasons as
tags, and consumers loading ``models:/<name>@champion``."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from uft.errors import UftError
from uft.promote import CHALLENGER, CHAMPION, Decision, GatePolicy, decide

import numpy as np

SANE = {"finite": True, "effective_rank": 20.0, "rank_fraction": 0.3, "view_retrieval": 0.6, "n_views": 200,
        "gate_score": 0.18, "source_retention": 0.90}
POLICY = GatePolicy(margin=0.10, retention_tolerance=0.02, probe_margin=0.02, noise="constructed")


def _outcomes(n: int, p: float, seed: int, draws: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Constructed per-row outcomes: view retrieval ``(n,)`` and probe ``(draws, n)`` (5 support rows
    per draw marked -1), each right with probability ``p``."""
    rng = np.random.default_rng(seed)
    probe = (rng.random((draws, n)) < p).astype(int)
    for d in range(draws):
        probe[d, rng.choice(n, 5, replace=False)] = -1
    return (rng.random(n) < p).astype(float), probe


def _signals(retrieval: np.ndarray, probe: np.ndarray | None, rows: str = "rows-a", **extra) -> dict:
    """Signals as the promote step records them: summary values and the paired per-row outcomes."""
    s = {**SANE, "view_retrieval": float(retrieval.mean()), "n_views": len(retrieval),
         "paired": {"rows": rows, "retrieval": retrieval.tolist()}, **extra}
    s["gate_score"] = s["view_retrieval"] * s["rank_fraction"]
    if probe is not None:
        s["paired"]["probe"] = probe.tolist()
        s["val_probe"] = float(probe[probe >= 0].mean())
    return s


def _better(retrieval: np.ndarray, probe: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same rows with ``share`` of the wrong outcomes turned right (a paired improvement)."""
    rng = np.random.default_rng(seed + 100)
    r, p = retrieval.copy(), probe.copy()
    r[(r == 0) & (rng.random(r.shape) < share)] = 1.0
    p[(p == 0) & (rng.random(p.shape[1]) < share)[None, :]] = 1  # a row gained is gained in every label draw
    return r, p


def test_identical_encoders_never_promote():
    for seed in range(5):
        r, p = _outcomes(200, 0.6, seed)
        for probe in (p, None):  # with val labels (probe decides) and without (gate score decides)
            d = decide(_signals(r, probe), _signals(r, probe), POLICY)
            assert not d.promote and d.interval["gain"] == 0.0 and d.interval["low"] <= 0 <= d.interval["high"]
            assert d.reasons[0].startswith("finetuning changed nothing measurable"), d.reasons


def test_a_clearly_better_encoder_promotes_and_records_its_interval():
    r, p = _outcomes(300, 0.6, 0)
    cand = _signals(*_better(r, p, 0.4, 0))
    d = decide(cand, _signals(r, p), POLICY, reference="base encoder")
    assert d.promote and d.alias == CHAMPION and d.interval["signal"] == "val_probe"
    assert d.interval["low"] > POLICY.min_probe_gain and d.interval["low"] < d.interval["gain"] < d.interval["high"]
    assert d.interval["n_rows"] == 300 and d.interval["n_draws"] == 10
    assert "base encoder" in d.reasons[0] and "paired-bootstrap interval" in d.reasons[0]
    free = decide(_signals(_better(r, p, 0.4, 0)[0], None), _signals(r, None), POLICY)
    assert free.promote and free.interval["signal"] == "gate_score"


def test_a_gain_above_the_minimum_but_inside_its_noise_is_held():
    r, p = _outcomes(60, 0.6, 1)  # few val rows: a point gain above the minimum, an interval reaching below it
    d = decide(_signals(*_better(r, p, 0.05, 1)), _signals(r, p), POLICY)
    assert d.interval["gain"] > POLICY.min_probe_gain and d.interval["low"] <= POLICY.min_probe_gain, d.interval
    assert not d.promote
    assert any(x.startswith("not better") for x in d.reasons)


def test_the_interval_narrows_with_more_val_rows():
    widths = []
    for n in (100, 400, 1600):
        r, p = _outcomes(n, 0.6, 2)
        iv = decide(_signals(*_better(r, p, 0.2, 2)), _signals(r, p), POLICY).interval
        widths.append(iv["high"] - iv["low"])
    assert widths[0] > widths[1] > widths[2] and widths[0] > 1.6 * widths[2]  # ~ 1/√n: ×4 rows, ×½ width


def test_unpaired_or_unproven_rows_cannot_be_told():
    r, p = _outcomes(200, 0.6, 3)
    cand = _signals(*_better(r, p, 0.5, 3))
    other = decide(cand, _signals(r, p, rows="rows-b"), POLICY)  # scored on other rows
    assert not other.promote and other.interval is None and "cannot tell" in other.reasons[0]
    tags = decide(cand, {k: v for k, v in SANE.items()}, POLICY)  # e.g. signals read back from version tags
    assert not tags.promote and "not scored on the same rows" in tags.reasons[0]
    held = decide(cand, _signals(r, p), POLICY, lineage={"cannot_tell": "which target rows the champion trained on"})
    assert not held.promote and held.reasons[0].startswith("cannot tell: which target rows")


def test_decide_constructed_cases():
    p = POLICY
    r, pr = _outcomes(300, 0.6, 4)
    ref, good = _signals(r, None), _signals(*_better(r, pr, 0.5, 4)[:1], None)
    none = decide(SANE, None, p)
    assert none.promote and "no reference" in none.reasons[0]
    forgets = decide({**good, "source_retention": 0.85}, ref, p)
    assert not forgets.promote and forgets.reasons[0].startswith("forgets the source")
    assert decide({**good, "source_retention": 0.89}, ref, p).promote
    # with val labels the probe decides; the gate score's interval may not lie wholly below −min_gate_gain
    lab_ref = _signals(r, pr)
    worse_free = _signals(np.where(np.arange(len(r)) % 2 == 0, 0.0, r), None)["paired"]["retrieval"]
    fell = {**_signals(*_better(r, pr, 0.5, 4)), "rank_fraction": 0.3}
    fell["paired"] = {**fell["paired"], "retrieval": worse_free}
    d = decide(fell, lab_ref, p)
    assert not d.promote and any("label-free quality fell" in x for x in d.reasons)
    for bad in ({"effective_rank": 1.0}, {"finite": False}, {"view_retrieval": 0.001}):
        d = decide({**good, **bad}, ref, p)
        assert not d.promote and d.reasons[0].startswith("collapsed"), bad
    # degenerate: no better than an untrained encoder of the same architecture, the reference being well above it
    floor = {**SANE, "gate_score": 0.05, "val_probe": 0.40}
    d = decide({**good, "gate_score": 0.052}, {**ref, "gate_score": 0.18}, p, floor=floor)
    assert not d.promote and "untrained" in d.reasons[0]
    moved = decide(good, ref, p, shift=0.97, reference="champion version 1")
    assert not moved.promote and "another domain" in moved.reasons[0]
    assert decide(good, ref, p, shift=0.55).promote
    forced = decide({**SANE, "effective_rank": 1.0}, SANE, p, force=True)
    assert forced.promote and forced.forced
    with pytest.raises(UftError, match="margin"):
        GatePolicy(margin=-1)
    with pytest.raises(UftError, match="level"):
        GatePolicy(level=1.5)
    assert GatePolicy().margin > 0 and GatePolicy().noise  # the default noise bands come from a measurement
    assert 0 < GatePolicy().min_probe_gain and 0 < GatePolicy().min_gate_gain  # documented minimum gains


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
    r, pr = _outcomes(200, 0.6, 0)
    held = apply(name, v2.version, decide(_signals(r, pr), _signals(r, pr), POLICY), client)
    assert held.previous_champion == str(v1.version)
    assert version_by_alias(name, CHAMPION, client).version == v1.version
    assert version_by_alias(name, CHALLENGER, client).version == v2.version
    tags = client.get_model_version(name, v2.version).tags
    assert tags["uft.decision"] == CHALLENGER and "changed nothing measurable" in tags["uft.reasons"]
    assert stored_signals(client.get_model_version(name, v2.version))["gate_score"] == pytest.approx(0.3 * r.mean())
    assert tags["uft.gain.signal"] == "val_probe" and float(tags["uft.gain.low"]) <= 0 <= float(tags["uft.gain.high"])
    assert tags["uft.gain.level"] == "0.9" and tags["uft.gain.rows"] == "200"

    # promoting the challenger moves champion and clears its challenger alias
    apply(name, v2.version, Decision(True, ["better"], SANE), client)
    assert version_by_alias(name, CHAMPION, client).version == v2.version
    assert version_by_alias(name, CHALLENGER, client) is None



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
         "policy": {**asdict(POLICY), "noise": "σ over 5 seeds × 2 pairs"}, "domain_shift": 0.52,
         "interval": {"signal": "val_probe", "gain": 0.02, "low": -0.004, "high": 0.043, "level": 0.9, "n_rows": 180,
                      "n_draws": 10, "resamples": 2000, "min_gain": 0.01},
         "lineage": {"checked": ["champion version 2, target: 1200 target train rows compared by content"],
                     "excluded_target": 3, "cannot_tell": None}}
    files, summary = build_report([{"step": "promote", "metrics": m}], {})
    md = files["report.md"].decode()
    assert "Decision: challenger" in md and "version 3" in md and "Compared with: **champion version 2**" in md
    assert "| gate_score | 0.1800 | 0.2000 | 0.0500 | -10.0% | +5.0% |" in md
    assert "| val_probe | 0.7000 | 0.6800 | – | +0.0200 | 0.0100 |" in md
    assert "90% paired-bootstrap interval [-0.0040, +0.0430] over 180 val rows × 10 label draws" in md
    assert "no scored row was in the training split of either encoder (3 target val rows left out" in md
    assert "1200 target train rows compared by content" in md
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
