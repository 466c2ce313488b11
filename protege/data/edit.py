"""Episode editing: delete, keep, trim, merge, relabel; each one atomic.

Every edit builds the new store beside the old one (a hidden sibling folder), validates it, and
then swaps the two in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so the store's path holds
either the old store or the new one, never a half-edited one, even when the process is killed.
A killed edit leaves at most a hidden ``.<name>.protege-edit-<pid>`` folder beside the store,
which the next edit of that store removes.

Edits that change rows (delete, keep, trim) rewrite every array in the source's zarr format: a
zarr 3 store in protege's layout (one frame per image chunk, each key's codec kept), a zarr 2
store (Diffusion Policy's) as zarr 2 with each array's chunks, compressor and dtype, so that its
own readers still open it. Relabelling rewrites only ``meta/``: the data's chunk files are
hard-linked, not copied. A store without per-chunk checksums leaves every edit with a fresh
checksum manifest (:mod:`protege.data.manifest`) of the validated result.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from tqdm import tqdm

from . import manifest as mf
from .store import INFO, EpisodeStore, EpisodeWriter, StoreError, _writing
from .validate import validate

_RANGE = re.compile(r"^(-?\d+)(?:-(-?\d+))?$")


def parse_episodes(spec: str, n_episodes: int) -> list[int]:
    """``"3"``, ``"3,5"``, ``"10-12"`` (inclusive) or a mix -> sorted unique episode indices.

    Raises:
        ValueError: a malformed spec or an index outside 0..n_episodes-1.
    """
    out: set[int] = set()
    for part in str(spec).split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise ValueError(f"bad episode list {spec!r}: use numbers and ranges such as 3,5,10-12")
        a = int(m[1])
        b = int(m[2]) if m[2] is not None else a
        if a > b:
            raise ValueError(f"bad episode range {part!r}: the first must not exceed the last")
        for e in (a, b):
            if not 0 <= e < n_episodes:
                raise ValueError(f"episode {e} out of range: the store has {n_episodes} episodes (0-{n_episodes - 1})")
        out.update(range(a, b + 1))
    return sorted(out)


# -- atomic replacement ----------------------------------------------------------------------
def _exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically (Linux renameat2 RENAME_EXCHANGE); elsewhere, three
    renames (a kill between them leaves the old store at ``<b>.protege-old``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        AT_FDCWD, RENAME_EXCHANGE = -100, 2
        if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
            return
    old = b.with_name(b.name + ".protege-old")
    os.rename(b, old)
    os.rename(a, b)
    os.rename(old, a)


def _scratch(path: Path) -> Path:
    return path.parent / f".{path.name}.protege-edit-{os.getpid()}"


def _remove_stale_scratch(path: Path) -> None:
    for p in path.parent.glob(f".{path.name}.protege-edit-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_atomically(path: Path, build: Callable[[Path], None], dest: Path | None = None,
                       check_data: bool = True) -> EpisodeStore:
    """Build a store in a scratch folder with ``build(scratch)``, validate it, then put it at
    ``dest`` (default ``path``) in one step. Returns the new store. ``check_data=False``
    validates the layout and metadata only (for edits that leave the data's chunks as they were).

    Raises:
        StoreError: the built store does not validate (nothing is replaced), or ``dest`` exists
            and is not ``path``.
    """
    dest = Path(dest or path)
    if dest != path and dest.exists():
        raise StoreError(f"{dest} exists; choose a new destination")
    _remove_stale_scratch(dest)
    tmp = _scratch(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        new = EpisodeStore(tmp)
        report = validate(new, keys=None if check_data else [], progress=False)
        if not report.ok:
            raise StoreError(f"the edited store does not validate ({report.problems[0]}); {dest} is unchanged")
        if not all(mf.has_checksums(new._array(k)) for k in new.keys):
            if check_data:  # every chunk was just validated: record them
                mf.write_manifest(tmp, by="edit")
            elif (old := mf.read_manifest(tmp)) is not None:  # data linked unchanged: keep its entries, renew meta/
                _renew_meta_entries(tmp, old)
        if dest.exists():
            _exchange(tmp, dest)  # tmp now holds the old store
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return EpisodeStore(dest)


def _renew_meta_entries(root: Path, old: dict) -> None:
    """The manifest of a store whose data chunks are the old ones: their entries kept, meta/'s recomputed."""
    fresh = mf.write_manifest(root, by="edit")
    body = json.loads(fresh.read_text())
    body["chunks"] = {**{k: v for k, v in old["chunks"].items() if k.startswith("data/")},
                      **{k: v for k, v in body["chunks"].items() if not k.startswith("data/")}}
    fresh.write_text(json.dumps(body, indent=0))


# -- rewriting ---------------------------------------------------------------------------------
def _writer_like(src: EpisodeStore, path: Path) -> EpisodeWriter:
    """An empty store at ``path`` with ``src``'s fps, key units/frames, image codec and attributes."""
    keys_attrs = src.attrs.get("keys", {})
    codecs = {m.get("codec") for k, m in keys_attrs.items() if k in src.keys and src.spec(k).is_image and m.get("codec")}
    codec = sorted(codecs)[0] if len(codecs) == 1 else "lossless"
    key_meta = {k: {f: m[f] for f in ("unit", "frame") if f in m} for k, m in keys_attrs.items()}
    w = EpisodeWriter(path, fps=src.fps, key_meta=key_meta, image_codec=codec)
    extra = {k: v for k, v in src.attrs.items() if k not in ("schema_version", "fps", "keys", "episodes")}
    if extra:
        w.root.attrs.update(extra)
    return w


def _copy_episodes(src: EpisodeStore, writer: EpisodeWriter, plan: list[tuple[int, int, int]],
                   meta: list[dict[str, Any]], progress: bool) -> None:
    """Append episode ``e``'s steps [a, b) for each (e, a, b) of ``plan`` to ``writer``."""
    starts = src.episode_starts
    for e, a, b in tqdm(plan, desc="episodes", disable=not progress, leave=False):
        s = int(starts[e])
        writer.add_steps({k: np.asarray(src._array(k)[s + a : s + b]) for k in src.keys})
        writer.commit(**meta[e])


def rewrite(path: str | Path, plan: list[tuple[int, int, int]], dest: str | Path | None = None,
            progress: bool = True) -> EpisodeStore:
    """Replace the store at ``path`` (or write ``dest``) with the episodes and step ranges of
    ``plan``: a list of (episode, first step, end step). Atomic; see the module docstring.

    Raises:
        StoreError: an empty plan (a store must keep at least one episode), or as
            :func:`replace_atomically`.
    """
    path = Path(path)
    src = EpisodeStore(path, check_rows=False)  # a repair drops the episodes a cut array lacks
    if not plan:
        raise StoreError(f"{path}: the edit would leave no episode; delete the store instead")
    meta = src.episode_meta

    def build(tmp: Path) -> None:
        if src.zarr_format == 2:
            _rewrite_zarr2(src, plan, tmp, progress)
            return
        w = _writer_like(src, tmp)
        _copy_episodes(src, w, plan, meta, progress)
        w.close()

    return replace_atomically(path, build, Path(dest) if dest else None)


def _rewrite_zarr2(src: EpisodeStore, plan: list[tuple[int, int, int]], tmp: Path, progress: bool) -> None:
    """The episodes and step ranges of ``plan`` as a zarr 2 store shaped like ``src``: each
    array's chunks, compressor, filters, dtype, fill value and attributes, the root's attributes,
    ``meta/episode_ends`` and any other per-episode ``meta/`` array filtered to the kept episodes."""
    import zarr

    root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
    root.attrs.update(dict(src.root.attrs))
    starts, lengths = src.episode_starts, [b - a for _, a, b in plan]
    n = int(sum(lengths))
    data = root.create_group("data")
    for k in tqdm(src.keys, desc="arrays", disable=not progress, leave=False):
        s = src._array(k)
        arr = data.create_array(k, shape=(n, *s.shape[1:]), chunks=s.chunks, dtype=s.dtype, compressors=s.compressors,
                                filters=s.filters or None, fill_value=s.fill_value, attributes=dict(s.attrs),
                                config={"write_empty_chunks": True})  # every chunk on disk, as zarr 2 readers expect
        c0, row, pending = s.chunks[0], 0, []
        for e, a, b in plan:  # rows stream through a buffer written in whole chunks
            st = int(starts[e])
            pending.append(np.asarray(s[st + a: st + b]))
            have = sum(len(x) for x in pending)
            if have >= c0:
                block = np.concatenate(pending)
                m = len(block) // c0 * c0
                arr[row:row + m] = block[:m]
                row += m
                pending = [block[m:]]
        if pending and (block := np.concatenate(pending)).size:
            arr[row:row + len(block)] = block
    meta = root.create_group("meta")
    kept = [e for e, _, _ in plan]
    for name in src.root["meta"].array_keys():
        s = src.root["meta"][name]
        if name == "episode_ends":
            values = np.cumsum(lengths).astype(s.dtype)
        elif s.shape[:1] == (src.n_episodes,):
            values = np.asarray(s[:])[kept]
        else:
            raise StoreError(f"{src.path}: meta/{name} is not per-episode ({s.shape}); this edit cannot carry it over")
        meta.create_array(name, data=values, chunks=s.chunks if values.ndim else None, compressors=s.compressors,
                          attributes=dict(s.attrs), config={"write_empty_chunks": True})


def delete(path: str | Path, episodes: list[int], **kw) -> EpisodeStore:
    """Remove ``episodes`` from the store."""
    src = EpisodeStore(path, check_rows=False)
    drop = set(episodes)
    return rewrite(path, [(e, 0, int(n)) for e, n in enumerate(src.episode_lengths) if e not in drop], **kw)


def keep(path: str | Path, episodes: list[int], **kw) -> EpisodeStore:
    """Keep only ``episodes`` (in their order in the store)."""
    src = EpisodeStore(path)
    return rewrite(path, [(e, 0, int(src.episode_lengths[e])) for e in sorted(set(episodes))], **kw)


def trim(path: str | Path, episode: int, start: int = 0, end: int | None = None, **kw) -> EpisodeStore:
    """Keep steps [start, end) of ``episode`` (negative counts from its end, as in Python).

    Raises:
        ValueError: an empty or out-of-range step range.
    """
    src = EpisodeStore(path)
    if not 0 <= episode < src.n_episodes:
        raise ValueError(f"episode {episode} out of range: the store has {src.n_episodes} episodes")
    n = int(src.episode_lengths[episode])
    a, b, _ = slice(start, end).indices(n)
    if b <= a:
        raise ValueError(f"steps [{start}, {end}) of episode {episode} (length {n}) are empty; an episode keeps at least one step")
    plan = [(e, 0, int(m)) if e != episode else (e, a, b) for e, m in enumerate(src.episode_lengths)]
    return rewrite(path, plan, **kw)


def _schema(store: EpisodeStore) -> dict[str, tuple]:
    return {k: (s.shape, s.dtype) for k, s in store.specs().items()}


def merge(path: str | Path, other: str | Path, dest: str | Path | None = None, progress: bool = True) -> EpisodeStore:
    """Append the episodes of ``other`` to the store at ``path`` (or write both to ``dest``).

    Raises:
        StoreError: the two stores differ in keys, per-step shapes, dtypes or fps.
    """
    path, other = Path(path), Path(other)
    a, b = EpisodeStore(path), EpisodeStore(other)
    if _schema(a) != _schema(b):
        diff = {k for k in _schema(a).keys() | _schema(b).keys() if _schema(a).get(k) != _schema(b).get(k)}
        raise StoreError(f"cannot merge {other} into {path}: the schemas differ in {sorted(diff)} "
                         f"({ {k: _schema(a).get(k) for k in sorted(diff)} } vs { {k: _schema(b).get(k) for k in sorted(diff)} })")
    if a.fps != b.fps:
        raise StoreError(f"cannot merge {other} ({b.fps} Hz) into {path} ({a.fps} Hz): the control rates differ")
    meta_b = b.episode_meta

    def build(tmp: Path) -> None:
        shutil.copytree(path, tmp)
        w = EpisodeWriter(tmp)  # writes from the last commit on: uncommitted rows are overwritten
        _copy_episodes(b, w, [(e, 0, int(n)) for e, n in enumerate(b.episode_lengths)], meta_b, progress)
        w.close()

    return replace_atomically(path, build, Path(dest) if dest else None)


def _link_data(src: Path, dst: Path) -> None:
    """Copy the store's folder tree: chunk files under data/ hard-linked, everything else copied
    (metadata files are rewritten by the edit; linked chunks are never written)."""
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            s, d = Path(root) / f, dst / rel / f
            is_meta = f in ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
            if rel.parts[:1] == ("data",) and not is_meta:
                try:
                    os.link(s, d)
                    continue
                except OSError:  # another file system, or no hard links: copy
                    pass
            shutil.copy2(s, d)


def relabel(path: str | Path, episodes: list[int], values: Mapping[str, Any]) -> EpisodeStore:
    """Set metadata fields (e.g. ``{"success": False}``) of ``episodes``. Atomic; data untouched."""
    path = Path(path)
    src = EpisodeStore(path)
    meta = src.episode_meta

    def build(tmp: Path) -> None:
        _link_data(path, tmp)
        w = EpisodeWriter(tmp)
        with _writing():
            info = w._info_array()
            for e in episodes:
                info[e] = json.dumps({**meta[e], **values})

    return replace_atomically(path, build, check_data=False)


__all__ = ["parse_episodes", "delete", "keep", "trim", "merge", "relabel", "rewrite", "replace_atomically", "INFO"]
