"""The episode store: Diffusion Policy's replay-buffer layout in zarr.

Layout (DESIGN.md, "Episode store")::

    <root>/data/<key>          (N, ...) all episodes concatenated on axis 0
    <root>/meta/episode_ends   (E,) int64, exclusive end index of each episode

``meta/episode_ends`` is the commit record: rows of ``data/*`` past its last entry do not exist
for readers. Stores written by Diffusion Policy (zarr format 2) open as they are; new stores are
written in zarr format 3 by :class:`EpisodeWriter`.

Image codecs (``EpisodeWriter(image_codec=...)``, recorded per key as ``keys/<key>/codec`` in the
group attributes):

* ``"lossless"`` (default): zstd level 3, the zarr 3 core ``zstd`` codec, so any zarr reader opens
  the store with nothing of ours installed. Compared per frame with Blosc (zstd, byte or bit
  shuffle), PNG, QOI, WebP, JPEG-LS and JPEG XL lossless on rendered 96x96 and 640x480 frames and
  on 640x480 frames with sensor-like noise: byte shuffle is a no-op on uint8 (item size 1), bit
  shuffle halves the ratio, and the image codecs that beat zstd's ratio encode 2-70x slower (PNG,
  WebP) or, on noisy frames, decode ~7x slower (JPEG XL effort 1: 2.1x against zstd's 1.5x).
* ``"jpeg:Q"`` (Q 1-100, default 95; ``"jpeg:Q:420"`` for 4:2:0 chroma, default 4:4:4, which keeps
  small red objects from bleeding at policy resolution): baseline JPEG through libjpeg-turbo
  (``imagecodecs``), one frame per chunk. In zarr 3 it is the array-to-bytes codec
  ``imagecodecs_jpeg`` with configuration ``{"level": Q, "subsampling": ...}``: the name and
  configuration of imagecodecs' own zarr 3 JPEG codec, so readers with ``imagecodecs-zarr``
  installed open it without protege. Importing this module registers :class:`JpegCodec` under
  that name (unless another implementation is registered already); in zarr format 2 stores the
  numcodecs codec ``imagecodecs_jpeg`` is used and registered the same way.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import zarr
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

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


# -- image codecs ---------------------------------------------------------------------------------
LOSSLESS_ZSTD_LEVEL = 3
_SUBSAMPLING = ("444", "422", "420")


def _imagecodecs():
    try:
        import imagecodecs
    except ImportError as e:  # pragma: no cover - imagecodecs is a dependency
        raise ImportError("JPEG images in an episode store need the imagecodecs package: "
                          "pip install imagecodecs") from e
    return imagecodecs


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Zarr 3 array-to-bytes codec: each chunk, one (1, H, W, 3) or (H, W, 3) uint8 RGB frame, is a
    baseline JPEG (libjpeg-turbo through ``imagecodecs``).

    Stored as ``{"name": "imagecodecs_jpeg", "configuration": {"level", "subsampling"}}``, the
    metadata of imagecodecs' own zarr 3 JPEG codec (``imagecodecs.zarr.Jpeg``, in releases newer
    than 2026.3 with the ``imagecodecs-zarr`` entry points), so either opens it.

    Args:
        level: JPEG quality, 1-100.
        subsampling: chroma subsampling, ``"444"``, ``"422"`` or ``"420"``.

    Raises:
        ValueError: a quality or subsampling out of range; on write, a chunk that is not one
            uint8 (H, W, 3) frame.
    """

    is_fixed_size = False
    level: int = 95
    subsampling: str = "444"

    def __init__(self, *, level: int = 95, subsampling: str = "444") -> None:
        level = int(level)
        if not 1 <= level <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {level}")
        if str(subsampling) not in _SUBSAMPLING:
            raise ValueError(f"JPEG subsampling must be one of {_SUBSAMPLING}, got {subsampling!r}")
        object.__setattr__(self, "level", level)
        object.__setattr__(self, "subsampling", str(subsampling))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JpegCodec":
        _, config = parse_named_configuration(data, "imagecodecs_jpeg", require_configuration=False)
        config = dict(config or {})
        unsupported = set(config) - {"level", "subsampling"}
        if unsupported:
            raise ValueError(f"imagecodecs_jpeg options {sorted(unsupported)} are not supported by protege's "
                             f"JPEG codec; install imagecodecs-zarr to read this array")
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "imagecodecs_jpeg", "configuration": {"level": self.level, "subsampling": self.subsampling}}

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        if dtype.to_native_dtype() != np.dtype(np.uint8) or len(shape) < 3 or shape[-1] != 3:
            raise ValueError(f"the JPEG codec stores uint8 (..., H, W, 3) images, not {dtype} {shape}")

    def _encode_sync(self, chunk: "NDBuffer", spec: "ArraySpec") -> "Buffer":
        frame = chunk.as_numpy_array()
        if int(np.prod(frame.shape[:-3])) != 1:
            raise ValueError(f"the JPEG codec needs one frame per chunk, got a {frame.shape} chunk")
        frame = np.ascontiguousarray(frame.reshape(frame.shape[-3:]))
        data = _imagecodecs().jpeg8_encode(frame, level=self.level, subsampling=self.subsampling)
        return spec.prototype.buffer.from_bytes(data)

    def _decode_sync(self, data: "Buffer", spec: "ArraySpec") -> "NDBuffer":
        frame = _imagecodecs().jpeg8_decode(data.as_numpy_array())
        return spec.prototype.nd_buffer.from_numpy_array(frame.reshape(spec.shape))

    async def _encode_single(self, chunk: "NDBuffer", spec: "ArraySpec") -> "Buffer":
        return await asyncio.to_thread(self._encode_sync, chunk, spec)

    async def _decode_single(self, data: "Buffer", spec: "ArraySpec") -> "NDBuffer":
        return await asyncio.to_thread(self._decode_sync, data, spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: "ArraySpec") -> int:
        raise NotImplementedError  # variable size


