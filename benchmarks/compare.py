"""Side-by-side table of the policies from the latest benchmark results (no training, just reading).

    python benchmarks/compare.py            # prints a markdown table, writes results/compare.json

Reads benchmarks/results/<task>-<policy>.json (written by train_eval.py, with the parameters and
the batch-1 latency per action chunk of the evaluated checkpoint); results written before
train_eval.py measured those fall back to benchmarks/results/throughput.json (throughput.py).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent / "results"


def main() -> None:
    latency = {}
    tp = HERE / "throughput.json"
    if tp.exists():
        for r in json.loads(tp.read_text())["rows"]:
            latency[(r["task"], r["policy"])] = r
    rows = []
    for path in sorted(HERE.glob("*-*.json")):
        r = json.loads(path.read_text())
        if r.get("benchmark") != "train_eval":
            continue
        f = r["final"]
        t = latency.get((r["task"], r["policy"]), {})
        lat = r.get("latency_ms", t.get("ddim10_ms", t.get("chunk_ms")))
        rows.append({
            "task": r["task"], "policy": r["policy"], "scheduler": r.get("scheduler", "receding_horizon"),
            "score": f["mean_max_reward"], "coverage": f["mean_max_coverage"], "success": f["success_rate"],
            "ci95": f["success_rate_ci95"], "train_minutes": f["train_minutes"], "steps": f["train_step"],
            "episodes": r["eval_episodes"], "params_M": r.get("params_M", t.get("params_M")), "latency_ms": lat, "machine": r["machine"],
        })
    print("| task | policy | action scheduler | score (mean max reward) | mean max coverage | success (95% CI) "
          "| training minutes (steps) | parameters | latency per chunk |")
    print("|---|---|---|---|---|---|---|---|---|")
    def fmt(x, spec, unit=""):
        return "-" if x is None else format(x, spec) + unit

    for r in rows:
        print(f"| {r['task']} | {r['policy']} | {r['scheduler']} | {fmt(r['score'], '.3f')} | {fmt(r['coverage'], '.3f')} | "
              f"{r['success']:.2f} ({r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}) | {r['train_minutes']:.0f} ({r['steps']}) | "
              f"{fmt(r['params_M'], '.1f', ' M')} | {fmt(r['latency_ms'], '.0f', ' ms')} |")
    (HERE / "compare.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
