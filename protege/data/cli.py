"""``protege-data``: fetch and inspect episode stores.

    protege-data fetch pusht       download Diffusion Policy's PushT demonstrations, check, unpack
    protege-data info STORE        episodes, steps, lengths and key specs (add --json for JSON)
    protege-data validate STORE    check the layout and every committed value; exit 1 on a problem
    protege-data repair STORE      trim rows past the last committed episode (left by a crash)

STORE is a store's path, or a fetched dataset's name (pusht). Fetched datasets live in the data
folder: $PROTEGE_DATA, else ~/.cache/protege/data.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from tqdm import tqdm

from .fetch import DATASETS, FetchError, fetch, resolve_store
from .store import EpisodeStore, EpisodeWriter, StoreError, describe


def validate(store: EpisodeStore, chunk: int = 4096) -> list[str]:
    """Problems found in a store: non-finite low-dim values, uncommitted trailing rows, empty episodes."""
    problems = []
    lengths = store.episode_lengths
    if (lengths == 0).any():
        problems.append(f"{int((lengths == 0).sum())} empty episodes: {np.flatnonzero(lengths == 0)[:10].tolist()}")
    for key in tqdm(store.keys, desc="validate", leave=False):
        arr = store._array(key)
        if arr.shape[0] > store.n_steps:
            problems.append(f"data/{key}: {arr.shape[0] - store.n_steps} rows past the last episode end (uncommitted)")
        if arr.dtype.kind != "f":
            continue
        for i in range(0, store.n_steps, chunk):
            x = np.asarray(arr[i : min(i + chunk, store.n_steps)])
            bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if bad.any():
                problems.append(f"data/{key}: non-finite value at row {i + int(np.flatnonzero(bad)[0])}")
                break
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="protege-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe a store")
    info.add_argument("store")
    info.add_argument("--json", action="store_true", help="print JSON")
    val = sub.add_parser("validate", help="check a store")
    val.add_argument("store")
    rep = sub.add_parser("repair", help="trim uncommitted rows")
    rep.add_argument("store")
    fe = sub.add_parser("fetch", help="download a published dataset into the data folder",
                        description="Download a published dataset, check its SHA-256, unpack it into the data folder "
                                    "($PROTEGE_DATA, else ~/.cache/protege/data) and open it. Offline, give a copy with --from.")
    fe.add_argument("name", choices=sorted(DATASETS), help="; ".join(f"{d.name}: {d.about}" for d in DATASETS.values()))
    fe.add_argument("--from", dest="source", metavar="PATH", help="a local copy: the archive, or an unpacked store")
    fe.add_argument("--dest", metavar="DIR", help="the data folder (default: $PROTEGE_DATA or ~/.cache/protege/data)")
    fe.add_argument("--url", help="download from this mirror instead (the checksum still applies)")
    fe.add_argument("--force", action="store_true", help="replace a store already there")
    args = ap.parse_args(argv)
    if args.command == "fetch":
        try:
            path = fetch(args.name, dest=args.dest, source=args.source, url=args.url, force=args.force)
        except (FetchError, StoreError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        store = EpisodeStore(path)
        print(f"{args.name}: {store.n_episodes} episodes, {store.n_steps} steps at {path}")
        print(f"train on it: protege-train task={args.name}_state dataset={args.name}" if args.name == "pusht" else "")
        return 0
    try:
        store = EpisodeStore(resolve_store(args.store))
    except (StoreError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "info":
        d = describe(store)
        if args.json:
            print(json.dumps(d, indent=2))
        else:
            el = d["episode_length"]
            print(f"{d['path']}  (zarr format {d['zarr_format']})")
            print(f"episodes {d['episodes']}, steps {d['steps']}, length min/mean/max {el['min']}/{el['mean']:.1f}/{el['max']}, fps {d['fps']}")
            for k, s in d["keys"].items():
                extra = "  ".join(x for x in (s["unit"], s["frame"]) if x)
                print(f"  {k:<16} {str(tuple(s['shape'])):<16} {s['dtype']:<8} {extra}")
        return 0
    if args.command == "repair":
        before = {k: store._array(k).shape[0] for k in store.keys}
        EpisodeWriter(store.path).close()
        trimmed = {k: n - store.n_steps for k, n in before.items() if n > store.n_steps}
        print(f"{store.path}: trimmed {trimmed} uncommitted rows" if trimmed else f"{store.path}: nothing to repair")
        print(f"{store.n_episodes} episodes, {store.n_steps} steps kept")
        return 0
    problems = validate(store)
    for p in problems:
        print(f"problem: {p}")
    print(f"{store.path}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
