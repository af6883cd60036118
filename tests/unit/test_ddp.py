"""DDP training (uft.ssl.ddp): two CPU processes with gloo, a tiny convnet on 16 px images.

Rank 0 calls train_ssl as a pipeline step would; rank 1 waits in ddp.serve for the job. Checks:
both ranks end with identical weights, the logged loss is finite and decreases, only rank 0
checkpoints, a run killed mid-way and resumed ends bit-identical to an uninterrupted one, and the
torchrun entry runs the real finetune step (rank 0 publishes, result readable).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from uft.errors import UftError


WORLD = 2


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(n: int = 64) -> torch.Tensor:
    """Deterministic uint8 (n, 1, 16, 16) blobs: a bright square at a random place on noise."""
    g = torch.Generator().manual_seed(123)
    x = torch.randint(0, 60, (n, 1, 16, 16), generator=g, dtype=torch.uint8)
    for i, (r, c) in enumerate(torch.randint(0, 10, (n, 2), generator=g).tolist()):
        x[i, :, r : r + 6, c : c + 6] = 230
    return x


def _cfg(steps: int):
    from uft.ssl.train import TrainConfig

    return TrainConfig(steps=steps, batch_size=32, lr=5e-3, warmup_steps=0, seed=7, checkpoint_every=2, log_every=1,
                       replay_ratio=0.5, radreg_weight=0.01)


def _worker(rank: int, port: int, out: str, steps: int, crash_at: int) -> None:
    """One rank: rank 0 builds the method and trains (sending the job), rank 1 serves it."""
    from uft.models.encoders import build_encoder
    from uft.ssl import ddp
    from uft.ssl.base import build_method
    from uft.ssl.train import Checkpointer, serve, train_ssl
    from uft.store import LocalStore

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        if rank == 0:
            torch.manual_seed(0)
            method = build_method("simclr", build_encoder("tiny", in_channels=1, width=8))

            def on_log(step: int, loss: float) -> None:
                if step == crash_at:
                    raise RuntimeError(f"killed at step {step}")

            ckpt = Checkpointer(LocalStore(Path(out) / "store"), "ckpt")
            res = train_ssl(method, _images(), _cfg(steps), replay=_images(16).flip(-1), checkpointer=ckpt, on_log=on_log)
            ddp.finish()
        else:
            ((method, res),) = serve("cpu")
        torch.save({"state": method.state_dict(), "losses": res.losses, "resumed_from": res.resumed_from},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(out: Path, steps: int, crash_at: int = -1) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    # spawn, not fork: a fork copies whatever locks threads of earlier tests (in a shuffled order) hold
    mp.start_processes(_worker, args=(_port(), str(out), steps, crash_at), nprocs=WORLD, join=True, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_ranks_train_identical_weights_and_loss_decreases(tmp_path):
    r0, r1 = _spawn(tmp_path / "run", steps=8)
    assert _same(r0["state"], r1["state"])  # DDP kept every parameter and buffer in sync
    torch.manual_seed(0)
    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method

    init = build_method("simclr", build_encoder("tiny", in_channels=1, width=8)).state_dict()
    assert not _same(init, r0["state"])  # it did train
    losses = [v for _, v in r0["losses"]]
    assert r0["losses"] == r1["losses"] and len(losses) == 8  # the logged value is the mean over ranks
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])
    ckpts = sorted(p.name for p in (tmp_path / "run" / "store" / "ckpt").iterdir())
    assert ckpts == ["ckpt-00000008.pt", "latest.json"]  # rank 0's checkpointer only


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    with pytest.raises(Exception):  # rank 0 dies at step 5; the last checkpoint is step 4
        _spawn(tmp_path / "resumed", steps=8, crash_at=5)
    assert json.loads((tmp_path / "resumed" / "store" / "ckpt" / "latest.json").read_text())["step"] == 4
    r0, r1 = _spawn(tmp_path / "resumed", steps=8)
    assert r0["resumed_from"] == r1["resumed_from"] == 4  # both ranks resumed from rank 0's checkpoint
    full, _ = _spawn(tmp_path / "full", steps=8)
    assert _same(r0["state"], full["state"]) and _same(r1["state"], full["state"])
    assert r0["losses"] == full["losses"]


def test_batch_smaller_than_two_per_rank_is_a_clear_error(tmp_path):
    mp.start_processes(_small_batch_worker, args=(_port(), str(tmp_path / "error.txt")), nprocs=WORLD, join=True,
                       start_method="spawn")
    assert (tmp_path / "error.txt").read_text().startswith("batch_size 3 is too small for 2 processes: use at least 4")


def _small_batch_worker(rank: int, port: int, out: str) -> None:
    from uft.errors import UftError
    from uft.models.encoders import build_encoder
    from uft.ssl import ddp
    from uft.ssl.base import build_method
    from uft.ssl.train import TrainConfig, serve, train_ssl

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        if rank == 0:
            method = build_method("simclr", build_encoder("tiny", in_channels=1, width=8))
            try:
                train_ssl(method, _images(8), TrainConfig(steps=1, batch_size=3))
            except UftError as e:  # raised before any job went out: the worker can be released
                Path(out).write_text(str(e))
            ddp.finish()
        else:
            assert serve("cpu") == []
    finally:
        dist.destroy_process_group()


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A tiny target dataset and pretrained encoder in a local store (no MLflow)."""
    from uft import steps

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = str(tmp_path / "store")
    tgt = steps.ingest("optdigits", store, role="target", image_size=16, channels=1, limit=120)
    base = steps.pretrain(tgt["dataset_uri"], tgt["dataset_sha"], store, encoder_width=8, steps=2, batch_size=16,
                          checkpoint_every=2)
    return store, tgt["dataset_uri"], base["encoder_uri"]


