"""Diffusion Policy and ACT side by side: tables from the benchmark results, one per budget.

    python benchmarks/compare.py                 # the newest result per task, policy and protocol
    python benchmarks/compare.py sim_lift-diffusion-v3.json sim_lift-diffusion-v3-te.json ...
        # exactly these results (names in benchmarks/results/, or paths)
    python benchmarks/compare.py --run --minutes 30
        # first reruns everything: records 100 scripted demos per sim task (if missing), then
        # train_eval.py for every task x policy with the same budget, then evaluates each final
        # checkpoint with the other action scheduler too (eval_variants.py), then prints the tables

Reads ``train_eval`` results (``train_eval.py``: the final checkpoint's evaluation, or the best
one's under the paper's protocol, with the parameters and the batch-1 latency per action chunk)
and ``eval_variants`` results (``eval_variants.py``: the same checkpoint evaluated otherwise, e.g.
with temporal ensembling), each variant joined to the ``train_eval`` result whose run wrote its
checkpoint. Without file names it takes the newest ``train_eval`` result (by its date) per task,
policy and protocol and the variants of those runs; older ones are listed as superseded.

Rows share a table only when they share the task, the dataset and the training budget: one table
compares policies on one budget with their schedules in the same state (each run's learning rate
anneals to the end of its budget). A result without the command and commit that wrote it is left
out, and so is a variant whose run is not among the selected results. Prints markdown tables,
writes ``results/compare.json`` with the command, commit, date, the tables and what was left out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from machine import pusht_store, write_result  # benchmarks/machine.py

HERE = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
SCHEDULERS = ("receding_horizon", "temporal_ensembling")
POLICIES = ("diffusion", "act")


def run_all(tasks: list[str], policies: list[str], minutes: float, pusht: str, demos: int) -> list[Path]:
    """Record the sim tasks' demos when missing, train_eval.py every (task, policy) on one budget
    (receding horizon), then evaluate each final checkpoint with temporal ensembling. Returns the
    result files written."""
    written = []
    for task in tasks:
        if task.startswith("pusht"):
            dataset = pusht
        else:
            dataset = f"runs/{task}_demos.zarr"
            if not Path(dataset).exists():
                subprocess.run([str(BIN / "protege-record"), f"task={task}", "teleop=scripted", f"episodes={demos}",
                                f"out={dataset}"], check=True)
        for policy in policies:
            out, run_dir = HERE / f"{task}-{policy}.json", f"runs/bench-{task}-{policy}"
            subprocess.run([sys.executable, str(HERE.parent / "train_eval.py"), "--task", task, "--policy", policy,
                            "--dataset", dataset, "--minutes", str(minutes), "--batch-size", "32",
                            "--scheduler", "receding_horizon", "--curve-episodes", "20", "--run-dir", run_dir,
                            "--out", str(out)], check=True)
            te = HERE / f"{task}-{policy}-te.json"
            subprocess.run([sys.executable, str(HERE.parent / "eval_variants.py"), "--checkpoint",
                            f"{run_dir}/checkpoints/latest.pt", "--variant", "TE:scheduler=temporal_ensembling",
                            "--out", str(te)], check=True)
            written += [out, te]
    return written


def _path(name: str) -> Path:
    p = Path(name)
    return p if p.exists() or p.is_absolute() or len(p.parts) > 1 else HERE / p


def _load(paths: list[Path]) -> tuple[list[tuple[Path, dict]], list[tuple[Path, dict]], list[str]]:
    """(train_eval results, eval_variants results, left out) of ``paths``."""
    runs, variants, left_out = [], [], []
    for path in paths:
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"cannot read the result {path}: {e}") from e
        kind = r.get("benchmark") if isinstance(r, dict) else None
        if kind not in ("train_eval", "eval_variants"):
            continue
        if "commit" not in r or "command" not in r:
            left_out.append(f"{path.name}: no command and commit recorded (written by older code)")
            continue
        (runs if kind == "train_eval" else variants).append((path, r))
    return runs, variants, left_out


def newest(runs: list[tuple[Path, dict]]) -> tuple[list[tuple[Path, dict]], list[str]]:
    """The newest train_eval result per (task, policy, protocol), by the date it records; the
    others as 'superseded' lines."""
    best: dict[tuple, tuple[Path, dict]] = {}
    for path, r in runs:
        key = (r["task"], r["policy"], r.get("protocol", "ours"))
        if key not in best or r.get("date", "") > best[key][1].get("date", ""):
            best[key] = (path, r)
    kept = {id(v[1]) for v in best.values()}
    superseded = [f"{p.name}: superseded by {best[(r['task'], r['policy'], r.get('protocol', 'ours'))][0].name} "
                  f"(the newer result of {r['task']}, {r['policy']}, protocol {r.get('protocol', 'ours')})"
                  for p, r in runs if id(r) not in kept]
    return [v for v in runs if id(v[1]) in kept], superseded


def owner(variant: dict, runs: list[tuple[Path, dict]]) -> int | None:
    """The index in ``runs`` of the train_eval run whose run_dir wrote the variant's checkpoint."""
    ckpt = Path(variant["checkpoint"])
    return next((i for i, (_, r) in enumerate(runs) if r.get("run_dir") and ckpt.parent.parent == Path(r["run_dir"])),
                None)


