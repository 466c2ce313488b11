"""One checkpoint evaluated under several protege-eval settings, in one run, into one JSON.

    python benchmarks/eval_variants.py --checkpoint runs/<run>/checkpoints/latest.pt \\
        --variant Ta4:n_action_steps=4 --variant Ta8: --variant Ta12:n_action_steps=12 --out results/<name>.json

Each ``--variant NAME:OVERRIDE[,OVERRIDE...]`` runs the real ``protege-eval`` with those hydra
overrides on the same seeds (``--episodes``, from 100000). Prints a table (success with its 95%
Wilson interval, episodes by final stage) and writes the command, commit, machine, date and each
variant's figures. For diagnosis of a trained policy: how its evaluation settings change success.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from machine import write_result  # benchmarks/machine.py

BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:OVERRIDES",
                    help="a name, a colon, then comma-separated protege-eval overrides (none: the defaults)")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    variants = []
    for v in args.variant:
        name, sep, overrides = v.partition(":")
        if not sep or not name:
            ap.error(f"--variant {v!r}: expected NAME:OVERRIDES (e.g. Ta4:scheduler.n_action_steps=4, or Ta8: for the defaults)")
        variants.append((name, [o for o in overrides.split(",") if o]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in variants:
            out_dir = Path(tmp) / name
            subprocess.run([str(BIN / "protege-eval"), f"checkpoint={args.checkpoint}", f"n_episodes={args.episodes}",
                            "n_videos=0", f"out_dir={out_dir}", *overrides], check=True)
            r = json.loads((out_dir / "eval.json").read_text())
            rows.append({"variant": name, "overrides": overrides, **{k: r[k] for k in (
                "n_episodes", "scheduler", "n_action_steps", "num_inference_steps", "train_step", "mean_max_reward",
                "success_rate", "success_rate_ci95", "final_stages", "eval_seconds", "inference_seconds")}})
    print("| variant | overrides | success (95% CI) | episodes by final stage |")
    print("|---|---|---|---|")
    for r in rows:
        lo, hi = r["success_rate_ci95"]
        n = r["n_episodes"]
        print(f"| {r['variant']} | {' '.join(r['overrides']) or '-'} | {round(r['success_rate'] * n)}/{n} ({lo:.2f}-{hi:.2f}) "
              f"| {r['final_stages']} |")
    write_result(args.out, "eval_variants", threads=torch.get_num_threads(), checkpoint=args.checkpoint, rows=rows)


if __name__ == "__main__":
    main()
