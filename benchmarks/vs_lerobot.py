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
pass). Each side runs in worker processes of its own (``protege_worker.py``,
``lerobot_worker.py``) that time one command at a time, so ours and theirs alternate repetition
by repetition and a drift in the machine's speed hits both alike; each ratio is taken round by
round (the median and quartiles of those). Three phases, each in fresh processes: training
steps; eager chunks in processes that never trained; then, unless ``--no-compile``, the chunk
with both sides' per-chunk networks compiled (``torch.compile``, inductor, weights frozen, C++
wrapper, and for Diffusion Policy the matrix products autotuned against inductor's C++ GEMM
template; ours through ``Policy.compile_for_inference``, the ``compile=true`` of protege-eval and
protege-deploy, which on the CPU also runs our U-Net's convolutions as matrix products
(``TemporalConv1d``); LeRobot's by wrapping its U-Net and observation encoder, or its ACT model,
by hand: LeRobot 0.4.4 offers no such option; each side's compiled chunk is checked against its
eager one), interleaved with LeRobot's eager chunk as it ships,
timed in the eager phase's process, which never compiles. Both sides' float32 products run as
protege's ``onednn_matmul=auto`` runs them on this machine (oneDNN where its probe finds it exact
and faster, else MKL): ours everywhere, LeRobot's in its compiled chunk. Our training step runs
as protege-train runs it (also glibc keeping freed memory, fused AdamW); LeRobot's as it ships,
and then, in a second training phase against a fresh LeRobot process, with those three CPU
settings of ours (``train_tuned``), so what our settings alone would do for LeRobot is visible
and the rest is our model code; both compiled ACT chunks run their
attention's products in MKL, as ``compile=true`` does (``onednn.runtime_products_in_mkl``). Goals (issue 10): our training step
<= 0.8x and our inference <= 0.5x of LeRobot's. Prints a table, writes
``results/vs_lerobot.json`` with the command, commit, machine and both torch versions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

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


