"""Bounded-memory helpers for ingest: CPU sizing, an ordered process-pool map with a bounded
window, and :class:`DiskRows`, a uint8 ``(N, H, W, C)`` array that lives in a temporary file.

Why these exist: decoding a 1M-image ImageFolder must use every CPU it is given, yet hold only a
few chunks in memory at once, and produce the same bytes whatever the number of workers (results
are consumed in submission order, so completion order never shows).
"""

from __future__ import annotations

import gc
import math
import os
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from uft.errors import UftError

WORKERS_ENV = "UFT_INGEST_WORKERS"
START_ENV = "UFT_INGEST_START_METHOD"  # fork (default on Linux) | spawn | forkserver


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a pod's
    ``limits.cpu``), at least 1. ``os.cpu_count()`` would count the whole node."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def resolve_workers(workers: int | None) -> int:
    """``workers`` → a process count: a positive int is taken as is; ``None`` or 0 means the
    ``UFT_INGEST_WORKERS`` environment variable if set, else :func:`available_cpus`."""
    if workers is None or workers == 0:
        env = os.environ.get(WORKERS_ENV, "").strip()
        if env:
            try:
                workers = int(env)
            except ValueError:
                raise UftError(f"{WORKERS_ENV}={env!r} is not an integer: set it to a worker count (0 = all CPUs)") from None
            if workers == 0:
                return available_cpus()
        else:
            return available_cpus()
    if workers < 0:
        raise UftError(f"workers={workers} is invalid: use a positive count, or 0 for all CPUs")
    return workers


class OrderedPool:
    """``map(fn, tasks)`` over ``workers`` processes, yielding results in task order.

    At most ``window`` tasks are submitted and not yet consumed, so results waiting for a slow
    earlier task never pile up: memory is bounded by ``window`` results. ``peak_pending`` counts
    the most tasks ever in flight (tests check the bound by behaviour). With ``workers <= 1`` the
    tasks run in this process (no start-up cost, same results).
    """

    def __init__(self, workers: int, window: int | None = None):
        self.workers = max(1, workers)
        self.window = max(1, window or 2 * self.workers)
        self.peak_pending = 0

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        if self.workers <= 1:
            for t in tasks:
                self.peak_pending = max(self.peak_pending, 1)
                yield fn(t)
            return
        # fork (as torch's DataLoader does): spawn/forkserver re-import the caller's __main__ in every
        # worker, which breaks any script without an `if __name__ == "__main__"` guard. The workers
        # run only PIL/numpy/hashlib (and a fresh S3 client), nothing that needs the parent's threads.
        ctx = get_context(os.environ.get(START_ENV) or ("fork" if "fork" in get_all_start_methods() else "spawn"))
        # gc.freeze: a forked worker's garbage collector would otherwise touch every object it
        # inherited (the 1M-file listing) and so copy those pages, one private copy per worker.
        gc.freeze()
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        pending: list[Future] = []
        it = iter(tasks)
        try:
            while True:
                while len(pending) < self.window:
                    t = next(it, _DONE)
                    if t is _DONE:
                        break
                    pending.append(pool.submit(fn, t))
                self.peak_pending = max(self.peak_pending, len(pending))
                if not pending:
                    return
                try:
                    result = pending.pop(0).result()
                except BrokenProcessPool:
                    raise UftError(f"an ingest worker process died (killed, e.g. out of memory, with {self.workers} "
                                   f"workers): set {WORKERS_ENV} lower, or give the step more memory") from None
                yield result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            gc.unfreeze()


_DONE = object()


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


class DiskRows(np.lib.mixins.NDArrayOperatorsMixin):
    """Append-only uint8 rows of one shape in an unlinked temporary file (``$TMPDIR``).

    Behaves enough like an ``(N, *shape)`` uint8 array for ingest: ``len``, ``shape``, ``ndim``,
    ``dtype``, integer/slice/index-array ``[...]`` (reads only those rows); ``np.asarray``, numpy
    functions and operators (``x < 128``) read it all (small data and tests only). Reads use ``pread``, not ``mmap``, so the pages read
    never count towards this process's resident memory.
    """

    def __init__(self, row_shape: tuple[int, ...], dir: str | None = None):
        self.row_shape = tuple(row_shape)
        self.row_bytes = int(np.prod(self.row_shape))
        self._f = tempfile.TemporaryFile(prefix="uft-ingest-", dir=dir)
        self._n = 0

    # --- writing -------------------------------------------------------------------------------
    def append(self, rows: np.ndarray) -> None:
        """Append ``(n, *row_shape)`` uint8 rows."""
        if rows.dtype != np.uint8 or rows.shape[1:] != self.row_shape:
            raise UftError(f"rows {rows.dtype} {rows.shape} do not fit DiskRows of {self.row_shape}: append uint8 rows")
        if len(rows):
            self._f.seek(self._n * self.row_bytes)
            self._f.write(np.ascontiguousarray(rows).tobytes())
            self._f.flush()  # reads go around the buffer (pread)
            self._n += len(rows)

    # --- array-like reading ----------------------------------------------------------------------
    dtype = np.dtype(np.uint8)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._n, *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, idx: Any) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            i = int(idx) + (self._n if idx < 0 else 0)
            if not 0 <= i < self._n:
                raise IndexError(f"row {idx} out of range for {self._n} rows")
            return self._read(i, i + 1)[0]
        if isinstance(idx, slice):
            start, stop, step = idx.indices(self._n)
            if step == 1:
                return self._read(start, max(start, stop))
            idx = np.arange(start, stop, step)
        rows = np.asarray(idx)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = np.where(rows < 0, rows + self._n, rows).astype(np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self._n):
            raise IndexError(f"rows out of range for {self._n} rows")
        out = np.empty((len(rows), *self.row_shape), np.uint8)
        # Read each run of consecutive rows with one pread (sorted subsets are mostly runs).
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run in np.split(np.arange(len(rows)), breaks) if len(rows) else []:
            a = int(rows[run[0]])
            out[run[0]: run[-1] + 1] = self._read(a, a + len(run))
        return out

    def _read(self, start: int, stop: int) -> np.ndarray:
        n = max(stop - start, 0)
        out = np.empty((n, *self.row_shape), np.uint8)
        view, done, total = memoryview(out).cast("B"), 0, n * self.row_bytes
        while done < total:  # one read returns at most ~2 GiB on Linux
            got = os.preadv(self._f.fileno(), [view[done:]], start * self.row_bytes + done)
            if got <= 0:
                raise UftError(f"ingest spill file ended early ({done} of {total} bytes): check free space in $TMPDIR")
            done += got
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self._n):
            yield self[i]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self._read(0, self._n)
        return a if dtype is None else a.astype(dtype)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(np.asarray(x) if isinstance(x, DiskRows) else x for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def close(self) -> None:
        self._f.close()
