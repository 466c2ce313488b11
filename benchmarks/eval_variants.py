"""One checkpoint evaluated under several protege-eval settings, in one run, into one JSON.

    python benchmarks/eval_variants.py --checkpoint runs/<run>/checkpoints/latest.pt \\
        --variant Ta4:n_action_steps=4 --variant Ta8: --variant Ta12:n_action_steps=12 --out results/<name>.json

Each ``--variant NAME:OVERRIDE[,OVERRIDE...]`` runs the real ``protege-eval`` with those hydra
overrides on the *validation* seeds (``--episodes`` from ``--val-seed``, 110000). A comparison
picks: the variant best on validation is then evaluated once on the *test* seeds (from
``--test-seed``, 100000), the figure to report; with ``--no-test`` nothing is reported. Prints a
table (success with its 95% Wilson interval, episodes by final stage) and writes the command,
commit, machine, date, each variant's validation figures, and the chosen one's test figures; every
figure names its seed range.
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
    ap.add_argument("--val-seed", type=int, default=110000, help="first validation seed (choices are made here)")
    ap.add_argument("--test-seed", type=int, default=100000, help="first test seed (the chosen variant, run once)")
    ap.add_argument("--no-test", action="store_true", help="validation only: report nothing")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    variants = []
    for v in args.variant:
        name, sep, overrides = v.partition(":")
        if not sep or not name:
            ap.error(f"--variant {v!r}: expected NAME:OVERRIDES (e.g. Ta4:scheduler.n_action_steps=4, or Ta8: for the defaults)")
        variants.append((name, [o for o in overrides.split(",") if o]))
    rows = []
    keys = ("n_episodes", "scheduler", "n_action_steps", "num_inference_steps", "train_step", "mean_max_reward",
            "success_rate", "success_rate_ci95", "final_stages", "eval_seconds", "inference_seconds")
    val = [args.val_seed, args.val_seed + args.episodes - 1]
    test = [args.test_seed, args.test_seed + args.episodes - 1]
    if max(val[0], test[0]) <= min(val[1], test[1]):
        ap.error(f"validation seeds {val} and test seeds {test} overlap")

    def run(name, overrides, seed, tmp):
        out_dir = Path(tmp) / f"{name}-{seed}"
        subprocess.run([str(BIN / "protege-eval"), f"checkpoint={args.checkpoint}", f"n_episodes={args.episodes}",
                        f"seed={seed}", "n_videos=0", f"out_dir={out_dir}", *overrides], check=True)
        return json.loads((out_dir / "eval.json").read_text())

    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in variants:
            r = run(name, overrides, args.val_seed, tmp)
            rows.append({"variant": name, "overrides": overrides, "seeds": "validation", "seed_range": val,
                         **{k: r[k] for k in keys}})
        chosen = max(rows, key=lambda r: (r["success_rate"], r["mean_max_reward"])) if rows else None
        test_row = None
        if chosen is not None and not args.no_test:  # the choice is fixed: the test seeds are run once
            r = run(chosen["variant"], chosen["overrides"], args.test_seed, tmp)
            test_row = {"variant": chosen["variant"], "overrides": chosen["overrides"], "seeds": "test", "seed_range": test,
                        "chosen_on": "validation success rate", **{k: r[k] for k in keys}}
    print("| variant | overrides | seeds | success (95% CI) | episodes by final stage |")
    print("|---|---|---|---|---|")
    for r in rows + ([test_row] if test_row else []):
        lo, hi = r["success_rate_ci95"]
        n = r["n_episodes"]
        print(f"| {r['variant']} | {' '.join(r['overrides']) or '-'} | {r['seeds']} {r['seed_range'][0]}-{r['seed_range'][1]} "
              f"| {round(r['success_rate'] * n)}/{n} ({lo:.2f}-{hi:.2f}) | {r['final_stages']} |")
    write_result(args.out, "eval_variants", threads=torch.get_num_threads(), checkpoint=args.checkpoint, rows=rows,
                 test=test_row, seeds={"validation": val, "test": test})


if __name__ == "__main__":
    main()
