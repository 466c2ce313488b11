"""What makes a training step faster on this CPU, measured as ratios in one run.

    python benchmarks/train_speed.py [--policy diffusion|act] [--rounds 5] [--steps 3] [--threads 2]

The image policy at our CPU default (Diffusion Policy: U-Net 64/128/256, ResNet18 at width 32;
ACT: ``policy=act``'s 256-d transformer, 4+4 layers, chunk 20, ResNet18 at width 32; batch 64,
PushT's 96x96 camera + 2-D state, random tensors: data loading left out) is built once per
variant with the same seed; the variants' steps (forward, backward, AdamW step) alternate round
by round so a change in the machine's speed hits them all alike. Variants:

- ``baseline``: the code as it is;
- ``channels_last``: the ResNet's weights and its input (after the crop) in channels-last memory
  format (oneDNN's preferred layout for 2-D convolutions);
- ``fused_adamw``: ``torch.optim.AdamW(fused=True)``;
- ``channels_last+fused_adamw``: both;
- ``bf16``: the step under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the trainer's
  ``train.bf16=true``), measured only on a CPU with native bf16 (AMX or AVX512-BF16); it changes
  the arithmetic, so every variant also records how far its first step's gradient (same weights,
  batch and noise) lies from the baseline's, ||g - g_base|| / ||g_base||;
- ``onednn_matmul``: float32 matrix products in oneDNN instead of MKL (``train.onednn_matmul``,
  whose default ``auto`` turns it on where :func:`protege.policies.onednn.probe` finds it exact
  and faster: the baseline is the step with it off, PyTorch's default);
- ``compile`` (with ``--compile``, Diffusion Policy only): ``torch.compile`` (inductor, default mode) of the U-Net and the
  observation encoder; its compilation (minutes on a CPU) happens in the warm-up round and is
  reported apart.

Prints the median step per variant and its speed-up (baseline / variant), writes
``results/train_speed.json`` (``train_speed_act.json`` for ACT) with the command, commit and
machine. The first round is warm-up. The channels-last and fused-AdamW variants are Diffusion
Policy's only.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from machine import write_result  # benchmarks/machine.py
from protege.policies.onednn import onednn_matmul, probe
from protege.policies.train import bf16_autocast, cpu_has_native_bf16, policy_kwargs

HERE = Path(__file__).resolve().parent


def pusht_image_shapes():
    """PushT image's shape meta (one 96x96 camera, 2-D state and action) and a normalizer for it;
    seeds torch's generator so every variant starts from the same weights."""
    from protege.policies.normalizer import Normalizer

    torch.manual_seed(0)
    s = 96
    meta = {"obs": {"image": {"shape": [s, s, 3], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
            "action": {"shape": [2]}}
    stats = {k: {"min": -torch.ones(2).numpy(), "max": torch.ones(2).numpy(), "mean": torch.zeros(2).numpy(),
                 "std": torch.ones(2).numpy()} for k in ("agent_pos", "action")}
    return meta, Normalizer(stats, ["image"])


def build_act():
    from protege.policies.act import ACTPolicy

    meta, normalizer = pusht_image_shapes()
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "protege" / "configs" / "policy" / "act.yaml")
    policy = ACTPolicy(meta, normalizer, **policy_kwargs(cfg))
    return policy, torch.optim.AdamW(policy.parameters(), lr=1e-4)


def build(channels_last: bool, fused: bool):
    from protege.policies import encoders
    from protege.policies.diffusion import DiffusionPolicy

    meta, normalizer = pusht_image_shapes()
    policy = DiffusionPolicy(meta, normalizer, unet={"down_dims": [64, 128, 256], "diffusion_step_embed_dim": 128},
                             image_encoder={"crop_shape": [84, 84], "feature_dim": 64, "num_kp": 32, "width": 32})
    if channels_last:
        for m in policy.modules():
            if isinstance(m, encoders.ResNetImageEncoder):
                m.backbone.to(memory_format=torch.channels_last)
                backbone = m.backbone
                m.backbone = torch.nn.Sequential(_ChannelsLast(), backbone)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, fused=fused or None)
    return policy, opt


