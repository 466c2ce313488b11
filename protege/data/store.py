"""The episode store: Diffusion Policy's replay-buffer layout in zarr.

Layout (DESIGN.md, "Episode store")::

    <root>/data/<key>          (N, ...) all episodes concatenated on axis 0
    <root>/meta/episode_ends   (E,) int64, exclusive end index of each episode
    <root>/meta/episode_info   (>= E,) variable-length UTF-8, one JSON object per episode
                               (task, operator, start_time, success, source, ...)

``meta/episode_ends`` is the commit record: rows of ``data/*`` and entries of
``meta/episode_info`` past its last entry do not exist for readers. Stores of schema version 1
kept the episode metadata in one group attribute, ``episodes`` (a list rewritten whole at each
commit); they are still read, and a writer moves their metadata to ``meta/episode_info`` on its
first commit. Stores written by Diffusion Policy (zarr format 2) open as they are; new stores are
written in zarr format 3 by :class:`EpisodeWriter`.

Images are compressed by the codecs of :mod:`protege.data.codecs` (``EpisodeWriter(image_codec=...)``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr

from .codecs import ImageCodec, JpegCodec  # noqa: F401 (JpegCodec: re-exported, and registered on import)

SCHEMA_VERSION = 2
INFO = "episode_info"  # meta/<INFO>: per-episode metadata, one JSON object per episode
# zarr 3 skips writing a chunk that equals the fill value (and deletes one that becomes so). We
# write every chunk, so that in a store of schema >= 2 a missing chunk file always means damage
# (validate), never a legitimately all-zero block. The setting is not stored with an array: it
# must be in force at every write.
ARRAY_CONFIG = {"write_empty_chunks": True}
ALL_CHUNKS_SCHEMA = 2  # stores of this schema version or later have every chunk written


def _writing():
    return zarr.config.set({"array.write_empty_chunks": True})


def _json_default(x: Any) -> Any:
    """numpy scalars and arrays in episode metadata (a success flag from a comparison, a seed)."""
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON-able")


class StoreError(ValueError):
    """The path is not a readable episode store, or data does not match its schema."""


class DamagedStore(StoreError):
    """An episode store that is damaged (``protege-data validate`` reports it, exit 1; ``repair``
    may fix it), as opposed to a path that is no store at all."""


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
    names: tuple[str, ...] = ()  # one per dimension, when the store names them (LeRobot's feature names)

    def dim_units(self) -> list[str]:
        """The unit of each dimension: a unit text of one comma-separated entry per dimension
        (``"px, px, px, px, rad"``) gives each its own, any other the same to all."""
        n = int(np.prod(self.shape)) if self.shape else 1
        parts = [u.strip() for u in self.unit.split(",")]
        return parts if len(parts) == n and n > 1 else [self.unit.strip()] * n

    @property
    def is_image(self) -> bool:
        """Images are (H, W, 3) arrays: uint8, or float 0..255 in Diffusion Policy's PushT data."""
        return len(self.shape) == 3 and self.shape[-1] == 3


def is_url(path) -> bool:
    """An fsspec URL (``s3://``, ``gs://``, ``https://``, ...), not a local path."""
    return "://" in str(path) and not str(path).startswith("file://")


class RemotePath(str):
    """A store's fsspec URL where a local store has its ``Path``: prints as the URL, joins with
    ``/``, has a ``name``, answers ``exists`` through fsspec (credentials and endpoint from the
    environment, e.g. ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``)."""

    def __truediv__(self, other) -> RemotePath:
        return RemotePath(self.rstrip("/") + "/" + str(other))

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    def exists(self) -> bool:
        import fsspec

        fs, p = fsspec.core.url_to_fs(str(self))
        return fs.exists(p)

    def is_dir(self) -> bool:
        import fsspec

        fs, p = fsspec.core.url_to_fs(str(self))
        return fs.isdir(p)


def root_group_missing(path: Path) -> bool:
    """A folder whose root group file is gone while ``data/`` and ``meta/episode_ends`` remain."""
    path = Path(path)
    has_root = (path / ".zgroup").exists() or (path / "zarr.json").exists()
    ends = path / "meta" / "episode_ends"
    return (not has_root and (path / "data").is_dir() and ends.is_dir()
            and ((ends / ".zarray").exists() or (ends / "zarr.json").exists()))


