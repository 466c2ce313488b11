"""Image arrays read from the store's chunks as windows are drawn, for stores larger than memory
(``data.in_memory=false``, or ``auto`` above ``data.max_memory_gb``).

A :class:`LazyArray` stands in for a task's image array in :class:`~protege.data.dataset.TaskData`:
it has the in-memory array's length, shape and dtype and answers the sampler's fancy indexing
(``a[index]``, any integer array of rows) by decoding the chunks those rows lie in, through a
bounded least-recently-used cache of decoded chunks (``cache_mb``), and applying the observation
spec (uint8 pixels). Low-dim keys stay in memory (they are small, and their statistics need every
row). The batches are gathered in DataLoader workers (``data.workers``), each with its own cache,
so decoding overlaps the training step.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from .dataset import select


class LazyArray:
    """Rows of one or more zarr arrays (``segments``: (array, spec, source rows (n,) int64)),
    concatenated, read on demand.

    Args:
        segments: each an array of a store, the observation spec applied to its rows, and which of
            its rows (in order) this array's rows are.
        cache_mb: decoded chunks kept, MB (at least one chunk is always kept).
    """

    def __init__(self, segments: list[tuple[Any, Mapping[str, Any], np.ndarray]], cache_mb: float = 512.0):
        self.segments = [(a, dict(spec), np.asarray(rows, np.int64)) for a, spec, rows in segments]
        self.offsets = np.cumsum([0] + [len(r) for _, _, r in self.segments])
        a0, spec0, rows0 = self.segments[0]
        probe = select(np.asarray(a0[int(rows0[0]): int(rows0[0]) + 1]), spec0, batch_dims=1)
        self.shape = (int(self.offsets[-1]), *probe.shape[1:])
        self.dtype = probe.dtype
        self.cache_bytes = int(cache_mb * (1 << 20))
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._held = 0
        self.reads = 0  # chunks decoded (cache misses)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def remote(self) -> bool:
        """Whether any of its arrays is read through fsspec (object storage): such arrays are not
        fork-safe (their clients are bound to the parent's event loop), so workers must be spawned."""
        from zarr.storage import FsspecStore

        return any(isinstance(a.store, FsspecStore) for a, _, _ in self.segments)

    @staticmethod
    def concat(parts: list[LazyArray]) -> LazyArray:
        out = LazyArray.__new__(LazyArray)
        out.segments = [s for p in parts for s in p.segments]
        out.offsets = np.cumsum([0] + [len(r) for _, _, r in out.segments])
        out.shape, out.dtype = (int(out.offsets[-1]), *parts[0].shape[1:]), parts[0].dtype
        out.cache_bytes, out._cache, out._held, out.reads = parts[0].cache_bytes, OrderedDict(), 0, 0
        return out

    def take(self, rows: np.ndarray) -> LazyArray:
        """The rows ``rows`` (of this array) as a new LazyArray (damaged episodes left out)."""
        rows = np.asarray(rows, np.int64)
        seg = np.searchsorted(self.offsets, rows, side="right") - 1
        parts = []
        for i, (a, spec, src) in enumerate(self.segments):
            mine = rows[seg == i] - self.offsets[i]
            if len(mine):
                parts.append((a, spec, src[mine]))
        return LazyArray(parts, self.cache_bytes / (1 << 20))

    def _chunk(self, seg: int, c: int) -> np.ndarray:
        key = (seg, c)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        a, spec, _ = self.segments[seg]
        c0 = a.chunks[0]
        block = select(np.asarray(a[c * c0: min((c + 1) * c0, a.shape[0])]), spec, batch_dims=1)
        self.reads += 1
        self._cache[key] = block
        self._held += block.nbytes
        while self._held > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._held -= old.nbytes
        return block

    def __getitem__(self, index) -> np.ndarray:
        idx = np.asarray(index, np.int64)
        flat = idx.ravel()
        if len(flat) and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"rows {flat.min()}..{flat.max()} outside 0..{len(self) - 1}")
        out = np.empty((len(flat), *self.shape[1:]), self.dtype)
        seg = np.searchsorted(self.offsets, flat, side="right") - 1
        for i in np.unique(seg):
            at = np.flatnonzero(seg == i)
            a, _, src = self.segments[i]
            rows = src[flat[at] - self.offsets[i]]
            c0 = a.chunks[0]
            for c in np.unique(rows // c0):
                sel = rows // c0 == c
                out[at[sel]] = self._chunk(int(i), int(c))[rows[sel] - c * c0]
        return out.reshape(*idx.shape, *self.shape[1:])
