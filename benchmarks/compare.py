"""Diffusion Policy and ACT side by side: one table from the latest benchmark results.

    python benchmarks/compare.py            # prints a markdown table, writes results/compare.json
    python benchmarks/compare.py --run --minutes 30
        # first reruns everything: records 100 scripted demos per sim task (if missing), then
        # train_eval.py for every task x policy with the same budget, then prints the table

Reads benchmarks/results/<task>-<policy>[-<protocol>].json (written by train_eval.py, with the
parameters and the batch-1 latency per action chunk of the evaluated checkpoint). Results without
the command and commit that wrote them are left out, and so is a row whose training budget
differs from the other rows of its task: one table compares policies on one budget.
Writes results/compare.json with the command, commit and date.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from machine import commit, pusht_store  # benchmarks/machine.py

HERE = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
SCHEDULER = {"diffusion": "receding_horizon", "act": "temporal_ensembling"}  # each policy's own


def run_all(tasks: list[str], policies: list[str], minutes: float, pusht: str, demos: int) -> None:
    """Record the sim tasks' demos when missing, then train_eval.py every (task, policy) on one budget."""
    for task in tasks:
        if task.startswith("pusht"):
            dataset = pusht
        else:
            dataset = f"runs/{task}_demos.zarr"
            if not Path(dataset).exists():
                subprocess.run([str(BIN / "protege-record"), f"task={task}", "teleop=scripted", f"episodes={demos}",
                                f"out={dataset}"], check=True)
        for policy in policies:
            subprocess.run([sys.executable, str(HERE.parent / "train_eval.py"), "--task", task, "--policy", policy,
                            "--dataset", dataset, "--minutes", str(minutes), "--batch-size", "32",
                            "--scheduler", SCHEDULER[policy], "--curve-episodes", "20"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="store_true", help="rerun the benchmarks before printing (hours on a CPU)")
    ap.add_argument("--tasks", nargs="+", default=["pusht_image", "sim_lift", "sim_pick_place"])
    ap.add_argument("--policies", nargs="+", default=["diffusion", "act"], choices=sorted(SCHEDULER))
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget per (task, policy)")
    ap.add_argument("--pusht", default=pusht_store(), help="the PushT store (default: $PROTEGE_PUSHT, else data/pusht/ in the checkout, else ../shared/data/pusht/)")
    ap.add_argument("--demos", type=int, default=100, help="scripted demos recorded per sim task")
    args = ap.parse_args()
    if args.run:
        run_all(args.tasks, args.policies, args.minutes, args.pusht, args.demos)
    rows, left_out = [], []
    for path in sorted(HERE.glob("*-*.json")):
        r = json.loads(path.read_text())
        if not isinstance(r, dict) or r.get("benchmark") != "train_eval":
            continue
        if "commit" not in r:
            left_out.append(f"{path.name}: no command and commit recorded (written by older code)")
            continue
        f = r["best"] if r.get("protocol") == "paper" else r["final"]  # the paper reports the best checkpoint
        rows.append({
            "file": path.name, "task": r["task"], "policy": r["policy"], "protocol": r.get("protocol", "ours"),
            "scheduler": r["scheduler"], "budget_minutes": r["budget_minutes"],
            "score": f["mean_max_reward"], "coverage": f["mean_max_coverage"], "success": f["success_rate"],
            "ci95": f["success_rate_ci95"], "train_minutes": f["train_minutes"], "steps": f["train_step"],
            "episodes": f["n_episodes"], "params_M": r["params_M"], "latency_ms": r["latency_ms"],
            "machine": r["machine"], "commit": r["commit"],
        })
    budgets = {}
    for r in rows:
        budgets.setdefault(r["task"], r["budget_minutes"])
    for r in [r for r in rows if r["budget_minutes"] != budgets[r["task"]]]:
        left_out.append(f"{r['file']}: a {r['budget_minutes']:g}-minute budget where {r['task']}'s first row had "
                        f"{budgets[r['task']]:g}")
        rows.remove(r)
    print("| task | policy | protocol | action scheduler | score (mean max reward) | mean max coverage | success (95% CI) "
          "| training minutes (steps) | parameters | latency per chunk |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    def fmt(x, spec, unit=""):
        return "-" if x is None else format(x, spec) + unit

    for r in rows:
        print(f"| {r['task']} | {r['policy']} | {r['protocol']} | {r['scheduler']} | {fmt(r['score'], '.3f')} | {fmt(r['coverage'], '.3f')} | "
              f"{r['success']:.2f} ({r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}) | {r['train_minutes']:.0f} ({r['steps']}) | "
              f"{fmt(r['params_M'], '.1f', ' M')} | {fmt(r['latency_ms'], '.0f', ' ms')} |")
    for why in left_out:
        print(f"left out: {why}")
    (HERE / "compare.json").write_text(json.dumps({
        "benchmark": "compare", "command": shlex.join(["python", *sys.argv]), "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows, "left_out": left_out}, indent=2))


if __name__ == "__main__":
    main()
