"""Stream a published dataset from the store shard by shard, instead of loading it into memory.

Order (deterministic per ``seed``): every epoch the shards are permuted (``rng([seed, epoch, 0])``);
under DDP rank ``r`` of ``W`` takes shards ``r::W`` of that order (or, when there are fewer shards
than ranks, rows ``r::W`` of every shard, so no rank goes empty). The rank's shards are read in
*windows* of ``window`` shards; the rows of a window (filtered by split) are shuffled together
(``rng([seed, epoch, 1, w])``) — the shuffle buffer. Batches are cut from consecutive windows;
with ``drop_last`` an epoch's final partial batch is dropped, so a batch never spans two epochs
and never holds a row twice (when batch ≤ rows per rank).

Position: ``{"epoch", "window", "offset", "seed", ...}`` after the last batch handed out. Because
every permutation is a pure function of (seed, epoch, window), that small dict is all a checkpoint
needs: a resumed stream re-reads one window and continues with exactly the rows an uninterrupted
one would have produced. No RNG object needs saving.

Memory: the window being consumed, up to ``prefetch`` windows ready in a queue and one being read:
``(prefetch + 2) · window`` shards at most (4096 rows each as written by ingest; 12.6 MB of uint8
per shard at 32 px RGB). A background *thread* reads ahead: the work it does (S3 / file read,
sha256, Parquet decode, the shuffle gather) runs in C with the GIL released, so a thread overlaps
it with training without the start-up and pickling cost of worker processes on a 2-core node.
"""

from __future__ import annotations

import io
import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from uft.data.dataset import image_rows
from uft.errors import UftError
from uft.store import canonical_json, read_manifest, read_verified, sha256_bytes

STATE_VERSION = 1


