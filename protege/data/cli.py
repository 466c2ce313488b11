"""``protege-data``: get demonstrations in, out and seen.

    protege-data fetch pusht                 download Diffusion Policy's PushT demonstrations
    protege-data info STORE                  episodes, steps, lengths and key specs (--json)
    protege-data validate STORE              decode every chunk; name each problem's key, episode and
                                             step; exit 1 when the store is damaged
    protege-data repair STORE                trim rows left by a crash; offer to drop damaged episodes
    protege-data delete STORE EPISODES --out NEW | --in-place
                                             remove episodes (EPISODES: 3 or 3,5 or 10-12)
    protege-data keep STORE EPISODES --out NEW | --in-place
                                             keep only these episodes
    protege-data trim STORE EPISODE --start S --end E --out NEW | --in-place
                                             keep steps [S, E) of one episode
    protege-data merge STORE OTHER [--out DST]          append OTHER's episodes (same schema)
    protege-data relabel STORE EPISODES --success yes|no
    protege-data convert SRC DST [--to lerobot]
                                             a store <-> robomimic HDF5 (.hdf5) or a LeRobot v3.0 folder
    protege-data stats STORE [--png FILE]    per-key statistics, histograms, lengths, labels, operators
    protege-data view STORE [--episode N] [--out FILE.html|.mp4|.rrd]
                                             one episode's cameras, states and actions over time
                                             (the rerun viewer without --out)

Every edit is atomic: the store is rebuilt beside the old one, validated and swapped in one
step, so a killed edit leaves the old store as it was. Edits that drop recorded data (delete,
keep, trim) say where the result goes: --out NEW.zarr, or --in-place. STORE is a store's path, or a fetched
dataset's name (pusht); fetched datasets live in $PROTEGE_DATA, else ~/.cache/protege/data.

Expected errors (a missing or damaged store, a bad episode list) are one line and exit 2;
--traceback shows the Python trace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import zarr

from . import edit
from .fetch import DATASETS, FetchError, fetch, resolve_store
from .store import DamagedStore, EpisodeStore, StoreError, describe, root_group_missing
from .validate import Report, validate
from .convert import ConvertError
from .view import ViewerError


def _print_report(store: EpisodeStore, report: Report) -> None:
    for n in report.notes:
        print(f"note: {n}")
    for p in report.problems:
        print(f"problem: {p}")
    if report.verified:
        print(f"checked: {report.verified}")
    if report.ok:
        print(f"{store.path}: OK ({store.n_episodes} episodes, {store.n_steps} steps)")
    else:
        dmg = report.damaged_episodes
        print(f"{store.path}: {len(report.problems)} problem(s); damaged episodes: {_ranges(dmg) or 'none'}")
        if dmg:
            print(f"  drop them with: protege-data repair {store.path}")


def _ranges(episodes: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3,7' (the syntax EPISODES arguments take)."""
    out, i = [], 0
    while i < len(episodes):
        j = i
        while j + 1 < len(episodes) and episodes[j + 1] == episodes[j] + 1:
            j += 1
        out.append(str(episodes[i]) if i == j else f"{episodes[i]}-{episodes[j]}")
        i = j + 1
    return ",".join(out)


def _info(args) -> int:
    d = describe(EpisodeStore(resolve_store(args.store)))
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    el = d["episode_length"]
    print(f"{d['path']}  (zarr format {d['zarr_format']})")
    print(f"episodes {d['episodes']}, steps {d['steps']}, length min/mean/max {el['min']}/{el['mean']:.1f}/{el['max']}, fps {d['fps']}")
    for k, s in d["keys"].items():
        extra = "  ".join(x for x in (s["unit"], s["frame"]) if x)
        print(f"  {k:<16} {str(tuple(s['shape'])):<16} {s['dtype']:<8} {extra}")
    return 0


