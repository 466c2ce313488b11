"""Our Diffusion Policy and ACT next to LeRobot 0.4.4's, on identical shapes, in one run.

    python benchmarks/vs_lerobot.py [--lerobot-python PATH] [--threads 2] [--quick]

LeRobot runs in a virtual environment of its own (it pins another torch): ``--lerobot-python``,
else ``$LEROBOT_PYTHON``, else one this script builds at ``~/.cache/protege/lerobot-venv`` with
``PIP_CONSTRAINT= pip install lerobot==0.4.4`` (a long download: torch and its CUDA wheels).
Its side is ``lerobot_worker.py``, which imports only ``lerobot``.

For each case (Diffusion Policy and ACT, at our CPU default and at the papers' sizes), both
implementations get the same shapes (PushT image: one 96x96 camera + a 2-D state, 2-D actions;
batch, horizon / chunk, U-Net or transformer dims, ResNet18 at full width, GroupNorm for
Diffusion Policy and frozen BatchNorm for ACT, as each reference has them) and random tensors, so
data loading is left out. Measured: the median training step (forward, backward, AdamW step) and
the median time of one action chunk at batch 1 (Diffusion Policy: DDIM 10 steps; ACT: one
pass). LeRobot's side runs in a worker process that times one command at a time, so ours and
theirs alternate repetition by repetition and a drift in the machine's speed hits both alike.
Unless ``--no-compile``, the chunk is then timed again with both sides' per-chunk networks
compiled (``torch.compile``, inductor, weights frozen, C++ wrapper; ours through
``Policy.compile_for_inference``, the ``compile=true`` of protege-eval and protege-deploy, which on
the CPU also runs our U-Net's convolutions as matrix products (``TemporalConv1d``); LeRobot's by
wrapping its U-Net and observation encoder, or its ACT model, by hand: LeRobot 0.4.4 offers no
such option), interleaved with LeRobot's eager chunk as it ships. Goals (issue 10): our training
step <= 0.8x and our inference <= 0.5x of LeRobot's. Prints a table, writes
``results/vs_lerobot.json`` with the command, commit, machine and both torch versions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from machine import write_result  # benchmarks/machine.py

HERE = Path(__file__).resolve().parent
COMMON = {"image_size": 96, "state_dim": 2, "action_dim": 2}
CASES = [
    {"name": "Diffusion Policy, CPU default", "policy": "diffusion", "batch_size": 64, "n_obs_steps": 2, "horizon": 16,
     "n_action_steps": 8, "crop_shape": [84, 84], "down_dims": [64, 128, 256], "diffusion_step_embed_dim": 128,
     "kernel_size": 5, "n_groups": 8, "num_kp": 32, "num_inference_steps": 10},
    {"name": "Diffusion Policy, paper (image)", "policy": "diffusion", "batch_size": 64, "n_obs_steps": 2, "horizon": 16,
     "n_action_steps": 8, "crop_shape": [84, 84], "down_dims": [512, 1024, 2048], "diffusion_step_embed_dim": 128,
     "kernel_size": 5, "n_groups": 8, "num_kp": 32, "num_inference_steps": 10},
    {"name": "ACT, CPU default", "policy": "act", "batch_size": 64, "chunk_size": 20, "n_action_steps": 8, "hidden_dim": 256,
     "n_heads": 8, "dim_feedforward": 1024, "enc_layers": 4, "dec_layers": 4, "vae_enc_layers": 4, "latent_dim": 32,
     "dropout": 0.1, "kl_weight": 10.0},
    {"name": "ACT, paper", "policy": "act", "batch_size": 8, "chunk_size": 100, "n_action_steps": 100, "hidden_dim": 512,
     "n_heads": 8, "dim_feedforward": 3200, "enc_layers": 4, "dec_layers": 7, "vae_enc_layers": 4, "latent_dim": 32,
     "dropout": 0.1, "kl_weight": 10.0},
]


def lerobot_python(given: str | None) -> str:
    """LeRobot's interpreter: given, $LEROBOT_PYTHON, or a venv built in the user's cache."""
    if given or os.environ.get("LEROBOT_PYTHON"):
        return given or os.environ["LEROBOT_PYTHON"]
    venv = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "protege" / "lerobot-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"building LeRobot 0.4.4 in {venv} (a long download) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "lerobot==0.4.4"], check=True,
                       env={**os.environ, "PIP_CONSTRAINT": ""})
    return str(py)


def build_ours(case: dict) -> tuple[torch.nn.Module, dict, dict]:
    """Our policy at the case's sizes, a training batch and a batch-1 observation of random tensors
    of its shapes (see the module docstring): (policy, batch, one)."""
    from protege.policies.act import ACTPolicy
    from protege.policies.diffusion import DiffusionPolicy
    from protege.policies.normalizer import Normalizer
    from protege.policies.tensors import obs_to_torch

    torch.manual_seed(0)
    s, b, da, ds = case["image_size"], case["batch_size"], case["action_dim"], case["state_dim"]
    meta = {"obs": {"image": {"shape": [s, s, 3], "type": "rgb"}, "agent_pos": {"shape": [ds], "type": "low_dim"}},
            "action": {"shape": [da]}}
    stats = {k: {"min": -torch.ones(d).numpy(), "max": torch.ones(d).numpy(), "mean": torch.zeros(d).numpy(),
                 "std": torch.ones(d).numpy()} for k, d in (("agent_pos", ds), ("action", da))}
    norm = Normalizer(stats, ["image"])
    if case["policy"] == "diffusion":
        policy = DiffusionPolicy(meta, norm, horizon=case["horizon"], n_obs_steps=case["n_obs_steps"],
                                 n_action_steps=case["n_action_steps"], num_inference_steps=case["num_inference_steps"],
                                 unet={"down_dims": case["down_dims"], "diffusion_step_embed_dim": case["diffusion_step_embed_dim"],
                                       "kernel_size": case["kernel_size"], "n_groups": case["n_groups"]},
                                 image_encoder={"crop_shape": case["crop_shape"], "feature_dim": 2 * case["num_kp"],
                                                "num_kp": case["num_kp"], "width": 64})
        to, h = case["n_obs_steps"], case["horizon"]
    else:  # frozen BatchNorm as LeRobot's ACT has it (the weights themselves are not loaded: same compute)
        policy = ACTPolicy(meta, norm, chunk_size=case["chunk_size"], n_action_steps=case["n_action_steps"],
                           kl_weight=case["kl_weight"], latent_dim=case["latent_dim"], hidden_dim=case["hidden_dim"],
                           dim_feedforward=case["dim_feedforward"], n_heads=case["n_heads"], enc_layers=case["enc_layers"],
                           dec_layers=case["dec_layers"], vae_enc_layers=case["vae_enc_layers"], dropout=case["dropout"],
                           backbone_width=64, pretrained_backbone="imagenet")
        to, h = 1, case["chunk_size"]
    batch = {"obs": {"image": torch.rand(b, to, 3, s, s), "agent_pos": torch.randn(b, to, ds)},
             "action": torch.rand(b, h, da) * 2 - 1, "mask": torch.ones(b, h, dtype=torch.bool)}
    # the observation as protege-eval and protege-deploy pass it (uint8 camera frames made float by
    # obs_to_torch), so the compiled policy runs on the layout it was compiled for
    one = obs_to_torch({"image": np.random.default_rng(0).integers(0, 256, (1, to, s, s, 3), dtype=np.uint8),
                        "agent_pos": np.random.default_rng(1).standard_normal((1, to, ds)).astype(np.float32)},
                       ["image"], torch.device("cpu"))
    return policy, batch, one


class Ours:
    """Our policy at the case's sizes, answering the commands LeRobot's worker answers
    (``lerobot_worker.py``: train, chunk, compile, chunk_compiled) in this process; a call returns
    the seconds the command took. ``compile`` is ``Policy.compile_for_inference`` (the deploy and
    eval option ``compile=true``), which predicts its first chunk as part of it."""

    def __init__(self, case: dict, threads: int):
        torch.set_num_threads(threads)
        self.policy, self.batch, self.one = build_ours(case)
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=1e-4)
        self.info = {"params_M": sum(p.numel() for p in self.policy.parameters()) / 1e6, "torch": torch.__version__}

    def __call__(self, command: str) -> float:
        t = time.perf_counter()
        if command == "train":
            self.policy.train()
            loss = self.policy.compute_loss(self.batch)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        elif command == "compile":
            self.policy.compile_for_inference()
        else:  # chunk, or chunk_compiled once compiled
            self.policy.eval()
            self.policy.predict_action(self.one)  # no_grad by its decorator
        return time.perf_counter() - t


class Theirs:
    """LeRobot's policy in ``lerobot_worker.py`` under LeRobot's python, one command at a time."""

    def __init__(self, case: dict, python: str):
        self.name = case["name"]
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([python, str(HERE / "lerobot_worker.py"), json.dumps(case)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.info = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            raise RuntimeError(f"LeRobot's worker failed on {self.name} (exit {self.proc.returncode}):\n"
                               f"{self.stderr.read()[-3000:]}")
        return json.loads(line)

    def __call__(self, command: str) -> float:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply()["s"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.stderr.close()


def interleaved(times: dict, calls: list, n: int, warmup: int) -> None:
    """Run the calls (side name, side, command, label) in turn, ``warmup + n`` rounds, the order
    reversed every other round; add each side's seconds after the warm-up to times[name][label]."""
    for i in range(warmup + n):
        for name, side, command, label in calls[:: 1 if i % 2 == 0 else -1]:
            s = side(command)
            if i >= warmup:
                times[name].setdefault(label, []).append(s)