class Worker:
    """One side's policy in a process of its own that runs one command at a time and says how many
    seconds it took: ``lerobot_worker.py`` under LeRobot's python, ``protege_worker.py`` under ours
    (commands: train, chunk, compile, chunk_compiled)."""

    def __init__(self, side: str, python: str, case: dict):
        self.side, self.name = side, case["name"]
        script = HERE / ("protege_worker.py" if side == "ours" else "lerobot_worker.py")
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([python, str(script), json.dumps(case)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.info = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            raise RuntimeError(f"{self.side}'s worker failed on {self.name} (exit {self.proc.returncode}):\n"
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
    """Run the calls (side name, worker, command, label) in turn, ``warmup + n`` rounds, the order
    reversed every other round; add each call's seconds after the warm-up to times[side][label], so
    the i-th entries of two labels come from the same round."""
    for i in range(warmup + n):
        for side, worker, command, label in calls[:: 1 if i % 2 == 0 else -1]:
            s = worker(command)
            if i >= warmup:
                times[side].setdefault(label, []).append(s)


def measure(case: dict, pythons: dict) -> tuple[dict, dict]:
    """Both sides' seconds, {side: {label: [...]}}, and each side's info; repetitions interleaved
    one by one, so a drift in the machine's speed hits both alike, in three phases, each in fresh
    processes: training steps; eager chunks in processes that never trained (as a deployed
    policy); then, with compilation, our compiled chunk, LeRobot's compiled chunk (in a process of
    its own) and LeRobot's eager chunk as it ships, in the process of the eager phase, which never
    compiles (a compiled program in a process changes the speed of its eager calls by up to 1.7x,
    seen in earlier runs of this script)."""
    times: dict = {"ours": {}, "lerobot": {}}
    with contextlib.ExitStack() as stack:
        def worker(side: str) -> Worker:
            return stack.enter_context(contextlib.closing(Worker(side, pythons[side], case)))

        def both(ours: Worker, theirs: Worker, command: str) -> list:
            return [("ours", ours, command, command), ("lerobot", theirs, command, command)]

        training = {**case, "phase": "train"}
        ours, theirs = Worker("ours", pythons["ours"], training), worker("lerobot")
        stack.callback(ours.close)
        info = {"ours": ours.info, "lerobot": theirs.info}
        interleaved(times, both(ours, theirs, "train"), case["steps"], 2)
        theirs.close()  # one LeRobot process at a time: the paper sizes take gigabytes each
        tuned = Worker("lerobot", pythons["lerobot"], {**training, "tuned": True})
        stack.callback(tuned.close)
        info["lerobot"] = {**theirs.info, "tuned_process": tuned.info}  # what the tuned process ran with
        interleaved(times, [("ours", ours, "train", "train_next_to_tuned"), ("lerobot", tuned, "train", "train_tuned")],
                    case["steps"], 2)
        ours.close()  # the training phase's memory goes with its processes
        tuned.close()
        ours, theirs = worker("ours"), worker("lerobot")
        interleaved(times, both(ours, theirs, "chunk"), case["reps"], 2)
        if case["compile"]:
            theirs_compiled = worker("lerobot")
            interleaved(times, both(ours, theirs_compiled, "compile"), 1, 0)
            interleaved(times, [*both(ours, theirs_compiled, "chunk_compiled"),
                                ("lerobot", theirs, "chunk", "chunk_as_shipped")], case["reps"], 2)
    return times, info


def spread(xs: list) -> dict:
    """Median, first and third quartile of ``xs``."""
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return {"median": q2, "q1": q1, "q3": q3}


def summary(times: dict, info: dict) -> dict:
    """One side's medians (ms) with min and max, and its compile seconds."""
    out = {**info, "repeats": {k: len(v) for k, v in times.items()}}
    for label, xs in times.items():
        if label == "compile":
            out["compile_s"] = xs[0]
            continue
        key = "train_step_ms" if label == "train" else f"{label}_ms"
        ms = [1000 * x for x in xs]
        out.update({key: statistics.median(ms), f"{key}_min": min(ms), f"{key}_max": max(ms)})
    return out


RATIOS = {  # name: (our label, LeRobot's label), compared round by round
    "train": ("train", "train"), "train_vs_lerobot_tuned": ("train_next_to_tuned", "train_tuned"), "chunk": ("chunk", "chunk"),
    "chunk_compiled": ("chunk_compiled", "chunk_compiled"),
    "ours_compiled_vs_lerobot_as_shipped": ("chunk_compiled", "chunk_as_shipped")}


def ratios(times: dict) -> dict:
    """Ours / LeRobot's, one ratio per round (the two calls ran next to each other), as
    {name: {"median", "q1", "q3"}} of those ratios; plus two ratios of medians within one side:
    our compiled / our eager chunk, and LeRobot's eager chunk in the compiled phase / in the eager
    phase (the same process: 1 when its speed held between the phases)."""
    out = {}
    for name, (a, b) in RATIOS.items():
        if a in times["ours"] and b in times["lerobot"]:
            out[name] = spread([x / y for x, y in zip(times["ours"][a], times["lerobot"][b], strict=True)])
    med = {side: {k: statistics.median(v) for k, v in t.items()} for side, t in times.items()}
    if "chunk_compiled" in med["ours"]:
        out["ours_compiled_over_eager"] = med["ours"]["chunk_compiled"] / med["ours"]["chunk"]
        out["lerobot_as_shipped_over_eager_phase"] = med["lerobot"]["chunk_as_shipped"] / med["lerobot"]["chunk"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lerobot-python", default=None, help="LeRobot's venv python (default: $LEROBOT_PYTHON, else build one)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a look, not a figure)")
    ap.add_argument("--cases", nargs="*", default=None, help="names of the cases to run (default: all)")
    ap.add_argument("--no-compile", action="store_true",
                    help="leave out the compiled inference (torch.compile of both sides' per-chunk networks, "
                         "weights frozen; one to two minutes of compilation per case and side)")
    ap.add_argument("--out", default=str(HERE / "results" / "vs_lerobot.json"))
    args = ap.parse_args()
    pythons = {"ours": sys.executable, "lerobot": lerobot_python(args.lerobot_python)}
    import torch  # our torch, for the probe

    from protege.policies.onednn import probe

    torch.set_num_threads(args.threads)
    onednn = probe().usable  # what onednn_matmul=auto chooses here: both sides' compiled chunks get it too
    print(f"float32 products in oneDNN: {onednn} ({probe()})", flush=True)
    rows = []
    for case in CASES:
        if args.cases and case["name"] not in args.cases:
            continue
        paper = "paper" in case["name"]
        case = {**COMMON, **case, "threads": args.threads, "compile": not args.no_compile, "onednn": onednn,
                "steps": 3 if args.quick else (5 if paper else 15), "reps": 3 if args.quick else (15 if paper else 60)}
        print(f"{case['name']} ...", flush=True)
        times, info = measure(case, pythons)
        rows.append({"case": case, "ours": summary(times["ours"], info["ours"]),
                     "lerobot": summary(times["lerobot"], info["lerobot"]), "ratios": ratios(times)})
    print_table(rows)
    write_result(args.out, "vs_lerobot", threads=args.threads, quick=args.quick, lerobot="0.4.4", onednn_matmul=onednn,
                 onednn_probe=dataclasses.asdict(probe()), rows=rows)


def print_table(rows: list) -> None:
    """The markdown table README quotes: medians in ms, ratios as median [q1, q3] of the per-round
    ratios; then each side's compiled / eager chunk."""
    def ratio(r: dict, name: str) -> str:
        x = r["ratios"].get(name)
        return f"{x['median']:.2f} [{x['q1']:.2f}, {x['q3']:.2f}]" if x else "-"

    def ms(r: dict, key: str) -> str:
        a, b = r["ours"].get(f"{key}_ms"), r["lerobot"].get(f"{key}_ms")
        return f"{a:,.0f} / {b:,.0f}" if a and a >= 100 else f"{a:.1f} / {b:.1f}" if a else "-"

    print()
    print("| model | batch | parameters (ours / LeRobot) | training step, ms (ours / LeRobot) | ratio | "
          "ratio to LeRobot's step with our CPU settings | chunk at batch 1, ms (ours / LeRobot) | ratio | "
          "compiled chunk, ms (ours / LeRobot) | ratio | ours compiled / LeRobot as shipped |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["ours"], r["lerobot"]
        print(f"| {r['case']['name']} | {r['case']['batch_size']} | {a['params_M']:.1f} M / {b['params_M']:.1f} M | "
              f"{ms(r, 'train_step')} | {ratio(r, 'train')} | {ratio(r, 'train_vs_lerobot_tuned')} | "
              f"{ms(r, 'chunk')} | {ratio(r, 'chunk')} | "
              f"{ms(r, 'chunk_compiled')} | {ratio(r, 'chunk_compiled')} | "
              f"{ratio(r, 'ours_compiled_vs_lerobot_as_shipped')} |")
    if any("ours_compiled_over_eager" in r["ratios"] for r in rows):
        print()
        print("| model | ours: compiled / eager chunk | LeRobot's eager chunk: compiled phase / eager phase |")
        print("|---|---|---|")
        for r in rows:
            x = r["ratios"]
            if "ours_compiled_over_eager" in x:
                print(f"| {r['case']['name']} | {x['ours_compiled_over_eager']:.2f} | "
                      f"{x['lerobot_as_shipped_over_eager_phase']:.2f} |")


if __name__ == "__main__":
    main()
