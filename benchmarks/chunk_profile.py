"""Where a compiled action chunk's time goes: our policies at vs_lerobot.py's shapes, on this CPU.

    python benchmarks/chunk_profile.py [--chunks 20] [--threads 2] [--cases NAME ...]

For each case of ``vs_lerobot.py`` (the same shapes and batch-1 observation; by default the two
CPU defaults), the policy is compiled as ``compile=true`` compiles it
(``Policy.compile_for_inference``), then: the median chunk; for Diffusion Policy the median of
its two parts, the observation encoder (``_condition``) and one U-Net call (``_epsilon``); and a
``torch.profiler`` run over the chunks, each operator's own CPU time put into matrix products
(the linear layers, and the U-Net convolutions inductor lowers to them, whether run by the CPU's
math library or by inductor's C++ GEMM template with the work fused after it), convolutions (the
ResNet), inductor's fused kernels (normalizations, activations, copies; compiled to record their
names, which costs a little), the compiled code's runtime (dynamo's guards, the graph wrappers)
and the rest. The chunk's arithmetic is counted
with ``torch.utils.flop_counter`` on the eager policy and set against a float32 matrix product's
rate measured in the same run (1024^3). Where ``onednn_matmul=auto`` runs products in oneDNN, a
compiled ACT chunk is also timed with its attention's products in oneDNN as well
(``Policy.runtime_products_in_mkl`` off), alternating with the chunk as ``compile=true`` runs it
(those in MKL). Prints a table, writes ``results/chunk_profile.json``
with the command, commit and machine.

Why: issue 10 asks for a chunk at <= 0.5x of LeRobot's; this shows how much of ours is
arithmetic in the CPU's math library and at what rate it runs there.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from machine import run_as_the_clis_do, write_result  # benchmarks/machine.py
from protege_worker import build_ours  # benchmarks/protege_worker.py
from step_profile import gemm_gflops, profile_args, selected_cases  # benchmarks/step_profile.py

CATEGORIES = ("matrix products", "convolutions", "fused kernels", "compiled-code runtime", "other")


def category(name: str) -> str:
    n = name.lower()
    if "_gemm_m" in n:  # inductor's C++ GEMM template (graph_<i>_gemm_m<M>n<N>k<K>_...), with fused epilogues
        return "matrix products"
    if "cpp_fused" in n:
        return "fused kernels"
    if any(k in n for k in ("linear", "addmm", "aten::mm", "bmm", "matmul", "_mm", "baddbmm")):
        return "matrix products"
    if "conv" in n:
        return "convolutions"
    if any(k in n for k in ("dynamo", "compiled", "aotdispatcher", "aot_", "guard")):
        return "compiled-code runtime"
    return "other"


def median_ms(fn, n: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def chunk_flops(policy, one) -> float:
    """FLOPs of one eager chunk (matrix products and convolutions, as torch counts them)."""
    policy.requires_grad_(False)  # the flop counter's module tracker hooks tensors that need grad
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        policy.predict_action(one)
    return counter.get_total_flops()


def profile_case(case: dict, chunks: int, onednn: bool) -> dict:
    import torch._inductor.config as inductor

    policy, _, one = build_ours(case)
    policy.eval()
    flops = chunk_flops(policy, one)
    eager_ms = median_ms(lambda: policy.predict_action(one), chunks)
    with inductor.patch({"cpp.enable_kernel_profile": True}):  # name inductor's kernels in the profile
        compile_s = policy.compile_for_inference()
    out = {"eager_chunk_ms": eager_ms, "compile_s": compile_s, "gflop_per_chunk": flops / 1e9,
           "chunk_ms": median_ms(lambda: policy.predict_action(one), chunks)}
    if onednn and policy.runtime_products_in_mkl:  # the same compiled code with those in oneDNN, alternating
        times = {True: [], False: []}
        for _ in range(chunks):
            for mkl in times:
                policy.runtime_products_in_mkl = mkl
                times[mkl].append(median_ms(lambda: policy.predict_action(one), 1))
        policy.runtime_products_in_mkl = True
        out["runtime_products"] = {"mkl_chunk_ms": statistics.median(times[True]),
                                   "onednn_chunk_ms": statistics.median(times[False]),
                                   "onednn_over_mkl": statistics.median(o / m for m, o in zip(times[True], times[False]))}
    if case["policy"] == "diffusion":
        with torch.no_grad():
            cond = policy._condition(one)
            x, k = torch.randn(1, policy.horizon, policy.action_dim), torch.tensor([50])
            out["condition_ms"] = median_ms(lambda: policy._condition(one), chunks)
            out["unet_call_ms"] = median_ms(lambda: policy._epsilon(x, k, cond), chunks)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(chunks):
            policy.predict_action(one)
    by_cat = dict.fromkeys(CATEGORIES, 0.0)
    events = prof.key_averages()
    for e in events:
        by_cat[category(e.key)] += e.self_cpu_time_total / 1e3 / chunks
    total = sum(by_cat.values())
    out["profiled_ms_per_chunk"] = total
    out["categories"] = {k: {"ms": v, "share": v / total} for k, v in by_cat.items()}
    out["top_operators"] = [{"name": e.key, "category": category(e.key), "ms": e.self_cpu_time_total / 1e3 / chunks,
                             "calls": e.count // chunks}
                            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]]
    return out


def _main(onednn: bool) -> None:
    args = profile_args(__doc__, "chunk_profile.json", "chunks", 20, "timed chunks, then as many profiled ones")
    rate = gemm_gflops(torch.float32)
    rows = []
    for case in selected_cases(args):
        print(f"{case['name']} ...", flush=True)
        rows.append({"case": case, **profile_case(case, args.chunks, onednn)})
    rate = max(rate, gemm_gflops(torch.float32))
    for r in rows:
        math_ms = r["categories"]["matrix products"]["ms"] + r["categories"]["convolutions"]["ms"]
        r["math_gflops"] = r["gflop_per_chunk"] / math_ms * 1000 if math_ms else None
    print(f"\nfloat32 matrix product (1024^3): {rate:.0f} GFLOP/s\n")
    print("| case | chunk, ms (eager / compiled) | GFLOP a chunk | " + " | ".join(CATEGORIES)
          + " | matrix products + convolutions, GFLOP/s (of the 1024^3 rate) |")
    print("|---|---|---|" + "---|" * len(CATEGORIES) + "---|")
    for r in rows:
        cat = r["categories"]
        shares = " | ".join(f"{100 * cat[k]['share']:.0f}%" for k in CATEGORIES)
        print(f"| {r['case']['name']} | {r['eager_chunk_ms']:.1f} / {r['chunk_ms']:.1f} | {r['gflop_per_chunk']:.2f} | "
              f"{shares} | {r['math_gflops'] or 0:.0f} ({100 * (r['math_gflops'] or 0) / rate:.0f}%) |")
    if any("runtime_products" in r for r in rows):
        print("\nThe compiled ACT chunk with its attention's products in MKL, as "
              "compile=true runs it, and in oneDNN (runtime_products_in_mkl off), alternating:")
        for r in (r for r in rows if "runtime_products" in r):
            rp = r["runtime_products"]
            print(f"  {r['case']['name']}: {rp['mkl_chunk_ms']:.1f} / {rp['onednn_chunk_ms']:.1f} ms, "
                  f"oneDNN's / MKL's per pair {rp['onednn_over_mkl']:.2f}")
    for r in rows:
        if "unet_call_ms" in r:
            print(f"\n{r['case']['name']}: observation encoder {r['condition_ms']:.1f} ms, one U-Net call "
                  f"{r['unet_call_ms']:.2f} ms ({r['case']['num_inference_steps']} a chunk)")
        print(f"{r['case']['name']}: the operators with the most time of their own, ms per chunk")
        for o in r["top_operators"]:
            print(f"  {o['ms']:7.2f}  {o['name'][:80]} ({o['category']}, {o['calls']} calls)")
    write_result(args.out, "chunk_profile", onednn_matmul=onednn, threads=args.threads, chunks=args.chunks,
                 gemm_gflops=rate, rows=rows)


def main() -> None:
    run_as_the_clis_do(_main)


if __name__ == "__main__":
    main()
