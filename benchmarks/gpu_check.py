"""The GPU path, checked on a machine that has one (no test here has ever run on CUDA).

For each policy (Diffusion Policy and ACT, state and image PushT): a few training steps through
``protege-train`` on CUDA with bf16 autocast (samples/s, peak memory), the loss of one batch on the
GPU against the CPU's (same weights, same batch, same noise: they must agree to bf16 / TF32
tolerance), ``protege-eval`` of the checkpoint with and without ``compile=true``; with two GPUs or
more, a 2-process DDP run with NCCL (``train.nproc=2``) against one process with the same global
batch, and on one GPU gradient accumulation (``train.grad_accum_steps=4``) against one pass. Writes ``results/gpu_check.json`` (samples/s, memory, the loss differences) and prints a
table; refuses to run without CUDA (nothing measured is written).

    python benchmarks/gpu_check.py [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE))
from machine import pusht_store, write_result  # noqa: E402

CASES = [("diffusion", "pusht_state"), ("diffusion", "pusht_image"), ("act", "pusht_state"), ("act", "pusht_image")]


def sh(*args) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p


def loss_cpu_vs_gpu(ckpt: Path, store: str) -> float:
    """|loss on CUDA (bf16 autocast) - loss on the CPU (fp32)| / |loss on the CPU|, one batch, same noise."""
    from protege.data.dataset import load_task_data
    from protege.policies.checkpoint import load_policy, read_checkpoint
    from protege.policies.distributed import cpu_draws
    from protege.policies.tensors import to_torch

    raw = read_checkpoint(ckpt)
    task = raw["config"]["task"]
    data = load_task_data(store, task["obs"], task["action"], max_episodes=8)
    policy, _ = load_policy(ckpt, use_ema=False)
    sampler, _ = data.samplers(policy.horizon, policy.n_obs_steps, *policy.sampler_padding, 0.0, 0)
    b = sampler.sample(list(range(min(32, len(sampler)))))
    losses = []
    for device, autocast in (("cpu", False), ("cuda", True)):
        p = policy.to(device).train()
        batch = to_torch(b, data.shape_meta["obs"], data.image_keys, torch.device(device))
        torch.manual_seed(0)
        with torch.no_grad(), cpu_draws(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            losses.append(float(p.compute_loss(batch)))
    return abs(losses[1] - losses[0]) / max(abs(losses[0]), 1e-12)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default=str(HERE / "results" / "gpu_check.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here: nothing measured, nothing written")
        return 1
    store = pusht_store()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for policy, task in CASES:
            run = Path(tmp) / f"{policy}-{task}"
            torch.cuda.reset_peak_memory_stats()
            t0 = time.monotonic()
            sh(BIN / "protege-train", f"policy={policy}", f"task={task}", f"dataset={store}", f"run_dir={run}",
               f"train.steps={args.steps}", "train.progress=false", "train.val_ratio=0", "device=cuda", "train.bf16=auto")
            seconds = time.monotonic() - t0
            ckpt = run / "checkpoints" / "latest.pt"
            from protege.policies.checkpoint import read_checkpoint

            batch = int(read_checkpoint(ckpt)["config"]["train"]["batch_size"])
            row = {"policy": policy, "task": task, "steps": args.steps, "seconds": round(seconds, 1),
                   "samples_per_s_incl_startup": round(args.steps * batch / seconds, 1),
                   "loss_rel_diff_gpu_bf16_vs_cpu": loss_cpu_vs_gpu(ckpt, store)}
            for compiled in (False, True):
                out = Path(tmp) / f"eval-{policy}-{task}-{compiled}"
                sh(BIN / "protege-eval", f"checkpoint={ckpt}", "n_episodes=4", "n_videos=0", f"out_dir={out}", "device=cuda",
                   f"compile={str(compiled).lower()}")
                r = json.loads((out / "eval.json").read_text())
                row[f"eval{'_compiled' if compiled else ''}_inference_s"] = r.get("inference_seconds")
            rows.append(row)
            print(row, flush=True)
        from protege.policies.checkpoint import read_checkpoint

        def weight_diff(x: Path, y: Path) -> float:
            a = read_checkpoint(x / "checkpoints" / "latest.pt")["state_dict"]
            b = read_checkpoint(y / "checkpoints" / "latest.pt")["state_dict"]
            return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)

        one, acc, two = Path(tmp) / "one", Path(tmp) / "acc", Path(tmp) / "two"
        common = ["task=pusht_state", f"dataset={store}", "train.steps=10", "train.val_ratio=0", "train.progress=false",
                  "device=cuda", "train.bf16=false"]
        sh(BIN / "protege-train", *common, f"run_dir={one}")
        sh(BIN / "protege-train", *common, f"run_dir={acc}", "train.grad_accum_steps=4")
        same_batch = {"max_abs_weight_diff_grad_accum_4_vs_1": weight_diff(one, acc)}
        if torch.cuda.device_count() >= 2:
            sh(BIN / "protege-train", *common, f"run_dir={two}", "train.nproc=2")
            same_batch["max_abs_weight_diff_2_gpus_vs_1"] = weight_diff(one, two)
    write_result(args.out, "gpu_check", gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(), cases=rows, same_batch=same_batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