class EpisodeStore:
    """Read-only view of an episode store.

    Args:
        path: directory of a zarr store (format 2 or 3) in the replay-buffer layout.
        check_rows: refuse a store whose arrays hold fewer rows than ``meta/episode_ends`` says
            (default). ``False`` opens it anyway, for :func:`protege.data.validate.validate`
            and repair to report and drop the cut episodes.
        chunk_cache: for a store at an fsspec URL, a local folder where every file read (chunks,
            metadata) is kept, through fsspec's ``simplecache`` (named by a hash of the file's
            URL), so a second read, in this run or a later one, does not go to the network. The
            copies are never checked against the bucket again: a store changed in place needs
            another folder (or the folder emptied). Local stores ignore it.

    Raises:
        StoreError: the path does not exist, is not a zarr group, lacks ``data/`` or
            ``meta/episode_ends``, or its episode ends are not non-decreasing and within the data.
    """

    def __init__(self, path: str | Path, check_rows: bool = True, chunk_cache: str | Path | None = None):
        self.path = RemotePath(str(path)) if is_url(path) else Path(path)  # an fsspec URL opens read-only
        self.chunk_cache = Path(chunk_cache).expanduser() if chunk_cache is not None and is_url(path) else None
        try:
            there = self.path.exists()
        except Exception as e:  # noqa: BLE001 - a remote store: no credentials, no network, no bucket
            raise StoreError(f"{self.path}: cannot reach it ({type(e).__name__}: {e})") from e
        if not there:
            raise StoreError(f"{self.path}: no such episode store")
        try:
            if self.chunk_cache is not None:
                self.chunk_cache.mkdir(parents=True, exist_ok=True)
                # a file system of its own under the cache (fsspec's cached instance, made for sync
                # calls such as exists(), fails when zarr's event loop drives it through the cache)
                protocol = str(self.path).split("://", 1)[0]
                with warnings.catch_warnings():  # zarr runs the (synchronous) cache in threads, and says so
                    warnings.filterwarnings("ignore", message=r".*asynchronous=True", category=UserWarning)
                    self.root = zarr.open_group(f"simplecache::{self.path}", mode="r", storage_options={
                        "simplecache": {"cache_storage": str(self.chunk_cache)}, protocol: {"skip_instance_cache": True}})
            else:
                self.root = zarr.open_group(str(self.path), mode="r")
        except Exception as e:  # zarr raises several types for "not a group"
            if not is_url(self.path) and root_group_missing(self.path):
                raise DamagedStore(f"{self.path}: the store's root group file (.zgroup or zarr.json) is gone, while data/ "
                                   "and meta/episode_ends are there: `protege-data repair` recreates it") from e
            raise StoreError(f"{self.path}: not a zarr group ({type(e).__name__}: {e})") from e
        if "data" not in self.root or "meta" not in self.root or "episode_ends" not in self.root["meta"]:
            raise StoreError(
                f"{self.path}: not an episode store: expected groups data/ and meta/ with "
                f"meta/episode_ends (Diffusion Policy replay-buffer layout)"
            )
        self.episode_ends = np.asarray(self.root["meta/episode_ends"][:], dtype=np.int64)
        self._data = self.root["data"]
        self._check(check_rows)

    def _check(self, check_rows: bool) -> None:
        ends = self.episode_ends
        if ends.ndim != 1:
            raise DamagedStore(f"{self.path}: meta/episode_ends must be 1-D, got shape {ends.shape}")
        if len(ends) and (ends[0] < 0 or np.any(np.diff(ends) < 0)):
            bad = int(np.flatnonzero(np.diff(ends) < 0)[0]) + 1 if np.any(np.diff(ends) < 0) else 0
            raise DamagedStore(f"{self.path}: meta/episode_ends must be non-decreasing and >= 0; entry {bad} is "
                               f"{int(ends[bad])} after {int(ends[bad - 1]) if bad else 'the start'}")
        for key in self.keys if check_rows else ():
            n = self._data[key].shape[0]
            if n < self.n_steps:
                raise DamagedStore(
                    f"{self.path}: data/{key} has {n} rows but meta/episode_ends says {self.n_steps}; "
                    f"the store is truncated (`protege-data repair` keeps the episodes that are there)"
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
    def schema_version(self) -> int | None:
        """1 or 2 for stores written by protege; None for stores from elsewhere (Diffusion Policy)."""
        return self.attrs.get("schema_version")

    @property
    def episode_meta(self) -> list[dict[str, Any]]:
        """Per-episode metadata, one dict per committed episode ({} where none was recorded).

        Read from ``meta/episode_info`` (schema 2) or the ``episodes`` attribute (schema 1).

        Raises:
            StoreError: the metadata cannot be read or decoded.
        """
        n = self.n_episodes
        try:
            if INFO in self.root["meta"]:
                raw = self.root["meta"][INFO][:n] if n else []
                out = [json.loads(str(x)) if str(x) else {} for x in raw]
            else:
                out = [{k: v for k, v in e.items() if k != "index"} for e in self.attrs.get("episodes", [])[:n]]
        except Exception as e:
            raise StoreError(f"{self.path}: meta/{INFO}: cannot read the episode metadata ({type(e).__name__}: {e})") from e
        if len(out) < n:
            out += [{} for _ in range(n - len(out))]
        return out

    @property
    def fps(self) -> float | None:
        return self.attrs.get("fps")

    @property
    def zarr_format(self) -> int:
        return self.root.metadata.zarr_format

    def spec(self, key: str) -> KeySpec:
        arr = self._array(key)
        meta = self.attrs.get("keys", {}).get(key, {})
        names = meta.get("names") or ()
        if isinstance(names, dict) and len(names) == 1:  # LeRobot's {"motors": [...]}
            names = next(iter(names.values()))
        names = tuple(str(x) for x in names) if isinstance(names, (list, tuple)) else ()
        if len(names) != int(np.prod(arr.shape[1:])):
            names = ()
        return KeySpec(key, tuple(arr.shape[1:]), str(arr.dtype), meta.get("unit", ""), meta.get("frame", ""), names)

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
    """Writes episodes into a new or existing store (new stores in zarr format 3).

    Episodes are streamed: :meth:`add_steps` writes rows past the last committed episode end,
    :meth:`commit` appends the episode's metadata and then its end to ``meta/episode_ends`` (the
    commit record, written last), :meth:`discard` rewinds. A crash before the commit leaves only
    uncommitted rows, which readers ignore and the next episode overwrites; every earlier episode
    stays readable. :meth:`add_episode` does all three for a whole episode.

    Images ((T, H, W, 3) uint8) are chunked one frame per chunk and compressed with
    ``image_codec``; other arrays in ~1 MB chunks, zstd (lossless). Values are stored with the
    dtype given (the recorder passes low-dim data as float32). Each key's codec is recorded in the
    group attributes (``keys/<key>/codec``: ``"lossless"`` or ``"jpeg:Q"``).

    Args:
        path: store directory; created if missing.
        fps: control rate in Hz, recorded in the group attributes.
        key_meta: optional {key: {"unit": ..., "frame": ...}} recorded in the attributes.
        image_codec: ``"lossless"`` (default) or ``"jpeg:Q"`` (see :class:`ImageCodec` and the
            module docstring). It applies to the image arrays this writer creates; arrays that
            already exist in the store keep the codec they were created with.

    Raises:
        StoreError: the path exists and is not an episode store; an episode's keys or per-step
            shapes/dtypes differ from the store's.
        ValueError: an unknown ``image_codec``.
    """

    grow = 256  # rows added to an array's capacity at a time

    def __init__(self, path: str | Path, fps: float | None = None, key_meta: Mapping[str, Mapping] | None = None,
                 image_codec: str = "lossless"):
        self.path = Path(path)
        self.image_codec = ImageCodec.parse(image_codec)
        if self.path.exists():
            EpisodeStore(self.path)  # validates the layout
            self.root = zarr.open_group(str(self.path), mode="r+")
        else:
            self.root = zarr.open_group(str(self.path), mode="w", zarr_format=3)
            self.root.create_group("data")
            meta = self.root.create_group("meta")
            meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64", config=ARRAY_CONFIG)
            meta.create_array(INFO, shape=(0,), chunks=(1024,), dtype=str, config=ARRAY_CONFIG)
            self.root.attrs.update({"schema_version": SCHEMA_VERSION, "fps": fps, "keys": {}})
        for key, m in (key_meta or {}).items():
            self._set_key_attrs(key, dict(m))
        self._cursor = self.n_steps  # next row to write

    @property
    def n_steps(self) -> int:
        ends = self.root["meta/episode_ends"]
        return int(ends[-1]) if ends.shape[0] else 0

    @property
    def n_episodes(self) -> int:
        return int(self.root["meta/episode_ends"].shape[0])

    def _set_key_attrs(self, key: str, values: dict) -> None:
        keys = dict(self.root.attrs.get("keys", {}))
        keys[key] = {**keys.get(key, {}), **values}
        self.root.attrs["keys"] = keys

    def add_steps(self, steps: Mapping[str, np.ndarray]) -> None:
        """Append rows {key: (n, ...) array} to the open episode (every key, the same n)."""
        with _writing():  # arrays opened (and written) under it write every chunk
            self._add_steps(steps)

    def _add_steps(self, steps: Mapping[str, np.ndarray]) -> None:
        lengths = {k: len(v) for k, v in steps.items()}
        if len(set(lengths.values())) != 1:
            raise StoreError(f"step arrays differ in length: {lengths}")
        (n,) = set(lengths.values())
        data = self.root["data"]
        existing = {k for k, _ in data.arrays()}
        if existing and existing != set(steps):
            raise StoreError(f"keys {sorted(steps)} differ from the store's {sorted(existing)}")
        values = {k: np.asarray(v) for k, v in steps.items()}
        for key, value in values.items():  # check everything before writing anything
            if key in existing and (data[key].shape[1:] != value.shape[1:] or data[key].dtype != value.dtype):
                raise StoreError(f"data/{key}: per-step shape {value.shape[1:]} {value.dtype}, "
                                 f"store has {data[key].shape[1:]} {data[key].dtype}")
        start, end = self._cursor, self._cursor + n
        for key, value in values.items():
            if key not in existing:
                image = value.ndim == 4 and value.shape[-1] == 3 and value.dtype == np.uint8
                rows = 1 if image else max(1, 2**20 // max(1, value[0].nbytes))
                codec = self.image_codec if image else ImageCodec("lossless")
                data.create_array(key, shape=(0, *value.shape[1:]), chunks=(rows, *value.shape[1:]), dtype=value.dtype,
                                  config=ARRAY_CONFIG, **codec.array_kwargs(self.root.metadata.zarr_format))
                self._set_key_attrs(key, {"shape": list(value.shape[1:]), "dtype": str(value.dtype), "codec": str(codec)})
            arr = data[key]
            if arr.shape[0] < end:
                arr.resize((end + self.grow, *arr.shape[1:]))
            arr[start:end] = value
        self._cursor = end

    def commit(self, **metadata: Any) -> int:
        """Close the open episode; returns its index. ``metadata`` (JSON-able: task, operator,
        start_time, success, ...) is written to ``meta/episode_info`` before the episode's end
        goes into ``meta/episode_ends`` (the commit).

        Raises:
            StoreError: the open episode has no step, or the metadata is not JSON-able.
        """
        if self._cursor == self.n_steps:
            raise StoreError("an episode must have at least one step")
        try:
            text = json.dumps(metadata, default=_json_default)
        except TypeError as e:
            raise StoreError(f"episode metadata must be JSON-able: {e}") from e
        index = self.n_episodes
        with _writing():
            info = self._info_array()
            if info.shape[0] < index + 1:
                info.resize((index + 1,))
            info[index] = text
            ends = self.root["meta/episode_ends"]
            ends.resize((index + 1,))
            ends[index] = self._cursor  # the commit
        return index

    def _info_array(self) -> zarr.Array:
        """``meta/episode_info``, created (with the metadata of a schema-1 or foreign store) if missing.
        Call under ``_writing()``."""
        meta = self.root["meta"]
        if INFO not in meta:
            n = self.n_episodes
            old = EpisodeStore(self.path).episode_meta if n else []
            info = meta.create_array(INFO, shape=(n,), chunks=(1024,), dtype=str, config=ARRAY_CONFIG)
            if n:
                info[:] = np.array([json.dumps(m) for m in old], dtype=object)
            if "episodes" in self.root.attrs:  # the array holds them now (the schema version stays:
                attrs = dict(self.root.attrs)  # older arrays may still lack all-zero chunks)
                del attrs["episodes"]
                self.root.attrs.put(attrs)
            return info
        return meta[INFO]

    def discard(self) -> None:
        """Drop the open episode's rows (they are overwritten by the next episode)."""
        self._cursor = self.n_steps

    def add_episode(self, episode: Mapping[str, np.ndarray], **metadata: Any) -> int:
        """Write one whole episode {key: (T, ...) array} and commit it; returns its index."""
        try:
            self.add_steps(episode)
        except Exception:
            self.discard()
            raise
        return self.commit(**metadata)

    def close(self) -> None:
        """Trim arrays to the committed steps (capacity grown ahead is released)."""
        n = self.n_steps
        for _, arr in self.root["data"].arrays():
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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

