"""Find damage in an episode store: every missing, truncated or undecodable chunk, non-finite
values, and inconsistencies between the arrays and ``meta/episode_ends``.

zarr reads a missing chunk as its fill value (a black frame, a zero action) without a word, and
a truncated chunk as a decoder traceback. :func:`validate` lists each chunk file an array must
have for the committed rows, decodes every chunk, and names the key, the episode and the step of
each problem, so that training never learns from a frame that is not there.

    problems = validate(EpisodeStore("demos.zarr"))
    damaged = damaged_episodes(problems)      # episodes a repair would drop
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from tqdm import tqdm
from zarr.core.sync import sync

from .store import ALL_CHUNKS_SCHEMA, INFO, EpisodeStore, StoreError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store.

    kind: "missing chunk", "undecodable chunk", "non-finite value", "empty episode",
        "metadata" or "layout".
    key: the ``data/<key>`` (or ``meta/...``) array, None for the store as a whole.
    rows: global rows [start, stop) affected, None when no row is.
    episodes: the committed episodes the problem touches (a repair drops them).
    detail: what was found, for people.
    """

    kind: str
    key: str | None
    detail: str
    rows: tuple[int, int] | None = None
    episodes: tuple[int, ...] = field(default=())

    def __str__(self) -> str:
        where = f"data/{self.key}: " if self.key and not self.key.startswith("meta/") else f"{self.key}: " if self.key else ""
        return f"{where}{self.kind}: {self.detail}"


@dataclass
class Report:
    """What :func:`validate` found. ``problems`` make the store invalid; ``notes`` do not
    (rows past the last episode end, left by a crash or an open writer: ``repair`` trims them)."""

    problems: list[Problem]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged_episodes(self) -> list[int]:
        return damaged_episodes(self.problems)


def damaged_episodes(problems: list[Problem]) -> list[int]:
    """The sorted episodes any problem touches."""
    return sorted({e for p in problems for e in p.episodes})


def _locate(store: EpisodeStore, row: int) -> tuple[int, int]:
    """Global row -> (episode, step within it)."""
    e = int(np.searchsorted(store.episode_ends, row, side="right"))
    return e, row - int(store.episode_starts[e])


def _span(store: EpisodeStore, start: int, stop: int) -> tuple[str, tuple[int, ...]]:
    """'episode 3 step 12' or 'episode 3 step 12 to episode 5 step 7', and the episodes touched."""
    stop = min(stop, store.n_steps)
    if stop <= start:
        return f"rows {start}-{stop - 1}", ()
    e0, s0 = _locate(store, start)
    e1, s1 = _locate(store, stop - 1)
    text = f"episode {e0} step {s0}" if (e0, s0) == (e1, s1) else f"episode {e0} step {s0} to episode {e1} step {s1}"
    return text, tuple(range(e0, e1 + 1))


def _chunk_files(arr) -> set[str]:
    """Keys of the chunk files an array has in its store (relative to the array)."""
    prefix = arr.path + "/"

    async def collect() -> list[str]:
        return [k async for k in arr.store.list_prefix(prefix)]

    return {k[len(prefix):] for k in sync(collect())}


def _missing_chunks(arr, n_rows: int) -> list[int]:
    """Chunk indices along axis 0 (within the first n_rows) with at least one chunk file absent."""
    have = _chunk_files(arr)
    c0 = arr.chunks[0]
    others = [range(g) for g in arr.cdata_shape[1:]]
    missing = []
    for i in range(math.ceil(n_rows / c0)):
        for rest in itertools.product(*others):
            if arr.metadata.encode_chunk_key((i, *rest)) not in have:
                missing.append(i)
                break
    return missing