def _register_codecs() -> None:
    """Make ``imagecodecs_jpeg`` readable: in zarr 3's registry (unless some other package, e.g.
    imagecodecs-zarr, registered an implementation already) and in numcodecs' (zarr format 2)."""
    from zarr.registry import get_codec_class, register_codec

    try:
        get_codec_class("imagecodecs_jpeg")
    except KeyError:
        register_codec("imagecodecs_jpeg", JpegCodec)
    try:
        import numcodecs
        from imagecodecs.numcodecs import Jpeg

        numcodecs.register_codec(Jpeg)
    except ImportError:  # pragma: no cover - format 2 JPEG stores then need imagecodecs.numcodecs
        pass


_register_codecs()

_CODEC_SPEC = re.compile(r"^(lossless|jpeg)(?::(\d{1,3}))?(?::(444|422|420))?$")


@dataclass(frozen=True)
class ImageCodec:
    """A parsed ``image_codec`` spec: ``"lossless"``, ``"jpeg"``, ``"jpeg:Q"`` or ``"jpeg:Q:SUB"``
    (Q the quality 1-100, default 95; SUB the chroma subsampling 444 (default), 422 or 420).

    Raises:
        ValueError: any other string.
    """

    kind: str = "lossless"
    quality: int | None = None
    subsampling: str | None = None

    @classmethod
    def parse(cls, spec: "str | ImageCodec") -> "ImageCodec":
        if isinstance(spec, ImageCodec):
            return spec
        m = _CODEC_SPEC.match(str(spec).strip().lower())
        if m is None or (m[1] == "lossless" and (m[2] or m[3])):
            raise ValueError(f"unknown image codec {spec!r}: use 'lossless', 'jpeg' or 'jpeg:QUALITY' "
                             f"(1-100, optionally ':444', ':422' or ':420')")
        if m[1] == "lossless":
            return cls("lossless")
        quality = int(m[2]) if m[2] else 95
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        return cls("jpeg", quality, m[3] or "444")

    def __str__(self) -> str:
        if self.kind == "lossless":
            return "lossless"
        return f"jpeg:{self.quality}" + ("" if self.subsampling == "444" else f":{self.subsampling}")

    def array_kwargs(self, zarr_format: int) -> dict[str, Any]:
        """Keyword arguments of ``create_array`` for an image array in a store of ``zarr_format``."""
        if zarr_format == 2:
            if self.kind == "lossless":
                from numcodecs import Zstd

                return {"compressors": Zstd(level=LOSSLESS_ZSTD_LEVEL)}
            from imagecodecs.numcodecs import Jpeg

            return {"compressors": Jpeg(level=self.quality, subsampling=self.subsampling)}
        if self.kind == "lossless":
            return {"compressors": zarr.codecs.ZstdCodec(level=LOSSLESS_ZSTD_LEVEL)}
        return {"serializer": JpegCodec(level=self.quality, subsampling=self.subsampling), "compressors": None}


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
            meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64")
            self.root.attrs.update({"schema_version": SCHEMA_VERSION, "fps": fps, "keys": {}, "episodes": []})
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
                                  **(codec.array_kwargs(self.root.metadata.zarr_format) if image else {}))
                self._set_key_attrs(key, {"shape": list(value.shape[1:]), "dtype": str(value.dtype), "codec": str(codec)})
            arr = data[key]
            if arr.shape[0] < end:
                arr.resize((end + self.grow, *arr.shape[1:]))
            arr[start:end] = value
        self._cursor = end

    def commit(self, **metadata: Any) -> int:
        """Close the open episode; returns its index. ``metadata`` (JSON-able: task, operator,
        start_time, success, ...) is stored in the ``episodes`` attribute of the store.

        Raises:
            StoreError: the open episode has no step.
        """
        if self._cursor == self.n_steps:
            raise StoreError("an episode must have at least one step")
        episodes = list(self.root.attrs.get("episodes", []))
        index = self.n_episodes
        episodes.append({"index": index, **metadata})
        self.root.attrs["episodes"] = episodes
        ends = self.root["meta/episode_ends"]
        ends.resize((index + 1,))
        ends[index] = self._cursor  # the commit
        return index

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