def _validate(args) -> int:
    try:
        store = EpisodeStore(resolve_store(args.store), check_rows=False)
    except DamagedStore as e:  # a damaged store, not a wrong path: reported like any damage (exit 1)
        print(f"problem: {str(e).split(': ', 1)[-1]}")
        print(f"{args.store}: damaged; see `protege-data repair {args.store}`")
        return 1
    report = validate(store, write_manifest=True)
    _print_report(store, report)
    return 0 if report.ok else 1


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        print(f"{question} [not asked: stdin is not a terminal; pass --yes]")
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _repair(args) -> int:
    path = Path(resolve_store(args.store))
    if root_group_missing(path):
        _recreate_root_group(path)
    try:
        store = EpisodeStore(path, check_rows=False)
    except DamagedStore as e:
        print(f"problem: {str(e).split(': ', 1)[-1]}")
        print(f"{path}: repair cannot fix this (which episode ends where is not in the data); "
              "edit meta/episode_ends by hand or restore the store from a copy")
        return 1
    lengths = {k: store._array(k).shape[0] for k in store.keys}
    if any(n > store.n_steps for n in lengths.values()):
        data = zarr.open_group(str(path), mode="r+")["data"]
        for k, n in lengths.items():  # each array down to the commit record: safe to stop at any point
            if n > store.n_steps:
                data[k].resize((store.n_steps, *data[k].shape[1:]))
        print(f"{path}: trimmed rows past the last committed episode "
              f"({ {k: n - store.n_steps for k, n in lengths.items() if n > store.n_steps} })")
        _renew_manifest_of(path, store.keys)
        store = EpisodeStore(path, check_rows=False)
    # every array holds the same rows, fewer than episode_ends' last value: the data is whole, the end is wrong
    rows = min(lengths.values()) if lengths else store.n_steps
    ends = store.episode_ends
    if store.n_episodes and len(set(lengths.values())) == 1 and rows < store.n_steps \
            and (rows > (ends[-2] if len(ends) > 1 else 0)) \
            and (ends[:-1] <= rows).all() and _clamp_last_end(path, store, rows, args.yes):
        store = EpisodeStore(path, check_rows=False)
    report = validate(store)
    if _fix_dtypes(path, store, report, args.yes):
        store = EpisodeStore(path, check_rows=False)
        report = validate(store)
    damaged = report.damaged_episodes
    if report.ok:
        print(f"{path}: OK, nothing else to repair ({store.n_episodes} episodes, {store.n_steps} steps)")
        return 0
    for p in report.problems:
        print(f"problem: {p}")
    if not damaged:
        print(f"{path}: these problems are not confined to episodes; repair cannot fix them")
        return 1
    if len(damaged) == store.n_episodes:
        print(f"{path}: every episode is damaged; nothing would be left")
        return 1
    if not _confirm(f"drop {len(damaged)} damaged episode(s) ({_ranges(damaged)}) of {store.n_episodes}?", args.yes):
        print("nothing dropped")
        return 1
    new = edit.delete(path, damaged)
    print(f"{path}: dropped episodes {_ranges(damaged)}; {new.n_episodes} episodes, {new.n_steps} steps kept")
    return 0


def _fix_dtypes(path: Path, store: EpisodeStore, report: Report, yes: bool) -> bool:
    """An array whose metadata names a dtype its chunks do not hold (validate's hint): set the dtype
    the chunks hold, then check again. Returns whether anything was changed."""
    import re

    changed = False
    for p in report.problems:
        m = re.search(r"the dtype is likely ([<>|]?\w+)", p.detail) if p.kind == "metadata" else None
        if not m or p.key not in store.keys:
            continue
        new = np.dtype(m.group(1))
        if not _confirm(f"data/{p.key}: its chunks hold {new.itemsize}-byte values; set its dtype to {new.str}?", yes):
            continue
        if store.zarr_format == 2:
            f = path / "data" / p.key / ".zarray"
            meta = json.loads(f.read_text())
            meta["dtype"] = new.str
        else:
            f = path / "data" / p.key / "zarr.json"
            meta = json.loads(f.read_text())
            meta["data_type"] = new.name
        f.write_text(json.dumps(meta, indent=4))
        print(f"{path}: data/{p.key}: dtype set to {new.str} (the chunks' own)")
        changed = True
    return changed