def scan(store: EpisodeStore, key: str, problems: list[Problem], n_rows: int | None = None,
         block_bytes: int = 64 << 20, notes: list[str] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Read ``data/<key>`` block by block, appending every problem found to ``problems``.

    Yields (first row, block) for rows [0, n_rows) (default: every committed row). Rows of a
    missing or undecodable chunk are yielded as the array's fill value and reported, never
    passed on silently; a non-finite value is reported once per episode. Chunk-aligned blocks of about ``block_bytes``.
    """
    arr = store._array(key)
    n_rows = store.n_steps if n_rows is None else n_rows
    if arr.shape[0] < n_rows:  # cut short: the rows are not there at all
        where, eps = _span(store, arr.shape[0], n_rows)
        problems.append(Problem("layout", key, f"{arr.shape[0]} rows but meta/episode_ends commits {n_rows}: "
                                f"{where} are missing", (arr.shape[0], n_rows), eps))
    have_rows = min(n_rows, arr.shape[0])
    c0 = arr.chunks[0]
    fill = arr.fill_value
    missing = set(_missing_chunks(arr, have_rows))
    # zarr 2 and protege's schema >= 2 write every chunk: a missing one is damage. Other zarr 3
    # stores may leave out a chunk that is all fill value: damage for images (a black frame is
    # not data), a note for low-dim arrays.
    promised = store.zarr_format == 2 or (store.schema_version or 0) >= ALL_CHUNKS_SCHEMA
    for i in sorted(missing):
        a, b = i * c0, min((i + 1) * c0, have_rows)
        where, eps = _span(store, a, b)
        name = arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))
        if promised or store.spec(key).is_image:
            problems.append(Problem("missing chunk", key, f"chunk {name} is gone ({where}); zarr would read it as {fill!r}", (a, b), eps))
        elif notes is not None:
            notes.append(f"data/{key}: chunk {name} ({where}) is not on disk: this store's zarr skips chunks that are all "
                         f"{fill!r}, so it reads as {fill!r}; if that data was not all {fill!r}, it is lost")
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
    block = max(c0, (block_bytes // row_bytes) // c0 * c0)
    unreadable = set(missing)  # chunk indices along axis 0
    nonfinite: set[int] = set()  # episodes with a reported non-finite value
    for start in range(0, have_rows, block):
        stop = min(start + block, have_rows)
        try:
            values = np.asarray(arr[start:stop])
        except Exception:
            values = np.full((stop - start, *arr.shape[1:]), fill, dtype=arr.dtype)
            for a in range(start, stop, c0):  # find the chunk(s) that fail
                b = min(a + c0, stop)
                try:
                    values[a - start:b - start] = arr[a:b]
                except Exception as e:
                    unreadable.add(a // c0)
                    where, eps = _span(store, a, b)
                    msg = str(e).splitlines()[0][:160] if str(e) else ""
                    problems.append(Problem("undecodable chunk", key, f"chunk {arr.metadata.encode_chunk_key((a // c0,) + (0,) * (arr.ndim - 1))} "
                                            f"({where}) cannot be read: {type(e).__name__}: {msg}", (a, b), eps))
        if values.dtype.kind == "f":
            bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
            for r in np.flatnonzero(bad):
                row = start + int(r)
                if row // c0 in unreadable:  # already reported as a chunk problem
                    continue
                where, eps = _span(store, row, row + 1)
                if eps and eps[0] in nonfinite:  # once per episode
                    continue
                nonfinite.update(eps)
                problems.append(Problem("non-finite value", key, f"NaN or inf at {where}", (row, row + 1), eps))
        yield start, values
    if have_rows < n_rows:
        yield have_rows, np.full((n_rows - have_rows, *arr.shape[1:]), fill, dtype=arr.dtype)


def validate(store: EpisodeStore, keys: list[str] | None = None, progress: bool = True) -> Report:
    """Check a store's layout, metadata and every committed chunk of ``keys`` (default: all).

    Never raises for damage: everything found is in the report. A non-finite value is reported
    once per episode and key (the first step).
    """
    problems: list[Problem] = []
    notes: list[str] = []
    lengths = store.episode_lengths
    for e in np.flatnonzero(lengths == 0):
        problems.append(Problem("empty episode", None, f"episode {int(e)} has no step", None, (int(e),)))
    declared = set(store.attrs.get("keys", {}))
    for k in sorted(declared - set(store.keys)):
        problems.append(Problem("layout", k, "the store's attributes describe this array but it is gone"))
    try:
        store.episode_meta  # decodes every entry
        if INFO in store.root["meta"] and store.root["meta"][INFO].shape[0] < store.n_episodes:
            problems.append(Problem("metadata", f"meta/{INFO}", f"{store.root['meta'][INFO].shape[0]} entries for "
                                    f"{store.n_episodes} committed episodes"))
    except StoreError as e:
        problems.append(Problem("metadata", f"meta/{INFO}", str(e)))
    for key in tqdm(store.keys if keys is None else keys, desc="validate", disable=not progress, leave=False):
        arr = store._array(key)
        if arr.shape[0] > store.n_steps:
            notes.append(f"data/{key}: {arr.shape[0] - store.n_steps} rows past the last episode end (left by a crash "
                         f"or an open writer; readers ignore them, `protege-data repair` trims them)")
        for _ in scan(store, key, problems, notes=notes):
            pass
    return Report(problems, notes)