class _ChannelsLast(torch.nn.Module):
    def forward(self, x):
        return x.contiguous(memory_format=torch.channels_last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", choices=("diffusion", "act"), default="diffusion")
    ap.add_argument("--rounds", type=int, default=5, help="rounds over all variants (the first is warm-up)")
    ap.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="add the torch.compile variant (minutes of compilation)")
    ap.add_argument("--out", default=None, help="default: results/train_speed.json (train_speed_act.json for ACT)")
    args = ap.parse_args()
    out = args.out or str(HERE / "results" / ("train_speed.json" if args.policy == "diffusion" else "train_speed_act.json"))
    torch.set_num_threads(args.threads)
    if args.policy == "act":
        variants = {"baseline": build_act(), "onednn_matmul": build_act()}
    else:
        variants = {"baseline": build(False, False), "channels_last": build(True, False), "fused_adamw": build(False, True),
                    "channels_last+fused_adamw": build(True, True), "onednn_matmul": build(False, False)}
    if not probe().usable:
        print(f"onednn_matmul=auto leaves oneDNN off on this CPU ({probe().reason}); the onednn_matmul variant "
              + ("turns it on anyway (exact here)" if probe().exact else "leaves it off too (the baseline again)"))
    bf16 = set()
    if args.policy == "act":
        print("the bf16 variants are Diffusion Policy's only")
    elif cpu_has_native_bf16():
        variants["bf16"] = build(False, False)
        variants["bf16+channels_last"] = build(True, False)
        bf16 = {"bf16", "bf16+channels_last"}
    else:
        print("this CPU has no native bf16 (AMX / AVX512-BF16): the bf16 variants are left out")
    if args.compile and args.policy == "diffusion":
        policy, opt = build(False, False)
        policy.model, policy.obs_encoder = torch.compile(policy.model), torch.compile(policy.obs_encoder)
        variants["compile"] = (policy, opt)
    first_step: dict[str, float] = {}
    b, s = 64, 96
    to, h = (1, variants["baseline"][0].chunk_size) if args.policy == "act" else (2, 16)
    g = torch.Generator().manual_seed(0)
    batch = {"obs": {"image": torch.rand(b, to, 3, s, s, generator=g), "agent_pos": torch.randn(b, to, 2, generator=g)},
             "action": torch.rand(b, h, 2, generator=g) * 2 - 1, "mask": torch.ones(b, h, dtype=torch.bool)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    first_grad: dict[str, torch.Tensor] = {}  # the first step's gradient, from identical weights and batch
    for rnd in range(args.rounds):
        for name, (policy, opt) in variants.items():
            for _ in range(args.steps):
                torch.manual_seed(rnd)  # the same noise and timesteps for every variant
                t = time.perf_counter()
                with onednn_matmul(name == "onednn_matmul" and probe().exact):  # train.onednn_matmul
                    with bf16_autocast(name in bf16, torch.device("cpu")):  # the trainer's train.bf16
                        loss = policy.compute_loss(batch)
                    opt.zero_grad()
                    loss.backward()
                if name not in first_grad:
                    first_grad[name] = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
                opt.step()
                if rnd:
                    times[name].append(time.perf_counter() - t)
                else:
                    first_step.setdefault(name, time.perf_counter() - t)
    base = statistics.median(times["baseline"])
    rows = [{"variant": k, "median_ms": 1000 * statistics.median(v), "min_ms": 1000 * min(v), "max_ms": 1000 * max(v),
             "speedup": base / statistics.median(v), "steps": len(v), "first_step_s": first_step[k],
             "first_grad_rel_diff": float((first_grad[k] - first_grad["baseline"]).norm() / first_grad["baseline"].norm())}
            for k, v in times.items()]
    print("| variant | step, ms (median, min-max) | speed-up vs baseline | first step, s | first gradient vs baseline |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['median_ms']:.0f} ({r['min_ms']:.0f}-{r['max_ms']:.0f}) | {r['speedup']:.2f}x | "
              f"{r['first_step_s']:.1f} | {100 * r['first_grad_rel_diff']:.2g}% |")
    write_result(out, "train_speed", policy=args.policy, threads=args.threads, batch_size=b, rows=rows,
                 onednn_probe=dataclasses.asdict(probe()))


if __name__ == "__main__":
    main()