def _recreate_root_group(path: Path) -> None:
    """The root group file is gone, the arrays are there: write it again (zarr 2 or 3, as the arrays)."""
    v3 = (path / "meta" / "episode_ends" / "zarr.json").exists()
    if v3:
        (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
        print(f"{path}: recreated the root group file zarr.json; the store's attributes it held (fps, key units and "
              "frames) are lost: readers fall back to their defaults (set the fps where a tool asks for it)")
    else:
        (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        print(f"{path}: recreated the root group file .zgroup")


def _clamp_last_end(path: Path, store: EpisodeStore, rows: int, yes: bool) -> bool:
    """meta/episode_ends' last value runs past the data: end the last episode at the rows present
    (every earlier episode is whole). Returns whether it did."""
    last = store.n_episodes - 1
    old_end = int(store.episode_ends[-1])
    if not _confirm(f"meta/episode_ends ends episode {last} at row {old_end}, but the arrays hold {rows} rows: "
                    f"end it at {rows} (keeping its {rows - int(store.episode_starts[last])} steps that are there)?", yes):
        return False
    root = zarr.open_group(str(path), mode="r+")
    ends = root["meta/episode_ends"]
    fixed = np.asarray(ends[:]).copy()
    fixed[-1] = rows
    ends[:] = fixed
    _renew_manifest_of(path, [])
    print(f"{path}: episode {last} now ends at row {rows} (was {old_end}, past the data)")
    return True


def _renew_manifest_of(path: Path, keys: list[str]) -> None:
    """After an in-place repair, recompute the manifest's entries of meta/ and of ``keys``' arrays."""
    from . import manifest as mf

    old = mf.read_manifest(path)
    if old is None:
        return
    fresh = json.loads(mf.write_manifest(path, by="repair").read_text())
    touched = lambda rel: rel.startswith("meta/") or any(rel.startswith(f"data/{k}/") for k in keys)  # noqa: E731
    fresh["chunks"] = {**{r: v for r, v in old["chunks"].items() if not touched(r) and (path / r).exists()},
                       **{r: v for r, v in fresh["chunks"].items() if touched(r)}}
    (path / mf.MANIFEST).write_text(json.dumps(fresh, indent=0))


def _edited(before: EpisodeStore, after: EpisodeStore, what: str) -> int:
    print(f"{after.path}: {what}; {before.n_episodes} -> {after.n_episodes} episodes, {before.n_steps} -> {after.n_steps} steps")
    return 0


def _dropping_target(args, store: EpisodeStore) -> str | None:
    """Edits that drop recorded data name where the result goes: --out NEW, or --in-place."""
    if args.out and args.in_place:
        raise ValueError("give --out or --in-place, not both")
    if not args.out and not args.in_place:
        raise ValueError(f"this edit drops recorded data from {store.path}: add --in-place to edit the store itself, "
                         f"or --out NEW.zarr to write the result as a new store")
    return args.out


def _delete(args) -> int:
    store = EpisodeStore(resolve_store(args.store))
    eps = edit.parse_episodes(args.episodes, store.n_episodes)
    return _edited(store, edit.delete(store.path, eps, dest=_dropping_target(args, store)), f"deleted {_ranges(eps)}")


def _keep(args) -> int:
    store = EpisodeStore(resolve_store(args.store))
    eps = edit.parse_episodes(args.episodes, store.n_episodes)
    return _edited(store, edit.keep(store.path, eps, dest=_dropping_target(args, store)), f"kept {_ranges(eps)}")


def _trim(args) -> int:
    store = EpisodeStore(resolve_store(args.store))
    (e,) = edit.parse_episodes(str(args.episode), store.n_episodes)
    return _edited(store, edit.trim(store.path, e, args.start, args.end, dest=_dropping_target(args, store)),
                   f"episode {e} trimmed to steps [{args.start}, {args.end})")


def _merge(args) -> int:
    store = EpisodeStore(resolve_store(args.store))
    new = edit.merge(store.path, resolve_store(args.other), dest=args.out)
    return _edited(store, new, f"merged {args.other}")


def _relabel(args) -> int:
    store = EpisodeStore(resolve_store(args.store))
    eps = edit.parse_episodes(args.episodes, store.n_episodes)
    return _edited(store, edit.relabel(store.path, eps, {"success": args.success == "yes"}),
                   f"episodes {_ranges(eps)} labelled success={args.success}")


def _convert(args) -> int:
    from .convert import convert

    src = resolve_store(args.src) if "://" not in args.src and not Path(args.src).exists() else args.src
    a, b, report = convert(src, args.dst, to=args.to, image_codec=args.image_codec, crf=args.crf, fps=args.fps)
    for line in report.lines():
        print(line)
    print(f"{a} {src} -> {b} {args.dst}")
    return 0


def _stats(args) -> int:
    from .inspect import format_stats, plot_stats, store_stats

    s = store_stats(EpisodeStore(resolve_store(args.store)))
    if args.json:
        print(json.dumps(s, indent=1))
    else:
        print(format_stats(s))
    png = Path(args.png) if args.png else Path(f"{Path(s['path']).name.removesuffix('.zarr')}-stats.png")
    print(f"histograms: {plot_stats(s, png)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _view(args) -> int:
    from .view import view

    store = EpisodeStore(resolve_store(args.store))
    if not -store.n_episodes <= args.episode < store.n_episodes:
        raise IndexError(f"episode {args.episode} out of range: the store has {store.n_episodes} episodes")
    out = view(store, args.episode, args.out)
    print(f"episode {args.episode % store.n_episodes} of {store.path} -> {out}" if out else "sent to the rerun viewer")
    return 0


def _fetch(args) -> int:
    path = fetch(args.name, dest=args.dest, source=args.source, url=args.url, force=args.force)
    store = EpisodeStore(path)
    print(f"{args.name}: {store.n_episodes} episodes, {store.n_steps} steps at {path}")
    if args.name == "pusht":
        print(f"train on it: protege-train task={args.name}_state dataset={args.name}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="protege-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traceback", action="store_true", help="show the Python trace of an error")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name, fn, help, **kw):
        p = sub.add_parser(name, help=help, description=kw.pop("description", help))
        p.set_defaults(fn=fn)
        return p

    def destination(p):  # an edit that drops recorded data says where its result goes
        p.add_argument("--out", help="write the result as this new store (the source is left as it is)")
        p.add_argument("--in-place", action="store_true", help="replace the store itself (atomically)")

    p = cmd("info", _info, "describe a store")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = cmd("validate", _validate, "find every damaged chunk, non-finite value and layout problem (exit 1 if any)",
            description="Decode every committed chunk of every array; report missing, truncated or undecodable "
                        "chunks, non-finite values, empty episodes and arrays that disagree with meta/episode_ends, "
                        "each with its key, episode and step. Exit 0 when the store is sound, 1 when not.")
    p.add_argument("store")
    p = cmd("repair", _repair, "trim uncommitted rows; drop damaged episodes (asks first)")
    p.add_argument("store")
    p.add_argument("--yes", "-y", action="store_true", help="drop damaged episodes without asking")
    p = cmd("delete", _delete, "remove episodes (atomic)")
    p.add_argument("store")
    p.add_argument("episodes", help="episode indices: 3, 3,5 or 10-12")
    destination(p)
    p = cmd("keep", _keep, "keep only these episodes (atomic)")
    p.add_argument("store")
    p.add_argument("episodes", help="episode indices: 3, 3,5 or 10-12")
    destination(p)
    p = cmd("trim", _trim, "keep steps [start, end) of one episode (atomic)")
    p.add_argument("store")
    p.add_argument("episode", type=int)
    p.add_argument("--start", type=int, default=0, help="first step kept (default 0)")
    p.add_argument("--end", type=int, default=None, help="step after the last kept; negative counts from the end")
    destination(p)
    p = cmd("merge", _merge, "append another store's episodes (same keys, shapes, dtypes and fps; atomic)")
    p.add_argument("store")
    p.add_argument("other")
    p.add_argument("--out", help="write the merged store here instead of replacing STORE")
    p = cmd("relabel", _relabel, "set the success label of episodes (atomic; the data is not copied)")
    p.add_argument("store")
    p.add_argument("episodes", help="episode indices: 3, 3,5 or 10-12")
    p.add_argument("--success", choices=["yes", "no"], required=True)
    p = cmd("convert", _convert, "convert between a store and robomimic HDF5 or a LeRobot v3.0 dataset",
            description="Convert an episode store to robomimic HDF5 (DST ending .hdf5) or a LeRobot v3.0 dataset "
                        "(--to lerobot), or either of those into a new store (DST ending .zarr). Keys, units, fps and "
                        "per-episode metadata are carried over; what cannot be is listed as 'dropped' or 'added'. "
                        "A malformed source is one error line and leaves no destination behind.")
    p.add_argument("src", help="a store, a robomimic .hdf5 file, or a LeRobot dataset folder (meta/info.json)")
    p.add_argument("dst", help="a new path: .zarr (store), .hdf5 (robomimic), or a folder with --to lerobot")
    p.add_argument("--to", choices=["store", "robomimic", "lerobot"], help="the destination's format (default: from its name)")
    p.add_argument("--image-codec", default="lossless", help="images in a new store: lossless (default) or jpeg:QUALITY")
    p.add_argument("--fps", type=float, help="LeRobot export of a store that records no fps (Diffusion Policy's PushT: 10)")
    p.add_argument("--crf", type=int, default=18, help="LeRobot export: H.264 quality, 0 lossless .. 51 worst (default 18)")
    p = cmd("stats", _stats, "per-key statistics and histograms (PNG), episode lengths, success labels, operators")
    p.add_argument("store")
    p.add_argument("--png", help="where to write the histograms (default: <store name>-stats.png here)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = cmd("view", _view, "show one episode: the rerun viewer, or a self-contained .html, an .mp4 or a .rrd file",
            description="Show one episode's cameras, states and actions over time, with its metadata. Without --out "
                        "it opens the rerun viewer (pip install 'protege[viewer]'); --out episode.html writes a page "
                        "that any browser opens offline, --out episode.mp4 a video, --out episode.rrd a rerun recording.")
    p.add_argument("store")
    p.add_argument("--episode", "-e", type=int, default=0, help="episode index (negative counts from the end)")
    p.add_argument("--out", "-o", help="a .html, .mp4 or .rrd file to write instead of opening the viewer")
    p = cmd("fetch", _fetch, "download a published dataset into the data folder",
            description="Download a published dataset, check its SHA-256, unpack it into the data folder "
                        "($PROTEGE_DATA, else ~/.cache/protege/data) and open it. Offline, give a copy with --from.")
    p.add_argument("name", choices=sorted(DATASETS), help="; ".join(f"{d.name}: {d.about}" for d in DATASETS.values()))
    p.add_argument("--from", dest="source", metavar="PATH", help="a local copy: the archive, or an unpacked store")
    p.add_argument("--dest", metavar="DIR", help="the data folder (default: $PROTEGE_DATA or ~/.cache/protege/data)")
    p.add_argument("--url", help="download from this mirror instead (the checksum still applies)")
    p.add_argument("--force", action="store_true", help="replace a store already there")
    return ap


EXPECTED = (StoreError, FetchError, ViewerError, ConvertError, FileNotFoundError, FileExistsError, ValueError, KeyError, IndexError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    traceback = "--traceback" in argv  # accepted anywhere on the line
    args = parser().parse_args([a for a in argv if a != "--traceback"])
    args.traceback = traceback
    try:
        if args.command in ("repair", "delete", "keep", "trim", "merge", "relabel") and "://" in str(getattr(args, "store", "")):
            raise ValueError(f"{args.store}: a remote store is read-only here; copy it to a local folder to edit it "
                             "(protege-data convert takes it as a source)")
        return args.fn(args)
    except EXPECTED as e:
        if args.traceback:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"protege-data {args.command}: error: {msg} (--traceback for details)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        what = (f"nothing was written at {args.dst}" if args.command == "convert"
                else "an edit in progress left the store as it was")
        print(f"protege-data {args.command}: interrupted; {what}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `protege-data info pusht | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot raise again
        return 141


if __name__ == "__main__":
    sys.exit(main())
