"""What every converter shares: the error, the report of what changed, and the atomic destination."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


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
    try:
        out = write(tmp)
        os.rename(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise
    return out


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()
