"""Image codecs of the episode store (recorded per key as ``keys/<key>/codec`` in the group attributes).

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
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

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
        """Keyword arguments of ``create_array`` for an array in a store of ``zarr_format``.

        In format 3 every chunk also carries a CRC-32C checksum (zarr's ``crc32c`` codec), so a
        flipped byte is an error when read, not a wrong pixel; format 2 has no place for one."""
        if zarr_format == 2:
            if self.kind == "lossless":
                from numcodecs import Zstd

                return {"compressors": Zstd(level=LOSSLESS_ZSTD_LEVEL)}
            from imagecodecs.numcodecs import Jpeg

            return {"compressors": Jpeg(level=self.quality, subsampling=self.subsampling)}
        if self.kind == "lossless":
            return {"compressors": (zarr.codecs.ZstdCodec(level=LOSSLESS_ZSTD_LEVEL), zarr.codecs.Crc32cCodec())}
        return {"serializer": JpegCodec(level=self.quality, subsampling=self.subsampling),
                "compressors": (zarr.codecs.Crc32cCodec(),)}
