"""A background writer: the control loop hands steps over and never waits on disk.

The recording loop calls :meth:`BackgroundWriter.add_step` at the control rate; a writer thread
drains the queue in batches into an :class:`EpisodeWriter` (compression and disk I/O happen
there; zarr's codecs release the GIL). The episode life cycle (commit, discard) travels through
the same queue, so it is applied in order. A crash or ``kill -9`` loses at most the open episode:
every committed one is readable.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .store import EpisodeWriter


class WriterError(RuntimeError):
    """The writer thread failed; the message names the original error."""


class BackgroundWriter:
    """Queue-fed :class:`EpisodeWriter` running in a daemon thread.

    Args:
        path, fps, key_meta, image_codec: as for :class:`EpisodeWriter` (``image_codec``:
            ``"lossless"``, the default, or ``"jpeg:Q"``; compression runs in the writer thread).

    Raises:
        ValueError: an unknown ``image_codec`` (at construction, not in the thread).

    Errors from the thread are raised as :class:`WriterError` by the next call on the writer.
    """

    def __init__(self, path: str | Path, fps: float | None = None, key_meta: Mapping[str, Mapping] | None = None,
                 image_codec: str = "lossless"):
        self._writer = EpisodeWriter(path, fps, key_meta, image_codec=image_codec)
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._committed: list[int] = []
        self._thread = threading.Thread(target=self._run, name="protege-writer", daemon=True)
        self._thread.start()

    # -- control-loop side (never blocks on disk) ------------------------------------------
    def add_step(self, step: Mapping[str, np.ndarray]) -> None:
        """Queue one step {key: per-step array}; arrays are copied, so buffers may be reused."""
        self._raise()
        self._queue.put(("step", {k: np.array(v, copy=True) for k, v in step.items()}))

    def commit(self, **metadata: Any) -> None:
        """Queue the end of the open episode, kept, with its metadata."""
        self._raise()
        self._queue.put(("commit", metadata))

    def discard(self) -> None:
        """Queue the end of the open episode, thrown away."""
        self._raise()
        self._queue.put(("discard", None))

    @property
    def backlog(self) -> int:
        """Items waiting to be written (steps and life-cycle events)."""
        return self._queue.qsize()

    def flush(self) -> list[int]:
        """Wait until everything queued is on disk; returns the indices of committed episodes."""
        self._queue.join()
        self._raise()
        return list(self._committed)

    def close(self) -> list[int]:
        """Flush, trim the store and stop the thread; an open, uncommitted episode is dropped."""
        self._queue.put(("close", None))
        self._thread.join()
        self._raise()
        return list(self._committed)

    def _raise(self) -> None:
        if self._error is not None:
            raise WriterError(f"the background writer failed: {self._error!r}") from self._error

    # -- writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        pending: list[dict] = []
        while True:
            kind, payload = self._queue.get()
            items = [(kind, payload)]
            while kind == "step":  # take every step already queued: one write per batch
                try:
                    kind, payload = self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append((kind, payload))
            try:
                for kind, payload in items:
                    if self._error is not None:
                        continue
                    if kind == "step":
                        pending.append(payload)
                        continue
                    self._write(pending)
                    pending = []
                    if kind == "commit":
                        self._committed.append(self._writer.commit(**payload))
                    elif kind == "discard":
                        self._writer.discard()
                    elif kind == "close":
                        self._writer.discard()
                        self._writer.close()
                self._write(pending)
                pending = []
            except BaseException as e:  # surfaced to the control loop by _raise()
                self._error = e
            finally:
                for _ in items:
                    self._queue.task_done()
            if any(k == "close" for k, _ in items):
                return

    def _write(self, steps: list[dict]) -> None:
        if steps:
            self._writer.add_steps({k: np.stack([s[k] for s in steps]) for k in steps[0]})
