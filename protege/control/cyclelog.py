"""The control loop's cycle log: its writer (:class:`CycleLog`) and reader (:func:`read_log`).

``deploy.jsonl`` (or a recording's log) holds one JSON object per line; ``protege-deploy report``
summarises and plots it (:mod:`protege.deploy.report`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np


class CycleLog:
    """Per-cycle records as JSON lines (``deploy.jsonl``), one object per line:

    ``{"type": "cycle", "episode", "k", "t" (scheduled cycle time), "wake" (when the cycle ran),
    "t_obs", "request" (a chunk was requested this cycle), "chunk": {"t_obs", "t_start", "t_end",
    "scheduled", "dropped"} or null, "dropped" (late actions dropped this cycle, total),
    "clipped": [kinds], "cmd": [x, y, z], "cmd_speed" m/s, "width", "meas": [x, y, z]}``, plus
    ``{"type": "episode", ...}`` (:class:`EpisodeResult`), ``{"type": "stop", "reason", "message"}``
    and the smooth stop's ``{"type": "stop_target", "t", "cmd"}`` records.
    Times are s on the loop's clock.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._f: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = self.path.open("a", buffering=1)  # line-buffered: a killed run keeps its log

    def write(self, record: Mapping[str, Any]) -> None:
        if self._f is not None:
            self._f.write(json.dumps(record, default=_json_default) + "\n")

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _json_default(x):
    if isinstance(x, np.ndarray):
        return [round(float(v), 6) for v in x.ravel()]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(type(x))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``deploy.jsonl`` (a run folder or the file).

    Raises:
        FileNotFoundError: no log there.
        ValueError: a line that is not JSON (its number is named); a truncated last line (a
            killed run) is skipped.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "deploy.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no deployment log (protege-deploy writes <run_dir>/deploy.jsonl)")
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a log record ({e})") from e
    return out
