"""Where a training step's time goes: our policies at vs_lerobot.py's shapes, profiled on this CPU.

    python benchmarks/step_profile.py [--steps 3] [--threads 2] [--cases NAME ...]

For each case of ``vs_lerobot.py`` (the same shapes and random tensors; by default the two CPU
defaults), a few training steps (forward, backward, AdamW step) after a warm-up step, as
protege-train takes them (its fused AdamW, glibc keeping freed memory), are timed phase by phase, then profiled with ``torch.profiler``; each operator's own CPU time is sorted
into convolutions (forward and backward), matrix products (linear layers, attention),
normalization, the optimizer's arithmetic and the rest. The arithmetic of the convolutions that run
as convolutions in training (the U-Net's run as matrix products on the CPU, ``TemporalConv1d``,
and count as those) is counted from their shapes (2 * multiply-adds; the backward pass's as twice the forward's: the input's and
the weights' gradients) and set against a float32 matrix product's rate measured in the same run
(1024^3, the best this CPU's BLAS does: MKL or oneDNN, as ``onednn_matmul=auto`` picks). Prints
the tables, writes ``results/step_profile.json`` with the command, commit and machine.

Why: issue 10 asks for a training step at <= 0.8x of LeRobot's on identical shapes; this shows how
much of a step is arithmetic that both implementations call the same library for.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from machine import run_as_the_clis_do, write_result  # benchmarks/machine.py
from protege.policies import malloc
from protege.policies.diffusion.unet import TemporalConv1d
from protege.policies.train import adamw
from protege_worker import build_ours  # benchmarks/protege_worker.py
from vs_lerobot import CASES, COMMON  # benchmarks/vs_lerobot.py

HERE = Path(__file__).resolve().parent
OPTIMIZER_OPS = ("_foreach_", "_fused_adam", "addcdiv", "addcmul", "lerp", "sqrt", "Optimizer.")


def category(name: str) -> str:
    n = name.lower()
    if "convolution_backward" in n or "conv2d_backward" in n or "conv_transpose2d_backward" in n:
        return "convolution backward"
    if "conv" in n and n not in ("aten::convolution", "aten::_convolution", "aten::conv1d", "aten::conv2d"):
        return "convolution forward"
    if n in ("aten::convolution", "aten::_convolution", "aten::conv1d", "aten::conv2d"):
        return "convolution forward"
    if any(k in n for k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
                            "scaled_dot_product", "_flash_attention", "aten::_efficient_attention")):
        return "matrix products (linear, attention)"
    if any(k in n for k in ("group_norm", "layer_norm", "batch_norm")):
        return "normalization"
    if any(k in name for k in OPTIMIZER_OPS):
        return "optimizer (AdamW)"
    return "other (elementwise, copies, indexing)"


def conv_flops(model: torch.nn.Module, run) -> float:
    """Forward FLOPs (2 * multiply-adds) of the convolutions in one call of ``run`` that a CPU
    training step runs as convolutions (not the ``TemporalConv1d`` ones that take the
    matrix-product form there)."""
    total = [0.0]

    def hook(m, inp, out):
        k = 1
        for s in m.kernel_size:
            k *= s
        if isinstance(m, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d)):
            total[0] += 2 * inp[0].numel() * (m.out_channels // m.groups) * k
        else:
            total[0] += 2 * out.numel() * (m.in_channels // m.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d))
               and not (isinstance(m, TemporalConv1d) and m.as_matmul is not False)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def gemm_gflops(dtype=torch.float32, n: int = 1024, reps: int = 9) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(ts) / 1e9


def profile_args(doc: str, out_name: str, count: str, default: int, count_help: str) -> argparse.Namespace:
    """This script's and chunk_profile.py's command line: ``--<count>`` repetitions, ``--threads``,
    ``--cases`` (vs_lerobot.py's, by default its CPU defaults) and ``--out`` (results/<out_name>)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(f"--{count}", type=int, default=default, help=count_help)
    ap.add_argument("--threads", type=int, default=2)
    default_cases = [c["name"] for c in CASES if "CPU default" in c["name"]]
    ap.add_argument("--cases", nargs="+", default=default_cases, choices=[c["name"] for c in CASES])
    ap.add_argument("--out", default=str(HERE / "results" / out_name))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def selected_cases(args: argparse.Namespace) -> list[dict]:
    """vs_lerobot.py's cases named by ``--cases``, in its order, each with the run's torch threads."""
    return [{**COMMON, **c, "threads": args.threads} for c in CASES if c["name"] in args.cases]


def profile_case(case: dict, steps: int) -> dict:
    policy, batch, _ = build_ours(case)
    opt = adamw(policy.parameters(), torch.device("cpu"), lr=1e-4)
    policy.train()
    phases = {"forward": [], "backward": [], "optimizer": []}

    def step(record: bool):
        t0 = time.perf_counter()
        loss = policy.compute_loss(batch)
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if record:
            for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[k].append(v)

    step(False)
    for _ in range(steps):
        step(True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(False)
    by_cat: dict[str, float] = {}
    events = prof.key_averages()
    for e in events:
        by_cat[category(e.key)] = by_cat.get(category(e.key), 0.0) + e.self_cpu_time_total / 1e6 / steps
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]
    total = sum(by_cat.values())
    torch.manual_seed(0)
    flops = conv_flops(policy, lambda: policy.compute_loss(batch))
    fwd, bwd = by_cat.get("convolution forward", 0.0), by_cat.get("convolution backward", 0.0)
    return {
        "phases_ms": {k: 1000 * statistics.median(v) for k, v in phases.items()},
        "step_ms": 1000 * statistics.median([sum(x) for x in zip(*phases.values())]),
        "profiled_ms_per_step": 1000 * total,
        "categories": {k: {"ms": 1000 * v, "share": v / total} for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "top_operators": [{"name": e.key, "category": category(e.key), "ms": e.self_cpu_time_total / 1e3 / steps,
                           "calls": e.count // steps} for e in top],
        "conv_forward_gflop": flops / 1e9,
        "conv_forward_gflops": flops / fwd / 1e9 if fwd else None,
        "conv_backward_gflops": 2 * flops / bwd / 1e9 if bwd else None,
    }


def _main(onednn: bool) -> None:
    args = profile_args(__doc__, "step_profile.json", "steps", 3, "timed steps, then as many profiled ones")
    peak = {"float32": gemm_gflops(torch.float32)}
    rows = []
    with malloc.keep_freed_memory():  # as protege-train
        for case in selected_cases(args):
            print(f"{case['name']} ...", flush=True)
            rows.append({"case": case, **profile_case(case, args.steps)})
    peak["float32_after"] = gemm_gflops(torch.float32)
    fp32 = max(peak["float32"], peak["float32_after"])
    cats = sorted({k for r in rows for k in r["categories"]})
    print(f"\nfloat32 matrix product (1024^3): {peak['float32']:.0f} GFLOP/s before, {peak['float32_after']:.0f} after\n")
    print("| case | step, ms | forward / backward / optimizer, ms | " + " | ".join(cats) + " | convolutions, GFLOP/s fwd / bwd (share of the matmul rate) |")
    print("|---|---|---|" + "---|" * len(cats) + "---|")
    for r in rows:
        p = r["phases_ms"]
        shares = " | ".join(f"{100 * r['categories'][k]['share']:.0f}%" if k in r["categories"] else "-" for k in cats)
        f, b = r["conv_forward_gflops"] or 0, r["conv_backward_gflops"] or 0
        print(f"| {r['case']['name']} | {r['step_ms']:.0f} | {p['forward']:.0f} / {p['backward']:.0f} / {p['optimizer']:.0f} | "
              f"{shares} | {f:.0f} / {b:.0f} ({100 * f / fp32:.0f}% / {100 * b / fp32:.0f}%) |")
    for r in rows:
        print(f"\n{r['case']['name']}: the operators with the most time of their own, ms per step")
        for o in r["top_operators"]:
            print(f"  {o['ms']:8.1f}  {o['name']} ({o['category']}, {o['calls']} calls)")
    write_result(args.out, "step_profile", onednn_matmul=onednn, threads=args.threads, steps=args.steps,
                 gemm_gflops=peak, rows=rows)


def main() -> None:
    run_as_the_clis_do(_main)


if __name__ == "__main__":
    main()
