"""Training throughput of the paths issue 32 added, on this machine, in one run (ratios within it):

1. **Processes**: ``protege-train`` on PushT state (Diffusion Policy, the CPU default) with one
   process, then ``train.nproc=2`` (two gloo processes sharing the CPU), at the same global batch.
2. **Images in memory or read from the store** (``data.in_memory=true`` / ``false`` with
   ``data.workers`` DataLoader workers), the same model and batch: PushT image (one 96x96
   camera), and a two-camera simulated store (``sim_lift``: scene and wrist 96x96, recorded here
   by the scripted expert, ``--sim-episodes``).
3. **The reader alone**: batches of windows gathered from the store by the DataLoader workers
   with no training step, samples/s. A training step (on a GPU) faster than this would wait for
   data: it is the rate the step must stay under, or more workers are needed.

Samples/s are the trainer's own (``train/samples_per_s`` in TensorBoard, the run's global batch
over the wall time of ``train.log_every`` steps), the median after the first window (start-up and
warm-up left out). Prints a table and writes ``results/train_scaling.json``.

    python benchmarks/train_scaling.py [--steps 60] [--sim-episodes 20]
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


def reader_samples_per_s(store: str, task: str, batch_size: int, workers: int, batches: int = 40) -> float:
    """Samples/s of the lazy image reader alone: ``batches`` batches gathered by ``workers``
    DataLoader workers (after 5 to warm up), as ``protege-train data.in_memory=false`` draws them."""
    import time

    import numpy as np
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from protege.data.dataset import load_training_data
    from protege.policies.train import lazy_batches

    with initialize_config_module("protege.configs", version_base=None):
        cfg = compose("train", overrides=[f"task={task}"])
    data = load_training_data(store, OmegaConf.to_container(cfg.task.obs), OmegaConf.to_container(cfg.task.action),
                              lazy_images=True)
    sampler, _ = data.samplers(cfg.policy.horizon, cfg.policy.n_obs_steps, cfg.policy.n_obs_steps - 1,
                               cfg.policy.n_action_steps - 1, 0.0, 0)
    it = lazy_batches(sampler, batch_size, np.random.default_rng(0), [0], workers)
    for _ in range(5):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def sim_store(path: Path, episodes: int) -> str:
    """A two-camera ``sim_lift`` store recorded by the scripted expert (seeds 0..)."""
    p = subprocess.run([str(BIN / "protege-record"), "robot=sim", "task=lift", "teleop=scripted", f"episodes={episodes}",
                        f"out={path}", "seed=0"], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"protege-record failed:\n{p.stderr[-2000:]}")
    return str(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sim-episodes", type=int, default=20, help="episodes of the two-camera sim store")
    ap.add_argument("--out", default=str(HERE / "results" / "train_scaling.json"))
    args = ap.parse_args()
    store = pusht_store()
    common = [f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", "train.val_ratio=0",
              "train.progress=false", "train.log_every=10", "train.checkpoint_every=100000"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sim = sim_store(Path(tmp) / "sim_lift.zarr", args.sim_episodes)
        cases = [("1 process", "pusht_state", store, []), ("2 processes (gloo)", "pusht_state", store, ["train.nproc=2"]),
                 ("images in memory", "pusht_image", store, ["data.in_memory=true"]),
                 ("images from the store, 2 workers", "pusht_image", store, ["data.in_memory=false", "data.workers=2"]),
                 ("images in memory", "sim_lift", sim, ["data.in_memory=true"]),
                 ("images from the store, 2 workers", "sim_lift", sim, ["data.in_memory=false", "data.workers=2"])]
        for name, task, data, extra in cases:
            run_dir = Path(tmp) / f"case{len(rows)}"  # hydra reads parentheses in a value as a call
            p = subprocess.run([str(BIN / "protege-train"), f"task={task}", f"run_dir={run_dir}", *common,
                                f"dataset={data}", *extra], capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"{name}: protege-train failed:\n{p.stderr[-2000:]}")
            rows.append({"case": name, "task": task, "overrides": extra, "samples_per_s": round(samples_per_s(run_dir), 1)})
            print(rows[-1], flush=True)
        readers = []
        for task, data in (("pusht_image", store), ("sim_lift", sim)):
            for workers in (2, 4):
                readers.append({"task": task, "workers": workers,
                                "samples_per_s": round(reader_samples_per_s(data, task, args.batch_size, workers), 1)})
                print(readers[-1], flush=True)
    ratio_proc = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    ratio_lazy = {task: round(rows[i + 1]["samples_per_s"] / rows[i]["samples_per_s"], 3)
                  for i, task in ((2, "pusht_image"), (4, "sim_lift"))}
    print(f"\n{'case':36s} {'task':12s} {'samples/s':>10s}")
    for r in rows:
        print(f"{r['case']:36s} {r['task']:12s} {r['samples_per_s']:>10.1f}")
    for r in readers:
        print(f"{'reader alone, ' + str(r['workers']) + ' workers':36s} {r['task']:12s} {r['samples_per_s']:>10.1f}")
    print(f"2 processes / 1: {ratio_proc:.2f}; images from the store / in memory: {ratio_lazy}")
    write_result(args.out, "train_scaling", steps=args.steps, batch_size=args.batch_size, sim_episodes=args.sim_episodes,
                 rows=rows, readers=readers, ratio_two_processes=round(ratio_proc, 3), ratio_lazy_images=ratio_lazy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