def measure(case: dict, ours: Ours, theirs: Theirs) -> dict:
    """Both sides' seconds, {side: {label: [...]}}, their repetitions interleaved one by one, so a
    drift in the machine's speed hits both alike. With compilation, LeRobot's eager chunk (as it
    ships) is timed again among the compiled chunks, so "ours compiled / LeRobot as shipped" is
    interleaved too."""
    times: dict = {"ours": {}, "lerobot": {}}

    def both(command: str) -> list:
        return [("ours", ours, command, command), ("lerobot", theirs, command, command)]

    interleaved(times, both("train"), case["steps"], 2)
    interleaved(times, both("chunk"), case["reps"], 1)
    if case["compile"]:
        interleaved(times, both("compile"), 1, 0)
        interleaved(times, [*both("chunk_compiled"), ("lerobot", theirs, "chunk", "chunk_as_shipped")], case["reps"], 1)
    return times


def summary(times: dict, info: dict) -> dict:
    out = {**info, "repeats": {k: len(v) for k, v in times.items()}}
    for label, xs in times.items():
        if label == "compile":
            out["compile_s"] = xs[0]
            continue
        key = "train_step_ms" if label == "train" else f"{label}_ms"
        ms = [1000 * x for x in xs]
        out.update({key: statistics.median(ms), f"{key}_min": min(ms), f"{key}_max": max(ms)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lerobot-python", default=None, help="LeRobot's venv python (default: $LEROBOT_PYTHON, else build one)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a look, not a figure)")
    ap.add_argument("--cases", nargs="*", default=None, help="names of the cases to run (default: all)")
    ap.add_argument("--no-compile", action="store_true",
                    help="leave out the compiled inference (torch.compile of both sides' per-chunk networks, "
                         "weights frozen; about a minute of compilation per case and side)")
    ap.add_argument("--out", default=str(HERE / "results" / "vs_lerobot.json"))
    args = ap.parse_args()
    python = lerobot_python(args.lerobot_python)
    rows = []
    for case in CASES:
        if args.cases and case["name"] not in args.cases:
            continue
        paper = "paper" in case["name"]
        case = {**COMMON, **case, "threads": args.threads, "compile": not args.no_compile,
                "steps": (3 if args.quick else (5 if paper else 15)), "reps": (3 if args.quick else (5 if paper else 15))}
        print(f"{case['name']} ...", flush=True)
        ours, theirs = Ours(case, args.threads), Theirs(case, python)
        try:
            times = measure(case, ours, theirs)
        finally:
            theirs.close()
        a, b = summary(times["ours"], ours.info), summary(times["lerobot"], theirs.info)
        del ours
        rows.append({"case": case, "ours": a, "lerobot": b,
                     "train_ratio": a["train_step_ms"] / b["train_step_ms"], "chunk_ratio": a["chunk_ms"] / b["chunk_ms"]})
        if case["compile"]:
            rows[-1]["chunk_compiled_ratio"] = a["chunk_compiled_ms"] / b["chunk_compiled_ms"]
            rows[-1]["chunk_ours_compiled_vs_their_eager"] = a["chunk_compiled_ms"] / b["chunk_as_shipped_ms"]
    print()
    print("| model | batch | parameters (ours / LeRobot) | training step, ms (ours / LeRobot) | ratio | "
          "chunk at batch 1, ms (ours / LeRobot) | ratio | compiled chunk, ms (ours / LeRobot) | ratio | "
          "ours compiled / LeRobot as shipped |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["ours"], r["lerobot"]
        compiled = (f"{a['chunk_compiled_ms']:.1f} / {b['chunk_compiled_ms']:.1f} | {r['chunk_compiled_ratio']:.2f} | "
                    f"{r['chunk_ours_compiled_vs_their_eager']:.2f}") if "chunk_compiled_ratio" in r else "- | - | -"
        print(f"| {r['case']['name']} | {r['case']['batch_size']} | {a['params_M']:.1f} M / {b['params_M']:.1f} M | "
              f"{a['train_step_ms']:.0f} / {b['train_step_ms']:.0f} | {r['train_ratio']:.2f} | "
              f"{a['chunk_ms']:.1f} / {b['chunk_ms']:.1f} | {r['chunk_ratio']:.2f} | {compiled} |")
    write_result(args.out, "vs_lerobot", threads=args.threads, quick=args.quick, lerobot="0.4.4", rows=rows)


if __name__ == "__main__":
    main()
