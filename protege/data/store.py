"""The episode store: Diffusion Policy's replay-buffer layout in zarr.

Layout (DESIGN.md, "Episode store")::

    <root>/data/<key>          (N, ...) all episodes concatenated on axis 0
    <root>/meta/episode_ends   (E,) int64, exclusive end index of each episode

``meta/episode_ends`` is the commit record: rows of ``data/*`` past its last entry do not exist
for readers. Stores written by Diffusion Policy (zarr format 2) open as they are; new stores are
written in zarr format 3 by :class:`EpisodeWriter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr

SCHEMA_VERSION = 1


class StoreError(ValueError):
    """The path is not a readable episode store, or data does not match its schema."""


@dataclass(frozen=True)
class KeySpec:
    """What one ``data/<key>`` array holds, per step.

    shape: per-step shape (without the leading step axis); dtype: numpy dtype name;
    unit and frame: free text from the store's attributes ('' when the store does not say).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    unit: str = ""
    frame: str = ""

    @property
    def is_image(self) -> bool:
        """Images are (H, W, 3) arrays: uint8, or float 0..255 in Diffusion Policy's PushT data."""
        return len(self.shape) == 3 and self.shape[-1] == 3


class EpisodeStore:
    """Read-only view of an episode store.

    Args:
        path: directory of a zarr store (format 2 or 3) in the replay-buffer layout.

    Raises:
        StoreError: the path does not exist, is not a zarr group, lacks ``data/`` or
            ``meta/episode_ends``, or its episode ends are not non-decreasing and within the data.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such episode store")
        try:
            self.root = zarr.open_group(str(self.path), mode="r")
        except Exception as e:  # zarr raises several types for "not a group"
            raise StoreError(f"{self.path}: not a zarr group ({type(e).__name__}: {e})") from e
        if "data" not in self.root or "meta" not in self.root or "episode_ends" not in self.root["meta"]:
            raise StoreError(
                f"{self.path}: not an episode store: expected groups data/ and meta/ with "
                f"meta/episode_ends (Diffusion Policy replay-buffer layout)"
            )
        self.episode_ends = np.asarray(self.root["meta/episode_ends"][:], dtype=np.int64)
        self._data = self.root["data"]
        self._check()

    def _check(self) -> None:
        ends = self.episode_ends
        if ends.ndim != 1:
            raise StoreError(f"{self.path}: meta/episode_ends must be 1-D, got shape {ends.shape}")
        if len(ends) and (ends[0] < 0 or np.any(np.diff(ends) < 0)):
            raise StoreError(f"{self.path}: meta/episode_ends must be non-decreasing and >= 0")
        for key in self.keys:
            n = self._data[key].shape[0]
            if n < self.n_steps:
                raise StoreError(
                    f"{self.path}: data/{key} has {n} rows but meta/episode_ends says {self.n_steps}; "
                    f"the store is truncated"
                )

    # -- description -------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return sorted(k for k, _ in self._data.arrays())

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def n_steps(self) -> int:
        """Committed steps (rows past the last episode end are not part of the store)."""
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self.episode_ends])).astype(np.int64)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs)

    @property
    def fps(self) -> float | None:
        return self.attrs.get("fps")

    @property
    def zarr_format(self) -> int:
        return self.root.metadata.zarr_format

    def spec(self, key: str) -> KeySpec:
        arr = self._array(key)
        meta = self.attrs.get("keys", {}).get(key, {})
        return KeySpec(key, tuple(arr.shape[1:]), str(arr.dtype), meta.get("unit", ""), meta.get("frame", ""))

    def specs(self) -> dict[str, KeySpec]:
        return {k: self.spec(k) for k in self.keys}

    # -- reading -----------------------------------------------------------------------------
    def _array(self, key: str) -> zarr.Array:
        if key not in self.keys:
            raise KeyError(f"{self.path}: no array data/{key}; the store has {self.keys}")
        return self._data[key]

    def read(self, key: str) -> np.ndarray:
        """All committed rows of ``data/<key>``, shape (n_steps, ...)."""
        return np.asarray(self._array(key)[: self.n_steps])

    def episode(self, index: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``index`` (negative counts from the end) as {key: (T, ...) array}.

        Raises:
            IndexError: no such episode.
        """
        n = self.n_episodes
        if not -n <= index < n:
            raise IndexError(f"episode {index} out of range: the store has {n} episodes")
        index %= n
        start, end = int(self.episode_starts[index]), int(self.episode_ends[index])
        return {k: np.asarray(self._array(k)[start:end]) for k in (keys or self.keys)}

    def __len__(self) -> int:
        return self.n_episodes

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.path)!r}, episodes={self.n_episodes}, steps={self.n_steps})"


