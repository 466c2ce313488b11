"""Training throughput of the paths issue 32 added, on this machine, in one run (ratios within it):

1. **Processes**: ``protege-train`` on PushT state (Diffusion Policy, the CPU default) with one
   process, then ``train.nproc=2`` (two gloo processes sharing the CPU), at the same global batch.
2. **Images in memory or read from the store** (``data.in_memory=true`` / ``false`` with
   ``data.workers`` DataLoader workers), PushT image, the same model and batch.

Samples/s are the trainer's own (``train/samples_per_s`` in TensorBoard, the run's global batch
over the wall time of ``train.log_every`` steps), the median after the first window (start-up and
warm-up left out). Prints a table and writes ``results/train_scaling.json``.

    python benchmarks/train_scaling.py [--steps 60]
"""

from __future__ import annotations

import argparse
import glob
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE))
from machine import pusht_store, write_result  # noqa: E402


def samples_per_s(run_dir: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(glob.glob(str(run_dir / "tb" / "*"))[0])
    acc.Reload()
    values = [e.value for e in acc.Scalars("train/samples_per_s")]
    return statistics.median(values[1:] if len(values) > 2 else values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "results" / "train_scaling.json"))
    args = ap.parse_args()
    store = pusht_store()
    common = [f"dataset={store}", f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", "train.val_ratio=0",
              "train.progress=false", "train.log_every=10", "train.checkpoint_every=100000"]
    cases = [("1 process", "pusht_state", []), ("2 processes (gloo)", "pusht_state", ["train.nproc=2"]),
             ("images in memory", "pusht_image", ["data.in_memory=true"]),
             ("images from the store, 2 workers", "pusht_image", ["data.in_memory=false", "data.workers=2"])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, task, extra in cases:
            run_dir = Path(tmp) / f"case{len(rows)}"  # hydra reads parentheses in a value as a call
            p = subprocess.run([str(BIN / "protege-train"), f"task={task}", f"run_dir={run_dir}", *common, *extra],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"{name}: protege-train failed:\n{p.stderr[-2000:]}")
            rows.append({"case": name, "task": task, "overrides": extra, "samples_per_s": round(samples_per_s(run_dir), 1)})
            print(rows[-1], flush=True)
    ratio_proc = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    ratio_lazy = rows[3]["samples_per_s"] / rows[2]["samples_per_s"]
    print(f"\n{'case':36s} {'task':12s} {'samples/s':>10s}")
    for r in rows:
        print(f"{r['case']:36s} {r['task']:12s} {r['samples_per_s']:>10.1f}")
    print(f"2 processes / 1: {ratio_proc:.2f}; images from the store / in memory: {ratio_lazy:.2f}")
    write_result(args.out, "train_scaling", steps=args.steps, batch_size=args.batch_size, rows=rows,
                 ratio_two_processes=round(ratio_proc, 3), ratio_lazy_images=round(ratio_lazy, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
