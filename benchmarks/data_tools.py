"""protege-data on the real PushT store: validate, stats, view, convert both ways.

    python benchmarks/data_tools.py [--store PATH] [--repeats 3]

Each step runs the library call the CLI runs (not a subprocess, so import time is not counted),
``--repeats`` times; the table gives the median and the range. Conversions go store -> LeRobot
v3.0 -> store and store -> robomimic HDF5 -> store, on all 206 episodes (25,650 steps, 96x96
images). Writes ``results/data_tools.json`` with the command, commit, machine and date.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
from machine import machine, pusht_store, write_result  # noqa: E402

from protege.data.convert import convert  # noqa: E402
from protege.data.inspect import plot_stats, store_stats  # noqa: E402
from protege.data.store import EpisodeStore  # noqa: E402
from protege.data.validate import validate  # noqa: E402
from protege.data.view import view  # noqa: E402


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else Path(path).stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=pusht_store())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "data_tools.json"))
    args = ap.parse_args()
    store = EpisodeStore(args.store)
    work = Path(tempfile.mkdtemp(prefix="protege-bench-"))
    rows = []

    def bench(name: str, fn, make_room=None, size_of=None) -> None:
        times, out = [], None
        for _ in range(args.repeats):
            if make_room:
                make_room()
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        row = {"step": name, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": len(times)}
        if size_of is not None:
            row["output_bytes"] = du(size_of)
        rows.append(row)
        print(f"{name:<40} {row['median_s']:8.2f} s  ({row['min_s']:.2f}-{row['max_s']:.2f})"
              + (f"  {row['output_bytes'] / 1e6:8.1f} MB" if "output_bytes" in row else ""), flush=True)
        return out

    def clear(*paths):
        return lambda: [shutil.rmtree(p, ignore_errors=True) if Path(p).is_dir() else Path(p).unlink(missing_ok=True) for p in paths]

    print(f"{store.path}: {store.n_episodes} episodes, {store.n_steps} steps; {machine()}")
    report = bench("validate (decode every chunk)", lambda: validate(store, progress=False))
    assert report.ok, report.problems
    bench("stats (+ histograms PNG)", lambda: plot_stats(store_stats(store, progress=False), work / "stats.png"))
    bench("view episode 0 -> .html", lambda: view(store, 0, work / "e0.html"), size_of=work / "e0.html")
    bench("view episode 0 -> .mp4", lambda: view(store, 0, work / "e0.mp4"), size_of=work / "e0.mp4")
    lr, back = work / "lr", work / "from_lr.zarr"
    bench("convert store -> LeRobot v3.0 (H.264 crf 18)", lambda: convert(store.path, lr, to="lerobot", fps=10, progress=False),
          make_room=clear(lr), size_of=lr)
    bench("convert LeRobot v3.0 -> store", lambda: convert(lr, back, progress=False), make_room=clear(back), size_of=back)
    h5, back2 = work / "pusht.hdf5", work / "from_rm.zarr"
    bench("convert store -> robomimic HDF5", lambda: convert(store.path, h5, progress=False), make_room=clear(h5), size_of=h5)
    bench("convert robomimic HDF5 -> store", lambda: convert(h5, back2, progress=False), make_room=clear(back2), size_of=back2)
    a, b = EpisodeStore(back), store
    fidelity = {"state_equal_after_lerobot": bool(np.array_equal(a.read("state"), b.read("state"))),
                "img_mean_abs_error_after_lerobot": float(np.abs(a.read("img").astype(np.float32) - b.read("img")).mean()),
                "state_equal_after_robomimic": bool(np.array_equal(EpisodeStore(back2).read("state"), b.read("state")))}
    print(f"fidelity: {fidelity}")
    shutil.rmtree(work, ignore_errors=True)
    write_result(args.out, "data_tools", store=str(store.path), episodes=store.n_episodes,
                 steps=store.n_steps, input_bytes=du(store.path), rows=rows, fidelity=fidelity)


if __name__ == "__main__":
    main()