class EpisodeWriter:
    """Appends episodes to a new or existing store in zarr format 3.

    Each :meth:`add_episode` writes the data rows first and ``meta/episode_ends`` last, so a
    crash between the two leaves uncommitted rows that readers ignore.

    Args:
        path: store directory; created if missing.
        fps: control rate in Hz, recorded in the group attributes.
        key_meta: optional {key: {"unit": ..., "frame": ...}} recorded in the attributes.

    Raises:
        StoreError: an episode's keys or per-step shapes/dtypes differ from the store's.
    """

    def __init__(self, path: str | Path, fps: float | None = None, key_meta: Mapping[str, Mapping] | None = None):
        self.path = Path(path)
        if self.path.exists():
            self.root = zarr.open_group(str(self.path), mode="r+")
            if "meta" not in self.root or "episode_ends" not in self.root["meta"]:
                raise StoreError(f"{self.path}: exists and is not an episode store")
        else:
            self.root = zarr.open_group(str(self.path), mode="w", zarr_format=3)
            self.root.create_group("data")
            meta = self.root.create_group("meta")
            meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64")
            self.root.attrs.update({"schema_version": SCHEMA_VERSION, "fps": fps, "keys": {}})
        self._key_meta = {k: dict(v) for k, v in (key_meta or {}).items()}

    @property
    def n_steps(self) -> int:
        ends = self.root["meta/episode_ends"]
        return int(ends[-1]) if ends.shape[0] else 0

    def add_episode(self, episode: Mapping[str, np.ndarray]) -> int:
        """Append one episode {key: (T, ...) array}; returns its index."""
        lengths = {k: len(v) for k, v in episode.items()}
        if len(set(lengths.values())) != 1:
            raise StoreError(f"episode arrays differ in length: {lengths}")
        (T,) = set(lengths.values())
        if T == 0:
            raise StoreError("an episode must have at least one step")
        data = self.root["data"]
        existing = {k for k, _ in data.arrays()}
        if existing and existing != set(episode):
            raise StoreError(f"episode keys {sorted(episode)} differ from the store's {sorted(existing)}")
        start = self.n_steps
        attrs_keys = dict(self.root.attrs.get("keys", {}))
        for key, value in episode.items():
            value = np.asarray(value)
            if value.dtype.kind == "f" and value.dtype != np.float32:
                value = value.astype(np.float32)
            if key not in existing:
                image = value.ndim == 4 and value.shape[-1] == 3
                chunks = (1, *value.shape[1:]) if image else (max(1, 2**20 // max(1, value[0].nbytes)), *value.shape[1:])
                data.create_array(key, shape=(0, *value.shape[1:]), chunks=chunks, dtype=value.dtype)
                attrs_keys[key] = {"shape": list(value.shape[1:]), "dtype": str(value.dtype), **self._key_meta.get(key, {})}
            arr = data[key]
            if arr.shape[1:] != value.shape[1:] or arr.dtype != value.dtype:
                raise StoreError(
                    f"data/{key}: episode has per-step shape {value.shape[1:]} {value.dtype}, "
                    f"store has {arr.shape[1:]} {arr.dtype}"
                )
            arr.resize((start + T, *arr.shape[1:]))
            arr[start : start + T] = value
        self.root.attrs["keys"] = attrs_keys
        ends = self.root["meta/episode_ends"]
        n = ends.shape[0]
        ends.resize((n + 1,))
        ends[n] = start + T  # the commit
        return n


def open_store(path: str | Path) -> EpisodeStore:
    return EpisodeStore(path)


def describe(store: EpisodeStore) -> dict[str, Any]:
    """A JSON-able summary: episodes, steps, lengths and key specs."""
    lengths = store.episode_lengths
    return {
        "path": str(store.path),
        "zarr_format": store.zarr_format,
        "episodes": store.n_episodes,
        "steps": store.n_steps,
        "episode_length": {
            "min": int(lengths.min()) if len(lengths) else 0,
            "mean": float(lengths.mean()) if len(lengths) else 0.0,
            "max": int(lengths.max()) if len(lengths) else 0,
        },
        "fps": store.fps,
        "keys": {k: {"shape": list(s.shape), "dtype": s.dtype, "unit": s.unit, "frame": s.frame} for k, s in store.specs().items()},
    }