@dataclass
class Batch:
    """One batch: ``images`` uint8 ``(B, C, H, W)``, ``labels`` int64 ``(B,)`` (-1 unlabelled),
    ``row_ids`` int64 ``(B,)`` (ingest's stable ids), ``split`` str ``(B,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    row_ids: torch.Tensor
    split: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class StreamSource:
    """A published dataset to stream: where it is and which rows (picklable, no open handles, so
    it can be sent to DDP ranks, each of which opens its own :class:`ShardStream`).

    ``split``: keep only rows of this split (None: all). ``window``: shards shuffled together.
    ``prefetch``: windows read ahead by the background thread."""

    uri: str
    split: str | None = "train"
    window: int = 4
    prefetch: int = 1

    def manifest(self) -> dict[str, Any]:
        manifest, _, _ = read_manifest(self.uri)
        if manifest.get("kind") != "dataset":
            raise UftError(f"{self.uri} is not a dataset manifest (kind={manifest.get('kind')!r}): pass the output of ingest")
        return manifest

    def num_rows(self) -> int:
        """Rows of ``split`` (from the manifest, without reading a shard); raises if there are none."""
        m = self.manifest()
        n = int(m["num_rows"]) if self.split is None else int(m.get("splits", {}).get(self.split, 0))
        if n == 0:
            raise UftError(f"dataset {self.uri} has no {self.split or 'rows'!s} rows: ingest it with a {self.split} split")
        return n

    def channels(self) -> int:
        return int(self.manifest()["image_shape"][2])

    def open(self, batch_size: int, *, seed: int = 0, shuffle: bool = True, epochs: int | None = None,
             drop_last: bool = True, rank: int = 0, world: int = 1, state: dict[str, Any] | None = None) -> "ShardStream":
        return ShardStream(self, batch_size, seed=seed, shuffle=shuffle, epochs=epochs, drop_last=drop_last, rank=rank,
                           world=world, state=state)


@dataclass
class _Window:
    epoch: int
    index: int
    images: torch.Tensor  # (n, C, H, W) uint8, shuffled
    labels: torch.Tensor  # (n,) int64
    row_ids: torch.Tensor  # (n,) int64
    split: np.ndarray  # (n,) str
    last: bool  # the epoch's last window


class ShardStream:
    """Iterate :class:`Batch` es of ``batch_size`` rows from a :class:`StreamSource`.

    ``shuffle=False``: shards in name order, rows in file order (what ``load_dataset`` returns),
    ``epochs=1, drop_last=False`` for a single evaluation pass. :meth:`state_dict` is the position
    after the last batch handed out; pass it back as ``state`` to continue from there."""

    def __init__(self, source: StreamSource, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 epochs: int | None = None, drop_last: bool = True, rank: int = 0, world: int = 1,
                 state: dict[str, Any] | None = None):
        if batch_size < 1:
            raise UftError(f"stream batch_size={batch_size}: use at least 1")
        if source.window < 1 or source.prefetch < 0:
            raise UftError(f"stream window={source.window} prefetch={source.prefetch}: use window ≥ 1, prefetch ≥ 0")
        if not 0 <= rank < world:
            raise UftError(f"stream rank {rank} of world {world}: the rank must be in [0, world)")
        self.source, self.batch_size, self.shuffle = source, batch_size, shuffle
        self.seed = int(seed) % 2**63  # SeedSequence wants non-negative entropy
        self.epochs, self.drop_last, self.rank, self.world = epochs, drop_last, rank, world
        self.manifest, self.store, self.prefix = read_manifest(source.uri)
        if self.manifest.get("kind") != "dataset":
            raise UftError(f"{source.uri} is not a dataset manifest (kind={self.manifest.get('kind')!r}): pass the output of ingest")
        self.shape = tuple(self.manifest["image_shape"])  # (H, W, C)
        self.shards = sorted(self.manifest["files"])
        if not self.shards:
            raise UftError(f"dataset {source.uri} lists no shards: rerun ingest")
        # Fewer shards than ranks: every rank reads every shard and keeps its rows (no rank goes empty).
        self.by_rows = world > 1 and len(self.shards) < world
        self.sha = sha256_bytes(canonical_json(self.manifest))
        self._pos = {"epoch": 0, "window": 0, "offset": 0}
        if state is not None:
            self.load_state_dict(state)

    # ---- position ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch handed out (a few ints: goes into the trainer's checkpoint)."""
        return {**self._pos, "version": STATE_VERSION, "seed": self.seed, "rank": self.rank, "world": self.world,
                "batch_size": self.batch_size, "window_shards": self.source.window, "dataset_sha": self.sha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = {"version": STATE_VERSION, "seed": self.seed, "rank": self.rank, "world": self.world,
                "batch_size": self.batch_size, "window_shards": self.source.window, "dataset_sha": self.sha}
        bad = [k for k, v in mine.items() if state.get(k) != v]
        if bad:
            raise UftError(f"stream position for {self.source.uri} was saved with other {', '.join(bad)} "
                           f"({', '.join(f'{k}={state.get(k)!r}' for k in bad)}): resume with the same data and settings "
                           "or delete the checkpoint")
        self._pos = {k: int(state[k]) for k in ("epoch", "window", "offset")}

    # ---- plan (pure functions of seed, epoch, window) -----------------------------------------

    def windows(self, epoch: int) -> list[list[str]]:
        """This rank's shard names of ``epoch``, grouped in windows."""
        order = np.arange(len(self.shards))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.shards))
        mine = order if self.by_rows or self.world == 1 else order[self.rank::self.world]
        w = self.source.window
        return [[self.shards[i] for i in mine[j: j + w]] for j in range(0, len(mine), w)]

    def _read_shard(self, name: str) -> tuple[pa.Table, np.ndarray]:
        """A shard's decoded table, unfiltered, and the positions (int64, file order) of the rows
        this stream keeps: its split, and under DDP by rows this rank's share."""
        data = read_verified(self.store, self.prefix, self.manifest, name, self.source.uri)
        table = pq.read_table(io.BytesIO(data), columns=["row_id", "label", "split", "image"])
        keep = np.ones(table.num_rows, dtype=bool)
        if self.by_rows:  # position in the shard, before the split filter: balanced across ranks
            keep &= np.arange(table.num_rows) % self.world == self.rank
        if self.source.split is not None:
            keep &= pc.fill_null(pc.equal(table.column("split"), self.source.split), False).to_numpy(zero_copy_only=False)
        return table, np.flatnonzero(keep)

    def _load_window(self, epoch: int, index: int, names: list[str], last: bool) -> _Window:
        h, w, c = self.shape
        shards = [self._read_shard(n) for n in names]
        sizes = [len(k) for _, k in shards]
        n = sum(sizes)
        if n == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return _Window(epoch, index, torch.empty((0, c, h, w), dtype=torch.uint8), empty, empty,
                           np.empty(0, dtype=str), last)
        # Row i of the window is row order[i] of the shards' kept rows, concatenated in shard order.
        order = np.random.default_rng([self.seed, epoch, 1, index]).permutation(n) if self.shuffle else np.arange(n)
        labels = torch.from_numpy(np.concatenate([t.column("label").to_numpy()[k] for t, k in shards]).astype(np.int64)[order])
        row_ids = torch.from_numpy(np.concatenate([t.column("row_id").to_numpy()[k] for t, k in shards]).astype(np.int64)[order])
        split = np.concatenate([t.column("split").to_numpy(zero_copy_only=False)[k] for t, k in shards]).astype(str)[order]
        # Pixels are copied once: each shard's kept rows go from its decoded buffer (a view) straight to
        # their shuffled places in the window's NCHW tensor, and the shard is dropped. Filtering,
        # concatenating, shuffling and transposing as separate steps held three window-sized buffers
        # at once in the reader thread (now: the decoded shards and the window); that transient is
        # what ssl_finetune's peak grew by from 10k images to a full window (bench/results/scale.md).
        # The strides load_dataset's NHWC → NCHW ``.contiguous()`` gives: with one channel that is the
        # NHWC layout itself, and conv kernels (so the features' last bits) follow the strides.
        images = torch.empty((n, c, h, w), dtype=torch.uint8) if c > 1 else torch.empty((n, h, w, c), dtype=torch.uint8).permute(0, 3, 1, 2)
        nhwc = images.permute(0, 2, 3, 1)  # a view: writes through it land in NCHW order
        starts = np.cumsum([0, *sizes])
        owner = np.searchsorted(starts, order, side="right") - 1  # the shard each window row comes from
        for s, name in enumerate(names):
            table, kept = shards[s]
            shards[s] = None  # the shard's buffers go as soon as its rows are placed
            at = np.flatnonzero(owner == s)
            src = torch.from_numpy(image_rows(table, (h, w, c), f"shard {name} of {self.source.uri}"))
            nhwc[torch.from_numpy(at)] = src[torch.from_numpy(kept[order[at] - starts[s]])]
            del table, src
        return _Window(epoch, index, images, labels, row_ids, split, last)

    def _produce(self, epoch: int, index: int) -> Iterator[_Window]:
        """Windows in stream order from (epoch, index) on."""
        while self.epochs is None or epoch < self.epochs:
            plan = self.windows(epoch)
            for i in range(index, len(plan)):
                yield self._load_window(epoch, i, plan[i], last=i == len(plan) - 1)
            if not plan:
                raise UftError(f"rank {self.rank} of {self.world} has no shards of {self.source.uri}: use fewer processes")
            epoch, index = epoch + 1, 0

    # ---- iteration ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        pos = dict(self._pos)
        windows = _Prefetch(self._produce(pos["epoch"], pos["window"]), self.source.prefetch)
        try:
            yield from self._batches(windows, pos)
        finally:
            windows.close()

    def _batches(self, windows: Iterator[_Window], pos: dict[str, int]) -> Iterator[Batch]:
        parts: list[tuple[_Window, int, int]] = []  # (window, start, stop) pieces of the next batch
        have, offset, yielded_in_epoch = 0, pos["offset"], 0
        epoch_rows = 0
        whole_epoch = pos["window"] == 0 and pos["offset"] == 0  # a resumed partial epoch may rightly yield nothing
        for win in windows:
            start = offset if (win.epoch, win.index) == (pos["epoch"], pos["window"]) else 0
            offset = 0
            epoch_rows += len(win.labels) - start
            while start < len(win.labels):
                take = min(self.batch_size - have, len(win.labels) - start)
                parts.append((win, start, start + take))
                have, start = have + take, start + take
                if have == self.batch_size:
                    self._pos = {"epoch": win.epoch, "window": win.index, "offset": start}
                    yield _assemble(parts)
                    parts, have, yielded_in_epoch = [], 0, yielded_in_epoch + 1
            if win.last:  # end of this rank's epoch
                if parts and not self.drop_last:
                    self._pos = {"epoch": win.epoch + 1, "window": 0, "offset": 0}
                    yield _assemble(parts)
                    yielded_in_epoch += 1
                elif whole_epoch and self.drop_last and yielded_in_epoch == 0 and epoch_rows > 0 and self.epochs is None:
                    raise UftError(f"{self.source.uri} has {epoch_rows} {self.source.split or ''} rows on rank {self.rank} "
                                   f"of {self.world}, fewer than the batch of {self.batch_size}: use a smaller batch_size")
                elif whole_epoch and self.drop_last and epoch_rows == 0 and self.epochs is None:
                    raise UftError(f"{self.source.uri} has no {self.source.split or ''} rows on rank {self.rank} of "
                                   f"{self.world}: ingest more data or use fewer processes")
                parts, have, yielded_in_epoch, epoch_rows, whole_epoch = [], 0, 0, 0, True
                self._pos = {"epoch": win.epoch + 1, "window": 0, "offset": 0}


