"""What makes a training step faster on this CPU, measured as ratios in one run.

    python benchmarks/train_speed.py [--policy diffusion|act] [--size default|paper] [--rounds 5] [--steps 3]

The image policy (batch 64, PushT's 96x96 camera + 2-D state, random tensors: data loading left
out): Diffusion Policy at our CPU default (U-Net 64/128/256, ResNet18 at width 32) or, with
``--size paper``, the paper's image config (U-Net 512/1024/2048, full-width ResNet18); ACT as
``policy=act`` configures it (256-d transformer, 4+4 layers, chunk 20, ResNet18 at width 32).
Each variant is a set of settings of one policy built once (a copy with the same seed for
channels-last and for torch.compile), and the variants' steps (forward, backward, AdamW step)
alternate round by round, so a change in the machine's speed hits them all alike; each variant's
first step in a round is untimed (switching settings, e.g. the allocator's, costs a step's
worth of page faults once). Variants:

- ``baseline``: PyTorch's defaults, as the trainer ran before these changes: float32 products in
  MKL, the U-Net's convolutions with ``nn.Conv1d``'s kernels, the default (for-loop) AdamW, glibc's
  malloc as it comes;
- ``onednn_matmul``: float32 matrix products in oneDNN (``train.onednn_matmul``, whose default
  ``auto`` turns it on where :func:`protege.policies.onednn.probe` finds it exact and faster);
- ``matmul_convs`` (Diffusion Policy): the U-Net's convolutions as matrix products in training
  (``TemporalConv1d``'s default now);
- ``fused_adamw``: ``torch.optim.AdamW(fused=True)`` (the trainer's ``adamw``);
- ``keep_freed_memory``: glibc's malloc keeps freed memory for the next step
  (``train.keep_freed_memory``);
- ``trainer``: all four, as ``protege-train`` runs a step now (oneDNN where ``auto`` chooses it);
- ``trainer_without_<setting>`` (with ``--leave-one-out``): the trainer's settings less that one,
  so what each adds to the others shows (they interact: the convolutions as matrix products pay
  most with oneDNN's products);
- ``channels_last`` (Diffusion Policy, CPU default): the ResNet's weights and its input (after
  the crop) in channels-last memory format (oneDNN's preferred layout for 2-D convolutions);
- ``bf16`` (Diffusion Policy, CPU default): the step under ``torch.autocast("cpu",
  dtype=torch.bfloat16)`` (the trainer's ``train.bf16=true``), measured only on a CPU with native
  bf16 (AMX or AVX512-BF16); it changes the arithmetic;
- ``compile`` (with ``--compile``, Diffusion Policy): ``torch.compile`` (inductor, default mode)
  of the U-Net and the observation encoder; its compilation (minutes on a CPU) happens in the
  warm-up round and is reported apart.

Every variant's gradient on the same batch and noise, from the same weights, is compared with the
baseline's before any step: ||g - g_base|| / ||g_base|| (float rounding for all but bf16).
Prints per variant the median step, its speed-up (the median over rounds of the baseline's
median step / the variant's, both from the same round) and writes ``results/train_speed.json``
(``train_speed_paper.json`` for ``--size paper``, ``train_speed_act.json`` for ACT) with the
command, commit and machine. The first round is warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
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


def build_act() -> torch.nn.Module:
    from protege.policies.act import ACTPolicy

    meta, normalizer = pusht_image_shapes()
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "protege" / "configs" / "policy" / "act.yaml")
    return ACTPolicy(meta, normalizer, **policy_kwargs(cfg))


def build_diffusion(size: str, channels_last: bool = False) -> torch.nn.Module:
    from protege.policies import encoders
    from protege.policies.diffusion import DiffusionPolicy

    meta, normalizer = pusht_image_shapes()
    down_dims, width = ([64, 128, 256], 32) if size == "default" else ([512, 1024, 2048], 64)
    policy = DiffusionPolicy(meta, normalizer, unet={"down_dims": down_dims, "diffusion_step_embed_dim": 128},
                             image_encoder={"crop_shape": [84, 84], "feature_dim": 64, "num_kp": 32, "width": width})
    if channels_last:
        for m in policy.modules():
            if isinstance(m, encoders.ResNetImageEncoder):
                m.backbone.to(memory_format=torch.channels_last)
                backbone = m.backbone
                m.backbone = torch.nn.Sequential(_ChannelsLast(), backbone)
    return policy


class _ChannelsLast(torch.nn.Module):
    def forward(self, x):
        return x.contiguous(memory_format=torch.channels_last)


@dataclasses.dataclass(frozen=True)
class Variant:
    onednn: bool = False
    matmul_convs: bool = False
    fused: bool = False
    keep_memory: bool = False
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False


def variants_for(policy: str, size: str, with_compile: bool, leave_one_out: bool) -> dict[str, Variant]:
    onednn = probe().usable  # what train.onednn_matmul=auto chooses here
    v = {"baseline": Variant(), "onednn_matmul": Variant(onednn=probe().exact)}
    if policy == "diffusion":
        v["matmul_convs"] = Variant(matmul_convs=True)
    v["fused_adamw"] = Variant(fused=True)
    v["keep_freed_memory"] = Variant(keep_memory=True)
    v["trainer"] = trainer = Variant(onednn=onednn, matmul_convs=policy == "diffusion", fused=True, keep_memory=True)
    if leave_one_out:  # what each setting adds to the other three
        for field in ("onednn", "matmul_convs", "fused", "keep_memory"):
            if getattr(trainer, field):
                v[f"trainer_without_{field}"] = dataclasses.replace(trainer, **{field: False})
    if policy == "diffusion" and size == "default":
        v["channels_last"] = Variant(channels_last=True)
        if cpu_has_native_bf16():
            v["bf16"] = Variant(bf16=True)
        else:
            print("this CPU has no native bf16 (AMX / AVX512-BF16): the bf16 variant is left out")
    if with_compile and policy == "diffusion":
        v["compile"] = Variant(compile=True)
    return v


def main() -> None:
    from protege.policies import malloc
    from protege.policies.train import adamw

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", choices=("diffusion", "act"), default="diffusion")
    ap.add_argument("--size", choices=("default", "paper"), default="default",
                    help="Diffusion Policy's CPU default or the paper's image config (U-Net 512/1024/2048)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds over all variants (the first is warm-up)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round (after one untimed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="add the torch.compile variant (minutes of compilation)")
    ap.add_argument("--leave-one-out", action="store_true",
                    help="add the trainer's settings less one each (trainer_without_<setting>)")
    ap.add_argument("--variants", default=None, help="comma-separated subset of the variants (the baseline always runs)")
    ap.add_argument("--out", default=None, help="default: results/train_speed.json (_paper / _act for the others)")
    args = ap.parse_args()
    if args.policy == "act" and args.size == "paper":
        ap.error("--size paper is Diffusion Policy's")
    name = {"act": "train_speed_act", "diffusion": "train_speed" if args.size == "default" else "train_speed_paper"}[args.policy]
    out = args.out or str(HERE / "results" / f"{name}.json")
    torch.set_num_threads(args.threads)
    if not probe().usable:
        print(f"onednn_matmul=auto leaves oneDNN off on this CPU ({probe().reason}); the onednn_matmul variant "
              + ("turns it on anyway (exact here)" if probe().exact else "leaves it off too (the baseline again)"))
    if not malloc.available():
        print("this C library is not glibc: keep_freed_memory changes nothing")
    variants = variants_for(args.policy, args.size, args.compile, args.leave_one_out)
    if args.variants:
        unknown = set(args.variants.split(",")) - set(variants)
        if unknown:
            ap.error(f"unknown variants {sorted(unknown)}; these run here: {', '.join(variants)}")
        variants = {k: v for k, v in variants.items() if k == "baseline" or k in args.variants.split(",")}
    build = build_act if args.policy == "act" else lambda **kw: build_diffusion(args.size, **kw)
    policies = {False: build()}  # by channels-last; the compiled one apart
    if any(v.channels_last for v in variants.values()):
        policies[True] = build(channels_last=True)
    if any(v.compile for v in variants.values()):
        compiled = build()
        compiled.model, compiled.obs_encoder = torch.compile(compiled.model), torch.compile(compiled.obs_encoder)
    policy_of = {k: compiled if v.compile else policies[v.channels_last] for k, v in variants.items()}
    optimizers: dict[tuple[int, bool], torch.optim.Optimizer] = {}
    for k, v in variants.items():
        p = policy_of[k]
        if (id(p), v.fused) not in optimizers:
            params = p.parameters()
            optimizers[id(p), v.fused] = (adamw(params, torch.device("cpu"), lr=1e-4) if v.fused
                                          else torch.optim.AdamW(params, lr=1e-4))

    b, s = 64, 96
    to, h = (1, policies[False].chunk_size) if args.policy == "act" else (2, 16)
    g = torch.Generator().manual_seed(0)
    batch = {"obs": {"image": torch.rand(b, to, 3, s, s, generator=g), "agent_pos": torch.randn(b, to, 2, generator=g)},
             "action": torch.rand(b, h, 2, generator=g) * 2 - 1, "mask": torch.ones(b, h, dtype=torch.bool)}

    @contextlib.contextmanager
    def settings(k: str):
        v, policy = variants[k], policy_of[k]
        if args.policy == "diffusion":
            policy.model.convs_as_matmul(None if v.matmul_convs else False)
        with onednn_matmul(v.onednn and probe().exact), malloc.keep_freed_memory(v.keep_memory):
            with bf16_autocast(v.bf16, torch.device("cpu")):  # the trainer's train.bf16
                yield policy

    def loss_of(k: str, seed: int) -> torch.Tensor:
        """The loss under the variant's settings (entered by the caller)."""
        torch.manual_seed(seed)  # the same noise and timesteps for every variant
        return policy_of[k].compute_loss(batch)

    # each variant's gradient from the same weights, batch and noise, before any step
    first_grad: dict[str, torch.Tensor] = {}
    for k in variants:
        policy = policy_of[k]
        policy.zero_grad(set_to_none=True)
        with settings(k):
            loss_of(k, 0).backward()
        first_grad[k] = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        policy.zero_grad(set_to_none=True)

    def step(k: str, seed: int) -> float:
        """One training step under the variant's settings, which the caller entered."""
        opt = optimizers[id(policy_of[k]), variants[k].fused]
        t = time.perf_counter()
        loss = loss_of(k, seed)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    times: dict[str, list[list[float]]] = {k: [] for k in variants}  # per round
    first_step: dict[str, float] = {}
    for rnd in range(args.rounds):
        for k in variants:
            with settings(k):  # held for the variant's steps in this round, as the trainer holds it
                first = step(k, rnd)  # untimed: the switch of settings
                round_times = [step(k, rnd) for _ in range(args.steps)]
            first_step.setdefault(k, first)
            if rnd:
                times[k].append(round_times)
        print(f"round {rnd + 1}/{args.rounds}: " + ", ".join(
            f"{k} {1000 * statistics.median(times[k][-1]):.0f} ms" for k in variants) if rnd else "warm-up round done", flush=True)
    base = [statistics.median(r) for r in times["baseline"]]
    rows = []
    for k, per_round in times.items():
        flat = [t for r in per_round for t in r]
        ratios = [b_ / statistics.median(r) for b_, r in zip(base, per_round)]
        rows.append({"variant": k, "settings": dataclasses.asdict(variants[k]), "median_ms": 1000 * statistics.median(flat),
                     "min_ms": 1000 * min(flat), "max_ms": 1000 * max(flat), "speedup": statistics.median(ratios),
                     "speedup_min": min(ratios), "speedup_max": max(ratios), "steps": len(flat),
                     "first_step_s": first_step[k],
                     "first_grad_rel_diff": float((first_grad[k] - first_grad["baseline"]).norm() / first_grad["baseline"].norm())})
    print("| variant | step, ms (median, min-max) | speed-up vs baseline (median over rounds, min-max) | first step, s | gradient vs baseline |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['median_ms']:,.0f} ({r['min_ms']:,.0f}-{r['max_ms']:,.0f}) | {r['speedup']:.2f}x "
              f"({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) | {r['first_step_s']:.1f} | {r['first_grad_rel_diff']:.2g} |")
    write_result(out, "train_speed", policy=args.policy, size=args.size, threads=args.threads, batch_size=b,
                 rounds=args.rounds, steps_per_round=args.steps, rows=rows, onednn_probe=dataclasses.asdict(probe()),
                 glibc_malloc=malloc.available())


if __name__ == "__main__":
    main()
