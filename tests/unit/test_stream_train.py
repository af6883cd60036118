"""Streamed training (train_ssl on a StreamSource): killed and resumed == uninterrupted, bit for bit,
in one process and under DDP (two CPU ranks, gloo, each reading its own shards); mixing still mixes
target batches with the in-memory replay set."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _publish(root: Path, n: int = 96, shard_rows: int = 16) -> str:
    """n deterministic 16 px grey blobs (a bright square on noise) published in shards of 16 rows."""
    from uft.data import ingest as ingest_mod
    from uft.data.sources import RawImages
    from uft.store import LocalStore

    g = np.random.default_rng(5)
    x = g.integers(0, 60, (n, 16, 16, 1), dtype=np.uint8)
    for i, (r, c) in enumerate(g.integers(0, 10, (n, 2))):
        x[i, r: r + 6, c: c + 6] = 230
    raw = RawImages(x, np.arange(n) % 4, ["a", "b", "c", "d"], info={"origin": "test"})
    old, ingest_mod.SHARD_ROWS = ingest_mod.SHARD_ROWS, shard_rows
    try:
        return ingest_mod.ingest(raw, LocalStore(root), name="t", image_size=16, channels=1, test_fraction=0.25)
    finally:
        ingest_mod.SHARD_ROWS = old


def _cfg(steps: int, **kw):
    from uft.ssl.train import TrainConfig

    base = dict(steps=steps, batch_size=16, lr=5e-3, warmup_steps=0, seed=7, checkpoint_every=2, log_every=1)
    return TrainConfig(**{**base, **kw})


def _method():
    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method

    torch.manual_seed(0)
    return build_method("simclr", build_encoder("tiny", in_channels=1, width=8))


def _train(uri: str, store: Path, steps: int, crash_at: int = -1, **kw):
    from uft.data.stream import StreamSource
    from uft.ssl.train import Checkpointer, train_ssl
    from uft.store import LocalStore

    def on_log(step: int, loss: float) -> None:
        if step == crash_at:
            raise RuntimeError(f"killed at step {step}")

    train_kw = kw.pop("train_kw", {})
    method = _method()
    res = train_ssl(method, StreamSource(uri, split="train", window=2), _cfg(steps, **kw),
                    checkpointer=Checkpointer(LocalStore(store), "ckpt"), on_log=on_log, **train_kw)
    return method.state_dict(), res


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_streamed_kill_and_resume_equals_uninterrupted(tmp_path, one_torch_thread):
    uri = _publish(tmp_path / "data")  # 72 train rows in shards of ≤ 16 → 4 batches an epoch: 9 steps cross 2 epochs
    full, full_res = _train(uri, tmp_path / "full", 9)
    with pytest.raises(RuntimeError, match="killed at step 7"):
        _train(uri, tmp_path / "run", 9, crash_at=7)
    import shutil

    ckpt = torch.load(next((tmp_path / "run" / "ckpt").glob("ckpt-*.pt")), weights_only=False)
    assert ckpt["step"] == 6 and ckpt["stream"][0]["epoch"] == 1  # the position went into the checkpoint
    shutil.copytree(tmp_path / "run", tmp_path / "rewound")
    resumed, res = _train(uri, tmp_path / "run", 9)
    assert res.resumed_from == 6
    assert _same(resumed, full)
    assert res.losses == full_res.losses
    # The stream position is what makes it exact: the same checkpoint with the stream rewound differs.
    path = next((tmp_path / "rewound" / "ckpt").glob("ckpt-*.pt"))
    ckpt["stream"][0].update(epoch=0, window=0, offset=0)
    torch.save(ckpt, path)
    rewound, _ = _train(uri, tmp_path / "rewound", 9)
    assert not _same(rewound, full)


def test_streamed_training_mixes_with_in_memory_replay(tmp_path, one_torch_thread, monkeypatch):
    from uft.transfer import mixing
    from uft.transfer.mixing import MixPlan

    uri = _publish(tmp_path / "data")
    seen = []
    original = mixing.make_mixed_batch

    def spy(target, source, plan, g):
        out = original(target, source, plan, g)
        seen.append((target.shape[0], source.shape[0], out.shape[0]))
        return out

    monkeypatch.setattr(mixing, "make_mixed_batch", spy)
    replay = torch.full((6, 1, 16, 16), 255, dtype=torch.uint8)
    kw = {"replay_ratio": 0.25, "train_kw": {"replay": replay, "mix_plan": MixPlan(op="mixup", fraction=0.5)}}
    state, res = _train(uri, tmp_path / "s", 3, **kw)
    assert seen == [(16, 6, 8)] * 3  # each streamed target batch of 16 mixed with the 6-image replay set → 8 new
    assert res.images_seen == 3 * (16 + 4)
    assert all(np.isfinite(v) for _, v in res.losses)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, uri: str, out: str, steps: int, crash_at: int) -> None:
    from uft.data import stream as stream_mod
    from uft.ssl import ddp
    from uft.ssl.train import Checkpointer, serve, train_ssl
    from uft.store import LocalStore

    torch.set_num_threads(1)
    read: list[str] = []
    original = stream_mod.ShardStream._read_shard

    def spy(self, name):  # which shards this rank reads
        read.append(name)
        return original(self, name)

    stream_mod.ShardStream._read_shard = spy
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        if rank == 0:
            def on_log(step: int, loss: float) -> None:
                if step == crash_at:
                    raise RuntimeError(f"killed at step {step}")

            method = _method()
            res = train_ssl(method, stream_mod.StreamSource(uri, split="train", window=1), _cfg(steps),
                            checkpointer=Checkpointer(LocalStore(Path(out) / "store"), "ckpt"), on_log=on_log)
            ddp.finish()
        else:
            ((method, res),) = serve("cpu")
        torch.save({"state": method.state_dict(), "losses": res.losses, "resumed_from": res.resumed_from,
                    "read": read}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(uri: str, out: Path, steps: int, crash_at: int = -1) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_ddp_worker, args=(_port(), uri, str(out), steps, crash_at), nprocs=WORLD, join=True,
                       start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_ddp_streamed_ranks_read_own_shards_and_resume_exactly(tmp_path):
    uri = _publish(tmp_path / "data", n=128)  # 8 shards of 16 rows: 4 per rank per epoch
    r0, r1 = _spawn(uri, tmp_path / "full", steps=6)
    assert _same(r0["state"], r1["state"]) and r0["losses"] == r1["losses"]
    first_epoch = [set(r["read"][:4]) for r in (r0, r1)]
    assert not first_epoch[0] & first_epoch[1] and len(first_epoch[0] | first_epoch[1]) == 8  # rank::world shards
    with pytest.raises(Exception):  # rank 0 dies at step 5; the last checkpoint is step 4
        _spawn(uri, tmp_path / "resumed", steps=6, crash_at=5)
    ckpt_dir = tmp_path / "resumed" / "store" / "ckpt"
    assert json.loads((ckpt_dir / "latest.json").read_text())["step"] == 4
    saved = torch.load(next(ckpt_dir.glob("ckpt-*.pt")), weights_only=False)["stream"]
    assert [s["rank"] for s in saved] == [0, 1]  # every rank's position, gathered by rank 0
    a0, a1 = _spawn(uri, tmp_path / "resumed", steps=6)
    assert a0["resumed_from"] == a1["resumed_from"] == 4
    assert _same(a0["state"], r0["state"]) and _same(a1["state"], r0["state"])
    assert a0["losses"] == r0["losses"]


def test_holistic_source_classifier_trains_from_a_stream(tmp_path, one_torch_thread, monkeypatch):
    from uft.data import stream as stream_mod
    from uft.data.stream import StreamSource
    from uft.models.encoders import build_encoder
    from uft.transfer.holistic import HolisticConfig, predict, train_source_classifier

    uri = _publish(tmp_path / "data")
    labels_seen = []
    original = stream_mod.ShardStream._batches

    def spy(self, windows, pos):
        for b in original(self, windows, pos):
            labels_seen.append(b.labels.clone())
            yield b

    monkeypatch.setattr(stream_mod.ShardStream, "_batches", spy)
    torch.manual_seed(0)
    enc = build_encoder("tiny", in_channels=1, width=8)
    cfg = HolisticConfig(source_steps=6, source_batch_size=16, seed=0)
    head = train_source_classifier(enc, StreamSource(uri, split="train"), None, 4, cfg)
    assert head.out_features == 4 and len(labels_seen) >= 6  # the batches came from the stream, labels too
    assert torch.cat(labels_seen).unique().tolist() == [0, 1, 2, 3]
    x = torch.rand(5, 1, 16, 16)
    assert torch.isfinite(predict(enc, head, x)[1]).all()