def _assemble(parts: list[tuple[_Window, int, int]]) -> Batch:
    if len(parts) == 1:  # the common case: a view into the window, no copy
        w, a, b = parts[0]
        return Batch(w.images[a:b], w.labels[a:b], w.row_ids[a:b], w.split[a:b])
    return Batch(torch.cat([w.images[a:b] for w, a, b in parts]), torch.cat([w.labels[a:b] for w, a, b in parts]),
                 torch.cat([w.row_ids[a:b] for w, a, b in parts]), np.concatenate([w.split[a:b] for w, a, b in parts]))


class _Prefetch:
    """Run an iterator in a daemon thread, at most ``depth`` items ahead (0: no thread)."""

    _END = object()

    def __init__(self, it: Iterator[Any], depth: int):
        self._it, self._depth = it, depth
        if depth == 0:
            return
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uft-stream-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._it:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # handed to the consumer, raised there
            self._put(e)

    def __iter__(self) -> Iterator[Any]:
        if self._depth == 0:
            yield from self._it
            return
        while True:
            item = self._q.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        if self._depth:
            self._stop.set()
            self._thread.join(timeout=30)


def load_rows(uri: str, row_ids: np.ndarray | list[int], *, split: str | None = None) -> torch.Tensor:
    """The images of the given ingest ``row_ids`` (a small set, e.g. the replay set), read shard by
    shard, in dataset order → uint8 ``(n, C, H, W)``; the rest of the dataset is never held."""
    wanted = np.asarray(row_ids, dtype=np.int64)
    stream = StreamSource(uri, split=split, window=1).open(4096, shuffle=False, epochs=1, drop_last=False)
    parts = [b.images[torch.from_numpy(np.isin(b.row_ids.numpy(), wanted))].clone() for b in stream]
    h, w, c = stream.shape
    return torch.cat(parts) if parts else torch.empty((0, c, h, w), dtype=torch.uint8)


def split_rows(uri: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(labels int64 (-1 unlabelled), row ids int64) per split, in dataset order, without decoding
    any image (the label, split and row_id columns only)."""
    manifest, store, prefix = read_manifest(uri)
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for name in sorted(manifest["files"]):
        t = pq.read_table(io.BytesIO(read_verified(store, prefix, manifest, name, uri)), columns=["row_id", "label", "split"])
        lab, sp = t.column("label").to_numpy().astype(np.int64), t.column("split").to_numpy(zero_copy_only=False).astype(str)
        rid = t.column("row_id").to_numpy().astype(np.int64)
        for s in np.unique(sp):
            parts.setdefault(str(s), []).append((lab[sp == s], rid[sp == s]))
    return {s: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for s, v in parts.items()}


def split_labels(uri: str) -> dict[str, np.ndarray]:
    """Labels per split (see :func:`split_rows`): enough to decide whether a dataset can be scored
    before extracting features."""
    return {s: labels for s, (labels, _) in split_rows(uri).items()}
