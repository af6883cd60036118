"""The promote step end to end on small published data and a real local MLflow registry (sqlite):
on an empty registry the candidate is decided against its base encoder, an identical rerun and a
retried step add nothing, a collapsed encoder is held with its reason, `uft promote --force`
overrides the gate, `uft promote --explain` says why, and two different runs share one registry
(the second re-scores the first's champion, also from the registry's torch.export copy)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def digits300():
    """300 labelled 8×8 digits (30 per class): enough for val splits with a 5-shot val probe."""
    from uft.data.sources import load_optdigits

    raw = load_optdigits()
    keep = [i for c in range(10) for i in (raw.labels == c).nonzero()[0][:30]]
    raw.images, raw.labels = raw.images[keep], raw.labels[keep]
    return raw


@pytest.fixture
def published(tmp_path, digits300):
    """(store_uri, base encoder URI, sane finetuned URI, collapsed URI, target URI, source URI);
    target and source have val splits (the gate's images)."""
    from uft.data.ingest import ingest
    from uft.models.artifact import publish_encoder
    from uft.models.encoders import TinyConvNet
    from uft.store import LocalStore

    store = LocalStore(tmp_path / "store")
    target = ingest(digits300, store, name="t", image_size=8, channels=1, test_fraction=0.3, val_fraction=0.4)
    source = ingest(digits300, store, name="s", image_size=8, channels=1, test_fraction=0.2, val_fraction=0.3, seed=1)
    spec = {"name": "tiny", "in_channels": 1, "kwargs": {"width": 8}}
    torch.manual_seed(0)
    base = TinyConvNet(1, width=8)
    torch.manual_seed(1)
    ft = TinyConvNet(1, width=8)
    dead = TinyConvNet(1, width=8)
    with torch.no_grad():
        for p in dead.net[0].parameters():
            p.zero_()
    uris = [publish_encoder(store, f"models/{n}", e, spec, {}) for n, e in (("base", base), ("ft", ft), ("dead", dead))]
    return str(tmp_path / "store"), *uris, target, source


def test_promote_step_first_rerun_collapsed_force(published, mlflow_env, one_torch_thread, monkeypatch):
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from uft.cli import app
    from uft.promote import CHALLENGER, CHAMPION, promote_step, version_by_alias
    from uft.store import read_manifest

    store, base, ft, dead, target, source = published
    name = "enc"
    kw = dict(source_uri=source, registered_model=name, max_images=60, experiment="promote", model_format="pickle")
    vs_base = promote_step(ft, base, target, store, run_id="r0", registered_model="vs-base", source_uri=source,
                           max_images=60, experiment="promote", model_format="pickle")
    report = read_manifest(vs_base["metrics_uri"])[0]["metrics"]
    assert report["reference"] == "base encoder" and report["champion_signals"] == report["base_signals"]
    assert "base encoder" in vs_base["summary"] and "empty registry" not in vs_base["summary"]
    assert "val_probe" in report["signals"] and report["signals"]["signals_split"] == "val"  # val labels, not test
    assert report["floor_signals"]["gate_score"] > 0 and report["policy"]["noise"]

    first = promote_step(ft, base, target, store, run_id="r1", force=True, **kw)
    assert first["promoted"] and first["decision"] == CHAMPION

    again = promote_step(ft, base, target, store, run_id="r1", **kw)  # a rerun of the same run key
    assert again["promoted"] and again["decision"] == CHAMPION and again["summary"] == first["summary"]
    assert again["metrics_uri"] == first["metrics_uri"]
    again = promote_step(ft, base, target, store, run_id="r2", **kw)  # another run with the same encoder
    assert not again["promoted"] and again["decision"] == "champion (unchanged)"
    client = MlflowClient()
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    held = promote_step(dead, base, target, store, run_id="r3", **kw)
    assert held["decision"] == CHALLENGER and held["reasons"][0].startswith("collapsed")
    assert str(version_by_alias(name, CHAMPION, client).version) == first["version"]
    assert "collapsed" in client.get_model_version(name, held["version"]).tags["uft.reasons"]

    # manual override of the held (collapsed) version, by pipeline run id
    monkeypatch.setenv("UFT_PROGRESS", "off")
    res = CliRunner().invoke(app, ["promote", "r3", "--force", "--registered-model", name, "--experiment", "promote"])
    assert res.exit_code == 0, res.output
    assert str(version_by_alias(name, CHAMPION, client).version) == held["version"]
    assert client.get_model_version(name, held["version"]).tags["uft.forced"] == "true"
    res = CliRunner().invoke(app, ["promote", "nope", "--force", "--registered-model", name, "--experiment", "promote"])
    assert res.exit_code != 0 and "nope" in res.output

    # why r3 was held, from MLflow alone: each signal for candidate and reference, margins, noise, decision
    res = CliRunner().invoke(app, ["promote", "r3", "--explain", "--experiment", "promote"])
    assert res.exit_code == 0, res.output
    assert "Decision: challenger" in res.output and "collapsed" in res.output
    assert "| gate_score |" in res.output and "Decision interval: val_probe gain over the champion" in res.output
    assert "Rows scored: no scored row was in the training split of either encoder" in res.output
    assert "split by content (content-blake2b/1)" in res.output
    # the decision's MLflow tags carry its interval and the lineage check
    from uft import tracking
    tags = tracking.find_run(tracking.experiment_id("promote"), "r3", "promote").data.tags
    assert tags["uft.gain.signal"] == "val_probe" and float(tags["uft.gain.low"]) <= float(tags["uft.gain.high"])
    assert tags["uft.lineage.check"].startswith("no scored row was trained on")
    lineage = client.get_model_version(name, held["version"]).tags["uft.lineage"]
    assert '"split_rule": "content-blake2b/1"' in lineage and target.split("/")[-2] in lineage

    # the registry moved since r1 decided (the forced version is champion now): a rerun of r1 decides
    # again, against the new champion, instead of repeating its recorded forced decision
    moved = promote_step(ft, base, target, store, run_id="r1", **kw)
    assert "by hand" not in moved["summary"] and moved["version"] == first["version"]
    assert f"champion version {held['version']}" in moved["summary"]


def test_promote_step_without_tracking_registers_nothing(published, one_torch_thread):
    from uft.promote import promote_step

    store, base, ft, _, target, source = published
    out = promote_step(ft, base, target, store, source_uri=source, registered_model="x", max_images=60)
    assert out["version"] is None and "tracking is off" in out["summary"]


def test_rerun_reads_recorded_signals_and_loads_nothing(published, one_torch_thread, monkeypatch):
    """Signals are recorded by content: a rerun with the same inputs reads them back (no encoder,
    dataset or source is loaded) and gets the same numbers as the first measurement; a torn record
    is measured again; another encoder is measured, not served from the record."""
    import uft.promote as promote
    from pathlib import Path

    from uft.store import LocalStore, read_manifest

    store, base, ft, dead, target, source = published
    kw = dict(source_uri=source, registered_model="x", max_images=60)
    first = read_manifest(promote.promote_step(ft, base, target, store, **kw)["metrics_uri"])[0]["metrics"]
    records = LocalStore(Path(store)).list("cache/signals/")
    assert len(records) == 5  # the finetuned encoder's, the base's, three untrained encoders' (the floor)

    loads: list[str] = []
    for name in ("encoder", "base", "data"):
        real = getattr(promote.signals._GateInputs, name)
        monkeypatch.setattr(promote.signals._GateInputs, name, property(
            lambda self, name=name, real=real: loads.append(name) or real.func(self)))
    again = read_manifest(promote.promote_step(ft, base, target, store, **kw)["metrics_uri"])[0]["metrics"]
    assert loads == [] and again["signals"] == first["signals"] and again["base_signals"] == first["base_signals"]

    LocalStore(Path(store)).put(records[0], b'{"torn')  # a torn record is measured again and rewritten
    third = read_manifest(promote.promote_step(ft, base, target, store, **kw)["metrics_uri"])[0]["metrics"]
    assert "encoder" in loads or "base" in loads
    assert third["signals"] == first["signals"] and third["base_signals"] == first["base_signals"]

    loads.clear()
    other = read_manifest(promote.promote_step(dead, base, target, store, **kw)["metrics_uri"])[0]["metrics"]
    assert "encoder" in loads and other["signals"] != first["signals"]


def test_two_different_runs_share_one_registry(published, mlflow_env, one_torch_thread):
    """A registry holding a champion from an earlier, different run: the next run re-scores that
    champion — from its uft artifact, and from the registry's own pt2 (torch.export) copy when the
    artifact is gone — and decides against it instead of failing."""
    import shutil
    from pathlib import Path

    import mlflow
    from mlflow.tracking import MlflowClient

    from uft.evaluate.features import extract_features
    from uft.promote import CHAMPION, load_champion, promote_step, version_by_alias
    from uft.store import read_manifest

    store, base, ft, dead, target, source = published
    kw = dict(source_uri=source, registered_model="shared", max_images=60, experiment="promote2")
    one = promote_step(ft, base, target, store, run_id="run-a", force=True, **kw)  # pt2, the default format
    assert one["decision"] == CHAMPION
    two = promote_step(base, base, target, store, run_id="run-b", **kw)  # another encoder, another run
    m = read_manifest(two["metrics_uri"])[0]["metrics"]
    assert m["reference"] == f"champion version {one['version']}" and m["champion_signals"]["gate_score"] > 0

    client = MlflowClient()
    champ = version_by_alias("shared", CHAMPION, client)
    shutil.rmtree(Path(ft.removesuffix("/manifest.json")))  # the champion's uft artifact is gone: the registry's copy
    exported = load_champion("shared", champ, client)  # extract_features calls .eval() on it: must not raise
    images = torch.rand(6, 1, 8, 8)
    raw = mlflow.pytorch.load_model(f"models:/shared/{champ.version}")
    with pytest.raises(NotImplementedError):  # torch.export's module: why re-scoring a champion used to fail
        raw.eval()
    with torch.no_grad():
        direct = raw(images)
    assert torch.allclose(extract_features(exported, images), direct, atol=1e-5)
    three = promote_step(dead, base, target, store, run_id="run-c", seed=1, **kw)  # new scope: re-scored via pt2
    m3 = read_manifest(three["metrics_uri"])[0]["metrics"]
    assert m3["reference"] == f"champion version {one['version']}" and three["decision"] == "challenger"
    assert m3["champion_signals"]["gate_score"] > 0


class _Version:
    def __init__(self, version: str, tags: dict):
        self.version, self.tags = version, tags


def test_rows_a_champion_trained_on_are_not_scored_and_unknown_lineage_cannot_be_told(published, digits300, tmp_path):
    """A champion trained under another split of the same images (here: a larger val fraction, so
    some of this run's val rows were its train rows; the old per-position rule did the same): those
    rows are left out of scoring. A champion whose training data cannot be read: cannot tell."""
    import json

    from uft.data.ingest import ingest
    from uft.lineage import LINEAGE_TAG, dataset_keys, training_record
    from uft.promote.signals import gate_data, nhwc_keys
    from uft.promote.step import scored_rows_check
    from uft.store import LocalStore

    store, base, ft, dead, target, source = published
    other = ingest(digits300, LocalStore(tmp_path / "o"), name="t", image_size=8, channels=1, test_fraction=0.3,
                   val_fraction=0.1)  # the same images, a smaller val share: more of them trained on
    champ = _Version("1", {LINEAGE_TAG: json.dumps(training_record(other, source))})
    lineage, exclude, exclude_source = scored_rows_check(training_record(target, source), champ, target, source)
    val_keys = set(nhwc_keys(gate_data(target, source, 1000, 0).target.numpy()))
    trained = dataset_keys(other)
    assert lineage["cannot_tell"] is None and exclude_source == frozenset()  # same source: proven disjoint
    assert val_keys & trained and (val_keys & trained) <= exclude  # overlapping rows are found...
    data = gate_data(target, source, 1000, 0, exclude=exclude)
    assert data.excluded == len(val_keys & trained) and not set(nhwc_keys(data.target.numpy())) & trained  # ...and left out
    assert any("compared by content" in c for c in lineage["checked"])

    legacy = _Version("1", {"uft.target_uri": str(tmp_path / "gone" / "manifest.json")})
    lineage, _, exclude_source = scored_rows_check(training_record(target, source), legacy, target, source)
    assert "no longer readable" in lineage["cannot_tell"] and exclude_source is None  # source unknown: not scored
