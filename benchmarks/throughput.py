"""Training throughput, inference latency and data-loader speed of the policies on PushT.

    python benchmarks/throughput.py [--dataset ...] [--quick]

For the state and image models at the paper's sizes (policy=diffusion_paper, act_paper) and at
the CPU defaults we ship (policy=diffusion, act): training throughput in samples/s (data
included, stepped as protege-train steps: fused AdamW, glibc keeping freed memory), the data
loader's samples/s alone (sampling + tensor conversion: what the trainer
consumes), and the latency of one action chunk at batch 1 (Diffusion Policy with DDIM 10 and 16
steps; ACT one forward pass). Batch 256 (state) and 64 (image), Diffusion Policy's, except ACT at
the paper's size, which takes ACT's own batch of 8. Training: median (and min, max) of 10 steps after 2 warm-up steps;
latency: median of 10. Prints a table, writes JSON (with the command, commit, machine and date)
holding only this run's rows.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module

from machine import machine, pusht_store, run_as_the_clis_do, write_result  # benchmarks/machine.py
from protege.data.dataset import load_task_data
from protege.policies.normalizer import Normalizer
from protege.policies.checkpoint import build_policy
from protege.policies.tensors import select_device, to_torch
from protege.policies import malloc
from protege.policies.train import adamw, policy_kwargs

HERE = Path(__file__).resolve().parent
PAPER_BATCH = {"act_paper": 8}  # ACT's paper trains with batch 8 (Zhao et al., RSS 2023, appendix)


def config(policy: str, task: str):
    with initialize_config_module("protege.configs", version_base=None):
        return compose("train", overrides=[f"policy={policy}", f"task={task}", "dataset=unused"])


def bench(policy_name: str, task: str, data, batch_size: int, steps: int, latency_reps: int, device) -> dict:
    cfg = config(policy_name, task)
    p = cfg.policy
    policy = build_policy(p._target_, policy_kwargs(p), data.shape_meta, Normalizer(data.stats, data.image_keys)).to(device)
    train, _ = data.samplers(policy.horizon, policy.n_obs_steps, *policy.sampler_padding, 0.0, 0)
    opt = adamw(policy.parameters(), device, lr=1e-4)  # as protege-train steps
    rng = np.random.default_rng(0)
    obs_keys = data.shape_meta["obs"]

    # data loader alone
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 3.0:
        to_torch(train.sample(rng.integers(0, len(train), batch_size)), obs_keys, data.image_keys, device)
        n += batch_size
    loader = n / (time.perf_counter() - t0)

    # training steps (data included), after 2 warm-up steps
    policy.train()
    times = []
    with malloc.keep_freed_memory(True, device):  # as protege-train (train.keep_freed_memory)
        for i in range(steps + 2):
            t = time.perf_counter()
            batch = to_torch(train.sample(rng.integers(0, len(train), batch_size)), obs_keys, data.image_keys, device)
            loss = policy.compute_loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    train_rate = batch_size / statistics.median(times[2:])
    train_min, train_max = batch_size / max(times[2:]), batch_size / min(times[2:])

    policy.eval()
    obs = {k: v[:1] for k, v in to_torch(train.sample(np.array([0])), obs_keys, data.image_keys, device)["obs"].items()}
    latency = {}
    # diffusion: one chunk per DDIM step count; ACT: one forward pass
    for k in (10, 16) if policy.num_inference_steps is not None else (None,):
        if k is not None:
            policy.set_num_inference_steps(k)
        policy.predict_action(obs)
        ts = []
        for _ in range(latency_reps):
            t = time.perf_counter()
            policy.predict_action(obs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        latency[f"ddim{k}_ms" if k else "chunk_ms"] = 1000 * statistics.median(ts)
    return {
        "task": task, "policy": policy_name, "params_M": sum(x.numel() for x in policy.parameters()) / 1e6,
        "batch_size": batch_size, "train_samples_per_s": train_rate, "train_samples_per_s_min": train_min,
        "train_samples_per_s_max": train_max, "train_steps": steps, "latency_reps": latency_reps,
        "loader_samples_per_s": loader, **latency,
    }


def _main(onednn: bool) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=pusht_store())
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--policies", nargs="+", default=["diffusion", "diffusion_paper", "act", "act_paper"])
    ap.add_argument("--out", default=str(HERE / "results" / "throughput.json"))
    args = ap.parse_args()
    device = select_device("auto")
    steps, reps = (3, 3) if args.quick else (10, 10)
    state = load_task_data(args.dataset, dict(config("diffusion", "pusht_state").task.obs), {"source": "action"})
    image = load_task_data(args.dataset, dict(config("diffusion", "pusht_image").task.obs), {"source": "action"})
    rows = []
    print(f"{'task':<12} {'policy':<16} {'params':>7}  {'batch':>5}  {'train/s':>8}  {'loader/s':>9}  latency per chunk (batch 1)")
    for task, data, batch in (("pusht_state", state, 256), ("pusht_image", image, 64)):  # Diffusion Policy's batches
        for pol in args.policies:
            rows.append(bench(pol, task, data, PAPER_BATCH.get(pol, batch), steps, reps, device))
            r = rows[-1]
            lat = "  ".join(f"{k[:-3]} {v:.1f} ms" for k, v in r.items() if k.endswith("_ms"))
            print(f"{r['task']:<12} {r['policy']:<16} {r['params_M']:6.1f}M  {r['batch_size']:>5}  "
                  f"{r['train_samples_per_s']:8.1f}  {r['loader_samples_per_s']:9.0f}  {lat}", flush=True)
    write_result(args.out, "throughput", onednn_matmul=onednn, device=str(device), quick=args.quick, rows=rows)
    print(f"machine: {machine()}")



def main() -> None:
    run_as_the_clis_do(_main)


if __name__ == "__main__":
    main()
