"""Checksums for stores whose chunks carry none (zarr 2 stores such as Diffusion Policy's, and zarr 3
stores written without the ``crc32c`` codec).

A zarr 2 chunk compressed with Blosc has no checksum: a few flipped bytes may still decode, into
values no sensor gives or, worse, into plausible ones. The manifest, ``protege_manifest.json`` at
the store's root (zarr ignores files it does not know), records the CRC-32C and size of every
chunk file of ``data/`` and ``meta/`` when the store is fetched or first validated clean;
``protege-data validate`` then checks every chunk against it, so any later change of a byte is
caught. A store edited by protege's tools gets a fresh manifest with the edit.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import google_crc32c

MANIFEST = "protege_manifest.json"
_META_FILES = {".zarray", ".zattrs", ".zgroup", "zarr.json"}


def has_checksums(arr) -> bool:
    """Whether a zarr array checks each chunk itself (zarr 3's ``crc32c`` codec)."""
    codecs = getattr(arr.metadata, "codecs", None) or ()
    return any(type(c).__name__ == "Crc32cCodec" for c in _flatten(codecs))


def _flatten(codecs):
    for c in codecs:
        yield c
        inner = getattr(c, "codecs", None) or getattr(c, "index_codecs", None)
        if inner:
            yield from _flatten(inner)


def _crc(path: Path) -> str:
    c = google_crc32c.Checksum()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            c.update(block)
    return c.digest().hex()


def chunk_files(root: Path) -> list[Path]:
    """Every chunk file under ``data/`` and ``meta/`` (not the arrays' metadata files), sorted."""
    out = []
    for sub in ("data", "meta"):
        for dirpath, _, files in os.walk(root / sub):
            out += [Path(dirpath) / f for f in files if f not in _META_FILES]
    return sorted(out)


def writable(root: str | Path) -> bool:
    """Whether the store's folder is meant to be written: its owner-write bit (a store made
    read-only, e.g. a shared dataset, is left alone even by root, whom the OS would let write)."""
    import stat

    try:
        return bool(Path(root).stat().st_mode & stat.S_IWUSR) and os.access(root, os.W_OK)
    except OSError:
        return False


def write_manifest(root: str | Path, by: str) -> Path:
    """Record the CRC-32C and size of every chunk file; returns the manifest's path.

    Raises:
        PermissionError: the store's folder is read-only (see :func:`writable`).
    """
    root = Path(root)
    if not writable(root):
        raise PermissionError(13, "the store is read-only", str(root))
    chunks = {str(p.relative_to(root)): [p.stat().st_size, _crc(p)] for p in chunk_files(root)}
    body = {"algorithm": "crc32c", "written_by": by, "written_at": time.strftime("%Y-%m-%d %H:%M:%S"), "chunks": chunks}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(body, indent=0))
    os.replace(tmp, root / MANIFEST)
    return root / MANIFEST


def read_manifest(root: str | Path) -> dict | None:
    """The manifest, or None when the store has none (or it is unreadable: then it is rewritten on
    the next clean validation)."""
    path = Path(root) / MANIFEST
    try:
        body = json.loads(path.read_text())
        return body if isinstance(body.get("chunks"), dict) else None
    except (OSError, ValueError):
        return None


def verify(root: str | Path, manifest: dict) -> dict[str, str]:
    """{chunk file (relative): what is wrong} for each file that is gone or changed since the manifest."""
    root = Path(root)
    bad = {}
    for rel, (size, crc) in manifest["chunks"].items():
        p = root / rel
        if not p.exists():
            continue  # a missing chunk is reported by validate itself, with its rows
        if p.stat().st_size != size:
            bad[rel] = f"its size changed from {size} to {p.stat().st_size} bytes since the manifest"
        elif _crc(p) != crc:
            bad[rel] = "its CRC-32C no longer matches the manifest (bytes changed)"
    return bad
