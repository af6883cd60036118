"""The promote step end to end on tiny published data and a real local MLflow registry (sqlite):
the first run promotes, an identical rerun and a retried step add nothing, a collapsed encoder is
held with its reason, and `uft promote --force` overrides the gate."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def published(tmp_path, tiny_raw):
    """(store_uri, base encoder URI, sane finetuned URI, collapsed URI, target URI, source URI)."""
    from uft.data.ingest import ingest
    from uft.models.artifact import publish_encoder
    from uft.models.encoders import TinyConvNet
    from uft.store import LocalStore

    store = LocalStore(tmp_path / "store")
    target = ingest(tiny_raw, store, name="t", image_size=8, channels=1, test_fraction=0.5)
    source = ingest(tiny_raw, store, name="s", image_size=8, channels=1, test_fraction=0.3, seed=1)
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


@pytest.mark.slow  # five gate decisions against a fresh sqlite registry: ~1 min on a busy 2-core machine
def test_promote_step_first_rerun_collapsed_force(published, mlflow_env, one_torch_thread, monkeypatch):
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from uft.cli import app
    from uft.promote import CHALLENGER, CHAMPION, promote_step, version_by_alias
    from uft.store import read_manifest

    store, base, ft, dead, target, source = published
    name = "enc"
    kw = dict(source_uri=source, registered_model=name, max_images=60, experiment="promote", model_format="pickle")
    first = promote_step(ft, base, target, store, run_id="r1", **kw)
    assert first["promoted"] and first["decision"] == CHAMPION and "empty registry" in first["summary"]
    report = read_manifest(first["metrics_uri"])[0]["metrics"]
    assert report["signals"]["effective_rank"] > 1 and "probe" in report["signals"]  # target is labelled

    again = promote_step(ft, base, target, store, run_id="r1", **kw)  # a rerun of the same run key
    assert again["promoted"] and again["decision"] == CHAMPION and again["summary"] == first["summary"]
    assert again["metrics_uri"] == first["metrics_uri"]
    assert read_manifest(again["metrics_uri"])[0]["metrics"] == report  # the same decision, as recorded
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

    # the registry moved since r1 decided (the forced version is champion now): a rerun of r1 decides
    # again instead of repeating its recorded "empty registry" decision
    moved = promote_step(ft, base, target, store, run_id="r1", **kw)
    assert "empty registry" not in moved["summary"] and moved["version"] == first["version"]


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
    assert len(records) == 2  # the finetuned encoder's and the base's

    loads: list[str] = []
    for name in ("encoder", "base", "target", "source_eval"):
        real = getattr(promote._GateInputs, name)
        monkeypatch.setattr(promote._GateInputs, name, property(
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