def test_torchrun_entry_runs_the_finetune_step(published):
    """The ssl_finetune component with gpus_per_node=2 → launch() → torchrun (2 procs, gloo) →
    uft.steps.finetune on rank 0: publishes once; a rerun hits the step cache and releases the
    worker without training; a bad input comes back as rank 0's UftError."""
    from components.ssl_finetune import ssl_finetune
    from uft.ssl.ddp_entry import launch
    from uft.store import verify_manifest

    store, target, encoder = published
    kw = dict(encoder_uri=encoder, target_uri=target, store_uri=store, method="simclr", steps=4, batch_size=16,
              checkpoint_every=2, seed=0)
    from kfp import dsl

    from uft.lineage import describe

    model = dsl.Model(name="model", uri=str(Path(store).parent / "kfp" / "model"))
    args = {k: v for k, v in kw.items() if k not in ("encoder_uri", "target_uri")}
    ssl_finetune.python_func(**args, base=dsl.Model(name="base", uri="", metadata=describe(encoder)),
                             target=dsl.Dataset(name="target", uri="", metadata=describe(target)), lr=2e-3,
                             replay_ratio=0.0, radreg_weight=0.0, run_id="ddp", experiment="uft", model=model,
                             gpus_per_node=2)
    out = {"encoder_uri": model.metadata["manifest_uri"]}
    info = verify_manifest(out["encoder_uri"])["info"]
    assert info["losses"][-1][0] == 4 and info["resumed_from"] == 0
    assert all(torch.isfinite(torch.tensor([v for _, v in info["losses"]])))
    ckpt = list(Path(store, "checkpoints", "finetune").rglob("latest.json"))
    assert len(ckpt) == 1 and json.loads(ckpt[0].read_text())["step"] == 4  # rank 0's checkpointer, final step
    again = launch("finetune", kw, nproc=2, timeout=120)
    assert again["encoder_uri"] == out["encoder_uri"] and again["cached"] is True
    with pytest.raises(UftError, match="does not exist"):
        launch("finetune", {**kw, "encoder_uri": str(Path(store) / "nope" / "manifest.json")}, nproc=2, timeout=120)
