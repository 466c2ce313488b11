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

from . import manifest as mf
from .store import ALL_CHUNKS_SCHEMA, INFO, EpisodeStore, KeySpec, StoreError

# The largest magnitude a value of a unit can plausibly have (SI units, pixels); beyond it, a value
# is no measurement or command but damage (a few flipped bytes of a Blosc chunk decode to 1e37).
UNIT_BOUNDS = {"m": 100.0, "mm": 1e5, "rad": 1e3, "deg": 1e5, "m/s": 100.0, "rad/s": 1e3, "px": 1e5, "n": 1e5,
               "nm": 1e4, "a": 1e3, "v": 1e3, "s": 1e11}
DEFAULT_BOUND = 1e6


def plausible_range(key: str, spec: KeySpec) -> tuple[float, float]:
    """(low, high) a value of ``key`` must lie in: 0..255 for a float image, a timestamp's seconds,
    else +-the bound of the key's unit (the largest of the units it names), +-1e6 when it names none."""
    if spec.is_image:
        return -1e-3, 255.001
    if key == "timestamp" or key.endswith("_timestamp"):
        return -1e11, 1e11
    import re

    tokens = [t.lower() for t in re.split(r"[\s,;()\[\]]+", spec.unit or "") if t]
    bounds = [UNIT_BOUNDS[t] for t in tokens if t in UNIT_BOUNDS]
    b = max(bounds) if bounds and len(bounds) == len(tokens) else DEFAULT_BOUND
    return -b, b


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store.

    kind: "missing chunk", "undecodable chunk", "damaged chunk" (a chunk of a store without
        checksums whose values no sensor gives, or whose bytes changed since the manifest),
        "non-finite value", "implausible value", "empty episode", "metadata" or "layout".
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
    (rows past the last episode end, left by a crash or an open writer: ``repair`` trims them).
    ``verified`` says what the check could establish for this store's format."""

    problems: list[Problem]
    notes: list[str]
    verified: str = ""

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
    low, high = plausible_range(key, store.spec(key))
    checked = mf.has_checksums(arr)  # each chunk verified by zarr: a bad value is the data's, not the disk's
    suspect: dict[int, list] = {}  # chunk index -> [bad values, largest magnitude, non-finite count]
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
    block = max(c0, (block_bytes // row_bytes) // c0 * c0)
    unreadable = set(missing)  # chunk indices along axis 0
    first_problem = len(problems)
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
            flat = values.reshape(len(values), -1)
            finite = np.isfinite(flat)
            out = ~finite | (np.where(finite, flat, 0) < low) | (np.where(finite, flat, 0) > high)
            for r in np.flatnonzero(out.any(axis=1)):
                row = start + int(r)
                if row // c0 in unreadable:  # already reported as a chunk problem
                    continue
                if not checked:  # no checksum: the chunk decoded, but into values no sensor gives
                    acc = suspect.setdefault(row // c0, [0, 0.0, 0])
                    v = flat[r][out[r]]
                    acc[0] += len(v)
                    acc[2] += int((~np.isfinite(v)).sum())
                    if np.isfinite(v).any():
                        acc[1] = max(acc[1], float(np.abs(v[np.isfinite(v)]).max()))
                    continue
                where, eps = _span(store, row, row + 1)
                if eps and eps[0] in nonfinite:  # once per episode
                    continue
                nonfinite.update(eps)
                if not finite[r].all():
                    problems.append(Problem("non-finite value", key, f"NaN or inf at {where}", (row, row + 1), eps))
                else:
                    big = float(np.abs(flat[r]).max())
                    problems.append(Problem("implausible value", key, f"{big:.3g} at {where}, outside [{low:g}, {high:g}] "
                                            f"(the plausible range of its unit {store.spec(key).unit or '(none given)'})",
                                            (row, row + 1), eps))
        yield start, values
    _blame_metadata(store, key, arr, problems, first_problem, have_rows)
    for i, (n, big, n_nonfinite) in sorted(suspect.items()):
        a, b = i * c0, min((i + 1) * c0, have_rows)
        where, eps = _span(store, a, b)
        name = arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))
        what = []
        if n - n_nonfinite:
            what.append(f"{n - n_nonfinite} value(s) outside [{low:g}, {high:g}] (largest {big:.3g})")
        if n_nonfinite:
            what.append(f"{n_nonfinite} NaN or inf")
        problems.append(Problem("damaged chunk", key, f"chunk {name} ({where}) decodes to {' and '.join(what)}; this "
                                "store has no checksums, so the whole chunk is suspect and every episode it spans is damaged",
                                (a, b), eps))
    if have_rows < n_rows:
        yield have_rows, np.full((n_rows - have_rows, *arr.shape[1:]), fill, dtype=arr.dtype)


def _blame_metadata(store: EpisodeStore, key: str, arr, problems: list[Problem], first: int, have_rows: int) -> None:
    """Every chunk of an array failing to decode the same way is no damage of the chunks but of the
    array's metadata (a wrong dtype or chunk shape): replace those problems with one that names the
    metadata file and, where the chunks tell, the dtype they hold."""
    mine = [p for p in problems[first:] if p.key == key and p.kind == "undecodable chunk"]
    n_chunks = math.ceil(have_rows / arr.chunks[0]) if have_rows else 0
    if n_chunks < 2 or len(mine) < n_chunks:
        return
    kinds = {p.detail.split("cannot be read: ")[-1].split(":")[0] for p in mine}
    if len(kinds) != 1:
        return
    meta_file = f"data/{key}/" + (".zarray" if store.zarr_format == 2 else "zarr.json")
    hint = ""
    try:  # decode one chunk's bytes with the array's compressor and compare with what the metadata expects
        raw = (store.path / "data" / key / arr.metadata.encode_chunk_key((0,) * arr.ndim)).read_bytes()
        comp = (arr.compressors or (None,))[0]
        if comp is not None and hasattr(comp, "decode"):
            nbytes = len(bytes(comp.decode(raw)))
            values = int(np.prod(arr.chunks))
            per = nbytes / values
            if per != arr.dtype.itemsize and per in (1, 2, 4, 8):
                guess = np.dtype(f"{arr.dtype.kind}{int(per)}") if arr.dtype.kind in "fiu" else None
                hint = (f"; the chunks hold {int(per)} bytes per value where its dtype {arr.dtype.str} says "
                        f"{arr.dtype.itemsize}" + (f": the dtype is likely {guess.str}" if guess is not None else ""))
    except Exception:  # noqa: BLE001 - a hint only
        pass
    problems[:] = [p for p in problems if p not in mine]
    problems.append(Problem("metadata", key, f"none of its {n_chunks} chunks decodes ({next(iter(kinds))}): the array's "
                            f"metadata {meta_file} does not match its chunks, the data itself may be whole{hint}"))


def validate(store: EpisodeStore, keys: list[str] | None = None, progress: bool = True,
             write_manifest: bool = False) -> Report:
    """Check a store's layout, metadata and every committed chunk of ``keys`` (default: all).

    A store whose chunks carry no checksums is checked against its checksum manifest
    (:mod:`protege.data.manifest`) when it has one; with ``write_manifest``, a clean store without
    one gets it (``protege-data validate`` does this; the store's folder must be writable).

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
    keys = store.keys if keys is None else keys
    unchecked = [k for k in keys if not mf.has_checksums(store._array(k))]
    manifest = mf.read_manifest(store.path) if unchecked else None
    if manifest is not None:
        for rel, why in mf.verify(store.path, manifest).items():
            problems.append(_manifest_problem(store, rel, why))
    for key in tqdm(keys, desc="validate", disable=not progress, leave=False):
        arr = store._array(key)
        if arr.shape[0] > store.n_steps:
            notes.append(f"data/{key}: {arr.shape[0] - store.n_steps} rows past the last episode end (left by a crash "
                         f"or an open writer; readers ignore them, `protege-data repair` trims them)")
        for _ in scan(store, key, problems, notes=notes):
            pass
    checks = ("that every chunk is present and decodes, that the arrays agree with meta/episode_ends, that every value "
              "is finite and plausible for its unit")
    if not unchecked:
        verified = f"{checks}, and every chunk's CRC-32C (a changed byte is caught)"
    elif manifest is not None:
        verified = f"{checks}, and every chunk against the checksum manifest written {manifest.get('written_at', '?')}"
    else:
        verified = (f"{checks}; this store has no checksums ({', '.join(unchecked)}), so a changed byte that still decodes to "
                    "plausible values cannot be found")
        if write_manifest and not problems and keys == store.keys:
            try:
                mf.write_manifest(store.path, by="validate")
                verified += f"; wrote {mf.MANIFEST} (CRC-32C of every chunk): from now on validate catches any changed byte"
            except OSError as e:
                verified += f"; could not write a checksum manifest ({e.strerror or e})"
    return Report(problems, notes, verified)


def _manifest_problem(store: EpisodeStore, rel: str, why: str) -> Problem:
    """A chunk file changed since the manifest: its rows and episodes when it is a data chunk."""
    parts = rel.split("/")
    if len(parts) >= 3 and parts[0] == "data" and parts[1] in store.keys:
        key, name = parts[1], "/".join(parts[2:])
        arr = store._array(key)
        first = name.split("/")[1] if name.startswith("c/") else name.split(".")[0]
        try:
            i = int(first)
        except ValueError:
            return Problem("damaged chunk", key, f"{rel}: {why}")
        a, b = i * arr.chunks[0], min((i + 1) * arr.chunks[0], store.n_steps)
        where, eps = _span(store, a, b)
        return Problem("damaged chunk", key, f"chunk {name} ({where}): {why}; every episode it spans is damaged", (a, b), eps)
    return Problem("damaged chunk", f"meta/{parts[1]}" if parts[0] == "meta" and len(parts) > 1 else None, f"{rel}: {why}")