def rows_of(runs: list[tuple[Path, dict]], variants: list[tuple[Path, dict]]) -> tuple[list[dict], list[str]]:
    """One row per train_eval result and one per variant of an eval_variants result joined to it."""
    rows, left_out = [], []
    for path, r in runs:
        # the paper reports a chosen checkpoint: chosen on validation seeds, its test figure (older JSONs: one record)
        f = (r["best"].get("test", r["best"]) if r.get("protocol") == "paper" else r["final"])
        rows.append({
            "file": path.name, "variant": None, "task": r["task"], "policy": r["policy"],
            "protocol": r.get("protocol", "ours"), "dataset": r["dataset"], "scheduler": r["scheduler"],
            "budget_minutes": r["budget_minutes"], "score": f["mean_max_reward"],
            "coverage": f.get("mean_max_coverage"), "success": f["success_rate"], "ci95": f["success_rate_ci95"],
            "train_minutes": f["train_minutes"], "steps": f["train_step"], "episodes": f["n_episodes"],
            "params_M": r["params_M"], "latency_ms": r["latency_ms"], "latency_threads": r.get("latency_threads"),
            "machine": r["machine"], "commit": r["commit"],
        })
    for path, v in variants:
        i = owner(v, runs)
        if i is None:
            left_out.append(f"{path.name}: its checkpoint {v['checkpoint']} is not from a selected train_eval run")
            continue
        base = rows[i]  # rows[i] is runs[i]'s
        for var in v["rows"]:
            if var["train_step"] != base["steps"]:
                left_out.append(f"{path.name} ({var['variant']}): step {var['train_step']}, not the step "
                                f"{base['steps']} that {base['file']} reports")
                continue
            rows.append({**base, "file": path.name, "variant": var["variant"], "scheduler": var["scheduler"],
                         "score": var["mean_max_reward"], "coverage": var.get("mean_max_coverage"),
                         "success": var["success_rate"], "ci95": var["success_rate_ci95"],
                         "episodes": var["n_episodes"], "machine": v["machine"], "commit": v["commit"]})
    return rows, left_out


def tables(rows: list[dict]) -> list[dict]:
    """Rows grouped by (task, dataset, budget), in order of first appearance, each sorted by
    policy, protocol and scheduler."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["dataset"], r["budget_minutes"]), []).append(r)
    return [{"task": t, "dataset": d, "budget_minutes": b,
             "rows": sorted(rs, key=lambda r: (r["policy"], r["protocol"], r["scheduler"]))}
            for (t, d, b), rs in groups.items()]


def _fmt(x, spec, unit=""):
    return "-" if x is None else format(x, spec) + unit


def _threads(r: dict) -> str:
    n = r.get("latency_threads")
    return "" if n is None or r["latency_ms"] is None else f" ({n} thread{'s' if n > 1 else ''})"


def markdown(table: dict) -> str:
    lines = [f"{table['task']} on `{Path(table['dataset']).name}`, {table['budget_minutes']:g}-minute training budget:", "",
             "| policy | protocol | action scheduler | score (mean max reward) | mean max coverage | success (95% CI) "
             "| episodes | training minutes (steps) | parameters | latency per chunk |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        lines.append(
            f"| {r['policy']} | {r['protocol']} | {r['scheduler']} | {_fmt(r['score'], '.3f')} | {_fmt(r['coverage'], '.3f')} | "
            f"{r['success']:.2f} ({r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}) | {r['episodes']} | "
            f"{r['train_minutes']:.0f} ({r['steps']}) | {_fmt(r['params_M'], '.1f', ' M')} | {_fmt(r['latency_ms'], '.0f', ' ms')}{_threads(r)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="*", help="result files to compare (default: the newest per task, policy, protocol)")
    ap.add_argument("--run", action="store_true", help="rerun the benchmarks before printing (hours on a CPU)")
    ap.add_argument("--tasks", nargs="+", default=["pusht_image", "sim_lift", "sim_pick_place"])
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget per (task, policy)")
    ap.add_argument("--pusht", default=pusht_store(), help="the PushT store (default: $PROTEGE_PUSHT, else data/pusht/ in the checkout, else ../shared/data/pusht/)")
    ap.add_argument("--demos", type=int, default=100, help="scripted demos recorded per sim task")
    ap.add_argument("--out", default=str(HERE / "compare.json"))
    args = ap.parse_args()
    chosen = [_path(n) for n in args.results]
    if args.run:
        chosen += run_all(args.tasks, args.policies, args.minutes, args.pusht, args.demos)
    for p in chosen:
        if not p.exists():
            raise SystemExit(f"no such result: {p}")
    runs, variants, left_out = _load(chosen or sorted(HERE.glob("*.json")))
    if not chosen:  # the newest runs, and the variants of those runs only
        runs, superseded = newest(runs)
        variants = [v for v in variants if owner(v[1], runs) is not None]
        left_out += superseded
    rows, unjoined = rows_of(runs, variants)
    left_out += unjoined
    out = tables(rows)
    print("\n\n".join(markdown(t) for t in out) if out else "no train_eval results selected")
    for why in left_out:
        print(f"left out: {why}")
    write_result(args.out, "compare", tables=out, left_out=left_out)


if __name__ == "__main__":
    main()
