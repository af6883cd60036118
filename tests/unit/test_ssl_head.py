"""The SSL head travels with the encoder: pretraining publishes it, finetuning with the same method
starts from it (projector, predictor, momentum branch), any other case starts fresh and says why."""

from __future__ import annotations

import logging

import pytest
import torch

from uft import steps
from uft.errors import UftError
from uft.models.artifact import load_ssl_head, ssl_head_state
from uft.store import read_manifest

TINY = dict(encoder="tiny", encoder_width=4, steps=2, batch_size=16, checkpoint_every=2, seed=0)


@pytest.fixture
def data(tmp_path):
    store = str(tmp_path / "store")
    src = steps.ingest("optdigits", store, role="source", image_size=8, channels=1, limit=60, test_fraction=0.2)
    tgt = steps.ingest("optdigits", store, role="target", image_size=8, channels=1, limit=40, test_fraction=0.5, seed=1)
    return store, src, tgt


def _pretrain(data, method: str) -> str:
    store, src, _ = data
    return steps.pretrain(src["dataset_uri"], src["dataset_sha"], store, method=method, **TINY)["encoder_uri"]


@pytest.fixture
def start_state(monkeypatch):
    """``arm()`` replaces training (after the real pretraining) by a recorder of the method's SSL
    head at the moment training would start."""
    import uft.ssl.train as train

    seen: dict[str, dict[str, torch.Tensor]] = {}

    def record(method, *args, **kwargs):
        seen["head"] = {k: v.clone() for k, v in ssl_head_state(method).items()}
        return train.TrainResult(losses=[(1, 0.0)])

    def arm() -> dict[str, dict[str, torch.Tensor]]:
        monkeypatch.setattr(train, "train_ssl", record)
        return seen

    return arm


@pytest.mark.parametrize("method", ["byol", "moco"])
def test_finetune_with_the_pretrain_method_starts_from_its_head(data, start_state, method, caplog):
    store, _, tgt = data
    base = _pretrain(data, method)
    start = start_state()
    published = load_ssl_head(base)
    assert published is not None and published[0] == method
    # the momentum branch and (BYOL) predictor are part of the published head
    assert any(k.startswith(("target_encoder.", "key_encoder.")) for k in published[1])
    with caplog.at_level(logging.INFO, logger="uft"):
        out = steps.finetune(base, tgt["dataset_uri"], store, method=method, steps=2, batch_size=16, seed=5)
    assert start["head"].keys() == published[1].keys()
    assert all(torch.equal(start["head"][k], published[1][k]) for k in published[1])
    info = read_manifest(out["encoder_uri"])[0]["info"]
    assert info["ssl_head"].startswith("continued") and "continued" in caplog.text
    # the finetune publishes its own head too, for a further finetune
    assert load_ssl_head(out["encoder_uri"])[0] == method


def test_other_method_or_request_gives_a_fresh_head_and_says_so(data, start_state, caplog):
    store, _, tgt = data
    base = _pretrain(data, "simclr")
    start = start_state()
    simclr_head = load_ssl_head(base)[1]
    with caplog.at_level(logging.WARNING, logger="uft"):
        act = steps.finetune(base, tgt["dataset_uri"], store, method="act", steps=2, batch_size=16)
    assert "fresh head: base pretrained with simclr, finetuning with act" in caplog.text
    assert read_manifest(act["encoder_uri"])[0]["info"]["ssl_head"].startswith("fresh head: base pretrained with simclr")
    fresh = steps.finetune(base, tgt["dataset_uri"], store, method="simclr", steps=2, batch_size=16, ssl_head="fresh")
    assert read_manifest(fresh["encoder_uri"])[0]["info"]["ssl_head"] == "fresh head: requested (ssl_head=fresh)"
    assert not all(torch.equal(start["head"][k], simclr_head[k]) for k in simclr_head)
    cont = steps.finetune(base, tgt["dataset_uri"], store, method="simclr", steps=2, batch_size=16)
    assert cont["encoder_uri"] != fresh["encoder_uri"]  # the head choice is part of the cache key
    # act:views=4 is the same method as act: a spec's knobs do not make the head foreign
    assert steps.train._same_method("act:views=4", "act") and not steps.train._same_method("act", "simclr")


def test_head_that_does_not_fit_starts_fresh(data, start_state, caplog):
    store, _, tgt = data
    base = _pretrain(data, "simclr")
    start_state()
    with caplog.at_level(logging.WARNING, logger="uft"):
        out = steps.finetune(base, tgt["dataset_uri"], store, method="simclr:proj_dim=16", steps=2, batch_size=16)
    note = read_manifest(out["encoder_uri"])[0]["info"]["ssl_head"]
    assert note.startswith("fresh head: the base's simclr head does not fit") and "shape" in note


def test_bad_ssl_head_value_is_one_line(data):
    store, _, tgt = data
    with pytest.raises(UftError, match="ssl_head='maybe': use 'continue'"):
        steps.finetune("unused", tgt["dataset_uri"], store, ssl_head="maybe")
