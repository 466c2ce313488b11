"""What every converter shares: the error, the report of what changed, and the atomic destination."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from tqdm import tqdm

T = TypeVar("T")
_interrupted = threading.Event()


class ConvertError(ValueError):
    """The source is malformed or cannot be converted; nothing was written at the destination."""


@dataclass
class Report:
    """What a conversion did beyond copying: ``dropped`` (in the source, not in the destination),
    ``added`` (made up for the destination's format), ``notes``."""

    dropped: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return ([f"dropped: {d}" for d in self.dropped] + [f"added: {a}" for a in self.added]
                + [f"note: {n}" for n in self.notes])


def image_to_uint8(v: np.ndarray) -> np.ndarray:
    """Images (..., H, W, 3) as uint8: float pixels 0..255 (Diffusion Policy's PushT) are rounded."""
    return v if v.dtype == np.uint8 else np.clip(np.round(v), 0, 255).astype(np.uint8)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Ctrl-C while a conversion writes takes effect at the next safe point (:func:`interruptible`), not
    inside a library's callback, where h5py's weakref finalizers would swallow it and zarr's event
    loop would leave pending tasks; a second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _interrupted.is_set():
            raise KeyboardInterrupt
        _interrupted.set()

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def interruptible(items: Iterable[T], **tqdm_kwargs) -> Iterator[T]:
    """``tqdm(items)`` that raises KeyboardInterrupt between items once Ctrl-C was pressed."""
    for item in tqdm(items, **tqdm_kwargs):
        if _interrupted.is_set():
            raise KeyboardInterrupt
        yield item


def write_atomically(dst: Path, write: Callable[[Path], object]):
    """Call ``write(scratch)`` on a hidden sibling of ``dst``, then rename it to ``dst``; on any
    error (or Ctrl-C) the scratch is removed and ``dst`` never appears.

    Raises:
        FileExistsError: ``dst`` exists.
    """
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} exists; convert writes a new destination (remove it first)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.protege-convert-{os.getpid()}"
    _remove(tmp)
    _interrupted.clear()
    try:
        with deferred_interrupt():
            out = write(tmp)
            if _interrupted.is_set():
                raise KeyboardInterrupt
        os.rename(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _interrupted.clear()
    return out


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()
